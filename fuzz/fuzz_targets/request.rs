//! Fuzzes the runtime's request entry point: arbitrary module bytes,
//! environment, arguments and body must give a result or an error, never a
//! crash, a hang past the time limit, or a panic.
//!
//!   cd fuzz && cargo fuzz run request -- -max_total_time=600

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wasm_runtime::cache::precompile;
use wasm_runtime::{Limits, ModuleSpec, Request, Runtime};

#[derive(Debug, Arbitrary)]
struct Input {
    /// Raw module bytes, or a mutation of a valid module when `use_valid`.
    module: Vec<u8>,
    use_valid: bool,
    env: Vec<(String, String)>,
    args: Vec<String>,
    body: Vec<u8>,
    entry: Option<String>,
}

/// A small valid WASI module that echoes stdin and reads its environment.
const VALID: &[u8] = include_bytes!("../../build/guests/echo.wasm");

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("mod_wasm-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fuzz_target!(|input: Input| {
    let bytes = if input.use_valid { VALID.to_vec() } else { input.module };
    let path = dir().join("m.wasm");
    std::fs::write(&path, &bytes).unwrap();
    let Ok(compiled) = precompile(&path, &dir().join("cache")) else {
        return;
    };
    let Ok(rt) = Runtime::new(
        &[ModuleSpec {
            cwasm: compiled.cwasm,
            name: "fuzz".into(),
            trap_unknown_imports: false,
        }],
        2,
    ) else {
        return;
    };
    let outcome = rt.run(
        0,
        Request {
            args: input.args,
            env: input
                .env
                .into_iter()
                .map(|(k, v)| (k.into_bytes().into(), v.into_bytes().into()))
                .collect(),
            body: wasm_runtime::Body::Bytes(bytes::Bytes::from(input.body)),
            entry: input.entry,
            limits: Limits {
                timeout: Duration::from_millis(200),
                max_memory: 16 << 20,
                max_output: 1 << 20,
                ..Limits::default()
            },
            ..Request::default()
        },
    );
    // Whatever happened, the outcome is well-formed.
    assert!(outcome.stdout.len() <= 1 << 20);
});
