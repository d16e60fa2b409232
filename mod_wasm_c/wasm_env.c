/*
 * wasm_env.c: what a guest gets for a request: the CGI/1.1 environment
 * Apache computes for mod_cgi, argv, and PATH_INFO for a module set in a
 * <Location>.
 */

#include "mod_wasm.h"

/* For a module set in a <Location>, the location is the script and the rest
 * of the URI is PATH_INFO: Apache's filesystem walk knows nothing of a
 * location with no file behind it. */
void wasm_split_location(request_rec *r, const char *location)
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
void wasm_build_env(request_rec *r, const wasm_dir_conf *conf,
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

        /* Without its trailing slashes: `WasmDir /` is the empty prefix,
         * which every absolute path extends. */
        while (n > 0 && d->host_path[n - 1] == '/') {
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
int wasm_build_argv(request_rec *r, const wasm_dir_conf *conf,
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

