/* Dumps argv and the environment, one "name=value" per line. */
#include <stdio.h>

extern char **environ;

int main(int argc, char **argv)
{
    fputs("Content-Type: text/plain\r\n\r\n", stdout);
    for (int i = 0; i < argc; i++) {
        printf("ARGV%d=%s\n", i, argv[i]);
    }
    for (char **e = environ; *e; e++) {
        printf("%s\n", *e);
    }
    return 0;
}
