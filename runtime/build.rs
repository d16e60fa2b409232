//! Link flags for the shared library Apache loads.

fn main() {
    // Apache unloads and reloads modules on restart. This library has
    // threads and thread-local destructors, so it must never be unmapped.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libwasm_runtime.so");
    println!("cargo:rerun-if-changed=build.rs");
    // Cache records say which Wasmtime compiled an entry; the version is
    // the one Cargo.lock resolved, so nothing is written twice.
    let lock = std::fs::read_to_string("../Cargo.lock").expect("Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"wasmtime\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("wasmtime in Cargo.lock");
    println!("cargo:rustc-env=MOD_WASM_WASMTIME_VERSION={version}");
    println!("cargo:rerun-if-changed=../Cargo.lock");
}
