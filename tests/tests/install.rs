//! `make install` into a scratch root: the installed module loads with
//! `LoadModule` alone and serves requests; the Debian files are in place.

use std::fs;
use std::process::Command;

use e2e::apache::{scratch_dir, Apache, Options};
use e2e::http::get;
use e2e::root;

#[test]
fn make_install_with_destdir_gives_a_loadable_module() {
    let dest = scratch_dir("install");
    let st = Command::new("make")
        .arg("-s")
        .arg("install")
        .arg(format!("DESTDIR={}", dest.display()))
        .current_dir(root())
        .status()
        .unwrap();
    assert!(st.success());
    let libexec = String::from_utf8(
        Command::new("apxs")
            .args(["-q", "LIBEXECDIR"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let moddir = dest.join(libexec.trim().trim_start_matches('/'));
    assert!(moddir.join("mod_wasm.so").is_file());
    assert!(moddir.join("libwasm_runtime.so").is_file());
    let load = fs::read_to_string(dest.join("etc/apache2/mods-available/wasm.load")).unwrap();
    assert!(
        load.contains(&format!(
            "LoadModule wasm_module {}/mod_wasm.so",
            libexec.trim()
        )),
        "{load}"
    );
    assert!(dest.join("etc/apache2/mods-available/wasm.conf").is_file());
    let tool = dest.join("usr/local/bin/mod_wasm-precompile");
    let engine = Command::new(&tool).arg("--engine").output().unwrap();
    assert!(
        engine.status.success() && String::from_utf8_lossy(&engine.stdout).starts_with("wasmtime="),
        "{}",
        tool.display()
    );

    // The installed copy, loaded from where it was installed, with no
    // LD_LIBRARY_PATH (the harness removes it): the rpath finds the runtime.
    let mut opts = Options::new("<Location /hello>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/hello.wasm\n</Location>\n");
    opts.module = Some(moddir.join("mod_wasm.so"));
    let s = Apache::start_with(opts);
    assert_eq!(get(s.port, "/hello").body, b"Hello, World!");
    drop(s);
    let _ = fs::remove_dir_all(&dest);
}
