/*
 * wasm_metrics.c: the server-wide metrics table (shared memory the parent
 * creates once and keeps across graceful restarts, as the scoreboard is
 * kept), each child's place in it, the count of each request, SetHandler
 * wasm-metrics, and mod_status's section. The table's layout, its counting
 * and every form it is read in are the runtime's (wasm_rt_metrics_*).
 */

#include "apr_shm.h"
#include "mod_status.h"

#include "mod_wasm.h"

/* The userdata of the process pool (which outlives every generation, and
 * this DSO, which is unloaded and loaded again at each restart) that keeps
 * the table's shared memory. */
#define WASM_METRICS_KEY "mod_wasm-metrics-shm"
/* Module entries at least: a restart that configures more than the table
 * holds makes a new table, and its counters start again. */
#define WASM_METRICS_MIN_MODULES 64

typedef struct {
    apr_shm_t *shm;
    uint32_t modules, children;     /* the sizes it was made with: never
                                     * read back from the shared memory */
} wasm_metrics_shm;

/* This generation's table, mapped in the parent and inherited by every
 * child; base NULL when none could be made. */
static wasm_rt_metrics_shm metrics;
/* This child's place in it. */
static wasm_rt_metrics *metrics_child;

/* What wasm_handler noted of a request for the count at its end. */
typedef struct {
    int32_t entry;
    int32_t code;
    apr_uint64_t run_us;
    apr_uint64_t bytes_in;
} wasm_request_metrics;

/* The section a WasmModule is configured in, as the metrics name it. */
static const char *wasm_metrics_location(const wasm_module_use *use)
{
    return use->section ? use->section : "(server)";
}

static int wasm_metrics_table(apr_pool_t *global, server_rec *s,
                              uint32_t modules, uint32_t children)
{
    wasm_metrics_shm *held = NULL;
    apr_size_t need = wasm_rt_metrics_size(modules, children);
    char *error = NULL;
    apr_status_t rv;

    if (need == 0) {
        return DECLINED;
    }
    apr_pool_userdata_get((void **)&held, WASM_METRICS_KEY, global);
    if (held && held->shm) {
        if (held->modules >= modules && held->children >= children) {
            metrics.base = apr_shm_baseaddr_get(held->shm);
            metrics.len = apr_shm_size_get(held->shm);
            metrics.modules = held->modules;
            metrics.children = held->children;
            return OK;
        }
        /* The children of the last generation keep their own mapping of
         * the old table until they exit. */
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, WASMLOGNO(00070)
                     "the metrics table grows to %u modules and %u "
                     "children: its counters start again", (unsigned)modules,
                     (unsigned)children);
        apr_shm_destroy(held->shm);
        held->shm = NULL;
    }
    if (!held) {
        held = apr_pcalloc(global, sizeof(*held));
        apr_pool_userdata_set(held, WASM_METRICS_KEY, apr_pool_cleanup_null,
                              global);
    }
    /* Anonymous: zeroed, and inherited by every child fork()ed later. */
    rv = apr_shm_create(&held->shm, need, NULL, global);
    if (rv != APR_SUCCESS) {
        held->shm = NULL;
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s, WASMLOGNO(00071)
                     "cannot create the metrics table (%" APR_SIZE_T_FMT
                     " bytes of shared memory): wasm-metrics and the "
                     "server-wide counters are off", need);
        return DECLINED;
    }
    metrics.base = apr_shm_baseaddr_get(held->shm);
    metrics.len = apr_shm_size_get(held->shm);
    metrics.modules = held->modules = modules;
    metrics.children = held->children = children;
    if (wasm_rt_metrics_create(&metrics, &error) != WASM_RT_OK) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, WASMLOGNO(00072)
                     "cannot lay out the metrics table: %s",
                     error ? error : "failed");
        wasm_rt_string_free(error);
        apr_shm_destroy(held->shm);
        held->shm = NULL;
        metrics.base = NULL;
        return DECLINED;
    }
    return OK;
}

void wasm_metrics_post_config(apr_pool_t *ptemp, server_rec *s)
{
    wasm_rt_metrics_key *keys;
    int32_t *entries;
    int i, n = wasm_uses->nelts, limit = 0;
    uint32_t modules = n * 2 > WASM_METRICS_MIN_MODULES
                       ? (uint32_t)n * 2 : WASM_METRICS_MIN_MODULES;
    char *error = NULL;

    memset(&metrics, 0, sizeof(metrics));
    /* Children of the old generation stay while the new ones start. */
    if (ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &limit) != APR_SUCCESS
        || limit < 1) {
        limit = 1;
    }
    if (wasm_metrics_table(s->process->pool, s, modules,
                           (uint32_t)limit * 2 + 8) != OK) {
        return;
    }
    keys = apr_pcalloc(ptemp, (n + 1) * sizeof(*keys));
    entries = apr_pcalloc(ptemp, (n + 1) * sizeof(*entries));
    for (i = 0; i < n; i++) {
        wasm_module_use *use = APR_ARRAY_IDX(wasm_uses, i, wasm_module_use *);

        keys[i].location = wasm_metrics_location(use);
        keys[i].file = use->path;
    }
    if (wasm_rt_metrics_bind(&metrics, keys, n, entries, &error)
            != WASM_RT_OK) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, WASMLOGNO(00073)
                     "cannot bind the modules to the metrics table: %s",
                     error ? error : "failed");
        wasm_rt_string_free(error);
        metrics.base = NULL;
        return;
    }
    for (i = 0; i < n; i++) {
        APR_ARRAY_IDX(wasm_uses, i, wasm_module_use *)->metrics = entries[i];
    }
}

static apr_status_t wasm_metrics_leave(void *unused)
{
    wasm_rt_metrics_close(metrics_child);
    metrics_child = NULL;
    return APR_SUCCESS;
}

void wasm_metrics_child_init(apr_pool_t *pchild, server_rec *s)
{
    char *error = NULL;

    metrics_child = NULL;
    if (!metrics.base) {
        return;
    }
    if (wasm_rt_metrics_open(&metrics, (uint64_t)getpid(), &metrics_child,
                             &error) != WASM_RT_OK) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, WASMLOGNO(00074)
                     "this child cannot join the metrics table: %s",
                     error ? error : "failed");
        wasm_rt_string_free(error);
        metrics_child = NULL;
        return;
    }
    apr_pool_cleanup_register(pchild, NULL, wasm_metrics_leave,
                              apr_pool_cleanup_null);
}

void wasm_metrics_note(request_rec *r, const wasm_module_use *use,
                       int32_t code, apr_uint64_t run_us,
                       apr_uint64_t bytes_in)
{
    wasm_request_metrics *m = apr_palloc(r->pool, sizeof(*m));

    m->entry = use->metrics;
    m->code = code;
    m->run_us = run_us;
    m->bytes_in = bytes_in;
    ap_set_module_config(r->request_config, &wasm_module, m);
}

/* Counts the request, once its status and the bytes sent are final, and
 * notes its outcome for the access log (%{wasm-outcome}n). */
static int wasm_metrics_log(request_rec *r)
{
    request_rec *rr;
    wasm_request_metrics *m = NULL;
    const char *outcome;
    int32_t code;

    for (rr = r; rr && !m; rr = rr->next) {
        m = ap_get_module_config(rr->request_config, &wasm_module);
        if (m) {
            break;
        }
    }
    if (!m || !metrics_child) {
        return DECLINED;
    }
    code = m->code;
    if (code == WASM_RT_OK && rr->connection->aborted) {
        code = WASM_RT_E_ABORTED;
    }
    outcome = wasm_rt_metrics_record(metrics_child, wasm_runtime, m->entry,
                                     code, rr->status, m->run_us, m->bytes_in,
                                     (apr_uint64_t)(rr->bytes_sent > 0
                                                    ? rr->bytes_sent : 0));
    if (outcome) {
        apr_table_setn(rr->notes, WASM_OUTCOME_NOTE, outcome);
        apr_table_setn(r->notes, WASM_OUTCOME_NOTE, outcome);
    }
    return DECLINED;
}

/* The table in `format`, or NULL (logged) when there is none. */
static char *wasm_metrics_text(request_rec *r, int32_t format)
{
    char *out = NULL, *error = NULL;

    if (!metrics.base) {
        return NULL;
    }
    if (wasm_rt_metrics_render(&metrics, format, &out, &error)
            != WASM_RT_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, WASMLOGNO(00075)
                      "cannot read the metrics table: %s",
                      error ? error : "failed");
        wasm_rt_string_free(error);
        return NULL;
    }
    return out;
}

/* Writes the table in `format` to the response; the caller set the type. */
int wasm_metrics_write(request_rec *r, int32_t format)
{
    char *text = wasm_metrics_text(r, format);

    if (!text) {
        return HTTP_SERVICE_UNAVAILABLE;
    }
    if (!r->header_only) {
        ap_rputs(text, r);
    }
    wasm_rt_string_free(text);
    return OK;
}

/* SetHandler wasm-metrics: the server-wide figures in Prometheus' text
 * exposition format, from whichever child answers. */
static int wasm_metrics_handler(request_rec *r)
{
    if (!r->handler || strcmp(r->handler, WASM_METRICS_HANDLER) != 0) {
        return DECLINED;
    }
    r->allowed |= (AP_METHOD_BIT << M_GET);
    if (r->method_number == M_OPTIONS) {
        return DECLINED;
    }
    if (r->method_number != M_GET) {
        return HTTP_METHOD_NOT_ALLOWED;
    }
    ap_set_content_type(r, "text/plain; version=0.0.4; charset=utf-8");
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    return wasm_metrics_write(r, WASM_RT_METRICS_PROMETHEUS);
}

/* mod_status's page: a section, or Wasm... lines for ?auto. */
static int wasm_metrics_status_hook(request_rec *r, int flags)
{
    char *text = wasm_metrics_text(
        r, (flags & AP_STATUS_SHORT) ? WASM_RT_METRICS_STATUS_AUTO
                                     : WASM_RT_METRICS_STATUS_HTML);

    if (text) {
        ap_rputs(text, r);
        wasm_rt_string_free(text);
    }
    return OK;
}

void wasm_metrics_register_hooks(void)
{
    ap_hook_handler(wasm_metrics_handler, NULL, NULL, APR_HOOK_MIDDLE);
    /* Before mod_log_config writes the access log, which may show the
     * outcome. */
    ap_hook_log_transaction(wasm_metrics_log, NULL, NULL,
                            APR_HOOK_REALLY_FIRST);
    APR_OPTIONAL_HOOK(ap, status_hook, wasm_metrics_status_hook, NULL, NULL,
                      APR_HOOK_MIDDLE);
}
