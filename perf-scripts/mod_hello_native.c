/*
 * mod_hello_native.c: the baseline for perf-scripts/compare. A native
 * in-process handler ("hello-native") answering what guests/hello.c
 * answers: "Hello, World!" as text/plain; with "?size=N", N bytes like
 * guests/respond.c's "?big=N"; with "?work=N", after N microseconds of
 * CPU work (this thread's CPU time) over a 1 MiB buffer: the baseline for
 * how much Apache and the scheduler stretch a request that computes for
 * that long, such as an interpreter's, or mod_wasm's own part of one.
 */
#include "httpd.h"
#include "http_config.h"
#include "http_protocol.h"
#include "apr_strings.h"
#include "apr_time.h"

#include <time.h>

/* This thread's CPU time, µs: a thread preempted while it "works" must not
 * count the wait as work. */
static apr_int64_t cpu_us(void)
{
    struct timespec t;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (apr_int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

/* Writes through a 1 MiB buffer until this thread has used `us`
 * microseconds of CPU, checking often enough for a few to mean that. */
static void work_for(apr_int64_t us)
{
    static char buf[1 << 20];
    apr_int64_t end = cpu_us() + us;
    unsigned i = 0;

    while (cpu_us() < end) {
        int j;
        for (j = 0; j < 128; j++, i += 4099) {
            buf[i % sizeof(buf)] += (char)i;
        }
    }
}

static int hello_native_handler(request_rec *r)
{
    if (!r->handler || strcmp(r->handler, "hello-native") != 0) {
        return DECLINED;
    }
    if (r->args && strncmp(r->args, "size=", 5) == 0) {
        static char chunk[65520];
        static volatile int filled;
        apr_off_t n = apr_atoi64(r->args + 5), sent;
        int i;

        /* Filled once per process: a handler serving a prepared buffer is
         * the baseline a zero-copy hand-off should be measured against. */
        if (!filled) {
            for (i = 0; i < (int)sizeof(chunk); i++) {
                chunk[i] = 'a' + (char)(i % 26);
            }
            filled = 1;
        }
        ap_set_content_type(r, "application/octet-stream");
        for (sent = 0; sent < n && !r->header_only; sent += sizeof(chunk)) {
            ap_rwrite(chunk, n - sent < (apr_off_t)sizeof(chunk)
                                 ? (int)(n - sent) : (int)sizeof(chunk), r);
        }
        return OK;
    }
    if (r->args && strncmp(r->args, "work=", 5) == 0) {
        work_for(apr_atoi64(r->args + 5));
    }
    ap_set_content_type(r, "text/plain");
    if (!r->header_only) {
        ap_rputs("Hello, World!", r);
    }
    return OK;
}

static void hello_native_hooks(apr_pool_t *p)
{
    ap_hook_handler(hello_native_handler, NULL, NULL, APR_HOOK_MIDDLE);
}

AP_DECLARE_MODULE(hello_native) = {
    STANDARD20_MODULE_STUFF, NULL, NULL, NULL, NULL, NULL, hello_native_hooks,
    AP_MODULE_FLAG_NONE
};
