//! Issue "Core": Apache serves precompiled WASI modules end to end.

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::apache::{configtest, configtest_with_env, scratch_dir, Apache, Mpm, Options};
use e2e::http::{get, Request};

fn location(path: &str, guest: &str, extra: &str) -> String {
    format!("<Location {path}>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/{guest}.wasm\n{extra}</Location>\n")
}

fn env_of(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn hello() {
    let s = Apache::start(&location("/hello", "hello", ""));
    let r = get(s.port, "/hello");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"Hello, World!");
    assert_eq!(r.header("content-type"), Some("text/plain"));
}

#[test]
fn the_access_log_can_show_the_time_spent_in_the_runtime() {
    let site = format!(
        "LogFormat \"%U %{{wasm-run-us}}n %D\" timing\n\
         CustomLog @DIR@/timing.log timing\n{}",
        location("/hello", "hello", "")
    );
    let s = Apache::start(&site);
    assert_eq!(get(s.port, "/hello").status, 200);
    assert_eq!(get(s.port, "/missing").status, 404);
    // The log line is written after the response: wait for both.
    let log = s.dir.join("timing.log");
    let mut text = String::new();
    for _ in 0..50 {
        text = fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let hello: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("/hello "))
        .unwrap_or_else(|| panic!("no /hello line in {text:?}"))
        .split(' ')
        .collect();
    let run: u64 = hello[1].parse().unwrap_or_else(|_| panic!("{hello:?}"));
    let total: u64 = hello[2].parse().unwrap();
    assert!(run > 0 && run <= total, "{hello:?}");
    // Requests that no guest served have no such note.
    assert!(text.contains("/missing - "), "{text}");
}

#[test]
fn head_runs_the_guest_and_sends_no_body() {
    let s = Apache::start(&location("/hello", "hello", ""));
    let r = Request::new("HEAD", "/hello").send(s.port).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "HEAD got a body: {:?}", r.text());
}

#[test]
fn environment_is_exactly_cgi_plus_wasm_env() {
    let s = Apache::start(&location(
        "/env",
        "env",
        "  WasmEnv GREETING \"hello there\"\n  WasmArg --flag value\n",
    ));
    let r = Request::new("GET", "/env/extra/path?a=1&b=2")
        .header("X-Custom-Thing", "42")
        .header("Authorization", "Basic c2VjcmV0OnNlY3JldA==")
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 200);
    let env = env_of(&r.text());
    assert_eq!(env["REQUEST_METHOD"], "GET");
    assert_eq!(env["QUERY_STRING"], "a=1&b=2");
    assert_eq!(env["HTTP_X_CUSTOM_THING"], "42");
    assert_eq!(env["SCRIPT_NAME"], "/env");
    assert_eq!(env["PATH_INFO"], "/extra/path");
    assert_eq!(env["REQUEST_URI"], "/env/extra/path?a=1&b=2");
    assert_eq!(env["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(env["GATEWAY_INTERFACE"], "CGI/1.1");
    assert_eq!(env["GREETING"], "hello there");
    assert_eq!(env["ARGV0"], "env.wasm");
    assert_eq!(env["ARGV1"], "--flag");
    assert_eq!(env["ARGV2"], "value");
    assert!(!env.contains_key("ARGV3"));
    for absent in [
        "PATH",
        "LD_LIBRARY_PATH",
        "HOME",
        "HTTP_AUTHORIZATION",
        "AUTHORIZATION",
    ] {
        assert!(
            !env.contains_key(absent),
            "{absent} leaked into the guest: {}",
            r.text()
        );
    }
    assert!(!r.text().contains("c2VjcmV0"), "credentials leaked");
}

#[test]
fn location_root_gives_empty_path_info() {
    let s = Apache::start(&location("/env/", "env", ""));
    let env = env_of(&get(s.port, "/env/").text());
    assert_eq!(env["SCRIPT_NAME"], "/env");
    assert_eq!(env["PATH_INFO"], "/");
    let env = env_of(&get(s.port, "/env/x").text());
    assert_eq!(env["PATH_INFO"], "/x");
}

#[test]
fn post_of_one_mebibyte_is_echoed_byte_exact() {
    let s = Apache::start(&location("/echo", "echo", ""));
    let body: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let r = Request::new("POST", "/echo")
        .body(body.clone())
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "echoed body differs");
}

#[test]
fn chunked_post_is_echoed() {
    let s = Apache::start(&location("/echo", "echo", ""));
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let r = Request::new("POST", "/echo")
        .body(body.clone())
        .chunked(7_001)
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.body == body,
        "echoed chunked body differs ({} bytes back)",
        r.body.len()
    );
}

#[test]
fn body_over_limit_request_body_is_413_before_the_guest_runs() {
    let s = Apache::start(&format!(
        "LimitRequestBody 1000\n{}",
        location("/echo", "echo", "")
    ));
    let r = Request::new("POST", "/echo")
        .body(vec![b'x'; 5000])
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 413);
}

#[test]
fn status_and_extra_headers_pass_through() {
    let s = Apache::start(&location("/respond", "respond", ""));
    let r = get(s.port, "/respond?status");
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-wasm"), Some("yes"));
    assert_eq!(r.headers_all("set-cookie"), vec!["a=1", "b=2"]);
    assert_eq!(r.text(), "created\n");
}

#[test]
fn absolute_location_is_a_302() {
    let s = Apache::start(&location("/respond", "respond", ""));
    let r = get(s.port, "/respond?abs");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://example.com/elsewhere"));
}

#[test]
fn local_location_is_an_internal_redirect() {
    let site = location("/respond", "respond", "") + &location("/hello", "hello", "");
    let s = Apache::start(&site);
    let r = Request::new("POST", "/respond?local")
        .body("ignored")
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"Hello, World!");
}

#[test]
fn not_modified_passes_through() {
    let s = Apache::start(&location("/respond", "respond", ""));
    let r = Request::new("GET", "/respond?notmod")
        .header("If-Modified-Since", "Mon, 01 Jan 2024 00:00:00 GMT")
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
}

#[test]
fn malformed_header_is_500_and_logged() {
    let s = Apache::start(&location("/respond", "respond", ""));
    assert_eq!(get(s.port, "/respond?badheader").status, 500);
    let lines = s.log_lines("WASM00030");
    assert!(
        lines.len() == 1 && lines[0].contains("bad response header from module"),
        "{}",
        s.error_log()
    );
}

#[test]
fn large_response_is_complete() {
    let s = Apache::start(&location("/respond", "respond", ""));
    let r = get(s.port, "/respond?big=1048576");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1 << 20);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == b'a' + (i % 26) as u8));
}

#[test]
fn trap_is_500_and_the_next_request_succeeds() {
    let s = Apache::start(&location("/fault", "fault", ""));
    for kind in ["trap", "divzero", "oob", "stack"] {
        let r = get(s.port, &format!("/fault?{kind}"));
        assert_eq!(r.status, 500, "{kind}");
        assert_eq!(get(s.port, "/fault").text(), "fine\n", "after {kind}");
    }
    let log = s.error_log();
    assert!(
        log.contains("wasm `unreachable` instruction executed"),
        "{log}"
    );
    assert!(!log.contains("exit signal"), "a child died: {log}");
}

#[test]
fn proc_exit_zero_is_a_normal_end() {
    let s = Apache::start(&location("/fault", "fault", ""));
    let r = get(s.port, "/fault?exit0");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "exited\n");
}

#[test]
fn nonzero_exit_is_500() {
    let s = Apache::start(&location("/fault", "fault", ""));
    let r = get(s.port, "/fault?exit3");
    assert_eq!(r.status, 500);
    assert!(!r.text().contains("partial"));
    assert!(
        s.error_log().contains("exited with status 3"),
        "{}",
        s.error_log()
    );
}

#[test]
fn stderr_lines_go_to_the_error_log_not_the_client() {
    let s = Apache::start(&location("/fault", "fault", ""));
    let r = get(s.port, "/fault?stderr");
    assert_eq!(r.status, 200);
    assert!(!r.text().contains("complaint"));
    let first = s.log_lines("first complaint");
    let second = s.log_lines("second complaint");
    assert_eq!(first.len(), 1, "{}", s.error_log());
    assert_eq!(second.len(), 1);
    assert!(
        first[0].contains("[client 127.0.0.1:"),
        "stderr line lacks the request's identity: {}",
        first[0]
    );
}

#[test]
fn two_locations_sharing_a_module_compile_it_once() {
    let scratch = scratch_dir("cache");
    let cache = scratch.join("cache");
    let site = location("/a", "hello", "") + &location("/b", "hello", "");
    let s = Apache::start_with(Options::new(&site).cache_dir(&cache));
    assert_eq!(get(s.port, "/a").body, b"Hello, World!");
    assert_eq!(get(s.port, "/b").body, b"Hello, World!");
    let entries: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    // Two configuration passes at start-up: the first compiles, the second hits.
    assert_eq!(s.log_lines("compiled in").len(), 1, "{}", s.error_log());
    // A graceful restart is a cache hit too.
    s.graceful();
    assert_eq!(s.log_lines("compiled in").len(), 1, "{}", s.error_log());
    assert_eq!(get(s.port, "/b").body, b"Hello, World!");
    let _ = fs::remove_dir_all(&scratch);
}

/// A module with an import mod_wasm does not provide, which it never calls:
/// it serves only where unknown imports are linked as traps.
const UNKNOWN_IMPORT: &str = r#"(module
  (import "env" "mystery" (func))
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "Content-Type: text/plain\r\n\r\nstub")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 32))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

#[test]
fn modules_are_numbered_once_whatever_the_order_of_their_directives() {
    let dir = scratch_dir("numbering");
    fs::write(
        dir.join("stub.wasm"),
        wat::parse_str(UNKNOWN_IMPORT).unwrap(),
    )
    .unwrap();
    let stub = dir.join("stub.wasm");
    // The same module with WasmTrapUnknownImports after and before it, a
    // second module in between, and a module set outside any section,
    // which virtual hosts inherit in a merge made before check_config.
    let site = format!(
        "WasmModule @GUESTS@/env.wasm\n\
         <Location /after>\n  SetHandler wasm-handler\n  WasmModule {0}\n  WasmTrapUnknownImports On\n</Location>\n\
         {1}\
         <Location /before>\n  SetHandler wasm-handler\n  WasmTrapUnknownImports On\n  WasmModule {0}\n</Location>\n\
         <VirtualHost *>\n  ServerName inherits.test\n  <Location /top>\n    SetHandler wasm-handler\n  </Location>\n</VirtualHost>\n",
        stub.display(),
        location("/hello", "hello", "")
    );
    let s = Apache::start_with(Options::new(&site).cache_dir(&dir.join("cache")));
    for path in ["/after", "/before"] {
        let r = get(s.port, path);
        assert_eq!((r.status, r.text().as_str()), (200, "stub"), "{path}");
    }
    assert_eq!(get(s.port, "/hello").body, b"Hello, World!");
    let top = raw_get_host(s.port, "/top", "inherits.test");
    assert!(top.starts_with("HTTP/1.1 200"), "{top}");
    assert!(top.contains("SERVER_NAME=inherits.test"), "{top}");
    // Three modules (env, stub with traps, hello), each compiled once.
    let compiled = s.log_lines("compiled in");
    assert_eq!(compiled.len(), 3, "{}", s.error_log());
    assert_eq!(
        compiled.iter().filter(|l| l.contains("stub.wasm")).count(),
        1,
        "{compiled:?}"
    );
    drop(s);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn nested_location_inherits_and_overrides_wasm_env() {
    let site = "<Location /env>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/env.wasm\n  WasmEnv OUTER outer\n  WasmEnv SHARED parent\n</Location>\n\
                <Location /env/inner>\n  WasmEnv INNER inner\n  WasmEnv SHARED child\n</Location>\n";
    let s = Apache::start(site);
    let outer = env_of(&get(s.port, "/env/x").text());
    assert_eq!(outer["OUTER"], "outer");
    assert_eq!(outer["SHARED"], "parent");
    assert!(!outer.contains_key("INNER"));
    let text = get(s.port, "/env/inner/y").text();
    let inner = env_of(&text);
    assert_eq!(inner["OUTER"], "outer");
    assert_eq!(inner["INNER"], "inner");
    assert_eq!(inner["SHARED"], "child");
    assert_eq!(text.matches("SHARED=").count(), 1, "{text}");
    assert_eq!(inner["SCRIPT_NAME"], "/env");
    assert_eq!(inner["PATH_INFO"], "/inner/y");
}

#[test]
fn same_location_in_two_virtual_hosts_does_not_collide() {
    let site = format!(
        "<VirtualHost *>\n  ServerName one.test\n{}</VirtualHost>\n<VirtualHost *>\n  ServerName two.test\n{}</VirtualHost>\n",
        location("/app", "hello", ""),
        location("/app", "env", "")
    );
    let s = Apache::start(&site);
    // Raw requests: the harness's client sends a Host header of its own.
    let r1 = raw_get_host(s.port, "/app", "one.test");
    let r2 = raw_get_host(s.port, "/app", "two.test");
    assert!(r1.starts_with("HTTP/1.1 200"), "{r1}");
    assert!(r1.ends_with("Hello, World!"), "{r1}");
    assert!(r2.starts_with("HTTP/1.1 200"), "{r2}");
    assert!(r2.contains("SERVER_NAME=two.test"), "{r2}");
}

fn raw_get_host(port: u16, path: &str, host: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn bad_module_path_fails_configtest_naming_directive_and_line() {
    let (ok, out) = configtest(&Options::new("<Location /x>\n  SetHandler wasm-handler\n  WasmModule /nonexistent/app.wasm\n</Location>\n"));
    assert!(!ok, "{out}");
    assert!(out.contains("WasmModule"), "{out}");
    assert!(out.contains("/nonexistent/app.wasm"), "{out}");
    assert!(out.contains("httpd.conf"), "no file name in: {out}");
    assert!(out.contains("line "), "no line number in: {out}");
}

#[test]
fn invalid_module_fails_configtest() {
    let dir = scratch_dir("invalid");
    fs::write(dir.join("garbage.wasm"), b"\0asm\x01\0\0\0\x01\xff\xff").unwrap();
    let site = format!(
        "<Location /x>\n  SetHandler wasm-handler\n  WasmModule {}/garbage.wasm\n</Location>\n",
        dir.display()
    );
    let (ok, out) = configtest(&Options::new(&site).cache_dir(&dir.join("cache")));
    assert!(!ok, "{out}");
    assert!(
        out.contains("garbage.wasm") && out.contains("not a valid WebAssembly module"),
        "{out}"
    );
    assert!(out.contains("httpd.conf:"), "no definition site in: {out}");
    fs::write(dir.join("text.wasm"), b"hello").unwrap();
    let site = format!(
        "<Location /x>\n  WasmModule {}/text.wasm\n</Location>\n",
        dir.display()
    );
    let (ok, out) = configtest(&Options::new(&site));
    assert!(!ok && out.contains("not a WebAssembly binary"), "{out}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn unknown_imports_fail_configtest_listing_them() {
    let dir = scratch_dir("imports");
    let wasm = wat::parse_str(
        r#"(module (import "env" "mystery" (func)) (import "other" "thing" (func)) (func (export "_start")))"#,
    )
    .unwrap();
    fs::write(dir.join("imports.wasm"), wasm).unwrap();
    let site = format!(
        "<Location /x>\n  WasmModule {}/imports.wasm\n</Location>\n",
        dir.display()
    );
    let (ok, out) = configtest(&Options::new(&site).cache_dir(&dir.join("cache")));
    assert!(!ok, "{out}");
    assert!(
        out.contains("env::mystery") && out.contains("other::thing"),
        "{out}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn bad_directive_arguments_fail_configtest() {
    for (site, needle) in [
        ("WasmMapDir /data\n", "WasmMapDir"),
        ("WasmMapDir /data /nonexistent-dir-xyz\n", "not a directory"),
        ("WasmDir /tmp sometimes\n", "'ro' or 'rw'"),
        ("WasmEnv =bad value\n", "WasmEnv"),
        (
            "<Location /x>\n WasmCacheDir /tmp\n</Location>\n",
            "WasmCacheDir",
        ),
    ] {
        let (ok, out) = configtest(&Options::new(site));
        assert!(!ok, "{site}: {out}");
        assert!(out.contains(needle), "{site}: {out}");
    }
}

#[test]
fn handler_without_module_is_500() {
    let s = Apache::start("<Location /none>\n  SetHandler wasm-handler\n</Location>\n");
    assert_eq!(get(s.port, "/none").status, 500);
    assert!(!s.log_lines("without a WasmModule").is_empty());
}

#[test]
fn graceful_restart_keeps_serving() {
    let s = Apache::start(&location("/hello", "hello", ""));
    assert_eq!(get(s.port, "/hello").status, 200);
    let port = s.port;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let (stop2, served2) = (stop.clone(), served.clone());
    // Load until both restarts are done, so that it spans them.
    let load = std::thread::spawn(move || {
        let mut failures = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
            match Request::new("GET", "/hello").send(port) {
                Ok(r) if r.status == 200 && r.body == b"Hello, World!" => {}
                _ => failures += 1,
            }
            served2.fetch_add(1, Ordering::Relaxed);
        }
        failures
    });
    while served.load(Ordering::Relaxed) < 10 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = served.load(Ordering::Relaxed);
    s.graceful();
    s.graceful();
    let during = served.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        load.join().unwrap(),
        0,
        "requests failed during graceful restarts"
    );
    assert!(during > 0, "no request was made while the server restarted");
    assert_eq!(get(s.port, "/hello").body, b"Hello, World!");
    s.restart();
    assert_eq!(get(s.port, "/hello").body, b"Hello, World!");
    assert!(s.log_lines("exit signal").is_empty(), "{}", s.error_log());
}

fn hello_and_trap_under(mpm: Mpm) {
    let site = location("/hello", "hello", "") + &location("/fault", "fault", "");
    let s = Apache::start_with(Options::new(&site).mpm(mpm));
    for _ in 0..3 {
        assert_eq!(get(s.port, "/hello").body, b"Hello, World!");
        assert_eq!(get(s.port, "/fault?trap").status, 500);
        assert_eq!(get(s.port, "/fault?stack").status, 500);
    }
    assert_eq!(get(s.port, "/hello").body, b"Hello, World!");
    let log = s.error_log();
    assert!(
        !log.contains("exit signal"),
        "a child died under {mpm:?}: {log}"
    );
    assert!(!log.contains("Segmentation fault"), "{log}");
}

#[test]
fn mpm_event_hello_and_trap() {
    hello_and_trap_under(Mpm::Event);
}

#[test]
fn mpm_worker_hello_and_trap() {
    hello_and_trap_under(Mpm::Worker);
}

#[test]
fn mpm_prefork_hello_and_trap() {
    hello_and_trap_under(Mpm::Prefork);
}

#[test]
fn a_runtime_of_another_interface_version_is_refused_before_any_directive() {
    // A library that claims another interface version, loaded ahead of the
    // real runtime: what a mod_wasm.so paired with the wrong runtime sees.
    let dir = scratch_dir("abi");
    let stub = dir.join("abi_stub.so");
    fs::write(
        dir.join("abi_stub.c"),
        "unsigned wasm_rt_abi_version(void) { return 999; }\n",
    )
    .unwrap();
    let cc = std::process::Command::new("clang")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&stub)
        .arg(dir.join("abi_stub.c"))
        .status()
        .expect("cannot run clang");
    assert!(cc.success());
    // WasmMaxMemory calls into the runtime while the directive is read.
    let site = location("/hello", "hello", "  WasmMaxMemory 64M\n");
    let (ok, out) = configtest_with_env(&Options::new(&site), &[("LD_PRELOAD", &stub)]);
    assert!(!ok, "configtest passed: {out}");
    assert!(
        out.contains("WASM00007") && out.contains("implements 999"),
        "{out}"
    );
    let (ok, out) = configtest(&Options::new(&site));
    assert!(ok, "{out}");
}

/// A directory whose `.w` files are served by the env guest.
fn mapped_files(extra: &str) -> (Apache, std::path::PathBuf) {
    let data = scratch_dir("mapped");
    fs::write(data.join("page.w"), b"").unwrap();
    let site = format!(
        "Alias /files {0}\n<Directory {0}>\n  Require all granted\n  AddHandler wasm-handler .w\n\
         \x20 WasmModule @GUESTS@/env.wasm\n{extra}</Directory>\n",
        data.display()
    );
    (Apache::start(&site), data)
}

#[test]
fn accept_path_info_off_refuses_path_info_to_a_mapped_file() {
    let (s, _data) = mapped_files("");
    let r = get(s.port, "/files/page.w/more");
    assert_eq!(r.status, 200);
    assert_eq!(env_of(&r.text())["PATH_INFO"], "/more");
    let (s, _data) = mapped_files("  AcceptPathInfo Off\n");
    assert_eq!(get(s.port, "/files/page.w").status, 200);
    assert_eq!(get(s.port, "/files/page.w/more").status, 404);
    assert!(
        s.error_log().contains("AcceptPathInfo off disallows"),
        "{}",
        s.error_log()
    );
}

#[test]
fn wasm_dir_slash_maps_every_script() {
    let (s, data) = mapped_files("  WasmDir / ro\n  WasmScriptArg On\n");
    let r = get(s.port, "/files/page.w");
    assert_eq!(r.status, 200, "{}", s.error_log());
    let script = data.join("page.w");
    assert_eq!(env_of(&r.text())["ARGV1"], script.display().to_string());
}

#[test]
fn a_guests_transfer_encoding_is_dropped_and_logged() {
    let s = Apache::start(&location("/respond", "respond", ""));
    let r = get(s.port, "/respond?te");
    assert_eq!((r.status, r.text().as_str()), (200, "plain\n"));
    assert!(
        r.headers_all("transfer-encoding")
            .iter()
            .all(|v| !v.contains("gzip")),
        "{:?}",
        r.headers
    );
    assert!(
        s.error_log()
            .contains("ignoring the module's Transfer-Encoding"),
        "{}",
        s.error_log()
    );
}

#[test]
fn wasm_status_without_modules_says_why_once_per_child() {
    let s = Apache::start("<Location /wasm-status>\n  SetHandler wasm-status\n</Location>\n");
    for _ in 0..3 {
        assert_eq!(get(s.port, "/wasm-status").status, 503);
    }
    // Said at error level the first time in a child, then only at debug
    // level: at most one line per child, and at least one.
    let said = s.log_lines("WASM00046").len();
    assert!(
        (1..=s.child_pids().len().max(1)).contains(&said),
        "{said} lines:\n{}",
        s.error_log()
    );
}
