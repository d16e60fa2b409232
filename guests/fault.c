/* Misbehaves as the query string asks:
 *   trap      unreachable
 *   divzero   integer division by zero
 *   oob       memory access out of bounds
 *   stack     unbounded recursion
 *   exit0     a response, then exit(0): a normal end
 *   exit3     a response, then exit(3): a failure
 *   stderr    a response, and two lines on stderr
 *   loop      never ends
 *   alloc     allocates until malloc fails, then reports
 *   output    writes without end
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile int zero = 0;
static volatile char *volatile sink;

static int recurse(int n)
{
    volatile char pad[256];
    pad[0] = (char)n;
    return recurse(n + 1) + pad[0];
}

int main(void)
{
    const char *q = getenv("QUERY_STRING");

    if (!q) {
        q = "";
    }
    if (!strcmp(q, "trap")) {
        __builtin_trap();
    }
    if (!strcmp(q, "divzero")) {
        printf("%d\n", 1 / zero);
    }
    if (!strcmp(q, "oob")) {
        volatile int *p = (int *)0x7ffffff0u;
        printf("%d\n", *p);
    }
    if (!strcmp(q, "stack")) {
        printf("%d\n", recurse(0));
    }
    if (!strcmp(q, "exit0")) {
        fputs("Content-Type: text/plain\r\n\r\nexited\n", stdout);
        fflush(stdout);
        exit(0);
    }
    if (!strcmp(q, "exit3")) {
        fputs("Content-Type: text/plain\r\n\r\npartial\n", stdout);
        fflush(stdout);
        exit(3);
    }
    if (!strcmp(q, "stderr")) {
        fputs("first complaint\nsecond complaint\n", stderr);
    }
    if (!strcmp(q, "loop")) {
        for (volatile unsigned long i = 0;; i++) {
        }
    }
    if (!strcmp(q, "alloc")) {
        size_t total = 0;
        for (;;) {
            /* Touch and keep each block, or the compiler drops the loop. */
            volatile char *block = malloc(1 << 20);
            if (!block) {
                break;
            }
            block[0] = 1;
            sink = block;
            total += 1 << 20;
        }
        printf("Content-Type: text/plain\r\n\r\nallocated %zu MiB\n",
               total >> 20);
        return 0;
    }
    if (!strcmp(q, "output")) {
        fputs("Content-Type: text/plain\r\n\r\n", stdout);
        for (;;) {
            fputs("0123456789abcdef0123456789abcdef\n", stdout);
        }
    }
    fputs("Content-Type: text/plain\r\n\r\nfine\n", stdout);
    return 0;
}
