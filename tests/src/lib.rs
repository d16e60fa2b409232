//! Harness for the end-to-end tests: starts a real Apache httpd with a
//! generated configuration on a free loopback port, talks HTTP to it, and
//! always stops it (by PID, in `Drop`, also when a test fails).
//!
//! The artifacts under test come from `make all`: `build/mod_wasm.so`,
//! `build/libwasm_runtime.so` and the guests in `build/guests/`.

pub mod apache;
pub mod http;
pub mod status;
pub mod upstream;

use std::path::PathBuf;

/// The repository's root directory.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Path of a guest built from `guests/<name>.c`.
pub fn guest(name: &str) -> PathBuf {
    let p = root().join("build/guests").join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run `make all` first",
        p.display()
    );
    p
}
