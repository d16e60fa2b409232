//! Fuzzes the runtime's request path with modules close to a valid one
//! (the echo guest with bytes overwritten), raw bytes, and arbitrary
//! environment, arguments, body and entry point; `src/property.rs` says
//! what must hold for each.
//!
//!   make all && cd fuzz && cargo +nightly fuzz run request -- -max_total_time=600

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[path = "../src/property.rs"]
mod property;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Bytes written over the valid module (ignored when `raw` is set).
    edits: Vec<(u32, u8)>,
    /// A module of raw bytes instead.
    raw: Option<Vec<u8>>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    body: Vec<u8>,
    entry: Option<String>,
}

/// A small valid WASI command that echoes stdin.
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
    let (module, unmutated) = match input.raw {
        Some(raw) => (raw, false),
        None => (
            property::mutate(VALID, &input.edits),
            input.edits.iter().all(|&(at, b)| VALID[at as usize % VALID.len()] == b),
        ),
    };
    let _ = property::check(
        dir(),
        property::Case {
            module,
            unmutated,
            env: input.env,
            args: input.args,
            body: input.body,
            entry: input.entry,
        },
    );
});
