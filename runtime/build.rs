//! Link flags for the shared library Apache loads.

fn main() {
    // Apache unloads and reloads modules on restart. This library has
    // threads and thread-local destructors, so it must never be unmapped.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libwasm_runtime.so");
    println!("cargo:rerun-if-changed=build.rs");
    // Cache records say which Wasmtime compiled an entry; the version is
    // the one Cargo.lock resolved, so nothing is written twice.
    let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let version = lines
        .windows(2)
        .find(|w| w[0] == "name = \"wasmtime\"")
        .and_then(|w| w[1].strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| {
            println!(
                "cargo:warning=no wasmtime in {}: records say unknown",
                lock.display()
            );
            "unknown".to_owned()
        });
    println!("cargo:rustc-env=MOD_WASM_WASMTIME_VERSION={version}");
    println!("cargo:rerun-if-changed=../Cargo.lock");
}
