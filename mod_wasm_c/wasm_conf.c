/*
 * wasm_conf.c: the Wasm* directives, the per-directory configuration and its
 * merge, and the registry of the modules a configuration names.
 */

#include "mod_wasm.h"

/* Configuration-pass state, allocated from pconf and reset in pre_config
 * (see mod_wasm.h). */
apr_array_header_t *wasm_uses;
apr_array_header_t *wasm_modules;
const char *wasm_cache_dir;
int wasm_pool_slots;     /* WasmPoolSlots, 0: ThreadsPerChild + 1 */
int wasm_pool_shards;    /* WasmPoolShards, 0: auto (the runtime's) */
apr_uint64_t wasm_pool_keep_resident;   /* WasmPoolKeepResident, 0: the
                                         * runtime's default */
apr_interval_time_t wasm_cache_max_age;  /* WasmCacheMaxAge */
wasm_rt_runtime *wasm_runtime;

void *wasm_create_dir_conf(apr_pool_t *p, char *dir)
{
    wasm_dir_conf *conf = apr_pcalloc(p, sizeof(*conf));
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

void *wasm_merge_dir_conf(apr_pool_t *p, void *basev, void *addv)
{
    const wasm_dir_conf *base = basev, *add = addv;
    wasm_dir_conf *conf = apr_pcalloc(p, sizeof(*conf));

    if (add->module) {
        conf->module = add->module;
        conf->location = add->location;
    }
    else {
        conf->module = base->module;
        conf->location = base->location;
    }
    conf->args = add->args ? add->args : base->args;
    /* A section's patterns replace those it inherits, as WasmArg's do:
     * what a section may reach is what it says. */
    conf->allow_outbound = add->allow_outbound ? add->allow_outbound
                                               : base->allow_outbound;
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
    conf->instance_reuse = add->instance_reuse ? add->instance_reuse
                                               : base->instance_reuse;
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

void wasm_modules_resolve(void)
{
    int i, j;

    apr_array_clear(wasm_modules);
    for (i = 0; i < wasm_uses->nelts; i++) {
        wasm_module_use *use = APR_ARRAY_IDX(wasm_uses, i, wasm_module_use *);
        wasm_module_rec *m = NULL;

        for (j = 0; j < wasm_modules->nelts; j++) {
            m = &APR_ARRAY_IDX(wasm_modules, j, wasm_module_rec);
            if (!strcmp(m->path, use->path)
                && m->trap_unknown == use->trap_unknown) {
                break;
            }
        }
        if (j == wasm_modules->nelts) {
            m = apr_array_push(wasm_modules);
            memset(m, 0, sizeof(*m));
            m->path = use->path;
            m->trap_unknown = use->trap_unknown;
            m->defined_at = use->defined_at;
            m->fd = -1;
        }
        use->index = j;
    }
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
    if (conf->module) {
        return apr_psprintf(cmd->pool, "WasmModule: this section already "
                            "runs %s; a section runs one module (use another "
                            "<Location> or <Directory> for %s)",
                            conf->module->path, path);
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

    conf->module = apr_pcalloc(cmd->pool, sizeof(*conf->module));
    conf->module->path = path;
    conf->module->trap_unknown = conf->trap_unknown == 1;
    conf->module->defined_at = wasm_where(cmd);
    conf->module->index = -1;
    conf->module->section = cmd->path;
    conf->module->metrics = -1;
    APR_ARRAY_PUSH(wasm_uses, wasm_module_use *) = conf->module;
    conf->location = wasm_enclosing_location(cmd);
    return NULL;
}

/* Applies to the WasmModule of the same section, before or after it. */
static const char *wasm_cmd_trap_unknown(cmd_parms *cmd, void *dconf, int on)
{
    wasm_dir_conf *conf = dconf;

    conf->trap_unknown = on;
    if (conf->module) {
        conf->module->trap_unknown = on;
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

/* WasmAllowOutbound: each pattern is checked here, so that configtest
 * names the line of a bad one. "none" (kept as the only element) undoes
 * what a section inherits. */
static const char *wasm_cmd_allow_outbound(cmd_parms *cmd, void *dconf,
                                           const char *arg)
{
    wasm_dir_conf *conf = dconf;
    char *error = NULL;
    const char *msg;
    int none = !strcasecmp(arg, "none");

    if (!conf->allow_outbound) {
        conf->allow_outbound = apr_array_make(cmd->pool, 4,
                                              sizeof(const char *));
    }
    else if (none || wasm_outbound_is_none(conf->allow_outbound)) {
        return "WasmAllowOutbound: 'none' cannot go with patterns";
    }
    if (!none && wasm_rt_outbound_check(arg, &error) != WASM_RT_OK) {
        msg = apr_psprintf(cmd->pool, "WasmAllowOutbound: %s",
                           error ? error : "invalid pattern");
        wasm_rt_string_free(error);
        return msg;
    }
    APR_ARRAY_PUSH(conf->allow_outbound, const char *) = none ? "none" : arg;
    return NULL;
}

int wasm_outbound_is_none(const apr_array_header_t *patterns)
{
    return patterns->nelts == 1
           && !strcasecmp(APR_ARRAY_IDX(patterns, 0, const char *), "none");
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

static const char *wasm_cmd_pool_keep_resident(cmd_parms *cmd, void *dconf,
                                               const char *arg)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    char *error = NULL;
    uint64_t bytes = 0;

    if (err) {
        return err;
    }
    if (wasm_rt_parse_size(arg, &bytes, &error) != WASM_RT_OK) {
        err = apr_psprintf(cmd->pool, "WasmPoolKeepResident: %s",
                           error ? error : "invalid size");
        wasm_rt_string_free(error);
        return err;
    }
    /* No guest memory is larger than 4G. */
    if (bytes > (APR_UINT64_C(4) << 30)) {
        return "WasmPoolKeepResident must be at most 4G";
    }
    wasm_pool_keep_resident = bytes;
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

/* A per-directory count directive: its field and its largest value. */
typedef struct {
    apr_size_t offset;
    long max;
} wasm_count_field;

static const wasm_count_field wasm_max_open_files_field = {
    APR_OFFSETOF(wasm_dir_conf, max_open_files), 65536
};
static const wasm_count_field wasm_instance_reuse_field = {
    APR_OFFSETOF(wasm_dir_conf, instance_reuse), 1000000
};

static const char *wasm_cmd_count(cmd_parms *cmd, void *dconf,
                                  const char *arg)
{
    const wasm_count_field *f = cmd->info;

    if (!wasm_parse_count(arg, f->max, (int *)((char *)dconf + f->offset))) {
        return apr_psprintf(cmd->pool, "%s: '%s' is not a number between 1 "
                            "and %ld", cmd->cmd->name, arg, f->max);
    }
    return NULL;
}

const command_rec wasm_cmds[] = {
    AP_INIT_TAKE1("WasmModule", wasm_cmd_module, NULL, RSRC_CONF | ACCESS_CONF,
                  "path of the WebAssembly (WASI command) module to run"),
    AP_INIT_FLAG("WasmTrapUnknownImports", wasm_cmd_trap_unknown, NULL,
                 RSRC_CONF | ACCESS_CONF,
                 "On: link imports mod_wasm does not provide as functions "
                 "that trap when called (Off: refuse the module)"),
    AP_INIT_FLAG("WasmScriptArg", ap_set_flag_slot,
                 (void *)APR_OFFSETOF(wasm_dir_conf, script_arg),
                 RSRC_CONF | ACCESS_CONF,
                 "On: pass the requested file, as the guest sees it through "
                 "WasmDir/WasmMapDir, as the last argument (interpreters)"),
    AP_INIT_ITERATE("WasmArg", wasm_cmd_arg, NULL, RSRC_CONF | ACCESS_CONF,
                    "arguments passed to the module after argv[0]"),
    AP_INIT_ITERATE("WasmAllowOutbound", wasm_cmd_allow_outbound, NULL,
                    RSRC_CONF | ACCESS_CONF,
                    "where the module's outgoing HTTP requests may go: "
                    "scheme://host[:port] patterns, or 'none'"),
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
                  "longest time one request may run, wall clock"),
    AP_INIT_TAKE1("WasmMaxMemory", wasm_cmd_size,
                  (void *)APR_OFFSETOF(wasm_dir_conf, max_memory),
                  RSRC_CONF | ACCESS_CONF,
                  "most linear memory one request may use"),
    AP_INIT_TAKE1("WasmMaxOutput", wasm_cmd_size,
                  (void *)APR_OFFSETOF(wasm_dir_conf, max_output),
                  RSRC_CONF | ACCESS_CONF,
                  "most bytes one request may write to stdout"),
    AP_INIT_TAKE1("WasmMaxOpenFiles", wasm_cmd_count,
                  (void *)&wasm_max_open_files_field,
                  RSRC_CONF | ACCESS_CONF,
                  "most files and directories one request may have open at "
                  "once"),
    AP_INIT_TAKE1("WasmInstanceReuse", wasm_cmd_count,
                  (void *)&wasm_instance_reuse_field,
                  RSRC_CONF | ACCESS_CONF,
                  "requests one instance of a component may serve, in turn "
                  "(1: a fresh instance for each)"),
    AP_INIT_TAKE1("WasmCacheMaxAge", wasm_cmd_cache_max_age, NULL, RSRC_CONF,
                  "how long an unused compiled module stays cached"),
    AP_INIT_TAKE1("WasmPoolSlots", wasm_cmd_pool_slots, NULL, RSRC_CONF,
                  "instance slots per child (unset: ThreadsPerChild + 1)"),
    AP_INIT_TAKE1("WasmPoolKeepResident", wasm_cmd_pool_keep_resident, NULL,
                  RSRC_CONF,
                  "bytes of each guest memory an instance slot keeps "
                  "resident between requests (e.g. 64M)"),
    AP_INIT_TAKE1("WasmPoolShards", wasm_cmd_pool_shards, NULL, RSRC_CONF,
                  "engines a child spreads its slots over, or 'auto' (one "
                  "per CPU, at most 8, at least two slots each)"),
    {NULL}
};

