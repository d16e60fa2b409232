/*
 * wasm_cgi.c: one request to a CGI-style (WASI preview 1) module: the
 * body read through the input filters as the guest reads it, its output
 * scanned as a CGI response and streamed out, the failure rules, and the
 * two filters that bound them (the body's deadline, the end of a started
 * response).
 */

#include "mod_wasm.h"

static apr_status_t wasm_response_cleanup(void *resp)
{
    wasm_rt_response_free(resp);
    return APR_SUCCESS;
}

/* The deadline of the request body being read on a connection, for
 * wasm_deadline_in_filter; 0: none. */
typedef struct {
    apr_time_t deadline;
    apr_bucket_brigade *line;   /* a line being gathered */
} wasm_conn_deadline;

static ap_filter_rec_t *wasm_guard_filter_handle;
static ap_filter_rec_t *wasm_deadline_filter_handle;

/* Sits above the protocol filters while a guest's request runs. HTTP_IN
 * answers a malformed or oversized chunked body on its own, passing an
 * error bucket and EOS down the output filters while the guest reads: this
 * notes it, so that nothing of the guest's goes out after that end, and,
 * once part of the guest's response was sent, turns the error into the 502
 * that makes the chunk filter leave out the last chunk (a 413 there would
 * end the response as if it were complete). */
static apr_status_t wasm_guard_filter(ap_filter_t *f, apr_bucket_brigade *bb)
{
    wasm_io *io = f->ctx;
    apr_bucket *e;

    if (!io->passing) {
        for (e = APR_BRIGADE_FIRST(bb); e != APR_BRIGADE_SENTINEL(bb);
             e = APR_BUCKET_NEXT(e)) {
            if (AP_BUCKET_IS_ERROR(e)) {
                io->core_ended = 1;
                if (io->head_sent) {
                    ((ap_bucket_error *)e->data)->status = HTTP_BAD_GATEWAY;
                }
            }
            else if (APR_BUCKET_IS_EOS(e)) {
                io->core_ended = 1;
            }
        }
    }
    return ap_pass_brigade(f->next, bb);
}

/* Waits until the socket has data or `deadline` passes. */
static apr_status_t wasm_wait_readable(apr_socket_t *sock, apr_time_t deadline)
{
    apr_interval_time_t saved, left = deadline - apr_time_now();
    apr_status_t rv;

    if (left <= 0) {
        return APR_TIMEUP;
    }
    apr_socket_timeout_get(sock, &saved);
    apr_socket_timeout_set(sock, saved >= 0 && saved < left ? saved : left);
    rv = apr_wait_for_io_or_timeout(NULL, sock, 1);
    apr_socket_timeout_set(sock, saved);
    return rv;
}

/* Just above the socket: while a guest reads the request body, the reads
 * of the connection end at the request's WasmTimeout, however many of them
 * one chunk of the body takes, as mod_reqtimeout bounds reads. Apache's
 * Timeout applies to each socket read, and the core reads a line (a chunk
 * size) with as many of them as it takes: a client trickling a chunk-size
 * line one byte at a time kept a guest 36 s past a 5 s WasmTimeout. So
 * reads are made without blocking, and the waiting is done here. */
static apr_status_t wasm_deadline_in_filter(ap_filter_t *f,
                                            apr_bucket_brigade *bb,
                                            ap_input_mode_t mode,
                                            apr_read_type_e block,
                                            apr_off_t readbytes)
{
    wasm_conn_deadline *d = f->ctx;
    apr_off_t remaining = HUGE_STRING_LEN;
    apr_socket_t *sock;
    apr_status_t rv;

    if (!d->deadline || block != APR_BLOCK_READ
        || !(sock = ap_get_conn_socket(f->c))) {
        return ap_get_brigade(f->next, bb, mode, block, readbytes);
    }
    if (mode != AP_MODE_GETLINE) {
        for (;;) {
            rv = ap_get_brigade(f->next, bb, mode, APR_NONBLOCK_READ,
                                readbytes);
            if (!APR_STATUS_IS_EAGAIN(rv)
                && !(rv == APR_SUCCESS && APR_BRIGADE_EMPTY(bb))) {
                return rv;
            }
            rv = wasm_wait_readable(sock, d->deadline);
            if (rv != APR_SUCCESS) {
                return rv;
            }
        }
    }
    /* A line: gather what comes until its LF, at most as much as the core
     * reads as one line. */
    for (;;) {
        rv = ap_get_brigade(f->next, bb, AP_MODE_GETLINE, APR_NONBLOCK_READ,
                            remaining);
        if (rv != APR_SUCCESS && !APR_STATUS_IS_EAGAIN(rv)) {
            break;
        }
        if (!APR_BRIGADE_EMPTY(bb)) {
            apr_bucket *e = APR_BRIGADE_LAST(bb);
            const char *data;
            apr_size_t len = 0;
            apr_off_t got = 0;

            if (!APR_BUCKET_IS_METADATA(e)
                && apr_bucket_read(e, &data, &len, APR_BLOCK_READ)
                       == APR_SUCCESS
                && len && data[len - 1] == APR_ASCII_LF) {
                break;
            }
            apr_brigade_length(bb, 1, &got);
            APR_BRIGADE_CONCAT(d->line, bb);
            if (APR_BUCKET_IS_METADATA(e) || (remaining -= got) <= 0) {
                break;
            }
        }
        rv = wasm_wait_readable(sock, d->deadline);
        if (rv != APR_SUCCESS) {
            break;
        }
    }
    APR_BRIGADE_PREPEND(bb, d->line);
    return rv;
}

/* Bounds a blocking write of the response by what is left of the request's
 * WasmTimeout (`timeout_us`), when that is shorter than Apache's own
 * Timeout; returns the socket whose timeout was changed, or NULL. (Reads of
 * the body are bounded by wasm_deadline_in_filter.) An HTTP/2 stream has no
 * socket of its own: its writes keep h2's timeouts. */
static apr_socket_t *wasm_deadline_set(request_rec *r, uint64_t timeout_us,
                                       apr_interval_time_t *saved)
{
    apr_socket_t *sock;

    if (r->connection->master) {
        return NULL;
    }
    sock = ap_get_conn_socket(r->connection);
    if (!sock || apr_socket_timeout_get(sock, saved) != APR_SUCCESS) {
        return NULL;
    }
    if (*saved >= 0 && timeout_us >= (uint64_t)*saved) {
        return NULL;
    }
    if (timeout_us > (uint64_t)APR_INT64_MAX) {
        timeout_us = (uint64_t)APR_INT64_MAX;
    }
    apr_socket_timeout_set(sock, (apr_interval_time_t)timeout_us);
    return sock;
}

static void wasm_deadline_restore(apr_socket_t *sock, apr_interval_time_t saved)
{
    if (sock) {
        apr_socket_timeout_set(sock, saved);
    }
}

/* wasm_rt_io.read_body: the request body as the guest reads it, through the
 * input filters (chunked bodies, LimitRequestBody), one buffer at a time,
 * as mod_cgid streams a body to its script; what the guest never reads is
 * left to the core, which discards it. */
static int64_t wasm_read_body_cb(void *data, unsigned char *buf, size_t len,
                                 uint64_t timeout_us)
{
    wasm_io *io = data;
    request_rec *r = io->r;
    apr_size_t got = 0;

    if (io->refused) {
        return -1;
    }
    while (got == 0 && !io->seen_eos) {
        if (APR_BRIGADE_EMPTY(io->in)) {
            wasm_conn_deadline *d = ap_get_module_config(
                r->connection->conn_config, &wasm_module);
            apr_status_t rv;

            if (d) {
                /* WasmTimeout is far below a year; the clamp keeps the sum
                 * from overflowing whatever the runtime passes. */
                uint64_t year = (uint64_t)365 * 24 * 3600 * APR_USEC_PER_SEC;
                d->deadline = apr_time_now() + (apr_interval_time_t)
                    (timeout_us < year ? timeout_us : year);
            }
            rv = ap_get_brigade(r->input_filters, io->in, AP_MODE_READBYTES,
                                APR_BLOCK_READ, len);
            if (d) {
                d->deadline = 0;
            }
            if (io->core_ended || r->eos_sent) {
                /* HTTP_IN answered the body's fault itself (see
                 * wasm_guard_filter): the response is over. */
                apr_brigade_cleanup(io->in);
                io->refused = AP_FILTER_ERROR;
                io->send_failed = 1;
                r->connection->keepalive = AP_CONN_CLOSE;
                return -1;
            }
            if (rv != APR_SUCCESS) {
                apr_brigade_cleanup(io->in);
                io->refused = ap_map_http_request_error(rv, HTTP_BAD_REQUEST);
                ap_log_rerror(APLOG_MARK, APLOG_INFO, rv, r, WASMLOGNO(00010)
                              "%s: error reading the request body",
                              io->module_path);
                return -1;
            }
            if (APR_BRIGADE_EMPTY(io->in)) {
                /* A blocking read that brought nothing: take it as the end
                 * rather than asking again forever. */
                io->seen_eos = 1;
                break;
            }
        }
        while (!APR_BRIGADE_EMPTY(io->in) && got < len) {
            apr_bucket *b = APR_BRIGADE_FIRST(io->in);
            const char *bytes;
            apr_size_t n;

            if (APR_BUCKET_IS_EOS(b)) {
                io->seen_eos = 1;
                apr_brigade_cleanup(io->in);
                break;
            }
            if (!APR_BUCKET_IS_METADATA(b)) {
                if (apr_bucket_read(b, &bytes, &n, APR_BLOCK_READ)
                        != APR_SUCCESS) {
                    apr_brigade_cleanup(io->in);
                    io->refused = HTTP_BAD_REQUEST;
                    return -1;
                }
                if (n > len - got) {
                    apr_bucket_split(b, len - got);
                    n = len - got;
                }
                memcpy(buf + got, bytes, n);
                got += n;
                io->bytes_in += n;
            }
            apr_bucket_delete(b);
        }
    }
    return (int64_t)got;
}

/* Reads the guest's CGI header block from the start of `bb` with Apache's
 * own scanner (as mod_cgi and mod_proxy_fcgi do; a line too long for it is
 * an error, never two header lines), and decides what becomes of the body
 * that follows. Returns OK or the status to answer. */
static int wasm_scan_head(wasm_io *io, apr_bucket_brigade *bb)
{
    request_rec *r = io->r;
    char sbuf[MAX_STRING_LEN];
    const char *location;
    int ret;

    io->head_scanned = 1;
    ret = ap_scan_script_header_err_brigade_ex(r, bb, sbuf,
                                               APLOG_MODULE_INDEX);

    /* The guest's output is framed by its end, not by a Content-Length it
     * may get wrong: let the core choose (as mod_cgi does). */
    if (!apr_table_get(r->subprocess_env, AP_TRUST_CGILIKE_CL_ENVVAR)) {
        apr_table_unset(r->headers_out, "Content-Length");
    }
    if (apr_table_get(r->headers_out, "Transfer-Encoding")) {
        /* As httpd 2.4 does with a CGI script's: the core frames the
         * response, and a framing the guest claims would be a lie. */
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, WASMLOGNO(00063)
                      "%s: ignoring the module's Transfer-Encoding header "
                      "(the server frames the response)", io->module_path);
        apr_table_unset(r->headers_out, "Transfer-Encoding");
    }

    if (ret != OK) {
        /* ap_meets_conditions may answer 304 for the guest's validators;
         * that is a success, not an error to run through the error stack. */
        if (ret == HTTP_NOT_MODIFIED) {
            r->status = ret;
            io->discard = 1;
            return OK;
        }
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, WASMLOGNO(00030)
                      "%s: bad response header from module: %s",
                      io->module_path, sbuf);
        return ret;
    }
    location = apr_table_get(r->headers_out, "Location");
    if (location && location[0] == '/' && r->status == HTTP_OK) {
        io->redirect = location;
        io->discard = 1;
    }
    else if (location && r->status == HTTP_OK) {
        /* As with CGI, a guest that wants its own redirect body must say
         * "Status: 302" itself. */
        io->redirect_status = HTTP_MOVED_TEMPORARILY;
        io->discard = 1;
    }
    return OK;
}

/* Passes `n` chunks of the guest's stdout on, after its header block;
 * `last`: these are the final ones (they then live in the runtime's
 * response until the request pool is cleaned up). Returns OK or the status
 * to answer (when nothing was sent yet). */
static int wasm_pass_output(wasm_io *io, const wasm_rt_chunk *chunks,
                            size_t n, int last, uint64_t timeout_us)
{
    request_rec *r = io->r;
    conn_rec *c = r->connection;
    apr_bucket_brigade *bb = io->out;
    apr_interval_time_t saved;
    apr_socket_t *sock;
    apr_status_t rv;
    size_t i;
    int ret;

    if (io->send_failed) {
        return AP_FILTER_ERROR;
    }
    for (i = 0; i < n; i++) {
        /* The last chunks need no copy: a pool bucket points at them, and
         * only a filter that keeps them past the request copies them out.
         * Earlier ones are reused by the runtime once this returns, so any
         * filter that keeps them must copy them (transient buckets). */
        APR_BRIGADE_INSERT_TAIL(bb, last
            ? apr_bucket_pool_create((const char *)chunks[i].data,
                                     chunks[i].len, r->pool, c->bucket_alloc)
            : apr_bucket_transient_create((const char *)chunks[i].data,
                                          chunks[i].len, c->bucket_alloc));
    }
    if (!io->head_scanned) {
        ret = wasm_scan_head(io, bb);
        if (ret != OK) {
            apr_brigade_cleanup(bb);
            io->refused = ret;
            return ret;
        }
    }
    if (io->discard) {
        apr_brigade_cleanup(bb);
        return OK;
    }
    /* A flush after each batch of a long response: the client gets it as
     * the guest writes it, and nothing of it waits in a filter. */
    APR_BRIGADE_INSERT_TAIL(bb, last ? apr_bucket_eos_create(c->bucket_alloc)
                                     : apr_bucket_flush_create(c->bucket_alloc));
    io->head_sent = 1;
    sock = wasm_deadline_set(r, timeout_us, &saved);
    io->passing = 1;
    rv = ap_pass_brigade(r->output_filters, bb);
    io->passing = 0;
    wasm_deadline_restore(sock, saved);
    apr_brigade_cleanup(bb);
    if (rv != APR_SUCCESS) {
        /* The client went away, was too slow, or a filter failed. */
        io->send_failed = 1;
        return AP_FILTER_ERROR;
    }
    return OK;
}

/* wasm_rt_io.send_output: a long response goes out while the guest still
 * writes it, so no request holds more than a buffer of it. */
static int32_t wasm_send_output_cb(void *data, const wasm_rt_chunk *chunks,
                                   size_t n, uint64_t timeout_us)
{
    return wasm_pass_output(data, chunks, n, 0, timeout_us) == OK ? 0 : -1;
}

/* The guest failed after part of its response went out: no status can
 * be answered any more. As mod_proxy does for a backend that breaks
 * mid-response, an error bucket makes the chunk filter leave out the last
 * chunk and the connection close, so that the client cannot take the
 * truncated body for a whole one. */
static int wasm_abort_response(wasm_io *io, const wasm_rt_response *resp)
{
    request_rec *r = io->r;
    conn_rec *c = r->connection;

    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, WASMLOGNO(00060)
                  "%s; part of the response had been sent, so the "
                  "connection is closed without ending it", resp->message);
    if (io->send_failed) {
        return OK;
    }
    r->no_cache = 1;
    APR_BRIGADE_INSERT_TAIL(io->out, ap_bucket_error_create(
                                         HTTP_BAD_GATEWAY, NULL, r->pool,
                                         c->bucket_alloc));
    APR_BRIGADE_INSERT_TAIL(io->out, apr_bucket_eos_create(c->bucket_alloc));
    io->passing = 1;
    ap_pass_brigade(r->output_filters, io->out);
    io->passing = 0;
    apr_brigade_cleanup(io->out);
    return OK;
}

/* Most stderr lines of one request that reach the error log: a guest
 * printing a line per byte would otherwise write ~32k log lines. */
#define WASM_STDERR_LINES 100

/* Each stderr line goes to the error log, tagged with the request. */
static void wasm_log_stderr(request_rec *r, const wasm_rt_response *resp,
                            const char *module_path)
{
    const char *p = (const char *)resp->err, *end = p + resp->err_len;
    int lines = 0, dropped = 0;

    while (p < end) {
        const char *nl = memchr(p, '\n', end - p);
        const char *line_end = nl ? nl : end;
        int len = (int)(line_end - p);

        if (len > 0 && p[len - 1] == '\r') {
            len--;
        }
        if (len > 0 && lines++ < WASM_STDERR_LINES) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, WASMLOGNO(00020)
                          "%s: %.*s", module_path, len, p);
        }
        else if (len > 0) {
            dropped++;
        }
        p = nl ? nl + 1 : end;
    }
    if (dropped) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, WASMLOGNO(00061)
                      "%s: %d more stderr lines not logged (at most %d a "
                      "request)", module_path, dropped, WASM_STDERR_LINES);
    }
    if (resp->stderr_truncated) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, WASMLOGNO(00021)
                      "%s: stderr output truncated", module_path);
    }
}

/* The guest's response, as it ended: the rest of its output, an error
 * status, or, when part of it went out already, an aborted connection. */
static int wasm_finish_response(wasm_io *io, const wasm_rt_response *resp)
{
    request_rec *r = io->r;
    int status;

    /* What the server refused before anything went out wins over what the
     * guest made of it (it saw an I/O error, or its header was bad). */
    if (io->refused && !io->head_sent) {
        return io->refused;
    }
    if (resp->code != WASM_RT_OK) {
        if (io->head_sent) {
            return wasm_abort_response(io, resp);
        }
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, WASMLOGNO(00042)
                      "%s", resp->message);
        return resp->http_status;
    }
    status = wasm_pass_output(io, resp->out, resp->out_chunks, 1,
                              APR_UINT64_MAX);
    if (status != OK || io->send_failed) {
        return status;
    }
    if (io->redirect) {
        /* The redirect is a GET whatever the original method was. The
         * guest may have left part of the body unread: discard it, so the
         * redirected request does not read it as its own; a body that
         * cannot be read to its end was answered by the core. */
        status = ap_discard_request_body(r);
        if (status != OK || r->eos_sent) {
            return status != OK ? status : AP_FILTER_ERROR;
        }
        r->method = "GET";
        r->method_number = M_GET;
        apr_table_unset(r->headers_in, "Content-Length");
        ap_internal_redirect_handler(io->redirect, r);
        return OK;
    }
    return io->redirect_status ? io->redirect_status : OK;
}

/* Says once per child, at error level, that its runtime did not start
 * (child_init logged why and what to change); later requests only at debug
 * level, so that a broken child does not fill the log. */
void wasm_log_no_runtime(request_rec *r, const char *what)
{
    static apr_uint32_t said;
    /* Decided once: ap_log_rerror evaluates its level twice. */
    int level = apr_atomic_cas32(&said, 1, 0) == 0 ? APLOG_ERR : APLOG_DEBUG;

    ap_log_rerror(APLOG_MARK, level, 0, r, WASMLOGNO(00041)
                  "%s: the WebAssembly runtime did not start in this child, "
                  "so it answers 503 (the reason and the fix are logged "
                  "above, WASM00004)", what);
}

/* A Content-Length over LimitRequestBody is refused before the guest runs,
 * as mod_cgi refuses it, whether or not the guest would read the body. */
static int wasm_check_body_length(request_rec *r)
{
    const char *cl = apr_table_get(r->headers_in, "Content-Length");
    apr_off_t limit = ap_get_limit_req_body(r), len;

    if (cl && limit > 0 && apr_strtoff(&len, cl, NULL, 10) == APR_SUCCESS
        && len > limit) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, WASMLOGNO(00062)
                      "Content-Length %" APR_OFF_T_FMT " is larger than "
                      "LimitRequestBody (%" APR_OFF_T_FMT ")", len, limit);
        return HTTP_REQUEST_ENTITY_TOO_LARGE;
    }
    return OK;
}

int wasm_handler(request_rec *r)
{
    wasm_dir_conf *conf;
    const wasm_module_rec *rec;
    const char *module_path;
    wasm_rt_request req;
    wasm_rt_response *resp = NULL;
    wasm_io *io;
    wasm_rt_module_info info;
    struct timespec started, ended;
    long run_us;
    int status;

    if (!r->handler || strcmp(r->handler, WASM_HANDLER) != 0) {
        return DECLINED;
    }
    conf = ap_get_module_config(r->per_dir_config, &wasm_module);
    if (!conf->module || conf->module->index < 0 || !wasm_modules
        || conf->module->index >= wasm_modules->nelts) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, WASMLOGNO(00040)
                      "SetHandler wasm-handler without a WasmModule for %s",
                      r->uri);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    rec = &APR_ARRAY_IDX(wasm_modules, conf->module->index, wasm_module_rec);
    module_path = rec->path;
    if (!wasm_runtime) {
        wasm_metrics_note(r, conf->module, WASM_RT_E_INTERNAL, 0, 0);
        wasm_log_no_runtime(r, module_path);
        return HTTP_SERVICE_UNAVAILABLE;
    }
    if (r->method_number == M_OPTIONS) {
        /* As mod_cgi: let the core answer OPTIONS for us. */
        r->allowed |= (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_POST);
        return DECLINED;
    }

    /* A request refused before the guest runs (404, 413, a bad argument)
     * is counted too, as an error; the run's outcome replaces this. */
    wasm_metrics_note(r, conf->module, WASM_RT_E_INVALID_ARGUMENT, 0, 0);
    /* As mod_cgi: a file served by a module takes no PATH_INFO where
     * AcceptPathInfo Off says so (a <Location>'s module splits its own). */
    if (!conf->location && r->used_path_info == AP_REQ_REJECT_PATH_INFO
        && r->path_info && *r->path_info) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, WASMLOGNO(00064)
                      "AcceptPathInfo off disallows user's path %s",
                      r->path_info);
        return HTTP_NOT_FOUND;
    }
    memset(&req, 0, sizeof(req));
    status = wasm_build_argv(r, conf, module_path, &req);
    if (status != OK) {
        return status;
    }
    status = wasm_check_body_length(r);
    if (status != OK) {
        return status;
    }
    if (conf->location) {
        wasm_split_location(r, conf->location);
    }
    if (wasm_rt_module_info_get(wasm_runtime, (size_t)conf->module->index,
                                &info) != WASM_RT_OK) {
        info.kind = WASM_RT_KIND_COMMAND;
        info.reads_env = 1;
    }
    if (info.kind == WASM_RT_KIND_HTTP) {
        wasm_http_build(r, conf, &req);
    }
    /* A module that cannot read an environment does not get one: building
     * the CGI variables is a good part of a small request's cost. */
    else if (info.reads_env) {
        wasm_build_env(r, conf, module_path, &req);
    }
    if (conf->dirs) {
        req.dirs = (const wasm_rt_dir *)conf->dirs->elts;
        req.ndirs = conf->dirs->nelts;
    }
    req.entry_point = conf->entry;
    req.timeout_ms = conf->timeout_ms;
    req.max_memory = conf->max_memory;
    req.max_output = conf->max_output;
    req.max_open_files = conf->max_open_files;
    req.instance_reuse = conf->instance_reuse;
    if (conf->instance_reuse > 1) {
        /* What one site's requests leave in a guest must not reach
         * another's: the virtual host and the section's directive. */
        req.reuse_scope = apr_psprintf(r->pool, "%s:%u %s",
                                       r->server->server_hostname
                                           ? r->server->server_hostname : "",
                                       (unsigned)r->server->port,
                                       conf->module->defined_at);
    }

    /* From the request pool: the guard filter may still be called, after
     * the handler returned, by the core's end of the request. */
    io = apr_pcalloc(r->pool, sizeof(*io));
    io->r = r;
    io->module_path = module_path;
    io->out = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    req.io.ctx = io;
    req.io.send_output = wasm_send_output_cb;
    if (info.kind == WASM_RT_KIND_HTTP) {
        req.io.send_head = wasm_send_head_cb;
        req.io.send_trailers = wasm_send_trailers_cb;
    }
    /* A request without a body (most GETs) gives the guest an empty stdin
     * and needs no guard: only reading a body can make HTTP_IN end the
     * response on its own. */
    if (apr_table_get(r->headers_in, "Content-Length")
        || apr_table_get(r->headers_in, "Transfer-Encoding")) {
        io->in = apr_brigade_create(r->pool, r->connection->bucket_alloc);
        ap_add_output_filter_handle(wasm_guard_filter_handle, io, r,
                                    r->connection);
        req.io.read_body = wasm_read_body_cb;
    }

    clock_gettime(CLOCK_MONOTONIC, &started);
    wasm_rt_run(wasm_runtime, (size_t)conf->module->index, &req, &resp);
    clock_gettime(CLOCK_MONOTONIC, &ended);
    run_us = (long)(ended.tv_sec - started.tv_sec) * 1000000L
             + (ended.tv_nsec - started.tv_nsec) / 1000;
    /* For the access log: %{wasm-run-us}n is the guest's share of %D
     * (monotonic: a clock step must not make it negative). */
    apr_table_setn(r->notes, WASM_RUN_NOTE,
                   apr_psprintf(r->pool, "%ld", run_us));
    /* Counted when the request is logged, its status final. */
    wasm_metrics_note(r, conf->module,
                      resp ? resp->code : WASM_RT_E_INTERNAL,
                      (apr_uint64_t)(run_us > 0 ? run_us : 0), io->bytes_in);
    if (!resp) {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    apr_pool_cleanup_register(r->pool, resp, wasm_response_cleanup,
                              apr_pool_cleanup_null);
    wasm_log_stderr(r, resp, module_path);
    wasm_http_log_notes(r, conf, module_path, resp);
    return wasm_finish_response(io, resp);
}

/* Every connection of a server with modules gets the deadline filter (one
 * call per read of the socket, idle unless a guest is reading the body).
 * HTTP/2 streams have no socket of their own: h2's timeouts apply there. */
int wasm_pre_connection(conn_rec *c, void *csd)
{
    wasm_conn_deadline *d;

    if (c->master || !wasm_modules || !wasm_modules->nelts) {
        return OK;
    }
    d = apr_pcalloc(c->pool, sizeof(*d));
    d->line = apr_brigade_create(c->pool, c->bucket_alloc);
    ap_set_module_config(c->conn_config, &wasm_module, d);
    ap_add_input_filter_handle(wasm_deadline_filter_handle, d, NULL, c);
    return OK;
}

void wasm_cgi_register_filters(void)
{
    wasm_guard_filter_handle = ap_register_output_filter(
        "WASM_GUARD", wasm_guard_filter, NULL, AP_FTYPE_PROTOCOL - 1);
    /* Below mod_ssl (CONNECTION + 5) and mod_reqtimeout (+ 8): each read
     * of the socket itself. */
    wasm_deadline_filter_handle = ap_register_input_filter(
        "WASM_DEADLINE", wasm_deadline_in_filter, NULL,
        AP_FTYPE_CONNECTION + 9);
}

