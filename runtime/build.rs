//! Link flags for the shared library Apache loads.

fn main() {
    // Apache unloads and reloads modules on restart. This library has
    // threads and thread-local destructors, so it must never be unmapped.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libwasm_runtime.so");
    println!("cargo:rerun-if-changed=build.rs");
}
