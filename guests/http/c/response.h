/* What the C components of guests/http/c share: setting a response and
 * writing its body, over the bindings wit-bindgen generates for the
 * wasi:http/proxy world (proxy.h, built by scripts/build-components). */
#ifndef GUEST_RESPONSE_H
#define GUEST_RESPONSE_H

#include <stddef.h>

#include "proxy.h"

/* wasi:io takes at most 4096 bytes per blocking_write_and_flush. */
#define WRITE_MAX 4096

/* The body being written. */
typedef struct {
    wasi_http_types_own_outgoing_body_t body;
    wasi_io_streams_own_output_stream_t stream;
} body_t;

/* Sets a response with `status` and a content-type of `ctype`, and opens
 * its body. */
body_t respond(wasi_http_types_own_response_outparam_t out, int status,
               const char *ctype);

/* Writes `len` bytes of `data`; 0, or -1 once the client is gone. */
int body_write(body_t *b, const void *data, size_t len);

/* Finishes the body. */
void body_finish(body_t *b);

/* The request's path with its query, NUL-terminated (malloc'ed). */
char *request_path(wasi_http_types_own_incoming_request_t request);

#endif
