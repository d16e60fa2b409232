//! Issue "Limits": filesystem isolation, credentials, and module changes
//! across graceful restarts.

use std::fs;
use std::path::{Path, PathBuf};

use e2e::apache::{scratch_dir, Apache, Options};
use e2e::guest;
use e2e::http::{get, Request};

#[test]
fn a_guest_sees_only_its_mapped_directories() {
    let d = scratch_dir("fs");
    fs::create_dir_all(d.join("data/sub")).unwrap();
    fs::create_dir_all(d.join("rw")).unwrap();
    fs::write(d.join("data/sub/file.txt"), "inside\n").unwrap();
    fs::write(d.join("secret.txt"), "outside\n").unwrap();
    // Children may run as www-data: let them write the rw directory.
    std::process::Command::new("chmod")
        .args(["0777"])
        .arg(d.join("rw"))
        .status()
        .unwrap();
    let site = format!(
        "<Location /fs>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/fs.wasm\n  WasmMapDir /data {0}/data ro\n  WasmMapDir /rw {0}/rw\n</Location>\n",
        d.display()
    );
    let s = Apache::start(&site);
    let read = |p: &str| get(s.port, &format!("/fs?read={p}")).text();
    let write = |p: &str| get(s.port, &format!("/fs?write={p}")).text();
    assert_eq!(read("/data/sub/file.txt"), "inside\n");
    assert_eq!(read("/data/sub/../sub/file.txt"), "inside\n");
    for escape in [
        "/data/../secret.txt",
        "/data/sub/../../secret.txt",
        "/etc/passwd",
        &format!("{}/secret.txt", d.display()),
    ] {
        let t = read(escape);
        assert!(t.starts_with("error:"), "{escape} was readable: {t}");
    }
    assert!(
        write("/data/new.txt").starts_with("error:"),
        "a read-only mapping was writable"
    );
    assert!(!d.join("data/new.txt").exists());
    assert_eq!(write("/rw/new.txt"), "ok\n");
    assert_eq!(
        fs::read_to_string(d.join("rw/new.txt")).unwrap(),
        "written\n"
    );
    drop(s);
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn authorization_reaches_the_guest_only_with_cgi_pass_auth() {
    let site =
        "<Location /env>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/env.wasm\n</Location>\n\
                <Location /env/auth>\n  CGIPassAuth On\n</Location>\n";
    let s = Apache::start(site);
    let with = |path: &str| {
        let r = Request::new("GET", path)
            .header("Authorization", "Bearer t0ken")
            .send(s.port)
            .unwrap();
        assert_eq!(r.status, 200, "{path}");
        r.text()
    };
    // The guest ran and saw the request's variables, only not this one.
    let plain = with("/env/plain");
    assert!(plain.contains("REQUEST_URI=/env/plain"), "{plain}");
    assert!(
        !plain.contains("t0ken") && !plain.contains("HTTP_AUTHORIZATION"),
        "{plain}"
    );
    assert!(with("/env/auth").contains("HTTP_AUTHORIZATION=Bearer t0ken"));
}

/// The cache entries in `cache` (their digest records left out).
fn entries(cache: &Path) -> Vec<PathBuf> {
    fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect()
}

#[test]
fn replacing_a_module_and_restarting_serves_the_new_one() {
    let d = scratch_dir("replace");
    let cache = d.join("cache");
    let app = d.join("app.wasm");
    fs::copy(guest("hello"), &app).unwrap();
    let site = format!(
        "WasmCacheMaxAge 0\n<Location /app>\n  SetHandler wasm-handler\n  WasmModule {}\n</Location>\n",
        app.display()
    );
    let s = Apache::start_with(Options::new(&site).cache_dir(&cache));
    assert_eq!(get(s.port, "/app").body, b"Hello, World!");
    let first = entries(&cache);
    assert_eq!(first.len(), 1);

    // Replace the file the way a deployment should: write aside, rename.
    fs::copy(guest("respond"), d.join("app.wasm.new")).unwrap();
    fs::rename(d.join("app.wasm.new"), &app).unwrap();
    s.graceful();
    assert_eq!(get(s.port, "/app").text(), "ok\n");
    let second = entries(&cache);
    assert_eq!(
        second.len(),
        1,
        "the old entry was not cleaned up: {second:?}"
    );
    assert_ne!(first, second);
    assert!(
        !s.log_lines("removed 1 unused entries").is_empty(),
        "{}",
        s.error_log()
    );
    drop(s);
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn adding_a_module_and_restarting_gracefully_works() {
    let hello = "<Location /hello>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/hello.wasm\n</Location>\n";
    let mut s = Apache::start(hello);
    assert_eq!(get(s.port, "/hello").status, 200);
    s.reconfigure(&format!("{hello}<Location /echo>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/echo.wasm\n</Location>\n"));
    let r = Request::new("POST", "/echo")
        .body("new module")
        .send(s.port)
        .unwrap();
    assert_eq!(r.text(), "new module");
    assert_eq!(get(s.port, "/hello").body, b"Hello, World!");
    // And removing it again.
    s.reconfigure(hello);
    assert_eq!(get(s.port, "/echo").status, 404);
    assert!(s.log_lines("exit signal").is_empty(), "{}", s.error_log());
}

#[test]
fn configtest_catches_a_bad_module_while_the_server_keeps_serving() {
    let hello = "<Location /hello>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/hello.wasm\n</Location>\n";
    let s = Apache::start(hello);
    let (ok, out) = e2e::apache::configtest(&Options::new(&format!(
        "{hello}<Location /x>\n  WasmModule /missing.wasm\n</Location>\n"
    )));
    assert!(!ok && out.contains("/missing.wasm"), "{out}");
    assert_eq!(get(s.port, "/hello").status, 200);
}
