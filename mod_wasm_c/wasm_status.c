/*
 * wasm_status.c: SetHandler wasm-status.
 */

#include "mod_wasm.h"

/* SetHandler wasm-status: this child's slots, requests and heap, then the
 * whole server's children and modules (the metrics table), as "Key: value"
 * lines; ?json: the server-wide figures as JSON. The runtime writes both. */
int wasm_status_handler(request_rec *r)
{
    char *text = NULL, *error = NULL;

    if (!r->handler || strcmp(r->handler, WASM_STATUS_HANDLER) != 0) {
        return DECLINED;
    }
    r->allowed |= (AP_METHOD_BIT << M_GET);
    if (r->method_number == M_OPTIONS) {
        return DECLINED;    /* the core answers, with Allow: */
    }
    if (r->method_number != M_GET) {
        return HTTP_METHOD_NOT_ALLOWED;
    }
    if (!wasm_runtime && (!wasm_modules || !wasm_modules->nelts)) {
        static apr_uint32_t said;
        /* Decided once: ap_log_rerror evaluates its level twice. */
        int level = apr_atomic_cas32(&said, 1, 0) == 0 ? APLOG_ERR
                                                       : APLOG_DEBUG;

        ap_log_rerror(APLOG_MARK, level, 0, r, WASMLOGNO(00046)
                      "wasm-status: no WasmModule is configured, so there "
                      "is no WebAssembly runtime to report on");
        return HTTP_SERVICE_UNAVAILABLE;
    }
    if (!wasm_runtime) {
        wasm_log_no_runtime(r, "wasm-status");
        return HTTP_SERVICE_UNAVAILABLE;
    }
    /* ?json: the server-wide figures as one object. */
    if (r->args && strcmp(r->args, "json") == 0) {
        ap_set_content_type(r, "application/json");
        apr_table_setn(r->headers_out, "Cache-Control", "no-store");
        return wasm_metrics_write(r, WASM_RT_METRICS_JSON);
    }
    if (wasm_rt_status(wasm_runtime, &text, &error) != WASM_RT_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, WASMLOGNO(00047)
                      "wasm-status: %s", error ? error : "failed");
        wasm_rt_string_free(error);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    ap_set_content_type(r, "text/plain; charset=utf-8");
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    if (!r->header_only) {
        ap_rputs(text, r);
    }
    wasm_rt_string_free(text);
    /* Then the whole server's, from the metrics table. */
    wasm_metrics_write(r, WASM_RT_METRICS_TEXT);
    return OK;
}

