/* See response.h. */
#include <stdlib.h>
#include <string.h>

#include "response.h"

body_t respond(wasi_http_types_own_response_outparam_t out, int status,
               const char *ctype)
{
    wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
    wasi_http_types_field_name_t name;
    wasi_http_types_field_value_t value = {(uint8_t *)ctype, strlen(ctype)};
    wasi_http_types_header_error_t herr;
    wasi_http_types_own_outgoing_response_t resp;
    wasi_http_types_borrow_outgoing_response_t borrowed;
    wasi_http_types_result_own_outgoing_response_error_code_t result;
    body_t b;

    proxy_string_set(&name, "content-type");
    wasi_http_types_method_fields_append(wasi_http_types_borrow_fields(headers),
                                         &name, &value, &herr);
    resp = wasi_http_types_constructor_outgoing_response(headers);
    borrowed = wasi_http_types_borrow_outgoing_response(resp);
    wasi_http_types_method_outgoing_response_set_status_code(borrowed, status);
    wasi_http_types_method_outgoing_response_body(borrowed, &b.body);
    wasi_http_types_method_outgoing_body_write(
        wasi_http_types_borrow_outgoing_body(b.body), &b.stream);
    result.is_err = false;
    result.val.ok = resp;
    wasi_http_types_static_response_outparam_set(out, &result);
    return b;
}

int body_write(body_t *b, const void *data, size_t len)
{
    wasi_io_streams_borrow_output_stream_t s =
        wasi_io_streams_borrow_output_stream(b->stream);
    const uint8_t *p = data;

    while (len > 0) {
        size_t n = len < WRITE_MAX ? len : WRITE_MAX;
        proxy_list_u8_t chunk = {(uint8_t *)p, n};
        wasi_io_streams_stream_error_t err;

        if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(
                s, &chunk, &err)) {
            return -1;
        }
        p += n;
        len -= n;
    }
    return 0;
}

void body_finish(body_t *b)
{
    wasi_http_types_error_code_t err;

    wasi_io_streams_output_stream_drop_own(b->stream);
    wasi_http_types_static_outgoing_body_finish(b->body, NULL, &err);
}

char *request_path(wasi_http_types_own_incoming_request_t request)
{
    proxy_string_t path;
    char *s;

    if (!wasi_http_types_method_incoming_request_path_with_query(
            wasi_http_types_borrow_incoming_request(request), &path)) {
        return strdup("/");
    }
    s = malloc(path.len + 1);
    memcpy(s, path.ptr, path.len);
    s[path.len] = '\0';
    proxy_string_free(&path);
    return s;
}
