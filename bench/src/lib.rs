//! Shared set-up for the runtime benchmarks: guests built by `make all`,
//! compiled into a cache for each engine variant, and CGI-like requests.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use wasm_runtime::cache::{precompile_with, Options};
use wasm_runtime::cgi::EnvVar;
use wasm_runtime::engine::EngineOptions;
use wasm_runtime::{Body, ModuleSpec, Request, Runtime, RuntimeOptions};

/// A guest from `build/guests/`; run `make all` first.
pub fn guest(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../build/guests")
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run `make all` first",
        p.display()
    );
    p
}

/// Measures as production runs: `RUST_BACKTRACE` (often set on developer
/// machines) makes every `wasmtime::Error`, a guest's `proc_exit` included,
/// capture a backtrace. Must run before the first error is created.
fn production_env() {
    std::env::remove_var("RUST_BACKTRACE");
    std::env::remove_var("RUST_LIB_BACKTRACE");
}

/// A runtime with the given guests and `slots` slots, for engine variant
/// `engine`.
pub fn runtime(guests: &[&str], slots: u32, engine: EngineOptions) -> Runtime {
    runtime_with(
        guests,
        RuntimeOptions {
            engine,
            ..RuntimeOptions::with_slots(slots)
        },
    )
}

/// A runtime with the given guests, built as `options` say.
pub fn runtime_with(guests: &[&str], options: RuntimeOptions) -> Runtime {
    production_env();
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/bench-cache");
    let specs: Vec<_> = guests
        .iter()
        .map(|g| ModuleSpec {
            cwasm: precompile_with(
                &guest(g),
                &cache,
                &Options {
                    engine: options.engine,
                    ..Options::default()
                },
            )
            .unwrap()
            .cwasm,
            name: g.to_string(),
            trap_unknown_imports: false,
        })
        .collect();
    Runtime::new(&specs, &options).unwrap()
}

/// A runtime with one interpreter from `build/interp/` (`make all` fetches
/// them), optionally linking unknown imports as traps.
pub fn interpreter(name: &str, trap_unknown_imports: bool) -> Runtime {
    let wasm = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../build/interp")
        .join(format!("{name}.wasm"));
    assert!(
        wasm.is_file(),
        "{} is missing: run `make all` first",
        wasm.display()
    );
    runtime_for(&wasm, trap_unknown_imports, 4, None)
}

/// A production-flavoured runtime with `slots` instance slots in `shards`
/// engines (`None`: as a server child would choose) and the module at
/// `wasm`, optionally linking unknown imports as traps.
pub fn runtime_for(
    wasm: &Path,
    trap_unknown_imports: bool,
    slots: u32,
    shards: Option<u32>,
) -> Runtime {
    production_env();
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/bench-cache");
    let opts = Options {
        trap_unknown_imports,
        ..Options::default()
    };
    let compiled = precompile_with(wasm, &cache, &opts).unwrap();
    let spec = ModuleSpec {
        cwasm: compiled.cwasm,
        name: wasm
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into(),
        trap_unknown_imports,
    };
    let options = RuntimeOptions {
        shards,
        ..RuntimeOptions::with_slots(slots)
    };
    Runtime::new(&[spec], &options).unwrap()
}

/// A request with `n_env` environment variables shaped like Apache's CGI
/// variables, the query string `query`, and `body` as stdin.
pub fn request(n_env: usize, query: &str, body: Bytes) -> Request<'static> {
    // Owned, as the figures in the README were measured: the server now
    // lends its strings instead, so this slightly overstates its cost.
    let mut env: Vec<EnvVar<'static>> = [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_METHOD", "GET"),
        ("QUERY_STRING", query),
        ("REQUEST_URI", "/hello"),
        ("SCRIPT_NAME", "/hello"),
        ("PATH_INFO", ""),
        ("SERVER_NAME", "127.0.0.1"),
        ("SERVER_PORT", "8080"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "53211"),
        ("HTTP_HOST", "127.0.0.1:8080"),
        ("HTTP_USER_AGENT", "wrk"),
        ("HTTP_ACCEPT", "*/*"),
        ("SERVER_SOFTWARE", "Apache/2.4.71 (Debian) mod_wasm/0.1"),
        ("DOCUMENT_ROOT", "/var/www/html"),
        ("REQUEST_SCHEME", "http"),
        ("CONTEXT_PREFIX", ""),
        ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_ADMIN", "webmaster@localhost"),
        ("SCRIPT_FILENAME", "/srv/wasm/hello.wasm"),
        ("SERVER_SIGNATURE", ""),
    ]
    .iter()
    .map(|(k, v)| (k.as_bytes().to_vec().into(), v.as_bytes().to_vec().into()))
    .collect();
    env.truncate(n_env);
    while env.len() < n_env {
        env.push((
            format!("HTTP_X_EXTRA_{}", env.len()).into_bytes().into(),
            b"some header value of moderate length".to_vec().into(),
        ));
    }
    Request {
        args: vec!["guest.wasm".into()],
        env,
        body: Body::Bytes(body),
        ..Request::default()
    }
}
