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
 *   sleep     sleeps 20 s in the host (nanosleep), then answers
 *   poll      waits in poll_oneoff on a clock that never fires
 *   pollabs   the same with an absolute clock (WASI's own path)
 *   poll2     2,000 calls of poll_oneoff with two clocks of 0 ns each
 *   files     opens /data/file (a WasmMapDir) until that fails, keeping each
 *             and saying on stderr how many it holds
 *   longhead  one header line of 8,190 bytes with a header's text at its end
 *   count     reads stdin to its end and answers how many bytes it read
 *   bigN      a response of N MiB (e.g. big64)
 *   slow      300 KiB, a 1 s pause, 300 KiB more
 *   late      1 MiB of response, then a trap
 *   chatty    a response, and 250 lines on stderr
 *   writeread 300 KiB of response, then reads stdin to its end
 *   redirect  a local redirect to /hello, without reading stdin
 *   naps      1,000 sleeps of 0 ns
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <wasi/api.h>

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
    if (!strcmp(q, "chatty")) {
        for (int i = 0; i < 250; i++) {
            fprintf(stderr, "chatty line %d\n", i);
        }
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
    if (!strcmp(q, "sleep")) {
        struct timespec ts = {20, 0};
        nanosleep(&ts, NULL);
    }
    if (!strcmp(q, "poll")) {
        __wasi_subscription_t sub;
        __wasi_event_t ev;
        __wasi_size_t n;

        memset(&sub, 0, sizeof(sub));
        sub.u.tag = __WASI_EVENTTYPE_CLOCK;
        sub.u.u.clock.id = __WASI_CLOCKID_MONOTONIC;
        sub.u.u.clock.timeout = ~(__wasi_timestamp_t)0;
        if (__wasi_poll_oneoff(&sub, &ev, 1, &n) != 0) {
            return 1;
        }
    }
    if (!strcmp(q, "pollabs") || !strcmp(q, "poll2")) {
        __wasi_subscription_t sub[2];
        __wasi_event_t ev[2];
        __wasi_size_t n;
        int two = !strcmp(q, "poll2");

        memset(sub, 0, sizeof(sub));
        for (int i = 0; i < 2; i++) {
            sub[i].userdata = i;
            sub[i].u.tag = __WASI_EVENTTYPE_CLOCK;
            sub[i].u.u.clock.id = __WASI_CLOCKID_MONOTONIC;
        }
        if (!two) {
            sub[0].u.u.clock.timeout = ~(__wasi_timestamp_t)0;
            sub[0].u.u.clock.flags = __WASI_SUBCLOCKFLAGS_SUBSCRIPTION_CLOCK_ABSTIME;
        }
        for (int i = 0; i < (two ? 2000 : 1); i++) {
            __wasi_errno_t e = __wasi_poll_oneoff(sub, ev, two ? 2 : 1, &n);
            if (e != 0) {
                printf("Content-Type: text/plain\r\n\r\npoll %d: errno %d\n", i, e);
                return 0;
            }
        }
        fputs("Content-Type: text/plain\r\n\r\npolled\n", stdout);
        return 0;
    }
    if (!strcmp(q, "files")) {
        int n = 0;
        while (open("/data/file", O_RDONLY) >= 0) {
            fprintf(stderr, "holding %d files\n", ++n);
        }
        printf("Content-Type: text/plain\r\n\r\nopened %d\n", n);
        return 0;
    }
    if (!strcmp(q, "longhead")) {
        fputs("Content-Type: text/plain\r\nX-Long: ", stdout);
        for (int i = 0; i < 8182; i++) {
            putchar('a');
        }
        fputs("Set-Cookie: injected=1\r\n\r\nbody\n", stdout);
        return 0;
    }
    if (!strcmp(q, "naps")) {
        struct timespec ts = {0, 0};
        for (int i = 0; i < 1000; i++) {
            nanosleep(&ts, NULL);
        }
        fputs("Content-Type: text/plain\r\n\r\nnapped\n", stdout);
        return 0;
    }
    if (!strcmp(q, "redirect")) {
        fputs("Location: /hello\r\n\r\n", stdout);
        return 0;
    }
    if (!strcmp(q, "writeread")) {
        static char block[1024];
        static char buf[65536];
        size_t n, total = 0;
        memset(block, 'w', sizeof(block));
        fputs("Content-Type: application/octet-stream\r\n\r\n", stdout);
        for (int i = 0; i < 300; i++) {
            fwrite(block, 1, sizeof(block), stdout);
        }
        fflush(stdout);
        while ((n = fread(buf, 1, sizeof(buf), stdin)) > 0) {
            total += n;
        }
        printf("read %zu\n", total);
        return 0;
    }
    if (!strcmp(q, "count")) {
        static char buf[65536];
        size_t n, total = 0;
        while ((n = fread(buf, 1, sizeof(buf), stdin)) > 0) {
            total += n;
        }
        printf("Content-Type: text/plain\r\n\r\nread %zu\n", total);
        return 0;
    }
    if (!strncmp(q, "big", 3)) {
        static char block[65536];
        long mib = atol(q + 3);
        memset(block, 'x', sizeof(block));
        fputs("Content-Type: application/octet-stream\r\n\r\n", stdout);
        for (long i = 0; i < mib * 16; i++) {
            fwrite(block, 1, sizeof(block), stdout);
        }
        return 0;
    }
    if (!strcmp(q, "slow") || !strcmp(q, "late")) {
        static char block[1024];
        int late = !strcmp(q, "late");
        memset(block, 'y', sizeof(block));
        fputs("Content-Type: application/octet-stream\r\n\r\n", stdout);
        for (int i = 0; i < (late ? 1024 : 300); i++) {
            fwrite(block, 1, sizeof(block), stdout);
        }
        fflush(stdout);
        if (late) {
            __builtin_trap();
        }
        sleep(1);
        for (int i = 0; i < 300; i++) {
            fwrite(block, 1, sizeof(block), stdout);
        }
        return 0;
    }
    fputs("Content-Type: text/plain\r\n\r\nfine\n", stdout);
    return 0;
}
