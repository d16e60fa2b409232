/* Touches the filesystem as the query string asks, and reports:
 *   read=PATH    prints the file
 *   write=PATH   creates the file with "written\n"
 * Failures are reported in the body ("error: ...") with status 200, so
 * that tests can tell a refused access from a crashed guest. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    const char *q = getenv("QUERY_STRING");
    char buf[4096];
    FILE *f;

    fputs("Content-Type: text/plain\r\n\r\n", stdout);
    if (!q) {
        return 0;
    }
    if (!strncmp(q, "read=", 5)) {
        size_t n;
        if (!(f = fopen(q + 5, "r"))) {
            printf("error: %s\n", strerror(errno));
            return 0;
        }
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
            fwrite(buf, 1, n, stdout);
        }
        fclose(f);
    }
    else if (!strncmp(q, "write=", 6)) {
        if (!(f = fopen(q + 6, "w")) || fputs("written\n", f) < 0
            || fclose(f) != 0) {
            printf("error: %s\n", strerror(errno));
            return 0;
        }
        puts("ok");
    }
    return 0;
}
