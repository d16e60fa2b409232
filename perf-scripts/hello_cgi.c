/* guests/hello.c compiled natively, for the mod_cgid row. */
#include <stdio.h>

int main(void)
{
    fputs("Content-Type: text/plain\r\n\r\nHello, World!", stdout);
    return 0;
}
