/*
 * mod_wasm.c: the module record and its lifecycle hooks.
 *
 * The C shim only speaks Apache (see mod_wasm.h for its files): it asks the
 * runtime (libwasm_runtime, see runtime/include/wasm_runtime.h) to compile
 * every module at configuration time, in the parent, and to load them in
 * each child; every decision about WebAssembly is the runtime's.
 */

#include "mod_wasm.h"

static int wasm_pre_config(apr_pool_t *pconf, apr_pool_t *plog,
                           apr_pool_t *ptemp)
{
    /* Before any directive calls into the runtime (WasmMaxMemory parses
     * sizes there): a mismatched pair would misread arguments, not fail. */
    if (wasm_rt_abi_version() != WASM_RT_ABI_VERSION) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, NULL,
                     WASMLOGNO(00007) "mod_wasm.so was built for runtime "
                     "interface %d but libwasm_runtime.so %s implements %u: "
                     "install both from the same build; after an upgrade, "
                     "stop and start Apache (a graceful restart keeps the "
                     "old runtime library loaded)",
                     WASM_RT_ABI_VERSION, wasm_rt_version(),
                     (unsigned)wasm_rt_abi_version());
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    wasm_uses = apr_array_make(pconf, 4, sizeof(wasm_module_use *));
    wasm_modules = apr_array_make(pconf, 4, sizeof(wasm_module_rec));
    wasm_cache_dir = NULL;
    wasm_pool_slots = 0;
    wasm_pool_shards = 0;
    wasm_pool_keep_resident = 0;
    /* The runtime holds every default (wasm_runtime.h). */
    {
        wasm_rt_defaults d;

        wasm_rt_defaults_get(&d);
        wasm_cache_max_age = apr_time_from_msec(d.cache_max_age_ms);
    }
    return OK;
}

static apr_status_t wasm_close_fd(void *fd)
{
    close((int)(intptr_t)fd);
    return APR_SUCCESS;
}

/* The instance slots of each child: WasmPoolSlots, or one per worker thread
 * plus one spare (a slot is released when its request ends, so the pool
 * cannot run dry unless WasmPoolSlots says fewer). child_init sizes the
 * pool with it and check_config checks that pool: keep them one. */
static int wasm_child_slots(void)
{
    int threads = 1;

    if (wasm_pool_slots) {
        return wasm_pool_slots;
    }
    if (ap_mpm_query(AP_MPMQ_MAX_THREADS, &threads) != APR_SUCCESS
        || threads < 1) {
        threads = 1;
    }
    return threads + 1;
}

/* Whether this generation's engines have the component model's
 * concurrency: only when a configured module needs it (a wasi:http 0.3
 * component), since it slows every other component's calls; and the first
 * module that needs it, for the log. */
static int wasm_concurrency;
static const char *wasm_concurrency_for;

/* What the runtime of each child is built from (wasm_rt_runtime_new, and
 * wasm_rt_runtime_check first): every module, by its index. */
static void wasm_runtime_options(apr_pool_t *p, wasm_rt_runtime_options *o)
{
    wasm_rt_module_spec *specs;
    int i, n = wasm_modules->nelts;

    specs = apr_pcalloc(p, (n + 1) * sizeof(*specs));
    for (i = 0; i < n; i++) {
        const wasm_module_rec *m = &APR_ARRAY_IDX(wasm_modules, i,
                                                  wasm_module_rec);
        specs[i].cwasm_path = m->cwasm;
        specs[i].cwasm_fd = m->fd;
        specs[i].trap_unknown_imports = m->trap_unknown;
        specs[i].name = m->path;
    }
    memset(o, 0, sizeof(*o));
    o->modules = specs;
    o->n_modules = n;
    o->slots = (uint32_t)wasm_child_slots();
    o->shards = (uint32_t)wasm_pool_shards;
    o->concurrency = wasm_concurrency;
    o->keep_resident = wasm_pool_keep_resident;
}

/* `startup`: before the error log is open (APLOG_STARTUP, to stderr). */
static void wasm_log_replaced(server_rec *s, const wasm_module_rec *m,
                              int startup)
{
    ap_log_error(APLOG_MARK, (startup ? APLOG_STARTUP : 0) | APLOG_WARNING,
                 0, s, WASMLOGNO(00048) "%s: cache entry %s could not be "
                 "used (%s); compiled it again", m->path, m->cwasm,
                 m->replaced);
}

/* Compiles one module into the cache and keeps its entry open for the
 * children of this generation (pconf lives as long as the generation). */
static int wasm_precompile_module(apr_pool_t *pconf, server_rec *s,
                                  wasm_module_rec *m)
{
    wasm_rt_compile_options opts;
    wasm_rt_compiled out;
    char *error = NULL;

    memset(&opts, 0, sizeof(opts));
    opts.wasm_path = m->path;
    opts.cache_dir = wasm_cache_dir;
    opts.trap_unknown_imports = m->trap_unknown;
    opts.concurrency = wasm_concurrency;
    if (wasm_rt_precompile(&opts, &out, &error) != WASM_RT_OK) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, s,
                     WASMLOGNO(00001) "WasmModule %s (defined at %s): %s",
                     m->path, m->defined_at, error ? error : "failed");
        wasm_rt_string_free(error);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    m->cwasm = apr_pstrdup(pconf, out.cwasm_path);
    m->fd = out.cwasm_fd;
    apr_pool_cleanup_register(pconf, (void *)(intptr_t)m->fd, wasm_close_fd,
                              apr_pool_cleanup_null);
    m->cache_hit = out.cache_hit;
    m->millis = out.millis;
    m->replaced = out.replaced ? apr_pstrdup(pconf, out.replaced) : NULL;
    wasm_rt_string_free(out.cwasm_path);
    wasm_rt_string_free(out.replaced);
    return OK;
}

/* Builds, in a throw-away process, the runtime every child will build, so
 * that what would fail in each child (a pool the address space cannot hold,
 * a module that does not fit it) fails the configuration instead. */
static int wasm_check_runtime(apr_pool_t *ptemp, server_rec *s)
{
    wasm_rt_runtime_options opts;
    const wasm_module_rec *m;
    char *error = NULL;
    int32_t module = -1;
    int slots = wasm_child_slots();

    if (wasm_modules->nelts == 0) {
        return OK;
    }
    wasm_runtime_options(ptemp, &opts);
    if (wasm_rt_runtime_check(&opts, &module, &error) == WASM_RT_OK) {
        return OK;
    }
    m = module >= 0 && module < wasm_modules->nelts
        ? &APR_ARRAY_IDX(wasm_modules, module, wasm_module_rec) : NULL;
    if (m) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, s,
                     WASMLOGNO(00049) "WasmModule %s (defined at %s): %s",
                     m->path, m->defined_at, error ? error : "failed");
    }
    else if (wasm_pool_slots) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, s,
                     WASMLOGNO(00050) "the runtime of each child "
                     "(WasmPoolSlots %d) cannot be built: %s", slots,
                     error ? error : "failed");
    }
    else {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, s,
                     WASMLOGNO(00051) "the runtime of each child (%d slots: "
                     "the MPM's threads per child + 1; WasmPoolSlots sets "
                     "another number) cannot be built: %s", slots,
                     error ? error : "failed");
    }
    wasm_rt_string_free(error);
    return HTTP_INTERNAL_SERVER_ERROR;
}

/* `text` as hexadecimal: paths may hold any byte but a newline. */
static const char *wasm_hex(apr_pool_t *p, const char *text)
{
    char *out = apr_palloc(p, 2 * strlen(text) + 1), *o = out;

    for (; *text; text++, o += 2) {
        apr_snprintf(o, 3, "%02x", (unsigned char)*text);
    }
    *o = '\0';
    return out;
}

/* `apache2 -t -D MOD_WASM_PRECOMPILE_LIST`: what mod_wasm-precompile
 * compiles, as Apache's own parser read the configuration (Includes,
 * <IfDefine>, ServerRoot-relative paths), on stdout. Each line is written
 * at once, after a newline, and an end line gives the count, so that what
 * another module prints cannot hide or cut a line unnoticed. */
static void wasm_precompile_list(apr_pool_t *p)
{
    apr_file_t *out;
    int i;

    if (apr_file_open_stdout(&out, p) != APR_SUCCESS) {
        return;
    }
    apr_file_puts(apr_pstrcat(p, "\nmod_wasm-precompile cache-dir ",
                              wasm_hex(p, wasm_cache_dir ? wasm_cache_dir : ""),
                              "\n", NULL), out);
    for (i = 0; i < wasm_modules->nelts; i++) {
        const wasm_module_rec *m = &APR_ARRAY_IDX(wasm_modules, i,
                                                  wasm_module_rec);
        apr_file_puts(apr_psprintf(p, "mod_wasm-precompile module %s %d %s\n",
                                   wasm_hex(p, m->path), m->trap_unknown ? 1 : 0,
                                   wasm_hex(p, m->defined_at)), out);
    }
    apr_file_puts(apr_psprintf(p, "mod_wasm-precompile end %d\n",
                               wasm_modules->nelts), out);
    apr_file_flush(out);
}

/* Compiles every module into the cache and checks what a child will build
 * from them. Runs in each configuration pass, including `apachectl
 * configtest`, so a module that cannot run stops the server before it
 * starts. The runtime compiles in a forked process: the parent keeps no
 * Wasmtime threads or signal handlers to fork. */
static int wasm_check_config(apr_pool_t *pconf, apr_pool_t *plog,
                             apr_pool_t *ptemp, server_rec *s)
{
    int i, rv;

    if (!wasm_cache_dir) {
        wasm_cache_dir = ap_runtime_dir_relative(pconf, "mod_wasm-cache");
    }
    wasm_modules_resolve();
    if (ap_state_query(AP_SQ_RUN_MODE) == AP_SQ_RM_CONFIG_TEST
        && ap_exists_config_define("MOD_WASM_PRECOMPILE_LIST")) {
        /* The command compiles, with its own progress; not this pass. */
        wasm_precompile_list(ptemp);
        return OK;
    }
    /* Decided from every module before any is compiled: the setting is
     * part of each cache entry. A file that cannot be read is reported by
     * its compilation. */
    wasm_concurrency = 0;
    for (i = 0; i < wasm_modules->nelts && !wasm_concurrency; i++) {
        const wasm_module_rec *m = &APR_ARRAY_IDX(wasm_modules, i,
                                                  wasm_module_rec);
        char *error = NULL;
        int32_t needs = 0;

        if (wasm_rt_needs_concurrency(m->path, &needs, &error) == WASM_RT_OK
            && needs) {
            wasm_concurrency = 1;
            wasm_concurrency_for = m->path;
        }
        wasm_rt_string_free(error);
    }
    for (i = 0; i < wasm_modules->nelts; i++) {
        wasm_module_rec *m = &APR_ARRAY_IDX(wasm_modules, i, wasm_module_rec);

        rv = wasm_precompile_module(pconf, s, m);
        if (rv != OK) {
            return rv;
        }
        /* The error log opens later, and configtest never opens it. */
        if (m->replaced
            && ap_state_query(AP_SQ_RUN_MODE) == AP_SQ_RM_CONFIG_TEST) {
            wasm_log_replaced(s, m, 1);
        }
    }
    return wasm_check_runtime(ptemp, s);
}

/* Removes cache entries this configuration does not use (see
 * WasmCacheMaxAge). Not run by configtest, which must not change anything. */
static void wasm_prune_cache(apr_pool_t *ptemp, server_rec *s)
{
    const char **keep = apr_palloc(ptemp, (wasm_modules->nelts + 1)
                                              * sizeof(*keep));
    char *error = NULL;
    uint32_t removed = 0;
    int i;

    int n = 0;

    for (i = 0; i < wasm_modules->nelts; i++) {
        const char *cwasm = APR_ARRAY_IDX(wasm_modules, i, wasm_module_rec).cwasm;
        if (cwasm) {
            keep[n++] = cwasm;
        }
    }
    if (wasm_rt_cache_prune(wasm_cache_dir, keep, n,
                            (uint64_t)apr_time_as_msec(wasm_cache_max_age),
                            &removed, &error) != WASM_RT_OK) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, WASMLOGNO(00005)
                     "cannot clean WasmCacheDir %s: %s", wasm_cache_dir,
                     error ? error : "failed");
        wasm_rt_string_free(error);
    }
    else if (removed) {
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, s, WASMLOGNO(00006)
                     "removed %u unused entries from %s", removed,
                     wasm_cache_dir);
    }
}

static int wasm_post_config(apr_pool_t *pconf, apr_pool_t *plog,
                            apr_pool_t *ptemp, server_rec *s)
{
    int i, hits = 0, compiled = 0;

    /* The logs are open now: say what check_config did. */
    for (i = 0; i < wasm_modules->nelts; i++) {
        wasm_module_rec *m = &APR_ARRAY_IDX(wasm_modules, i, wasm_module_rec);
        if (!m->cwasm) {
            continue;
        }
        m->cache_hit ? hits++ : compiled++;
        if (m->replaced) {
            wasm_log_replaced(s, m, 0);
        }
        if (m->cache_hit) {
            ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, s, WASMLOGNO(00002)
                         "%s: cache hit, %s", m->path, m->cwasm);
        }
        else {
            ap_log_error(APLOG_MARK, APLOG_INFO, 0, s, WASMLOGNO(00003)
                         "%s: compiled in %" APR_UINT64_T_FMT " ms into %s",
                         m->path, m->millis, m->cwasm);
        }
    }
    /* At notice, which every LogLevel logs: a fleet's servers should show
     * that they started from the cache their image carries. */
    if (hits + compiled > 0) {
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, WASMLOGNO(00076)
                     "WasmCacheDir %s: %d of %d modules loaded from the cache, "
                     "%d compiled", wasm_cache_dir, hits, hits + compiled,
                     compiled);
    }
    if (wasm_concurrency) {
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, WASMLOGNO(00068)
                     "the engines run with the component model's concurrency, "
                     "which %s (a wasi:http 0.3 component) needs; every "
                     "component's calls go through it (WASI 0.3 support is "
                     "still experimental in Wasmtime 48)", wasm_concurrency_for);
    }
    wasm_prune_cache(ptemp, s);
    wasm_metrics_post_config(ptemp, s);
    ap_add_version_component(pconf, "mod_wasm/0.1");
    return OK;
}

static void wasm_child_init(apr_pool_t *pchild, server_rec *s)
{
    wasm_rt_runtime_options opts;
    char *error = NULL;

    wasm_runtime = NULL;
    wasm_metrics_child_init(pchild, s);
    if (!wasm_modules || wasm_modules->nelts == 0) {
        return;
    }
    wasm_runtime_options(pchild, &opts);
    /* The engine is created here, after Apache set up its signal handlers,
     * so that Wasmtime's trap handlers run first (and chain to Apache's for
     * faults that are not guest traps). The entries come from descriptors
     * this process inherited from the parent, not from the cache directory,
     * which this child's user may not be able to read and which another
     * server may have cleaned since. */
    if (wasm_rt_runtime_new(&opts, &wasm_runtime, &error) != WASM_RT_OK) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, s, WASMLOGNO(00004)
                     "cannot start the WebAssembly runtime in this child: %s",
                     error ? error : "unknown error");
        wasm_rt_string_free(error);
        wasm_runtime = NULL;
    }
}

static void wasm_register_hooks(apr_pool_t *p)
{
    ap_hook_pre_config(wasm_pre_config, NULL, NULL, APR_HOOK_MIDDLE);
    /* Last: after the MPM's check_config has settled its threads per child,
     * which size the pool wasm_check_runtime checks. */
    ap_hook_check_config(wasm_check_config, NULL, NULL, APR_HOOK_LAST);
    ap_hook_post_config(wasm_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(wasm_child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(wasm_handler, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(wasm_status_handler, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_pre_connection(wasm_pre_connection, NULL, NULL, APR_HOOK_MIDDLE);
    wasm_cgi_register_filters();
    wasm_metrics_register_hooks();
}

AP_DECLARE_MODULE(wasm) = {
    STANDARD20_MODULE_STUFF,
    wasm_create_dir_conf,
    wasm_merge_dir_conf,
    NULL,
    NULL,
    wasm_cmds,
    wasm_register_hooks,
    AP_MODULE_FLAG_NONE
};

