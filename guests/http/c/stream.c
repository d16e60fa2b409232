/* A C component that streams: the last path segment says what.
 *   big?N   N MiB, 4 KiB at a time, from one buffer (a guest that holds
 *           nothing of what it wrote: for bounded-memory tests)
 *   late    64 KiB at once, then, 200 ms later, the rest of 16 MiB (for
 *           the time to first byte) */
#include <stdlib.h>
#include <string.h>

#include "response.h"

static char buf[WRITE_MAX];

static void write_repeated(body_t *b, size_t total)
{
    while (total > 0) {
        size_t n = total < sizeof buf ? total : sizeof buf;

        if (body_write(b, buf, n) != 0) {
            return;
        }
        total -= n;
    }
}

static void pause_ms(uint64_t ms)
{
    wasi_clocks_monotonic_clock_own_pollable_t p =
        wasi_clocks_monotonic_clock_subscribe_duration(ms * 1000000);

    wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(p));
    wasi_io_poll_pollable_drop_own(p);
}

void exports_wasi_http_incoming_handler_handle(
    exports_wasi_http_incoming_handler_own_incoming_request_t request,
    exports_wasi_http_incoming_handler_own_response_outparam_t response_out)
{
    char *path = request_path(request);
    char *action = strrchr(path, '/');
    char *query;
    body_t b;

    wasi_http_types_incoming_request_drop_own(request);
    action = action ? action + 1 : path;
    query = strchr(action, '?');
    if (query) {
        *query++ = '\0';
    }
    memset(buf, 'x', sizeof buf);
    if (!strcmp(action, "big")) {
        b = respond(response_out, 200, "application/octet-stream");
        write_repeated(&b, (size_t)atoi(query ? query : "1") << 20);
    }
    else if (!strcmp(action, "late")) {
        b = respond(response_out, 200, "application/octet-stream");
        write_repeated(&b, 64 << 10);
        pause_ms(200);
        write_repeated(&b, (16 << 20) - (64 << 10));
    }
    else {
        b = respond(response_out, 404, "text/plain");
        body_write(&b, "unknown action\n", 15);
    }
    body_finish(&b);
    free(path);
}
