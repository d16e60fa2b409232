/* The C hello component: "Hello from C, " and the request's path with its
 * query, as text (the twin of guests/http/hello.py, for the benchmarks). */
#include <stdio.h>
#include <stdlib.h>

#include "response.h"

void exports_wasi_http_incoming_handler_handle(
    exports_wasi_http_incoming_handler_own_incoming_request_t request,
    exports_wasi_http_incoming_handler_own_response_outparam_t response_out)
{
    char *path = request_path(request);
    char text[512];
    int n = snprintf(text, sizeof text, "Hello from C, %s", path);
    body_t b;

    wasi_http_types_incoming_request_drop_own(request);
    b = respond(response_out, 200, "text/plain");
    body_write(&b, text, n < (int)sizeof text ? (size_t)n : sizeof text - 1);
    body_finish(&b);
    free(path);
}
