/*
 * mod_wasm.c: Apache glue for mod_wasm.
 *
 * This file only speaks Apache: it parses the Wasm* directives, asks the
 * runtime (libwasm_runtime, see runtime/include/wasm_runtime.h) to compile
 * every module at configuration time and to load them in each child, builds
 * the CGI environment with Apache's own helpers, and turns the guest's
 * stdout into a response with Apache's own CGI header scanner. Every
 * decision about WebAssembly is the runtime's.
 */

#include <time.h>
#include <unistd.h>

#include "apr_atomic.h"
#include "apr_strings.h"
#include "apr_support.h"
#include "apr_buckets.h"
#include "apr_file_info.h"

#include "ap_config.h"
#include "ap_mpm.h"

#include "httpd.h"
#include "http_config.h"
#include "http_connection.h"
#include "http_core.h"
#include "http_log.h"
#include "http_main.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_script.h"

#include "wasm_runtime.h"

/* Unique ids for our log lines, in the spirit of Apache's APLOGNO(). */
#define WASMLOGNO(n) "WASM" #n ": "

#define WASM_HANDLER "wasm-handler"
#define WASM_STATUS_HANDLER "wasm-status"
/* Request note: microseconds spent in the runtime (%{wasm-run-us}n). */
#define WASM_RUN_NOTE "wasm-run-us"

module AP_MODULE_DECLARE_DATA wasm_module;

/* A distinct WasmModule file (and way of linking it). One record per path
 * per configuration pass, however many sections name it, so it is compiled
 * and loaded once. */
typedef struct {
    const char *path;        /* absolute path of the .wasm */
    int trap_unknown;        /* WasmTrapUnknownImports On where it is set */
    int refs;                /* sections using it; 0: nothing to load */
    int rt_index;            /* its index in the child's runtime */
    const char *defined_at;  /* "file:line" of the first WasmModule naming it */
    const char *cwasm;       /* its cache entry, once check_config ran */
    int fd;                  /* that entry, open and checked: what children
                              * load (closed with pconf); -1 before */
    int cache_hit;
    apr_uint64_t millis;
    const char *replaced;    /* why an existing entry was compiled again */
} wasm_module_rec;

/* Per-directory configuration. Unset fields inherit on merge. */
typedef struct {
    int module;                 /* index into wasm_modules, -1: unset */
    const char *location;       /* <Location> path the module was set in */
    apr_array_header_t *args;   /* of const char *, NULL: unset */
    apr_table_t *env;           /* WasmEnv, merged key by key */
    apr_array_header_t *dirs;   /* of wasm_rt_dir, merged by guest path */
    const char *entry;          /* WasmEntryPoint, NULL: unset */
    apr_uint64_t timeout_ms;    /* WasmTimeout, 0: unset */
    apr_uint64_t max_memory;    /* WasmMaxMemory in bytes, 0: unset */
    apr_uint64_t max_output;    /* WasmMaxOutput in bytes, 0: unset */
    int max_open_files;         /* WasmMaxOpenFiles, 0: unset */
    int trap_unknown;           /* WasmTrapUnknownImports, -1: unset */
    int script_arg;             /* WasmScriptArg, -1: unset */
} wasm_dir_conf;

/* Configuration-pass state, allocated from pconf and reset in pre_config:
 * the module is reloaded on restart, but say so explicitly. */
static apr_array_header_t *wasm_modules;
static const char *wasm_cache_dir;
static int wasm_pool_slots;     /* WasmPoolSlots, 0: ThreadsPerChild + 1 */
static int wasm_pool_shards;    /* WasmPoolShards, 0: auto (the runtime's) */
static apr_interval_time_t wasm_cache_max_age;  /* WasmCacheMaxAge */

#define WASM_CACHE_MAX_AGE_DEFAULT apr_time_from_sec(24 * 3600)

/* The child's runtime, created in child_init. Lives as long as the process:
 * worker threads may still be finishing requests while the child pool is
 * destroyed, so it is never freed from a pool cleanup. */
static wasm_rt_runtime *wasm_runtime;

/* ---------------------------------------------------------------- config */

static void *wasm_create_dir_conf(apr_pool_t *p, char *dir)
{
    wasm_dir_conf *conf = apr_pcalloc(p, sizeof(*conf));
    conf->module = -1;
    conf->trap_unknown = -1;
    conf->script_arg = -1;
    conf->env = apr_table_make(p, 4);
    return conf;
}

static apr_array_header_t *wasm_merge_dirs(apr_pool_t *p,
                                           const apr_array_header_t *base,
                                           const apr_array_header_t *add)
{
    apr_array_header_t *out;
    int i, j;

    if (!base) {
        return (apr_array_header_t *)add;
    }
    if (!add) {
        return (apr_array_header_t *)base;
    }
    /* The inner section wins for a guest path both map. */
    out = apr_array_copy(p, add);
    for (i = 0; i < base->nelts; i++) {
        const wasm_rt_dir *b = &APR_ARRAY_IDX(base, i, wasm_rt_dir);
        int shadowed = 0;
        for (j = 0; j < add->nelts; j++) {
            if (!strcmp(b->guest_path,
                        APR_ARRAY_IDX(add, j, wasm_rt_dir).guest_path)) {
                shadowed = 1;
                break;
            }
        }
        if (!shadowed) {
            APR_ARRAY_PUSH(out, wasm_rt_dir) = *b;
        }
    }
    return out;
}

static void *wasm_merge_dir_conf(apr_pool_t *p, void *basev, void *addv)
{
    const wasm_dir_conf *base = basev, *add = addv;
    wasm_dir_conf *conf = apr_pcalloc(p, sizeof(*conf));

    if (add->module >= 0) {
        conf->module = add->module;
        conf->location = add->location;
    }
    else {
        conf->module = base->module;
        conf->location = base->location;
    }
    conf->args = add->args ? add->args : base->args;
    conf->env = apr_table_overlay(p, base->env, add->env);
    /* overlay keeps both values of a name set in both: keep the inner one. */
    apr_table_compress(conf->env, APR_OVERLAP_TABLES_SET);
    conf->dirs = wasm_merge_dirs(p, base->dirs, add->dirs);
    conf->entry = add->entry ? add->entry : base->entry;
    conf->timeout_ms = add->timeout_ms ? add->timeout_ms : base->timeout_ms;
    conf->max_memory = add->max_memory ? add->max_memory : base->max_memory;
    conf->max_output = add->max_output ? add->max_output : base->max_output;
    conf->max_open_files = add->max_open_files ? add->max_open_files
                                               : base->max_open_files;
    conf->trap_unknown = add->trap_unknown >= 0 ? add->trap_unknown
                                                : base->trap_unknown;
    conf->script_arg = add->script_arg >= 0 ? add->script_arg
                                            : base->script_arg;
    return conf;
}

static const char *wasm_where(cmd_parms *cmd)
{
    return apr_psprintf(cmd->pool, "%s:%d", cmd->directive->filename,
                        cmd->directive->line_num);
}

/* The <Location> path that encloses this directive, or NULL when it is in
 * another kind of section or the location is a regular expression. */
static const char *wasm_enclosing_location(cmd_parms *cmd)
{
    const ap_directive_t *parent = cmd->directive->parent;

    if (!parent || strcasecmp(parent->directive, "<Location") != 0
        || !cmd->path || cmd->path[0] != '/') {
        return NULL;
    }
    return cmd->path;
}

/* The index of the record for (path, trap_unknown), created if new. */
static int wasm_register_module(cmd_parms *cmd, const char *path,
                                int trap_unknown)
{
    wasm_module_rec *m;
    int i;

    for (i = 0; i < wasm_modules->nelts; i++) {
        m = &APR_ARRAY_IDX(wasm_modules, i, wasm_module_rec);
        if (!strcmp(m->path, path) && m->trap_unknown == trap_unknown) {
            m->refs++;
            return i;
        }
    }
    m = apr_array_push(wasm_modules);
    memset(m, 0, sizeof(*m));
    m->path = path;
    m->trap_unknown = trap_unknown;
    m->refs = 1;
    m->fd = -1;
    m->defined_at = wasm_where(cmd);
    return wasm_modules->nelts - 1;
}

static const char *wasm_cmd_module(cmd_parms *cmd, void *dconf,
                                   const char *arg)
{
    wasm_dir_conf *conf = dconf;
    const char *path = ap_server_root_relative(cmd->pool, arg);
    apr_finfo_t finfo;
    apr_file_t *f;
    unsigned char magic[4];
    apr_size_t n = sizeof(magic);
    apr_status_t rv;

    if (!path) {
        return apr_psprintf(cmd->pool, "WasmModule: invalid path '%s'", arg);
    }
    /* One module per section: a second one would silently win. */
    if (conf->module >= 0) {
        const wasm_module_rec *m = &APR_ARRAY_IDX(wasm_modules, conf->module,
                                                  wasm_module_rec);
        return apr_psprintf(cmd->pool, "WasmModule: this section already "
                            "runs %s; a section runs one module (use another "
                            "<Location> or <Directory> for %s)", m->path, path);
    }
    rv = apr_stat(&finfo, path, APR_FINFO_TYPE, cmd->temp_pool);
    if (rv != APR_SUCCESS || finfo.filetype != APR_REG) {
        return apr_psprintf(cmd->pool,
                            "WasmModule: '%s' does not exist or is not a file",
                            path);
    }
    /* A cheap early check, so configtest names the line of an obvious
     * mistake; full validation happens when the module is compiled. */
    rv = apr_file_open(&f, path, APR_FOPEN_READ, APR_OS_DEFAULT,
                       cmd->temp_pool);
    if (rv != APR_SUCCESS) {
        return apr_psprintf(cmd->pool, "WasmModule: cannot open '%s': %pm",
                            path, &rv);
    }
    rv = apr_file_read_full(f, magic, sizeof(magic), &n);
    apr_file_close(f);
    if (rv != APR_SUCCESS || memcmp(magic, "\0asm", 4) != 0) {
        return apr_psprintf(cmd->pool,
                            "WasmModule: '%s' is not a WebAssembly binary "
                            "(no \\0asm header)", path);
    }

    conf->module = wasm_register_module(cmd, path, conf->trap_unknown == 1);
    conf->location = wasm_enclosing_location(cmd);
    return NULL;
}

/* Applies to the WasmModule of the same section, before or after it. */
static const char *wasm_cmd_trap_unknown(cmd_parms *cmd, void *dconf, int on)
{
    wasm_dir_conf *conf = dconf;

    conf->trap_unknown = on;
    if (conf->module >= 0) {
        wasm_module_rec *old = &APR_ARRAY_IDX(wasm_modules, conf->module,
                                              wasm_module_rec);
        old->refs--;
        conf->module = wasm_register_module(cmd, old->path, on);
    }
    return NULL;
}

static const char *wasm_cmd_arg(cmd_parms *cmd, void *dconf, const char *arg)
{
    wasm_dir_conf *conf = dconf;

    if (!conf->args) {
        conf->args = apr_array_make(cmd->pool, 4, sizeof(const char *));
    }
    APR_ARRAY_PUSH(conf->args, const char *) = arg;
    return NULL;
}

static const char *wasm_cmd_env(cmd_parms *cmd, void *dconf,
                                const char *name, const char *value)
{
    wasm_dir_conf *conf = dconf;

    if (!*name || strchr(name, '=')) {
        return apr_psprintf(cmd->pool,
                            "WasmEnv: invalid variable name '%s'", name);
    }
    apr_table_set(conf->env, name, value);
    return NULL;
}

static const char *wasm_add_dir(cmd_parms *cmd, wasm_dir_conf *conf,
                                const char *guest, const char *host_arg,
                                const char *mode)
{
    const char *host = ap_server_root_relative(cmd->pool, host_arg);
    apr_finfo_t finfo;
    wasm_rt_dir *d;
    int read_only = 0;

    if (mode) {
        if (!strcasecmp(mode, "ro")) {
            read_only = 1;
        }
        else if (strcasecmp(mode, "rw")) {
            return apr_psprintf(cmd->pool, "%s: access must be 'ro' or 'rw', "
                                "not '%s'", cmd->cmd->name, mode);
        }
    }
    if (!host || apr_stat(&finfo, host, APR_FINFO_TYPE, cmd->temp_pool)
                     != APR_SUCCESS
        || finfo.filetype != APR_DIR) {
        return apr_psprintf(cmd->pool, "%s: '%s' is not a directory",
                            cmd->cmd->name, host ? host : host_arg);
    }
    if (!conf->dirs) {
        conf->dirs = apr_array_make(cmd->pool, 2, sizeof(wasm_rt_dir));
    }
    d = apr_array_push(conf->dirs);
    d->guest_path = guest ? guest : host;
    d->host_path = host;
    d->read_only = read_only;
    return NULL;
}

static const char *wasm_cmd_dir(cmd_parms *cmd, void *dconf,
                                const char *dir, const char *mode)
{
    return wasm_add_dir(cmd, dconf, NULL, dir, mode);
}

static const char *wasm_cmd_map_dir(cmd_parms *cmd, void *dconf,
                                    const char *args)
{
    const char *guest = ap_getword_conf(cmd->pool, &args);
    const char *host = ap_getword_conf(cmd->pool, &args);
    const char *mode = ap_getword_conf(cmd->pool, &args);

    if (!*guest || !*host || *args) {
        return "WasmMapDir takes a guest path, a host directory and "
               "optionally 'ro' or 'rw'";
    }
    if (guest[0] != '/' && guest[0] != '.') {
        return apr_psprintf(cmd->pool, "WasmMapDir: guest path '%s' must be "
                            "absolute (or '.')", guest);
    }
    return wasm_add_dir(cmd, dconf, guest, host, *mode ? mode : NULL);
}

static const char *wasm_cmd_cache_dir(cmd_parms *cmd, void *dconf,
                                      const char *dir)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);

    if (err) {
        return err;
    }
    wasm_cache_dir = ap_server_root_relative(cmd->pool, dir);
    if (!wasm_cache_dir) {
        return apr_psprintf(cmd->pool, "WasmCacheDir: invalid path '%s'", dir);
    }
    return NULL;
}

static const char *wasm_cmd_timeout(cmd_parms *cmd, void *dconf,
                                    const char *arg)
{
    apr_interval_time_t t;
    apr_uint64_t ms;

    /* Apache's own syntax: seconds, or a number with ms, s, mi or h. */
    if (ap_timeout_parameter_parse(arg, &t, "s") != APR_SUCCESS || t <= 0) {
        return apr_psprintf(cmd->pool, "WasmTimeout: '%s' is not a positive "
                            "time (seconds, or with a unit: 500ms, 2mi)", arg);
    }
    ms = (apr_uint64_t)apr_time_as_msec(t);
    ((wasm_dir_conf *)dconf)->timeout_ms = ms ? ms : 1;
    return NULL;
}

/* WasmMaxMemory and WasmMaxOutput (cmd->info is the offset of the field to
 * set, as with ap_set_string_slot); the runtime parses the size. */
static const char *wasm_cmd_size(cmd_parms *cmd, void *dconf, const char *arg)
{
    wasm_dir_conf *conf = dconf;
    uint64_t bytes = 0;
    char *error = NULL;
    const char *msg;

    if (wasm_rt_parse_size(arg, &bytes, &error) != WASM_RT_OK) {
        msg = apr_psprintf(cmd->pool, "%s: %s", cmd->cmd->name,
                           error ? error : "invalid size");
        wasm_rt_string_free(error);
        return msg;
    }
    if (cmd->info == (void *)APR_OFFSETOF(wasm_dir_conf, max_memory)
        && (bytes < 65536 || bytes > (APR_UINT64_C(4) << 30))) {
        return "WasmMaxMemory must be between 64K and 4G";
    }
    *(apr_uint64_t *)((char *)conf + (apr_size_t)cmd->info) = bytes;
    return NULL;
}

static const char *wasm_cmd_cache_max_age(cmd_parms *cmd, void *dconf,
                                          const char *arg)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);

    if (err) {
        return err;
    }
    if (ap_timeout_parameter_parse(arg, &wasm_cache_max_age, "s")
            != APR_SUCCESS || wasm_cache_max_age < 0) {
        return apr_psprintf(cmd->pool, "WasmCacheMaxAge: '%s' is not a time "
                            "(seconds, or with a unit: 30mi, 24h)", arg);
    }
    return NULL;
}

/* Stores `arg` in `*out` if it is a whole number from 1 to `max`. */
static int wasm_parse_count(const char *arg, long max, int *out)
{
    char *end;
    long n = strtol(arg, &end, 10);

    if (*end || n < 1 || n > max) {
        return 0;
    }
    *out = (int)n;
    return 1;
}

static const char *wasm_cmd_pool_slots(cmd_parms *cmd, void *dconf,
                                       const char *arg)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);

    if (err) {
        return err;
    }
    if (!wasm_parse_count(arg, 100000, &wasm_pool_slots)) {
        return apr_psprintf(cmd->pool, "WasmPoolSlots: '%s' is not a number "
                            "between 1 and 100000", arg);
    }
    return NULL;
}

static const char *wasm_cmd_pool_shards(cmd_parms *cmd, void *dconf,
                                        const char *arg)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);

    if (err) {
        return err;
    }
    if (!strcasecmp(arg, "auto")) {
        wasm_pool_shards = 0;
        return NULL;
    }
    /* Each shard loads every module again: 64 is already far past the
     * point where more shards help. */
    if (!wasm_parse_count(arg, 64, &wasm_pool_shards)) {
        return apr_psprintf(cmd->pool, "WasmPoolShards: '%s' is neither 'auto' "
                            "nor a number between 1 and 64", arg);
    }
    return NULL;
}

static const char *wasm_cmd_max_open_files(cmd_parms *cmd, void *dconf,
                                           const char *arg)
{
    if (!wasm_parse_count(arg, 65536,
                          &((wasm_dir_conf *)dconf)->max_open_files)) {
        return apr_psprintf(cmd->pool, "WasmMaxOpenFiles: '%s' is not a "
                            "number between 1 and 65536", arg);
    }
    return NULL;
}

static const command_rec wasm_cmds[] = {
    AP_INIT_TAKE1("WasmModule", wasm_cmd_module, NULL, RSRC_CONF | ACCESS_CONF,
                  "path of the WebAssembly (WASI command) module to run"),
    AP_INIT_FLAG("WasmTrapUnknownImports", wasm_cmd_trap_unknown, NULL,
                 RSRC_CONF | ACCESS_CONF,
                 "On: link imports mod_wasm does not provide as functions "
                 "that trap when called (default Off: refuse the module)"),
    AP_INIT_FLAG("WasmScriptArg", ap_set_flag_slot,
                 (void *)APR_OFFSETOF(wasm_dir_conf, script_arg),
                 RSRC_CONF | ACCESS_CONF,
                 "On: pass the requested file, as the guest sees it through "
                 "WasmDir/WasmMapDir, as the last argument (interpreters)"),
    AP_INIT_ITERATE("WasmArg", wasm_cmd_arg, NULL, RSRC_CONF | ACCESS_CONF,
                    "arguments passed to the module after argv[0]"),
    AP_INIT_TAKE2("WasmEnv", wasm_cmd_env, NULL, RSRC_CONF | ACCESS_CONF,
                  "an environment variable for the module: name and value"),
    AP_INIT_TAKE12("WasmDir", wasm_cmd_dir, NULL, RSRC_CONF | ACCESS_CONF,
                   "a host directory the module may see at the same path, "
                   "optionally 'ro'"),
    AP_INIT_RAW_ARGS("WasmMapDir", wasm_cmd_map_dir, NULL,
                     RSRC_CONF | ACCESS_CONF,
                     "guest path, host directory, optionally 'ro' or 'rw'"),
    AP_INIT_TAKE1("WasmEntryPoint", ap_set_string_slot,
                  (void *)APR_OFFSETOF(wasm_dir_conf, entry),
                  RSRC_CONF | ACCESS_CONF,
                  "exported function to call instead of _start"),
    AP_INIT_TAKE1("WasmCacheDir", wasm_cmd_cache_dir, NULL, RSRC_CONF,
                  "directory for compiled modules (server-wide)"),
    AP_INIT_TAKE1("WasmTimeout", wasm_cmd_timeout, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "longest time one request may run (default 30s)"),
    AP_INIT_TAKE1("WasmMaxMemory", wasm_cmd_size,
                  (void *)APR_OFFSETOF(wasm_dir_conf, max_memory),
                  RSRC_CONF | ACCESS_CONF,
                  "most linear memory one request may use (default 256M)"),
    AP_INIT_TAKE1("WasmMaxOutput", wasm_cmd_size,
                  (void *)APR_OFFSETOF(wasm_dir_conf, max_output),
                  RSRC_CONF | ACCESS_CONF,
                  "most bytes one request may write to stdout (default 64M)"),
    AP_INIT_TAKE1("WasmMaxOpenFiles", wasm_cmd_max_open_files, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "most files and directories one request may have open at "
                  "once (default 128)"),
    AP_INIT_TAKE1("WasmCacheMaxAge", wasm_cmd_cache_max_age, NULL, RSRC_CONF,
                  "how long an unused compiled module stays cached "
                  "(default 24h)"),
    AP_INIT_TAKE1("WasmPoolSlots", wasm_cmd_pool_slots, NULL, RSRC_CONF,
                  "instance slots per child (default ThreadsPerChild + 1)"),
    AP_INIT_TAKE1("WasmPoolShards", wasm_cmd_pool_shards, NULL, RSRC_CONF,
                  "engines a child spreads its slots over, or 'auto' "
                  "(default: one per CPU, at most 8, at least two slots each)"),
    {NULL}
};

/* ----------------------------------------------------------------- hooks */

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
    wasm_modules = apr_array_make(pconf, 4, sizeof(wasm_module_rec));
    wasm_cache_dir = NULL;
    wasm_pool_slots = 0;
    wasm_pool_shards = 0;
    wasm_cache_max_age = WASM_CACHE_MAX_AGE_DEFAULT;
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

/* The modules a child loads, as the runtime takes them (wasm_rt_runtime_new
 * and wasm_rt_runtime_check); sets each record's rt_index. */
typedef struct {
    const char **paths;
    int32_t *fds;
    const char **names;
    int32_t *traps;
    int n;
} wasm_load_list;

static void wasm_load_list_make(apr_pool_t *p, wasm_load_list *l)
{
    int i, n = wasm_modules->nelts;

    l->paths = apr_palloc(p, (n + 1) * sizeof(*l->paths));
    l->fds = apr_palloc(p, (n + 1) * sizeof(*l->fds));
    l->names = apr_palloc(p, (n + 1) * sizeof(*l->names));
    l->traps = apr_palloc(p, (n + 1) * sizeof(*l->traps));
    l->n = 0;
    for (i = 0; i < n; i++) {
        wasm_module_rec *m = &APR_ARRAY_IDX(wasm_modules, i, wasm_module_rec);
        m->rt_index = -1;
        if (!m->cwasm) {
            continue;   /* replaced by a record with other link options */
        }
        m->rt_index = l->n;
        l->paths[l->n] = m->cwasm;
        l->fds[l->n] = m->fd;
        l->names[l->n] = m->path;
        l->traps[l->n] = m->trap_unknown;
        l->n++;
    }
}

/* The record loaded as runtime module `index`. */
static wasm_module_rec *wasm_module_at(int index)
{
    int i;

    for (i = 0; i < wasm_modules->nelts; i++) {
        wasm_module_rec *m = &APR_ARRAY_IDX(wasm_modules, i, wasm_module_rec);
        if (m->cwasm && m->rt_index == index) {
            return m;
        }
    }
    return NULL;
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
    char *cwasm = NULL, *replaced = NULL, *error = NULL;
    int32_t fd = -1, hit = 0;
    uint64_t millis = 0;

    if (wasm_rt_precompile(m->path, wasm_cache_dir, m->trap_unknown, &cwasm,
                           &fd, &hit, &millis, &replaced, &error)
            != WASM_RT_OK) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, s,
                     WASMLOGNO(00001) "WasmModule %s (defined at %s): %s",
                     m->path, m->defined_at, error ? error : "failed");
        wasm_rt_string_free(error);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    m->cwasm = apr_pstrdup(pconf, cwasm);
    m->fd = fd;
    apr_pool_cleanup_register(pconf, (void *)(intptr_t)fd, wasm_close_fd,
                              apr_pool_cleanup_null);
    m->cache_hit = hit;
    m->millis = millis;
    m->replaced = replaced ? apr_pstrdup(pconf, replaced) : NULL;
    wasm_rt_string_free(cwasm);
    wasm_rt_string_free(replaced);
    return OK;
}

/* Builds, in a throw-away process, the runtime every child will build, so
 * that what would fail in each child (a pool the address space cannot hold,
 * a module that does not fit it) fails the configuration instead. */
static int wasm_check_runtime(apr_pool_t *ptemp, server_rec *s)
{
    wasm_load_list l;
    wasm_module_rec *m;
    char *error = NULL;
    int32_t module = -1;
    int slots = wasm_child_slots();

    wasm_load_list_make(ptemp, &l);
    if (l.n == 0) {
        return OK;
    }
    if (wasm_rt_runtime_check(l.paths, l.fds, l.names, l.traps, l.n,
                              (uint32_t)slots, (uint32_t)wasm_pool_shards,
                              &module, &error) == WASM_RT_OK) {
        return OK;
    }
    m = module >= 0 ? wasm_module_at(module) : NULL;
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
    for (i = 0; i < wasm_modules->nelts; i++) {
        wasm_module_rec *m = &APR_ARRAY_IDX(wasm_modules, i, wasm_module_rec);

        if (m->refs == 0) {
            continue;
        }
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
    int i;

    /* The logs are open now: say what check_config did. */
    for (i = 0; i < wasm_modules->nelts; i++) {
        wasm_module_rec *m = &APR_ARRAY_IDX(wasm_modules, i, wasm_module_rec);
        if (!m->cwasm) {
            continue;
        }
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
    wasm_prune_cache(ptemp, s);
    ap_add_version_component(pconf, "mod_wasm/0.1");
    return OK;
}

static void wasm_child_init(apr_pool_t *pchild, server_rec *s)
{
    wasm_load_list l;
    char *error = NULL;

    wasm_runtime = NULL;
    if (!wasm_modules || wasm_modules->nelts == 0) {
        return;
    }
    wasm_load_list_make(pchild, &l);
    /* The engine is created here, after Apache set up its signal handlers,
     * so that Wasmtime's trap handlers run first (and chain to Apache's for
     * faults that are not guest traps). The entries come from descriptors
     * this process inherited from the parent, not from the cache directory,
     * which this child's user may not be able to read and which another
     * server may have cleaned since. */
    if (wasm_rt_runtime_new(l.paths, l.fds, l.names, l.traps, l.n,
                            (uint32_t)wasm_child_slots(),
                            (uint32_t)wasm_pool_shards, &wasm_runtime,
                            &error) != WASM_RT_OK) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, s, WASMLOGNO(00004)
                     "cannot start the WebAssembly runtime in this child: %s",
                     error ? error : "unknown error");
        wasm_rt_string_free(error);
        wasm_runtime = NULL;
    }
}

/* --------------------------------------------------------------- request */

/* For a module set in a <Location>, the location is the script and the rest
 * of the URI is PATH_INFO: Apache's filesystem walk knows nothing of a
 * location with no file behind it. */
static void wasm_split_location(request_rec *r, const char *location)
{
    apr_size_t len = strlen(location);

    while (len > 1 && location[len - 1] == '/') {
        len--;
    }
    if (len == 1 && location[0] == '/') {
        len = 0;
    }
    if (strncmp(r->uri, location, len) == 0
        && (r->uri[len] == '/' || r->uri[len] == '\0')) {
        r->path_info = apr_pstrdup(r->pool, r->uri + len);
    }
}

static const char *const wasm_host_vars[] = {
    "PATH", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "LIBPATH", "SHLIB_PATH",
    "SystemRoot", "COMSPEC", "PATHEXT", "WINDIR", NULL
};

/* The guest's environment: the CGI/1.1 variables Apache computes for
 * mod_cgi, minus the server's own PATH, plus WasmEnv. */
static void wasm_build_env(request_rec *r, const wasm_dir_conf *conf,
                           const char *module_path, wasm_rt_request *req)
{
    const apr_array_header_t *arr;
    const apr_table_entry_t *elts;
    const char **names, **values;
    apr_table_t *e;
    int i, n = 0;

    ap_add_common_vars(r);
    ap_add_cgi_vars(r);
    e = r->subprocess_env;
    if (conf->location) {
        /* No file maps to a location: the script is the module. */
        apr_table_setn(e, "SCRIPT_FILENAME", module_path);
    }
    /* ap_add_common_vars copies these from the server's own environment for
     * the sake of native CGI programs; they mean nothing in the sandbox and
     * tell a guest about the host. */
    for (i = 0; wasm_host_vars[i]; i++) {
        apr_table_unset(e, wasm_host_vars[i]);
    }
    arr = apr_table_elts(conf->env);
    elts = (const apr_table_entry_t *)arr->elts;
    for (i = 0; i < arr->nelts; i++) {
        apr_table_setn(e, elts[i].key, elts[i].val);
    }

    arr = apr_table_elts(e);
    elts = (const apr_table_entry_t *)arr->elts;
    names = apr_palloc(r->pool, (arr->nelts + 1) * sizeof(*names));
    values = apr_palloc(r->pool, (arr->nelts + 1) * sizeof(*values));
    for (i = 0; i < arr->nelts; i++) {
        if (elts[i].key && elts[i].val) {
            names[n] = elts[i].key;
            values[n] = elts[i].val;
            n++;
        }
    }
    req->env_names = names;
    req->env_values = values;
    req->envc = n;
}

/* The guest's path of host file `path`: through the mapping whose host
 * directory contains it, or NULL when none does. */
static const char *wasm_guest_path(request_rec *r, const wasm_dir_conf *conf,
                                   const char *path)
{
    int i;

    for (i = 0; conf->dirs && i < conf->dirs->nelts; i++) {
        const wasm_rt_dir *d = &APR_ARRAY_IDX(conf->dirs, i, wasm_rt_dir);
        apr_size_t n = strlen(d->host_path);

        while (n > 1 && d->host_path[n - 1] == '/') {
            n--;
        }
        if (strncmp(path, d->host_path, n) == 0 && path[n] == '/') {
            return apr_pstrcat(r->pool, d->guest_path,
                               d->guest_path[strlen(d->guest_path) - 1] == '/'
                                   ? path + n + 1 : path + n,
                               NULL);
        }
    }
    return NULL;
}

/* argv: the module's file name, WasmArg, and with WasmScriptArg the
 * requested file as the guest sees it. */
static int wasm_build_argv(request_rec *r, const wasm_dir_conf *conf,
                           const char *module_path, wasm_rt_request *req)
{
    int extra = conf->args ? conf->args->nelts : 0;
    const char **argv = apr_palloc(r->pool, (extra + 2) * sizeof(*argv));
    const char *slash = strrchr(module_path, '/');

    argv[0] = slash ? slash + 1 : module_path;
    if (extra) {
        memcpy(argv + 1, conf->args->elts, extra * sizeof(*argv));
    }
    req->argv = argv;
    req->argc = extra + 1;
    if (conf->script_arg == 1) {
        const char *script;

        if (!r->filename || r->finfo.filetype != APR_REG) {
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, WASMLOGNO(00043)
                          "WasmScriptArg: no script file at %s",
                          r->filename ? r->filename : r->uri);
            return HTTP_NOT_FOUND;
        }
        script = wasm_guest_path(r, conf, r->filename);
        if (!script) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, WASMLOGNO(00044)
                          "WasmScriptArg: %s is not inside any WasmDir or "
                          "WasmMapDir, so the guest cannot open it",
                          r->filename);
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        argv[req->argc++] = script;
    }
    return OK;
}

static apr_status_t wasm_response_cleanup(void *resp)
{
    wasm_rt_response_free(resp);
    return APR_SUCCESS;
}

/* The state of one request's body and response while its guest runs. The
 * runtime calls wasm_read_body_cb and wasm_send_output_cb on this thread,
 * from inside wasm_rt_run. */
typedef struct {
    request_rec *r;
    const char *module_path;
    apr_bucket_brigade *in;     /* body buckets read but not yet handed over */
    apr_bucket_brigade *out;    /* output being passed */
    int seen_eos;               /* the body is all read */
    int refused;                /* a status to answer instead of the guest's
                                 * response (bad body, bad header), 0: none */
    int head_scanned;           /* the guest's CGI header block was read */
    int head_sent;              /* something was passed to the output filters */
    int discard;                /* the guest's body is not sent (redirect, 304) */
    int redirect_status;        /* 302 for an absolute Location, 0: none */
    const char *redirect;       /* a local Location: an internal redirect */
    int send_failed;            /* nothing more may go out: ap_pass_brigade
                                 * failed, or the core ended the response */
    int passing;                /* wasm_pass_output is passing a brigade */
    int core_ended;             /* the core passed an error or EOS of its own
                                 * while the guest ran */
} wasm_io;

/* The deadline of the request body being read on a connection, for
 * wasm_deadline_in_filter; 0: none. */
typedef struct {
    apr_time_t deadline;
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
    apr_bucket_brigade *line;
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
    /* A line: gather what comes until its LF. */
    line = apr_brigade_create(f->c->pool, f->c->bucket_alloc);
    for (;;) {
        rv = ap_get_brigade(f->next, bb, AP_MODE_GETLINE, APR_NONBLOCK_READ,
                            readbytes);
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
            APR_BRIGADE_CONCAT(line, bb);
            if (APR_BUCKET_IS_METADATA(e) || (readbytes -= got) <= 0) {
                break;
            }
        }
        rv = wasm_wait_readable(sock, d->deadline);
        if (rv != APR_SUCCESS) {
            break;
        }
    }
    APR_BRIGADE_PREPEND(bb, line);
    apr_brigade_destroy(line);
    return rv;
}

/* Bounds a blocking read or write of the connection by what is left of the
 * request's WasmTimeout (`timeout_us`), when that is shorter than Apache's
 * own Timeout; returns the socket whose timeout was changed, or NULL. An
 * HTTP/2 stream has no socket of its own: its reads and writes keep h2's
 * timeouts. */
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
    apr_table_unset(r->headers_out, "Transfer-Encoding");

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
static void wasm_log_no_runtime(request_rec *r, const char *what)
{
    static apr_uint32_t said;

    ap_log_rerror(APLOG_MARK,
                  apr_atomic_cas32(&said, 1, 0) == 0 ? APLOG_ERR : APLOG_DEBUG,
                  0, r, WASMLOGNO(00041)
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

static int wasm_handler(request_rec *r)
{
    wasm_dir_conf *conf;
    const wasm_module_rec *rec;
    const char *module_path;
    wasm_rt_request req;
    wasm_rt_response *resp = NULL;
    wasm_io *io;
    int32_t reads_env = 1;
    struct timespec started, ended;
    int status;

    if (!r->handler || strcmp(r->handler, WASM_HANDLER) != 0) {
        return DECLINED;
    }
    conf = ap_get_module_config(r->per_dir_config, &wasm_module);
    if (conf->module < 0 || !wasm_modules
        || conf->module >= wasm_modules->nelts) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, WASMLOGNO(00040)
                      "SetHandler wasm-handler without a WasmModule for %s",
                      r->uri);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    rec = &APR_ARRAY_IDX(wasm_modules, conf->module, wasm_module_rec);
    module_path = rec->path;
    if (!wasm_runtime) {
        wasm_log_no_runtime(r, module_path);
        return HTTP_SERVICE_UNAVAILABLE;
    }
    if (r->method_number == M_OPTIONS) {
        /* As mod_cgi: let the core answer OPTIONS for us. */
        r->allowed |= (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_POST);
        return DECLINED;
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
    /* A module that cannot read an environment does not get one: building
     * the CGI variables is a good part of a small request's cost. */
    if (wasm_rt_module_reads_env(wasm_runtime, (size_t)rec->rt_index,
                                 &reads_env) != WASM_RT_OK || reads_env) {
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

    /* From the request pool: the guard filter may still be called, after
     * the handler returned, by the core's end of the request. */
    io = apr_pcalloc(r->pool, sizeof(*io));
    io->r = r;
    io->module_path = module_path;
    io->in = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    io->out = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    ap_add_output_filter_handle(wasm_guard_filter_handle, io, r,
                                r->connection);
    req.io.ctx = io;
    req.io.read_body = wasm_read_body_cb;
    req.io.send_output = wasm_send_output_cb;

    clock_gettime(CLOCK_MONOTONIC, &started);
    wasm_rt_run(wasm_runtime, (size_t)rec->rt_index, &req, &resp);
    clock_gettime(CLOCK_MONOTONIC, &ended);
    /* For the access log: %{wasm-run-us}n is the guest's share of %D
     * (monotonic: a clock step must not make it negative). */
    apr_table_setn(r->notes, WASM_RUN_NOTE,
                   apr_psprintf(r->pool, "%ld",
                                (long)(ended.tv_sec - started.tv_sec) * 1000000L
                                + (ended.tv_nsec - started.tv_nsec) / 1000));
    if (!resp) {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    apr_pool_cleanup_register(r->pool, resp, wasm_response_cleanup,
                              apr_pool_cleanup_null);
    wasm_log_stderr(r, resp, module_path);
    return wasm_finish_response(io, resp);
}

/* SetHandler wasm-status: this child's slots, requests and heap, as
 * "Key: value" lines (the runtime writes them). */
static int wasm_status_handler(request_rec *r)
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

        ap_log_rerror(APLOG_MARK, apr_atomic_cas32(&said, 1, 0) == 0
                                      ? APLOG_ERR : APLOG_DEBUG,
                      0, r, WASMLOGNO(00046)
                      "wasm-status: no WasmModule is configured, so there "
                      "is no WebAssembly runtime to report on");
        return HTTP_SERVICE_UNAVAILABLE;
    }
    if (!wasm_runtime) {
        wasm_log_no_runtime(r, "wasm-status");
        return HTTP_SERVICE_UNAVAILABLE;
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
    return OK;
}

/* Every connection of a server with modules gets the deadline filter (one
 * call per read of the socket, idle unless a guest is reading the body).
 * HTTP/2 streams have no socket of their own: h2's timeouts apply there. */
static int wasm_pre_connection(conn_rec *c, void *csd)
{
    wasm_conn_deadline *d;

    if (c->master || !wasm_modules || !wasm_modules->nelts) {
        return OK;
    }
    d = apr_pcalloc(c->pool, sizeof(*d));
    ap_set_module_config(c->conn_config, &wasm_module, d);
    ap_add_input_filter_handle(wasm_deadline_filter_handle, d, NULL, c);
    return OK;
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
    wasm_guard_filter_handle = ap_register_output_filter(
        "WASM_GUARD", wasm_guard_filter, NULL, AP_FTYPE_PROTOCOL - 1);
    /* Below mod_ssl (CONNECTION + 5) and mod_reqtimeout (+ 8): each read
     * of the socket itself. */
    wasm_deadline_filter_handle = ap_register_input_filter(
        "WASM_DEADLINE", wasm_deadline_in_filter, NULL,
        AP_FTYPE_CONNECTION + 9);
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
