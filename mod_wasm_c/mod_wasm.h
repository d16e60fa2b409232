/*
 * mod_wasm.h: what the files of mod_wasm's C shim share: the module, its
 * configuration records, the server-wide state of a configuration pass,
 * and the entry points each file offers the others.
 *
 *   mod_wasm.c     the module record and the lifecycle hooks (compile at
 *                  configuration time, load in each child)
 *   wasm_conf.c    the Wasm* directives and the per-directory merge
 *   wasm_env.c     what a guest gets: CGI environment, argv, PATH_INFO
 *   wasm_cgi.c     the request: body in, output out, the CGI response,
 *                  and the filters that bound them
 *   wasm_http.c    what a wasi:http component gets instead of CGI: the
 *                  HTTP request, and its response head
 *   wasm_status.c  SetHandler wasm-status
 */
#ifndef MOD_WASM_H
#define MOD_WASM_H

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
/* Headers the server adds to a component's request (see docs/guests.md);
 * a client's own are removed first. */
#define WASM_CLIENT_ADDR_HEADER "wasm-client-addr"
#define WASM_BASE_PATH_HEADER "wasm-base-path"
/* Request note: microseconds spent in the runtime (%{wasm-run-us}n). */
#define WASM_METRICS_HANDLER "wasm-metrics"
#define WASM_RUN_NOTE "wasm-run-us"
#define WASM_OUTCOME_NOTE "wasm-outcome"

extern module AP_MODULE_DECLARE_DATA wasm_module;

/* What the files share stays inside mod_wasm.so: Apache loads modules into
 * one namespace, and only the module record is for it to see. */
#pragma GCC visibility push(hidden)

/* One WasmModule directive: what its section runs. The section's record
 * points to it, and so does every record merged from that section, so what
 * check_config settles here (the index) reaches them all. */
typedef struct {
    const char *path;        /* absolute path of the .wasm */
    int trap_unknown;        /* WasmTrapUnknownImports of the section */
    const char *defined_at;  /* "file:line" of the directive */
    int index;               /* the module it runs, in wasm_modules; -1
                              * until wasm_modules_resolve */
    const char *section;     /* the path of the section it is in (what the
                              * metrics call its location), NULL: none */
    int32_t metrics;         /* its entry in the metrics table; -1: none */
} wasm_module_use;

/* A module a child loads: one .wasm linked one way, however many sections
 * run it, so it is compiled and loaded once. Its index in wasm_modules is
 * its index in the child's runtime: there is no other numbering. */
typedef struct {
    const char *path;        /* absolute path of the .wasm */
    int trap_unknown;        /* linked with trapping unknown imports */
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
    wasm_module_use *module;    /* WasmModule, NULL: unset */
    const char *location;       /* <Location> path the module was set in */
    apr_array_header_t *args;   /* of const char *, NULL: unset */
    apr_table_t *env;           /* WasmEnv, merged key by key */
    apr_array_header_t *dirs;   /* of wasm_rt_dir, merged by guest path */
    const char *entry;          /* WasmEntryPoint, NULL: unset */
    apr_uint64_t timeout_ms;    /* WasmTimeout, 0: unset */
    apr_uint64_t max_memory;    /* WasmMaxMemory in bytes, 0: unset */
    apr_uint64_t max_output;    /* WasmMaxOutput in bytes, 0: unset */
    int max_open_files;         /* WasmMaxOpenFiles, 0: unset */
    int instance_reuse;         /* WasmInstanceReuse, 0: unset (1) */
    int trap_unknown;           /* WasmTrapUnknownImports, -1: unset */
    int script_arg;             /* WasmScriptArg, -1: unset */
    apr_array_header_t *allow_outbound; /* WasmAllowOutbound patterns, of
                                 * const char *, or just "none"; NULL:
                                 * unset (nowhere) */
} wasm_dir_conf;

/* Configuration-pass state, allocated from pconf and reset in pre_config:
 * the module is reloaded on restart, but say so explicitly. */
extern apr_array_header_t *wasm_uses;      /* of wasm_module_use *, in
                                            * the order of the directives */
extern apr_array_header_t *wasm_modules;   /* of wasm_module_rec, built by
                                            * wasm_modules_resolve */
extern const char *wasm_cache_dir;
extern int wasm_pool_slots;     /* WasmPoolSlots, 0: ThreadsPerChild + 1 */
extern int wasm_pool_shards;    /* WasmPoolShards, 0: auto (the runtime's) */
extern apr_uint64_t wasm_pool_keep_resident;  /* WasmPoolKeepResident, 0:
                                               * the runtime's default */
extern apr_interval_time_t wasm_cache_max_age;  /* WasmCacheMaxAge */


/* The child's runtime, created in child_init. Lives as long as the process:
 * worker threads may still be finishing requests while the child pool is
 * destroyed, so it is never freed from a pool cleanup. */
extern wasm_rt_runtime *wasm_runtime;

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
    apr_uint64_t bytes_in;      /* request body bytes handed to the guest */
} wasm_io;

/* wasm_conf.c */
extern const command_rec wasm_cmds[];
void *wasm_create_dir_conf(apr_pool_t *p, char *dir);
void *wasm_merge_dir_conf(apr_pool_t *p, void *basev, void *addv);
/* Once every directive is read: one wasm_modules record per distinct
 * (path, WasmTrapUnknownImports) of wasm_uses, and each use's index. */
void wasm_modules_resolve(void);
/* Whether WasmAllowOutbound's patterns are just "none". */
int wasm_outbound_is_none(const apr_array_header_t *patterns);

/* wasm_env.c: fill `req` for the guest of `conf` (argv: OK or a status). */
void wasm_split_location(request_rec *r, const char *location);
void wasm_build_env(request_rec *r, const wasm_dir_conf *conf,
                    const char *module_path, wasm_rt_request *req);
int wasm_build_argv(request_rec *r, const wasm_dir_conf *conf,
                    const char *module_path, wasm_rt_request *req);

/* wasm_http.c: fill `req` with the HTTP request for a component, and the
 * callback that takes its response head. */
void wasm_http_build(request_rec *r, const wasm_dir_conf *conf,
                     wasm_rt_request *req);
int32_t wasm_send_head_cb(void *data, int32_t status,
                          const wasm_rt_field *headers, size_t n);
int32_t wasm_send_trailers_cb(void *data, const wasm_rt_field *fields,
                              size_t n);
void wasm_http_log_notes(request_rec *r, const wasm_dir_conf *conf,
                         const char *module_path,
                         const wasm_rt_response *resp);

/* wasm_cgi.c */
int wasm_handler(request_rec *r);
int wasm_pre_connection(conn_rec *c, void *csd);
void wasm_cgi_register_filters(void);
void wasm_log_no_runtime(request_rec *r, const char *what);

/* wasm_status.c */
int wasm_status_handler(request_rec *r);

void wasm_metrics_post_config(apr_pool_t *ptemp, server_rec *s);
void wasm_metrics_child_init(apr_pool_t *pchild, server_rec *s);
void wasm_metrics_note(request_rec *r, const wasm_module_use *use,
                       int32_t code, apr_uint64_t run_us,
                       apr_uint64_t bytes_in);
int wasm_metrics_write(request_rec *r, int32_t format);
void wasm_metrics_register_hooks(void);

#pragma GCC visibility pop

#endif /* MOD_WASM_H */
