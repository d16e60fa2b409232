/*
 * wasm_http.c: what a wasi:http component gets for a request instead of a
 * CGI environment: the request's method, scheme, authority, path with
 * query and headers (hop-by-hop ones left out), two headers of the
 * server's (see docs/guests.md), WasmEnv as its environment; and the
 * callback that turns the head it sets into the response's.
 */

#include "apr_atomic.h"

#include "mod_wasm.h"

/* Headers that describe one hop of the connection, not the request
 * (RFC 9110 7.6.1), and those the server sets itself. */
static const char *const wasm_hop_by_hop[] = {
    "Connection", "Keep-Alive", "TE", "Transfer-Encoding", "Upgrade",
    "Proxy-Authorization", "Proxy-Authenticate", "Proxy-Connection",
    "Trailer", WASM_CLIENT_ADDR_HEADER, WASM_BASE_PATH_HEADER, NULL
};

static int wasm_is_hop_by_hop(const char *name)
{
    int i;

    for (i = 0; wasm_hop_by_hop[i]; i++) {
        if (!strcasecmp(name, wasm_hop_by_hop[i])) {
            return 1;
        }
    }
    return 0;
}

static void wasm_field(wasm_rt_field *f, const char *name, const char *value)
{
    f->name = (const unsigned char *)name;
    f->name_len = strlen(name);
    f->value = (const unsigned char *)value;
    f->value_len = strlen(value);
}

void wasm_http_build(request_rec *r, const wasm_dir_conf *conf,
                     wasm_rt_request *req)
{
    const apr_array_header_t *arr = apr_table_elts(r->headers_in);
    const apr_table_entry_t *elts = (const apr_table_entry_t *)arr->elts;
    core_dir_config *core = ap_get_core_module_config(r->per_dir_config);
    wasm_rt_field *fields;
    const char **names, **values;
    const char *host;
    int i, n = 0;

    req->method = r->method;
    req->scheme = ap_http_scheme(r);
    host = apr_table_get(r->headers_in, "Host");
    req->authority = host ? host
        : apr_psprintf(r->pool, "%s:%u", ap_get_server_name_for_url(r),
                       ap_get_server_port(r));
    req->path_with_query = r->unparsed_uri;

    fields = apr_palloc(r->pool, (arr->nelts + 2) * sizeof(*fields));
    for (i = 0; i < arr->nelts; i++) {
        if (!elts[i].key || wasm_is_hop_by_hop(elts[i].key)) {
            continue;
        }
        /* As for CGI: credentials only where CGIPassAuth On says so. */
        if (!strcasecmp(elts[i].key, "Authorization")
            && core->cgi_pass_auth != AP_CGI_PASS_AUTH_ON) {
            continue;
        }
        wasm_field(&fields[n++], elts[i].key, elts[i].val);
    }
    wasm_field(&fields[n++], WASM_CLIENT_ADDR_HEADER,
               apr_psprintf(r->pool, "%s:%d", r->useragent_ip,
                            r->useragent_addr ? r->useragent_addr->port : 0));
    if (conf->location) {
        wasm_field(&fields[n++], WASM_BASE_PATH_HEADER, conf->location);
    }
    req->headers = fields;
    req->nheaders = n;

    /* The guest's environment is WasmEnv's, nothing of the server's. */
    arr = apr_table_elts(conf->env);
    elts = (const apr_table_entry_t *)arr->elts;
    names = apr_palloc(r->pool, (arr->nelts + 1) * sizeof(*names));
    values = apr_palloc(r->pool, (arr->nelts + 1) * sizeof(*values));
    for (i = 0; i < arr->nelts; i++) {
        names[i] = elts[i].key;
        values[i] = elts[i].val;
    }
    req->env_names = names;
    req->env_values = values;
    req->envc = arr->nelts;

    if (conf->allow_outbound && !wasm_outbound_is_none(conf->allow_outbound)) {
        req->allow_outbound = (const char *const *)conf->allow_outbound->elts;
        req->n_allow_outbound = conf->allow_outbound->nelts;
    }
}

/* What the runtime says about the request besides its result (each
 * outgoing request it refused, with its target but not its path), a
 * warning per line, naming where the module is configured. */
void wasm_http_log_notes(request_rec *r, const wasm_dir_conf *conf,
                         const char *module_path,
                         const wasm_rt_response *resp)
{
    const char *p = resp->notes, *nl;

    while (p && *p) {
        nl = strchr(p, '\n');
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, WASMLOGNO(00069)
                      "%s at %s: %.*s", module_path,
                      /* Not r->uri: a path may carry a token. */
                      conf->location ? conf->location
                                     : conf->module->defined_at,
                      (int)(nl ? nl - p : (long)strlen(p)), p);
        p = nl ? nl + 1 : NULL;
    }
}

/* wasm_rt_io.send_head: the guest's status and headers become the
 * response's; the body follows through wasm_send_output_cb, and the head
 * goes out with its first part (or at the end). */
int32_t wasm_send_head_cb(void *data, int32_t status,
                          const wasm_rt_field *headers, size_t n)
{
    wasm_io *io = data;
    request_rec *r = io->r;
    size_t i;

    /* A final status only: a 1xx would make the client read the body as
     * the next response's head. */
    if (io->head_scanned || status < 200 || status > 599) {
        return -1;
    }
    r->status = status;
    /* A status Apache has no reason phrase for (418, 299) would go out as
     * "500 Internal Server Error": a bare code is a valid status line. */
    if (strncmp(ap_get_status_line(status), apr_itoa(r->pool, status), 3)) {
        r->status_line = apr_itoa(r->pool, status);
    }
    for (i = 0; i < n; i++) {
        const char *name = apr_pstrmemdup(r->pool, (const char *)headers[i].name,
                                          headers[i].name_len);
        const char *value = apr_pstrmemdup(r->pool,
                                           (const char *)headers[i].value,
                                           headers[i].value_len);

        if (!strcasecmp(name, "Content-Type")) {
            ap_set_content_type(r, value);
        }
        else if (!strcasecmp(name, "Transfer-Encoding")
                 || !strcasecmp(name, "Connection")) {
            /* The server frames the response itself. */
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, WASMLOGNO(00065)
                          "%s: the guest's %s header is dropped",
                          io->module_path, name);
        }
        else {
            apr_table_add(r->headers_out, name, value);
        }
    }
    io->head_scanned = 1;
    return 0;
}

/* Fields a trailer may not carry (RFC 9110, section 6.5.1: framing,
 * routing, authentication, controls and what says how to process the
 * content): left out, whatever the guest sends. */
static const char *const wasm_not_trailers[] = {
    "transfer-encoding", "content-length", "content-type",
    "content-encoding", "content-range", "trailer", "host", "te",
    "authorization", "proxy-authenticate", "www-authenticate",
    "set-cookie", "cache-control", "expires", "date", "location",
    "retry-after", "vary", "age", "expect", "max-forwards", "pragma",
    "range", "connection", "keep-alive", "upgrade", NULL
};

static int wasm_may_be_trailer(const char *name)
{
    const char *const *p;

    for (p = wasm_not_trailers; *p; p++) {
        if (!strcasecmp(name, *p)) {
            return 0;
        }
    }
    return 1;
}

/* wasm_rt_io.send_trailers: HTTP/2 sends r->trailers_out (mod_http2 does,
 * at the end of the body); httpd 2.4's HTTP/1.1 chunk filter cannot send
 * trailers, so for those clients they are dropped, and said so: at warning
 * level once per child (a guest that always sends them would otherwise
 * write a line per request), then at debug level. */
int32_t wasm_send_trailers_cb(void *data, const wasm_rt_field *fields,
                              size_t n)
{
    static apr_uint32_t warned;
    wasm_io *io = data;
    request_rec *r = io->r;
    size_t i;

    if (r->proto_num >= 2000) {
        for (i = 0; i < n; i++) {
            const char *name = apr_pstrmemdup(r->pool,
                                              (const char *)fields[i].name,
                                              fields[i].name_len);

            if (!wasm_may_be_trailer(name)) {
                ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, WASMLOGNO(00067)
                              "%s: the guest's %s trailer is left out: it "
                              "may not be a trailer", io->module_path, name);
                continue;
            }
            apr_table_add(r->trailers_out, name,
                          apr_pstrmemdup(r->pool, (const char *)fields[i].value,
                                         fields[i].value_len));
        }
        return 0;
    }
    if (n > 0) {
        /* Decided once: ap_log_rerror evaluates its level twice. */
        int level = apr_atomic_cas32(&warned, 1, 0) == 0 ? APLOG_WARNING
                                                         : APLOG_DEBUG;

        ap_log_rerror(APLOG_MARK, level, 0, r, WASMLOGNO(00066)
                      "%s: the guest's %" APR_SIZE_T_FMT " trailer field(s) "
                      "(the first: %.*s) are dropped: %s cannot carry "
                      "trailers (later ones in this child are logged at "
                      "debug level)", io->module_path, n,
                      (int)(fields[0].name_len > 64 ? 64 : fields[0].name_len),
                      (const char *)fields[0].name, r->protocol);
    }
    return 0;
}
