/* Echoes the request body byte for byte. */
#include <stdio.h>

int main(void)
{
    static char buf[65536];
    size_t n;

    fputs("Content-Type: application/octet-stream\r\n\r\n", stdout);
    while ((n = fread(buf, 1, sizeof(buf), stdin)) > 0) {
        fwrite(buf, 1, n, stdout);
    }
    return 0;
}
