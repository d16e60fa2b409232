/*
 * wasm_runtime.h: the C ABI of libwasm_runtime, the Rust half of mod_wasm.
 *
 * This header is the one contract between the C shim (mod_wasm_c/) and the
 * runtime.
 * runtime/src/ffi.rs implements it, and a unit test of the runtime checks
 * that every declaration below matches the Rust side.
 *
 * Conventions:
 *  - Every function returns a wasm_rt_code; WASM_RT_OK is 0.
 *  - On failure, functions with a `char **error` parameter store a message
 *    there (a NUL-terminated string owned by the caller, to be released with
 *    wasm_rt_string_free). Messages never contain request data.
 *  - No function lets a panic escape: a caught panic is WASM_RT_E_PANIC.
 *  - Strings passed in are NUL-terminated and need only live for the call.
 */
#ifndef WASM_RUNTIME_H
#define WASM_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Outcome classes; wasm_rt_response.http_status says what each means for HTTP. */
typedef enum wasm_rt_code {
    WASM_RT_OK = 0,
    WASM_RT_E_INVALID_ARGUMENT = 1,
    WASM_RT_E_IO = 2,
    WASM_RT_E_COMPILE = 3,
    WASM_RT_E_LINK = 4,
    WASM_RT_E_TRAP = 5,
    WASM_RT_E_EXIT = 6,
    WASM_RT_E_TIMEOUT = 7,
    WASM_RT_E_POOL_EXHAUSTED = 8,
    WASM_RT_E_OUTPUT_LIMIT = 9,
    WASM_RT_E_PANIC = 10,
    WASM_RT_E_INTERNAL = 11,
    WASM_RT_E_MEMORY_LIMIT = 12,
    WASM_RT_E_FILE_LIMIT = 13,
    WASM_RT_E_ABORTED = 14          /* send_output failed: see its caller */
} wasm_rt_code;

/* The per-process runtime of an Apache child: pooled engine + modules. */
typedef struct wasm_rt_runtime wasm_rt_runtime;

/* A directory the guest may see. */
typedef struct wasm_rt_dir {
    const char *guest_path;
    const char *host_path;
    int read_only;
} wasm_rt_dir;

/* A piece of output. */
typedef struct wasm_rt_chunk {
    const unsigned char *data;
    size_t len;
} wasm_rt_chunk;

/* A header field: bytes, not NUL-terminated. */
typedef struct wasm_rt_field {
    const unsigned char *name;
    size_t name_len;
    const unsigned char *value;
    size_t value_len;
} wasm_rt_field;

/*
 * What the runtime calls back, on the thread that called wasm_rt_run and
 * while the guest runs, to move the request body in and the response out.
 * `timeout_us` is what is left of the request's time limit: a callback must
 * not wait longer.
 */
typedef struct wasm_rt_io {
    void *ctx;
    /* Reads up to `len` bytes of the request body into `buf`; returns how
     * many, 0 at the end of the body, -1 on failure (the guest then sees an
     * I/O error). NULL: the guest's stdin is empty. */
    int64_t (*read_body)(void *ctx, unsigned char *buf, size_t len,
                         uint64_t timeout_us);
    /* Sends `n` chunks of the guest's stdout, in order (they are only valid
     * during the call); returns 0, or -1 when nothing more can be sent (the
     * guest is then stopped, WASM_RT_E_ABORTED). Called once the output
     * outgrows what a request keeps in memory (256 KiB); the rest is in the
     * response. NULL: all of stdout is in the response. */
    int32_t (*send_output)(void *ctx, const wasm_rt_chunk *chunks, size_t n,
                           uint64_t timeout_us);
    /* A component's response head, once the guest sets it: the status and
     * `n` fields (names lower-case; valid during the call). Body bytes then
     * come through send_output, each as the guest writes it. Returns 0, or
     * -1 to refuse it (the guest's writes then fail). Unused for command
     * modules, whose head is in their output. */
    int32_t (*send_head)(void *ctx, int32_t status,
                         const wasm_rt_field *headers, size_t n);
    /* A component's response trailers, after the last of its body: `n`
     * fields as for send_head. Returns 0, or -1 when they cannot be sent
     * (the response then ends as cut). NULL: trailers are dropped. */
    int32_t (*send_trailers)(void *ctx, const wasm_rt_field *fields,
                             size_t n);
} wasm_rt_io;

/* One request. Arrays and strings are borrowed for the duration of the call. */
typedef struct wasm_rt_request {
    const char *const *argv;        /* argv[0] included */
    size_t argc;
    const char *const *env_names;   /* the guest's whole environment */
    const char *const *env_values;
    size_t envc;
    const wasm_rt_dir *dirs;
    size_t ndirs;
    const char *entry_point;        /* NULL: "_start" */
    wasm_rt_io io;                  /* body in, output out */
    uint64_t timeout_ms;            /* 0: the runtime's default */
    uint64_t max_memory;            /* bytes; 0: the runtime's default */
    uint64_t max_output;            /* bytes of stdout; 0: the runtime's default */
    uint32_t max_open_files;        /* 0: the runtime's default */
    /* The HTTP request, for a WASM_RT_KIND_HTTP module (the CGI fields
     * above are then its wasi:cli world: argv, WasmEnv, directories). */
    const char *method;
    const char *scheme;             /* "http" or "https" */
    const char *authority;          /* the request's Host */
    const char *path_with_query;    /* as the client sent it */
    const wasm_rt_field *headers;   /* hop-by-hop ones left out */
    size_t nheaders;
    uint32_t instance_reuse;        /* requests one instance may serve
                                     * (WasmInstanceReuse); 0 or 1: one */
    const char *reuse_scope;        /* instances are reused only among
                                     * requests of one scope (the virtual
                                     * host and section); NULL: "" */
    const char *const *allow_outbound;  /* WasmAllowOutbound patterns: where
                                     * the guest's outgoing requests may go */
    size_t n_allow_outbound;        /* 0: nowhere */
} wasm_rt_request;

/* The result of one request, owned by the runtime until wasm_rt_response_free. */
typedef struct wasm_rt_response {
    int32_t code;                   /* a wasm_rt_code */
    int32_t http_status;            /* 200 on success, else the status to answer */
    int32_t exit_code;              /* the guest's exit status, -1 if it did not exit */
    int32_t stderr_truncated;       /* 1 when stderr was cut at its limit */
    const wasm_rt_chunk *out;       /* the guest's stdout (a CGI response) */
    size_t out_chunks;              /* not sent through send_output, in this */
    size_t out_len;                 /* many non-empty chunks, this many bytes */
    uint64_t streamed;              /* bytes sent through io.send_output */
    const unsigned char *err;       /* the guest's stderr */
    size_t err_len;
    const char *message;            /* what went wrong; "" on success; never NULL */
    const char *notes;              /* lines for the error log besides stderr
                                     * (a refused outgoing request, the
                                     * target without its path); "" when
                                     * none; never NULL */
} wasm_rt_response;

/* The runtime's version, e.g. "0.1.0 (wasmtime 48.0.8)". Static storage. */
const char *wasm_rt_version(void);

/*
 * The version of this interface. It changes with any change to a prototype
 * or a struct here; mod_wasm.so refuses to start with a libwasm_runtime.so
 * whose wasm_rt_abi_version() differs from the WASM_RT_ABI_VERSION it was
 * compiled with (a mismatched pair would misread arguments, not fail).
 */
#define WASM_RT_ABI_VERSION 9
uint32_t wasm_rt_abi_version(void);

/*
 * The defaults of the directives whose value the runtime decides, defined
 * once, in the runtime: a request's limit left at 0 gets these, and the C
 * side reads the one it applies itself (WasmCacheMaxAge) from here.
 */
typedef struct wasm_rt_defaults {
    uint64_t timeout_ms;            /* WasmTimeout */
    uint64_t max_memory;            /* WasmMaxMemory, bytes */
    uint64_t max_output;            /* WasmMaxOutput, bytes */
    uint64_t cache_max_age_ms;      /* WasmCacheMaxAge */
    uint32_t max_open_files;        /* WasmMaxOpenFiles */
} wasm_rt_defaults;

/* Stores the defaults in `*out` (when not NULL). */
void wasm_rt_defaults_get(wasm_rt_defaults *out);

/* Releases a message returned through a `char **error` parameter. */
void wasm_rt_string_free(char *s);

/* What to compile, and how (wasm_rt_precompile). */
typedef struct wasm_rt_compile_options {
    const char *wasm_path;
    const char *cache_dir;
    int32_t trap_unknown_imports;   /* 1: imports mod_wasm does not provide
                                     * become functions that trap */
    int32_t concurrency;            /* 1: for engines with the component
                                     * model's concurrency (see
                                     * wasm_rt_needs_concurrency) */
} wasm_rt_compile_options;

/* What wasm_rt_precompile produced. */
typedef struct wasm_rt_compiled {
    char *cwasm_path;               /* the entry (wasm_rt_string_free) */
    int32_t cwasm_fd;               /* the entry, open: the caller closes it */
    int32_t cache_hit;              /* 1 if nothing was compiled */
    uint64_t millis;                /* time taken */
    char *replaced;                 /* NULL, or why an existing entry was
                                     * compiled again (wasm_rt_string_free) */
} wasm_rt_compiled;

/*
 * Compiles `opts->wasm_path` into `opts->cache_dir` unless an intact,
 * up-to-date entry exists, in a forked child process so that the caller
 * (Apache's parent) keeps no Wasmtime state, signal handlers or threads,
 * and checks that mod_wasm can link it. An entry whose contents do not
 * match the digest recorded when it was written is never used: it is
 * compiled again, or the call fails naming it when it cannot be replaced.
 *
 * On success `*out` holds the entry's path and a read-only, close-on-exec
 * descriptor of it, opened and checked against its digest in the calling
 * process: children that inherit it load the module from it (see
 * wasm_rt_runtime_new), so the name may be deleted or replaced meanwhile.
 * `replaced` is worth a warning. On failure `*out` holds NULLs and -1.
 */
int32_t wasm_rt_precompile(const wasm_rt_compile_options *opts,
                           wasm_rt_compiled *out, char **error);

/*
 * Sets `*out` to 1 if the module at `wasm_path` is a component exporting
 * wasi:http/handler@0.3: it needs engines with the component model's
 * concurrency, which slows every other component's calls, so a server turns
 * it on (for every module, compiled and run) only when a module needs it.
 * Reads the file's exports without compiling it: safe in Apache's parent.
 */
int32_t wasm_rt_needs_concurrency(const char *wasm_path, int32_t *out,
                                  char **error);

/*
 * Removes the `.cwasm` entries of `cache_dir` that are not among the `n`
 * paths `keep` and were last used more than `max_age_ms` ago, with their
 * digest records, and leftovers of interrupted compilations; `*removed`
 * receives the number of entries removed. Does not create any Wasmtime
 * state: safe in Apache's parent.
 */
int32_t wasm_rt_cache_prune(const char *cache_dir, const char *const *keep,
                            size_t n, uint64_t max_age_ms, uint32_t *removed,
                            char **error);

/*
 * Parses a size with an optional K, M or G suffix (powers of 1024) into
 * `*out` bytes. Fails for 0, garbage and overflow, with a message.
 */
int32_t wasm_rt_parse_size(const char *text, uint64_t *out, char **error);

/*
 * Checks one WasmAllowOutbound pattern (scheme://host[:port], where the
 * scheme may be *, the host * or *.domain, the port *); the error says
 * what is wrong with it.
 */
int32_t wasm_rt_outbound_check(const char *pattern, char **error);

/* One module a child loads (wasm_rt_runtime_options). */
typedef struct wasm_rt_module_spec {
    const char *cwasm_path;         /* its cache entry */
    int32_t cwasm_fd;               /* that entry, open (from
                                     * wasm_rt_precompile; duplicated, not
                                     * taken), or -1 to open it by path */
    int32_t trap_unknown_imports;   /* as it was compiled */
    const char *name;               /* how log messages name it */
} wasm_rt_module_spec;

/* What a child's runtime is built from. */
typedef struct wasm_rt_runtime_options {
    const wasm_rt_module_spec *modules;  /* module i is index i in wasm_rt_run */
    size_t n_modules;
    uint32_t slots;                 /* instance slots in all: the most
                                     * requests the child runs at once */
    uint32_t shards;                /* engines they are spread over; 0: one
                                     * per CPU, at most 8, at least two slots
                                     * each; never more than `slots` */
    int32_t concurrency;            /* 1: engines with the component model's
                                     * concurrency, as the modules were
                                     * compiled (wasm_rt_compile_options) */
    uint64_t keep_resident;         /* bytes of each memory and table a slot
                                     * keeps resident between instances
                                     * (WasmPoolKeepResident); 0: 128 KiB */
} wasm_rt_runtime_options;

/*
 * Creates the runtime of one child process: loads every module into each
 * shard's engine, whose instance pools share exactly `slots` slots, and
 * starts their epoch thread.
 */
int32_t wasm_rt_runtime_new(const wasm_rt_runtime_options *opts,
                            wasm_rt_runtime **out, char **error);

/*
 * Builds, in a forked child process, the runtime wasm_rt_runtime_new would
 * build with the same options, and throws it away: what would fail in
 * every child fails here, at configuration time. On failure `*module` is
 * the index of the module at fault, or -1 when the instance pool itself
 * cannot be reserved (the message then says how much address space
 * `slots` slots need and what `ulimit -v` allows).
 */
int32_t wasm_rt_runtime_check(const wasm_rt_runtime_options *opts,
                              int32_t *module, char **error);

/*
 * Stores in `*text` this child's status for `SetHandler wasm-status`:
 * `Key: value` lines (slots and requests per shard, requests turned away,
 * the C heap). Free it with wasm_rt_string_free.
 */
int32_t wasm_rt_status(const wasm_rt_runtime *rt, char **text, char **error);

/* Destroys a runtime; no request may be running. */
void wasm_rt_runtime_free(wasm_rt_runtime *rt);

/* How requests run a module, decided when it is loaded. */
typedef enum wasm_rt_kind {
    WASM_RT_KIND_COMMAND = 1,       /* a WASI preview-1 command, run CGI-style */
    WASM_RT_KIND_HTTP = 2           /* a wasi:http/proxy (0.2) component */
} wasm_rt_kind;

/* What a loaded module is. */
typedef struct wasm_rt_module_info {
    int32_t kind;                   /* a wasm_rt_kind */
    int32_t reads_env;              /* 1 when it imports WASI's environment
                                     * calls; one that does not can never
                                     * see an environment, so the caller may
                                     * skip building one */
} wasm_rt_module_info;

/* Stores what module `module` is in `*out`. */
int32_t wasm_rt_module_info_get(const wasm_rt_runtime *rt, size_t module,
                                wasm_rt_module_info *out);

/*
 * Runs module `module` for one request: a CGI request for a
 * WASM_RT_KIND_COMMAND, an HTTP request for a WASM_RT_KIND_HTTP (whose
 * response goes out through io.send_head and io.send_output only). Always stores a response in `*out`
 * (unless `out` is NULL), also on failure, and returns its code.
 * Safe to call from many threads at once.
 */
int32_t wasm_rt_run(const wasm_rt_runtime *rt, size_t module,
                    const wasm_rt_request *req, wasm_rt_response **out);

/* Releases a response and the output it points to. */
void wasm_rt_response_free(wasm_rt_response *resp);

/*
 * The server-wide metrics table: one block of shared memory the parent
 * creates (anonymous, zeroed, kept across graceful restarts) and lays out
 * with wasm_rt_metrics_create; wasm_rt_metrics_bind gives each configured
 * module an entry at every (re)start; each child joins it with
 * wasm_rt_metrics_open and counts every request with
 * wasm_rt_metrics_record, with atomics, no lock; any process reads it with
 * wasm_rt_metrics_render.
 */
typedef struct wasm_rt_metrics wasm_rt_metrics;

/* Where the table is and the sizes it was made with, kept by the caller
 * (in its own memory, never read back from the shared one, which any
 * child can write): a table whose header does not match them is refused. */
typedef struct wasm_rt_metrics_shm {
    void *base;                     /* zeroed and 8-byte aligned when made */
    size_t len;                     /* bytes */
    uint32_t modules;               /* module entries */
    uint32_t children;              /* child entries */
} wasm_rt_metrics_shm;

/* What identifies a module's entry: its section and its file. */
typedef struct wasm_rt_metrics_key {
    const char *location;           /* the <Location> (or other section) */
    const char *file;               /* the module's path */
} wasm_rt_metrics_key;

/* The forms wasm_rt_metrics_render writes. */
typedef enum wasm_rt_metrics_format {
    WASM_RT_METRICS_TEXT = 0,       /* "Key: value" lines (wasm-status) */
    WASM_RT_METRICS_JSON = 1,       /* one JSON object (wasm-status?json) */
    WASM_RT_METRICS_PROMETHEUS = 2, /* the Prometheus text format */
    WASM_RT_METRICS_STATUS_HTML = 3,/* a section of mod_status's page */
    WASM_RT_METRICS_STATUS_AUTO = 4 /* mod_status ?auto lines */
} wasm_rt_metrics_format;

/* The bytes of a table for `modules` modules and `children` children; 0
 * when no address space holds that many. */
size_t wasm_rt_metrics_size(uint32_t modules, uint32_t children);

/* Lays a table out in the zeroed memory `shm` describes. */
int32_t wasm_rt_metrics_create(const wasm_rt_metrics_shm *shm, char **error);

/* Starts a new generation and stores in entries[i] the entry of keys[i]
 * (the one it had before, whose counters it keeps, or a new one; -1 when
 * no entry is free: those of the last generation never are). The parent
 * only, between generations. */
int32_t wasm_rt_metrics_bind(const wasm_rt_metrics_shm *shm,
                             const wasm_rt_metrics_key *keys, size_t n,
                             int32_t *entries, char **error);

/* Joins the table as process `pid`; the table stays mapped as long as the
 * handle lives. */
int32_t wasm_rt_metrics_open(const wasm_rt_metrics_shm *shm, uint64_t pid,
                             wasm_rt_metrics **out, char **error);

/* Leaves the table and frees the handle. */
void wasm_rt_metrics_close(wasm_rt_metrics *m);

/* Counts one finished request of entry `entry` (-1: none), which ended
 * with runtime code `code` and went out with HTTP `status`, after
 * `run_us` in the runtime, and publishes this child's pool (from `rt`,
 * NULL: not). Returns the outcome's name (static storage), NULL when `m`
 * is NULL. */
const char *wasm_rt_metrics_record(const wasm_rt_metrics *m,
                                   const wasm_rt_runtime *rt, int32_t entry,
                                   int32_t code, int32_t status,
                                   uint64_t run_us, uint64_t bytes_in,
                                   uint64_t bytes_out);

/* The table as `format` (a wasm_rt_metrics_format), in `*out` (release
 * with wasm_rt_string_free). */
int32_t wasm_rt_metrics_render(const wasm_rt_metrics_shm *shm, int32_t format,
                               char **out, char **error);

#ifdef __cplusplus
}
#endif

#endif /* WASM_RUNTIME_H */
