//! Keeps `include/wasm_runtime.h` and `src/ffi.rs` in sync: constants,
//! prototypes, and struct layouts (the latter by compiling a probe against
//! the header with the system C compiler).

use std::ffi::c_char;
use std::mem::{offset_of, size_of};
use std::path::Path;
use std::process::Command;

use wasm_runtime::ffi::*;
use wasm_runtime::Code;

fn header() -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("include/wasm_runtime.h"),
    )
    .unwrap();
    // Drop comments and collapse whitespace so prototypes compare as text.
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        rest = &rest[i + rest[i..].find("*/").unwrap() + 2..];
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn c_code_name(c: Code) -> String {
    let rust = format!("{c:?}");
    let mut snake = String::new();
    for (i, ch) in rust.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(ch.to_ascii_uppercase());
    }
    if c == Code::Ok {
        "WASM_RT_OK".into()
    } else {
        format!("WASM_RT_E_{snake}")
    }
}

#[test]
fn the_defaults_the_c_side_reads_are_the_runtimes() {
    use wasm_runtime::limits::*;
    let mut d = std::mem::MaybeUninit::<wasm_rt_defaults>::uninit();
    // SAFETY: a valid pointer to write to.
    let d = unsafe {
        wasm_rt_defaults_get(d.as_mut_ptr());
        d.assume_init()
    };
    assert_eq!(d.timeout_ms, DEFAULT_TIMEOUT.as_millis() as u64);
    assert_eq!(d.max_memory, DEFAULT_MAX_MEMORY as u64);
    assert_eq!(d.max_output, DEFAULT_MAX_OUTPUT as u64);
    assert_eq!(d.cache_max_age_ms, DEFAULT_CACHE_MAX_AGE.as_millis() as u64);
    assert_eq!(d.max_open_files, DEFAULT_MAX_OPEN_FILES);
}

#[test]
fn abi_version_matches() {
    let decl = format!("#define WASM_RT_ABI_VERSION {ABI_VERSION}");
    assert!(header().contains(&decl), "header lacks `{decl}`");
}

/// The interface when `WASM_RT_ABI_VERSION` was last decided: the version
/// and the first 16 hex digits of the SHA-256 of the header without
/// comments, whitespace collapsed.
const DECIDED: (u32, &str) = (9, "e2af4e47a28d11f3");

#[test]
fn a_changed_interface_gets_a_decided_version() {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(header().as_bytes());
    let now: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        DECIDED == (ABI_VERSION, now.as_str()),
        "the C interface changed: if a mod_wasm.so built before would misread it, bump \
         WASM_RT_ABI_VERSION (header) and ffi::ABI_VERSION; then set DECIDED to \
         ({ABI_VERSION}, \"{now}\")"
    );
}

#[test]
fn codes_match() {
    let h = header();
    for c in Code::ALL {
        let decl = format!("{} = {}", c_code_name(c), c as i32);
        assert!(h.contains(&decl), "header lacks `{decl}`");
    }
    assert_eq!(
        h.matches("WASM_RT_E_").count(),
        Code::ALL.len() - 1,
        "header has codes Rust lacks"
    );
}

#[test]
fn prototypes_match() {
    // Each pair ties a prototype in the header to the Rust function, whose
    // type the compiler checks against the `as` cast's signature.
    let protos: &[(&str, usize)] = &[
        ("const char *wasm_rt_version(void);", wasm_rt_version as extern "C" fn() -> *const c_char as usize),
        ("uint32_t wasm_rt_abi_version(void);", wasm_rt_abi_version as extern "C" fn() -> u32 as usize),
        (
            "void wasm_rt_defaults_get(wasm_rt_defaults *out);",
            wasm_rt_defaults_get as unsafe extern "C" fn(*mut wasm_rt_defaults) as usize,
        ),
        ("void wasm_rt_string_free(char *s);", wasm_rt_string_free as unsafe extern "C" fn(*mut c_char) as usize),
        (
            "int32_t wasm_rt_precompile(const wasm_rt_compile_options *opts, wasm_rt_compiled *out, char **error);",
            wasm_rt_precompile
                as unsafe extern "C" fn(*const wasm_rt_compile_options, *mut wasm_rt_compiled, *mut *mut c_char) -> i32
                as usize,
        ),
        (
            "int32_t wasm_rt_needs_concurrency(const char *wasm_path, int32_t *out, char **error);",
            wasm_rt_needs_concurrency as unsafe extern "C" fn(*const c_char, *mut i32, *mut *mut c_char) -> i32
                as usize,
        ),
        (
            "int32_t wasm_rt_cache_prune(const char *cache_dir, const char *const *keep, size_t n, uint64_t max_age_ms, uint32_t *removed, char **error);",
            wasm_rt_cache_prune
                as unsafe extern "C" fn(*const c_char, *const *const c_char, usize, u64, *mut u32, *mut *mut c_char) -> i32
                as usize,
        ),
        (
            "int32_t wasm_rt_parse_size(const char *text, uint64_t *out, char **error);",
            wasm_rt_parse_size as unsafe extern "C" fn(*const c_char, *mut u64, *mut *mut c_char) -> i32 as usize,
        ),
        (
            "int32_t wasm_rt_runtime_new(const wasm_rt_runtime_options *opts, wasm_rt_runtime **out, char **error);",
            wasm_rt_runtime_new
                as unsafe extern "C" fn(*const wasm_rt_runtime_options, *mut *mut wasm_rt_runtime, *mut *mut c_char) -> i32
                as usize,
        ),
        (
            "int32_t wasm_rt_runtime_check(const wasm_rt_runtime_options *opts, int32_t *module, char **error);",
            wasm_rt_runtime_check
                as unsafe extern "C" fn(*const wasm_rt_runtime_options, *mut i32, *mut *mut c_char) -> i32
                as usize,
        ),
        (
            "int32_t wasm_rt_status(const wasm_rt_runtime *rt, char **text, char **error);",
            wasm_rt_status as unsafe extern "C" fn(*const wasm_rt_runtime, *mut *mut c_char, *mut *mut c_char) -> i32 as usize,
        ),
        ("void wasm_rt_runtime_free(wasm_rt_runtime *rt);", wasm_rt_runtime_free as unsafe extern "C" fn(*mut wasm_rt_runtime) as usize),
        (
            "int32_t wasm_rt_module_info_get(const wasm_rt_runtime *rt, size_t module, wasm_rt_module_info *out);",
            wasm_rt_module_info_get as unsafe extern "C" fn(*const wasm_rt_runtime, usize, *mut wasm_rt_module_info) -> i32 as usize,
        ),
        (
            "int32_t wasm_rt_run(const wasm_rt_runtime *rt, size_t module, const wasm_rt_request *req, wasm_rt_response **out);",
            wasm_rt_run
                as unsafe extern "C" fn(*const wasm_rt_runtime, usize, *const wasm_rt_request, *mut *mut wasm_rt_response) -> i32
                as usize,
        ),
        (
            "int32_t wasm_rt_outbound_check(const char *pattern, char **error);",
            wasm_rt_outbound_check as unsafe extern "C" fn(*const c_char, *mut *mut c_char) -> i32 as usize,
        ),
        (
            "size_t wasm_rt_metrics_size(uint32_t modules, uint32_t children);",
            wasm_rt_metrics_size as extern "C" fn(u32, u32) -> usize as usize,
        ),
        (
            "int32_t wasm_rt_metrics_create(const wasm_rt_metrics_shm *shm, char **error);",
            wasm_rt_metrics_create as unsafe extern "C" fn(*const wasm_rt_metrics_shm, *mut *mut c_char) -> i32 as usize,
        ),
        (
            "int32_t wasm_rt_metrics_bind(const wasm_rt_metrics_shm *shm, const wasm_rt_metrics_key *keys, size_t n, int32_t *entries, char **error);",
            wasm_rt_metrics_bind
                as unsafe extern "C" fn(*const wasm_rt_metrics_shm, *const wasm_rt_metrics_key, usize, *mut i32, *mut *mut c_char) -> i32
                as usize,
        ),
        (
            "int32_t wasm_rt_metrics_open(const wasm_rt_metrics_shm *shm, uint64_t pid, wasm_rt_metrics **out, char **error);",
            wasm_rt_metrics_open
                as unsafe extern "C" fn(*const wasm_rt_metrics_shm, u64, *mut *mut wasm_rt_metrics, *mut *mut c_char) -> i32
                as usize,
        ),
        (
            "void wasm_rt_metrics_close(wasm_rt_metrics *m);",
            wasm_rt_metrics_close as unsafe extern "C" fn(*mut wasm_rt_metrics) as usize,
        ),
        (
            "const char *wasm_rt_metrics_record(const wasm_rt_metrics *m, const wasm_rt_runtime *rt, int32_t entry, int32_t code, int32_t status, uint64_t run_us, uint64_t bytes_in, uint64_t bytes_out);",
            wasm_rt_metrics_record
                as unsafe extern "C" fn(*const wasm_rt_metrics, *const wasm_rt_runtime, i32, i32, i32, u64, u64, u64) -> *const c_char
                as usize,
        ),
        (
            "int32_t wasm_rt_metrics_render(const wasm_rt_metrics_shm *shm, int32_t format, char **out, char **error);",
            wasm_rt_metrics_render
                as unsafe extern "C" fn(*const wasm_rt_metrics_shm, i32, *mut *mut c_char, *mut *mut c_char) -> i32 as usize,
        ),
        ("void wasm_rt_response_free(wasm_rt_response *resp);", wasm_rt_response_free as unsafe extern "C" fn(*mut wasm_rt_response) as usize),
    ];
    // The casts above are the type check; here each prototype is found.
    let h = header();
    for (proto, _) in protos {
        assert!(h.contains(proto), "header lacks `{proto}`");
    }
    // Statements that declare a function: those with a `(` that are not
    // typedefs (the callback members of `wasm_rt_io` are inside one).
    let mut depth = 0usize;
    let mut fns = Vec::new();
    let mut stmt = String::new();
    for ch in h.chars() {
        match ch {
            '{' if stmt.contains("typedef") => depth += 1,
            '}' if depth > 0 => depth -= 1,
            ';' if depth == 0 => {
                let s = std::mem::take(&mut stmt);
                if s.contains("wasm_rt_") && s.contains('(') && !s.contains("typedef") {
                    fns.push(s.trim().to_string());
                }
                continue;
            }
            // `extern "C" {` and its end.
            '{' | '}' => {
                stmt.clear();
                continue;
            }
            _ => {}
        }
        if depth == 0 {
            stmt.push(ch);
        }
    }
    let unknown: Vec<_> = fns
        .iter()
        .filter(|f| {
            !protos
                .iter()
                .any(|(p, _)| f.contains(p.trim_end_matches(';')))
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "header declares functions this test does not know: {unknown:?}"
    );
    assert_eq!(fns.len(), protos.len(), "{fns:?}");
}

/// Offsets and sizes as the C compiler sees them.
fn c_layout() -> String {
    let dir = wasm_runtime::scratch::Scratch::new("header");
    let src = dir.join("probe.c");
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"wasm_runtime.h\"\nint main(void){\n",
    );
    for (s, fields) in FIELDS {
        c += &format!("printf(\"{s} %zu\\n\", sizeof({s}));\n");
        for f in *fields {
            c += &format!("printf(\"{s}.{f} %zu\\n\", offsetof({s}, {f}));\n");
        }
    }
    c += "return 0;}\n";
    std::fs::write(&src, c).unwrap();
    let exe = dir.join("probe");
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let st = Command::new("cc")
        .arg("-I")
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("a C compiler (cc) is needed to check the header");
    assert!(st.success());
    String::from_utf8(Command::new(&exe).output().unwrap().stdout).unwrap()
}

const FIELDS: &[(&str, &[&str])] = &[
    ("wasm_rt_dir", &["guest_path", "host_path", "read_only"]),
    (
        "wasm_rt_compile_options",
        &[
            "wasm_path",
            "cache_dir",
            "trap_unknown_imports",
            "concurrency",
        ],
    ),
    (
        "wasm_rt_compiled",
        &["cwasm_path", "cwasm_fd", "cache_hit", "millis", "replaced"],
    ),
    (
        "wasm_rt_module_spec",
        &["cwasm_path", "cwasm_fd", "trap_unknown_imports", "name"],
    ),
    (
        "wasm_rt_runtime_options",
        &[
            "modules",
            "n_modules",
            "slots",
            "shards",
            "concurrency",
            "keep_resident",
        ],
    ),
    ("wasm_rt_module_info", &["kind", "reads_env"]),
    (
        "wasm_rt_metrics_shm",
        &["base", "len", "modules", "children"],
    ),
    ("wasm_rt_metrics_key", &["location", "file"]),
    ("wasm_rt_chunk", &["data", "len"]),
    ("wasm_rt_field", &["name", "name_len", "value", "value_len"]),
    (
        "wasm_rt_defaults",
        &[
            "timeout_ms",
            "max_memory",
            "max_output",
            "cache_max_age_ms",
            "max_open_files",
        ],
    ),
    (
        "wasm_rt_io",
        &[
            "ctx",
            "read_body",
            "send_output",
            "send_head",
            "send_trailers",
        ],
    ),
    (
        "wasm_rt_request",
        &[
            "argv",
            "argc",
            "env_names",
            "env_values",
            "envc",
            "dirs",
            "ndirs",
            "entry_point",
            "io",
            "timeout_ms",
            "max_memory",
            "max_output",
            "max_open_files",
            "method",
            "scheme",
            "authority",
            "path_with_query",
            "headers",
            "nheaders",
            "instance_reuse",
            "reuse_scope",
            "allow_outbound",
            "n_allow_outbound",
        ],
    ),
    (
        "wasm_rt_response",
        &[
            "code",
            "http_status",
            "exit_code",
            "stderr_truncated",
            "out",
            "out_chunks",
            "out_len",
            "streamed",
            "err",
            "err_len",
            "message",
            "notes",
        ],
    ),
];

macro_rules! rust_layout {
    ($out:ident, $t:ident, $($f:ident),*) => {{
        $out += &format!("{} {}\n", stringify!($t), size_of::<$t>());
        $( $out += &format!("{}.{} {}\n", stringify!($t), stringify!($f), offset_of!($t, $f)); )*
    }};
}

#[test]
fn struct_layouts_match() {
    let mut rust = String::new();
    rust_layout!(rust, wasm_rt_dir, guest_path, host_path, read_only);
    rust_layout!(
        rust,
        wasm_rt_compile_options,
        wasm_path,
        cache_dir,
        trap_unknown_imports,
        concurrency
    );
    rust_layout!(
        rust,
        wasm_rt_compiled,
        cwasm_path,
        cwasm_fd,
        cache_hit,
        millis,
        replaced
    );
    rust_layout!(
        rust,
        wasm_rt_module_spec,
        cwasm_path,
        cwasm_fd,
        trap_unknown_imports,
        name
    );
    rust_layout!(
        rust,
        wasm_rt_runtime_options,
        modules,
        n_modules,
        slots,
        shards,
        concurrency,
        keep_resident
    );
    rust_layout!(rust, wasm_rt_module_info, kind, reads_env);
    rust_layout!(rust, wasm_rt_metrics_shm, base, len, modules, children);
    rust_layout!(rust, wasm_rt_metrics_key, location, file);
    rust_layout!(rust, wasm_rt_chunk, data, len);
    rust_layout!(rust, wasm_rt_field, name, name_len, value, value_len);
    rust_layout!(
        rust,
        wasm_rt_defaults,
        timeout_ms,
        max_memory,
        max_output,
        cache_max_age_ms,
        max_open_files
    );
    rust_layout!(
        rust,
        wasm_rt_io,
        ctx,
        read_body,
        send_output,
        send_head,
        send_trailers
    );
    rust_layout!(
        rust,
        wasm_rt_request,
        argv,
        argc,
        env_names,
        env_values,
        envc,
        dirs,
        ndirs,
        entry_point,
        io,
        timeout_ms,
        max_memory,
        max_output,
        max_open_files,
        method,
        scheme,
        authority,
        path_with_query,
        headers,
        nheaders,
        instance_reuse,
        reuse_scope,
        allow_outbound,
        n_allow_outbound
    );
    rust_layout!(
        rust,
        wasm_rt_response,
        code,
        http_status,
        exit_code,
        stderr_truncated,
        out,
        out_chunks,
        out_len,
        streamed,
        err,
        err_len,
        message,
        notes
    );
    assert_eq!(c_layout(), rust);
}

/// The structs the header defines, each with its fields in order, read from
/// the header itself: `FIELDS` must list every one of them, so that a
/// struct or a field added to both sides cannot escape the layout check.
fn header_structs() -> Vec<(String, Vec<String>)> {
    let h = header();
    let mut out = Vec::new();
    let mut rest = h.as_str();
    while let Some(i) = rest.find("typedef struct ") {
        rest = &rest[i + "typedef struct ".len()..];
        let name = rest.split_whitespace().next().unwrap().to_string();
        let Some(open) = rest.find('{').filter(|&o| !rest[..o].contains(';')) else {
            continue; // an opaque type
        };
        let close = rest.find('}').unwrap();
        let fields = rest[open + 1..close]
            .split(';')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(|f| {
                // `int64_t (*read_body)(...)` is named inside its first
                // parentheses; anything else by its last word.
                match f.find("(*") {
                    Some(p) => f[p + 2..f[p..].find(')').unwrap() + p].to_string(),
                    None => f.rsplit([' ', '*']).next().unwrap().to_string(),
                }
            })
            .collect();
        out.push((name, fields));
        rest = &rest[close..];
    }
    out
}

#[test]
fn the_layout_check_covers_every_struct_and_field_of_the_header() {
    let structs = header_structs();
    assert!(structs.len() >= 10, "{structs:?}");
    for (name, fields) in &structs {
        let listed = FIELDS
            .iter()
            .find(|(s, _)| s == name)
            .unwrap_or_else(|| panic!("FIELDS lacks struct {name}"));
        assert_eq!(
            listed.1.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            *fields,
            "fields of {name}"
        );
    }
    assert_eq!(
        FIELDS.len(),
        structs.len(),
        "FIELDS lists structs the header lacks"
    );
}

#[test]
fn kinds_match() {
    let h = header();
    for (name, kind) in KINDS {
        let decl = format!("{name} = {}", *kind as i32);
        assert!(h.contains(&decl), "header lacks `{decl}`");
    }
    assert_eq!(h.matches("WASM_RT_KIND_").count(), KINDS.len());
}

#[test]
fn metrics_formats_match() {
    let h = header();
    for (i, (name, _)) in FORMATS.iter().enumerate() {
        let decl = format!("{name} = {i}");
        assert!(h.contains(&decl), "header lacks `{decl}`");
    }
    assert_eq!(h.matches("WASM_RT_METRICS_").count(), FORMATS.len());
}
