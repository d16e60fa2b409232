/* The smallest CGI response: a 13-byte body. Used by tests and benchmarks. */
#include <stdio.h>

int main(void)
{
    fputs("Content-Type: text/plain\r\n\r\nHello, World!", stdout);
    return 0;
}
