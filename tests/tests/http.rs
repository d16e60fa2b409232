//! wasi:http components served by a real Apache: the request the guest
//! sees, its response streamed out, and configtest's checks.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e::apache::{Apache, Mpm, Options};
use e2e::http::{get, raw, Request};

fn component(path: &str, name: &str, extra: &str) -> String {
    format!(
        "<Location {path}>\n  SetHandler wasm-handler\n  WasmModule @ROOT@/build/components/{name}.wasm\n{extra}</Location>\n"
    )
}

fn hello_under(mpm: Mpm) {
    let site = component("/py", "hello-py", "")
        + &component("/c", "hello-c", "")
        + &component("/js", "hello-js", "")
        + &component("/py3", "hello-py3", "");
    let s = Apache::start_with(Options::new(&site).mpm(mpm));
    for _ in 0..3 {
        let r = get(s.port, "/py3/a?b=1");
        assert_eq!(r.status, 200, "{}", s.error_log());
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.text(), "Hello from Python (wasi:http 0.3), /py3/a?b=1");
        let r = get(s.port, "/py/a?b=1");
        assert_eq!(r.status, 200, "{}", s.error_log());
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.text(), "Hello from Python, /py/a?b=1");
        let r = get(s.port, "/c/a?b=1");
        assert_eq!(r.status, 200, "{}", s.error_log());
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.text(), "Hello from C, /c/a?b=1");
        let r = get(s.port, "/js/a?b=1");
        assert_eq!(r.status, 200, "{}", s.error_log());
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.text(), "Hello from JavaScript, /js/a?b=1");
    }
    // A 0.3 component turns the component model's concurrency on, and the
    // log says which.
    assert!(
        s.error_log().contains("WASM00068")
            && s.error_log()
                .contains("hello-py3.wasm (a wasi:http 0.3 component) needs"),
        "{}",
        s.error_log()
    );
    // HEAD runs the guest and sends no body.
    for path in ["/py/", "/py3/"] {
        let r = Request::new("HEAD", path).send(s.port).unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert!(r.body.is_empty(), "{path}");
    }
}

#[test]
fn components_of_both_wasi_http_versions_and_every_toolchain_say_hello_under_event() {
    hello_under(Mpm::Event);
}

#[test]
fn components_of_both_wasi_http_versions_and_every_toolchain_say_hello_under_worker() {
    hello_under(Mpm::Worker);
}

#[test]
fn components_of_both_wasi_http_versions_and_every_toolchain_say_hello_under_prefork() {
    hello_under(Mpm::Prefork);
}

/// The probe components, of wasi:http 0.2 (guests/http/probe.py) and 0.3
/// (guests/http/p3/probe.py), at these locations of [`probe`]'s server.
const PROBES: [&str; 2] = ["/probe", "/probe3"];

/// A server with both probe components, each with `extra`.
fn probe(extra: &str) -> Apache {
    Apache::start(
        &(component("/probe", "probe-py", extra) + &component("/probe3", "probe-py3", extra)),
    )
}

#[test]
fn the_guest_sees_the_request_as_the_client_sent_it_less_hop_by_hop_headers() {
    let s = probe("");
    for p in PROBES {
        let r = Request::new("GET", &format!("{p}/head?q=1&r=%20"))
            .header("X-Test", "yes")
            .header("Keep-Alive", "timeout=5")
            .header("Proxy-Authorization", "Basic c2VjcmV0")
            .header("Authorization", "Basic c2VjcmV0")
            .header("wasm-client-addr", "6.6.6.6:1")
            .send(s.port)
            .unwrap();
        assert_eq!(r.status, 200, "{p}: {}", s.error_log());
        let t = r.text();
        assert!(t.contains(r#""method": "GET""#), "{t}");
        assert!(t.contains(r#""scheme": "Scheme_Http""#), "{t}");
        assert!(
            t.contains(&format!(r#""authority": "127.0.0.1:{}""#, s.port)),
            "{t}"
        );
        assert!(
            t.contains(&format!(r#""path": "{p}/head?q=1&r=%20""#)),
            "{t}"
        );
        assert!(t.contains(r#"["x-test", "yes"]"#), "{t}");
        assert!(t.contains(r#"["wasm-client-addr", "127.0.0.1:"#), "{t}");
        assert!(t.contains(&format!(r#"["wasm-base-path", "{p}"]"#)), "{t}");
        for gone in [
            "keep-alive",
            "proxy-authorization",
            "authorization",
            "connection",
            "6.6.6.6",
        ] {
            assert!(
                !t.contains(&format!("\"{gone}")),
                "{gone} reached the guest: {t}"
            );
        }
    }
    // With CGIPassAuth On, credentials reach it.
    let s = probe("  CGIPassAuth On\n");
    for p in PROBES {
        let t = Request::new("GET", &format!("{p}/head"))
            .header("Authorization", "Basic c2VjcmV0")
            .send(s.port)
            .unwrap()
            .text();
        assert!(
            t.contains(r#"["authorization", "Basic c2VjcmV0"]"#),
            "{p}: {t}"
        );
    }
}

#[test]
fn wasm_env_is_the_whole_environment_of_a_component() {
    let s = probe("  WasmEnv API_MODE production\n");
    let t = get(s.port, "/probe/env").text();
    assert!(t.contains(r#""API_MODE": "production""#), "{t}");
    assert!(!t.contains("PATH") && !t.contains("SERVER_"), "{t}");
}

#[test]
fn a_body_is_echoed_byte_for_byte_with_content_length_and_chunked() {
    let s = probe("");
    let body: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    for (p, chunked) in PROBES.into_iter().flat_map(|p| [(p, false), (p, true)]) {
        let mut req = Request::new("POST", &format!("{p}/echo")).body(body.clone());
        if chunked {
            req = req.chunked(10_000);
        }
        let r = req.send(s.port).unwrap();
        assert_eq!(r.status, 200, "{p}, chunked {chunked}: {}", s.error_log());
        assert!(
            r.body == body,
            "{p}, chunked {chunked}: {} bytes back",
            r.body.len()
        );
    }
}

#[test]
fn a_body_over_limit_request_body_is_413() {
    let s = probe("  LimitRequestBody 1000\n");
    for p in PROBES {
        let r = Request::new("POST", &format!("{p}/echo"))
            .body(vec![b'a'; 2000])
            .send(s.port)
            .unwrap();
        assert_eq!(r.status, 413, "{p}");
    }
}

#[test]
fn the_response_reaches_the_client_as_the_guest_writes_it() {
    let s = probe("");
    for p in PROBES {
        let (out, first, total) = raw(s.port, &format!("GET {p}/slow HTTP/1.1\r\nHost: x\r\n\r\n"));
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200"), "{p}: {text}");
        assert!(
            text.contains("first") && text.contains("second"),
            "{p}: {text}"
        );
        assert!(
            first < Duration::from_millis(800) && total - first >= Duration::from_millis(800),
            "{p}: first bytes at {first:?}, the end at {total:?}: not streamed"
        );
        assert!(out.ends_with(b"0\r\n\r\n"), "{p}");
    }
}

#[test]
fn a_trap_before_the_head_is_500_and_after_it_cuts_the_response() {
    let s = probe("");
    for p in PROBES {
        assert_eq!(get(s.port, &format!("{p}/trap-before")).status, 500, "{p}");
        let (out, _, _) = raw(
            s.port,
            &format!("GET {p}/trap-after HTTP/1.1\r\nHost: x\r\n\r\n"),
        );
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200"), "{p}: {text}");
        assert!(text.contains("partial"), "{p}: {text}");
        assert!(!ended(&out), "{p}: a cut response was ended: {text}");
        // The child lives on.
        assert_eq!(get(s.port, &format!("{p}/head")).status, 200, "{p}");
    }
    let log = s.error_log();
    assert_eq!(
        log.matches("the probe fails on purpose").count(),
        4,
        "{log}"
    );
}

#[test]
fn wasm_timeout_stops_a_spinning_component() {
    let s = probe("  WasmTimeout 2\n");
    for p in PROBES {
        let started = Instant::now();
        assert_eq!(get(s.port, &format!("{p}/spin")).status, 504, "{p}");
        assert!(started.elapsed() < Duration::from_secs(10), "{p}");
        assert_eq!(get(s.port, &format!("{p}/head")).status, 200, "{p}");
    }
}

#[test]
fn wasm_max_output_cuts_a_component_that_writes_too_much() {
    let s = probe("  WasmMaxOutput 1M\n");
    for p in PROBES {
        assert_eq!(
            get(s.port, &format!("{p}/big?1")).body.len(),
            1 << 20,
            "{p}"
        );
        let (out, _, _) = raw(
            s.port,
            &format!("GET {p}/big?3 HTTP/1.1\r\nHost: x\r\n\r\n"),
        );
        assert!(!ended(&out), "{p}: an over-long response was ended");
    }
    let log = s.error_log();
    assert_eq!(log.matches("(WasmMaxOutput)").count(), 2, "{log}");
}

/// What `apachectl configtest` says of a server whose one module is the
/// component `wat`, written as `name`; the check must fail.
fn configtest_failure(name: &str, wat: &str) -> String {
    let dir = e2e::apache::scratch_dir(name.trim_end_matches(".wasm"));
    std::fs::write(dir.join(name), wat::parse_str(wat).unwrap()).unwrap();
    let site = format!(
        "<Location /x>\n  SetHandler wasm-handler\n  WasmModule {}/{name}\n</Location>\n",
        dir.display()
    );
    let (ok, out) = e2e::apache::configtest(&Options::new(&site).cache_dir(&dir.join("cache")));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "{out}");
    out
}

#[test]
fn a_component_without_a_handler_fails_configtest_naming_it() {
    let out = configtest_failure("empty.wasm", "(component)");
    assert!(
        out.contains("empty.wasm")
            && out.contains("neither wasi:http/incoming-handler@0.2.x nor wasi:http/handler@0.3.0")
            && out.contains("httpd.conf:"),
        "{out}"
    );
}

#[test]
fn a_client_leaving_mid_response_frees_the_slot_for_the_next_request() {
    let site = component("/probe", "probe-py", "")
        + "WasmPoolShards 1\n<Location /wasm-status>\n  SetHandler wasm-status\n</Location>\n";
    let s = Apache::start(&site);
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /probe/big?50 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < 2 << 20 {
        got += c.read(&mut buf).unwrap();
    }
    drop(c);
    // The guest's next write fails, its request ends, its slot comes back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while e2e::status::fetch(s.port, "/wasm-status", "Busy") != "0" {
        assert!(
            Instant::now() < deadline,
            "the slot stayed busy: {}",
            s.error_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(s.port, "/probe/head").status, 200);
    assert!(
        s.error_log().contains("could not be sent"),
        "{}",
        s.error_log()
    );
}

#[test]
fn a_component_with_unknown_imports_fails_configtest_naming_them() {
    let out = configtest_failure(
        "imports.wasm",
        r#"(component (import "acme:mystery/thing" (instance (export "poke" (func)))))"#,
    );
    assert!(
        out.contains("imports.wasm")
            && out.contains("does not provide")
            && out.contains("acme:mystery/thing")
            && out.contains("httpd.conf:"),
        "{out}"
    );
}

#[test]
fn wasm_instance_reuse_keeps_a_guest_s_state_but_never_after_a_trap() {
    for name in ["probe-py", "probe-py3"] {
        let s = Apache::start(&format!(
            "WasmPoolShards 1\n{}{}<Location /wasm-status>\n  SetHandler wasm-status\n</Location>\n",
            component("/probe", name, ""),
            component("/kept", name, "  WasmInstanceReuse 3\n")
        ));
        let kept_now = || e2e::status::fetch(s.port, "/wasm-status", "Kept");
        let count = |path: &str| {
            let r = get(s.port, path);
            assert_eq!(r.status, 200, "{name}: {}", s.error_log());
            r.text()
        };
        // A fresh instance for every request by default.
        let fresh: Vec<String> = (0..3).map(|_| count("/probe/count")).collect();
        assert_eq!(fresh, ["1", "1", "1"], "{name}");
        // One instance for three requests, then a new one.
        let kept: Vec<String> = (0..4).map(|_| count("/kept/count")).collect();
        assert_eq!(kept, ["1", "2", "3", "1"], "{name}");
        assert_eq!(kept_now(), "1", "{name}");
        // The kept instance traps: it is dropped, the next request starts
        // afresh.
        assert_eq!(get(s.port, "/kept/trap-before").status, 500, "{name}");
        assert_eq!(count("/kept/count"), "1", "{name}");
        assert_eq!(kept_now(), "1", "{name}");
    }
}

/// Whether `out`, a raw HTTP/1.1 response, was ended as complete.
fn ended(out: &[u8]) -> bool {
    out.ends_with(b"0\r\n\r\n")
}

#[test]
fn wasm_max_memory_fails_a_component_before_and_after_its_head() {
    let s = probe("  WasmMaxMemory 96M\n");
    assert_eq!(get(s.port, "/probe/grow?8").text(), (8 << 20).to_string());
    assert_eq!(get(s.port, "/probe/grow?200").status, 500);
    let (out, _, _) = raw(
        s.port,
        "GET /probe/grow-after?200 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("partial"),
        "{text}"
    );
    assert!(!ended(&out), "a failed response was ended: {text}");
    let log = s.error_log();
    assert_eq!(log.matches("refused it memory").count(), 2, "{log}");
    assert!(log.contains("MemoryError"), "{log}");
    assert_eq!(get(s.port, "/probe/count").status, 200);
}

#[test]
fn a_body_that_breaks_its_content_length_cuts_the_response() {
    let s = probe("");
    for p in PROBES {
        let r = get(s.port, &format!("{p}/length?5,5"));
        assert_eq!((r.status, r.body.len()), (200, 5), "{p}");
        assert_eq!(r.header("content-length"), Some("5"), "{p}");
    }
    for (p, q) in PROBES.into_iter().flat_map(|p| [(p, "9,5"), (p, "3,5")]) {
        let (out, _, _) = raw(
            s.port,
            &format!("GET {p}/length?{q} HTTP/1.1\r\nHost: x\r\n\r\n"),
        );
        let text = String::from_utf8_lossy(&out);
        // Whatever went out, the client cannot take it for the whole body:
        // fewer bytes than its Content-Length, then the connection closes.
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let said: usize = q.split(',').next().unwrap().parse().unwrap();
        assert!(
            body.len() < said || !text.starts_with("HTTP/1.1 200"),
            "{p} {q}: {text}"
        );
    }
    let log = s.error_log();
    assert_eq!(
        log.matches("does not match its content-length").count(),
        4,
        "{log}"
    );
}

#[test]
fn trailers_to_an_http_1_client_are_dropped_with_a_log_line() {
    let s = probe("");
    for p in PROBES {
        let (out, _, _) = raw(
            s.port,
            &format!("GET {p}/trailers HTTP/1.1\r\nHost: x\r\n\r\n"),
        );
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("body\n") && ended(&out), "{p}: {text}");
        assert!(!text.contains("x-checksum"), "{p}: {text}");
    }
    let log = s.error_log();
    assert!(
        log.contains("WASM00066") && log.contains("x-checksum"),
        "{log}"
    );
}

#[test]
fn a_server_without_a_0_3_component_runs_without_the_component_model_s_concurrency() {
    let s = Apache::start(&component("/c", "hello-c", ""));
    assert_eq!(get(s.port, "/c/").status, 200, "{}", s.error_log());
    assert!(!s.error_log().contains("WASM00068"), "{}", s.error_log());
}

/// The peak resident memory of process `pid`, in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// A guest that holds nothing of what it wrote (guests/http/c/stream.c;
/// componentize-py 0.25.1 keeps each buffer a handler writes until it
/// returns, see docs/guests.md) streams 64 MiB through a child whose peak
/// memory hardly moves.
#[test]
fn a_64_mib_response_is_streamed_in_bounded_memory() {
    let s = Apache::start(&component("/stream", "stream-c", ""));
    // The instance's own memory counted first.
    assert_eq!(get(s.port, "/stream/big?1").body.len(), 1 << 20);
    let before: Vec<(i32, u64)> = s
        .child_pids()
        .iter()
        .map(|&p| (p, peak_rss_kib(p)))
        .collect();
    let (out, _, _) = raw(s.port, "GET /stream/big?64 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.len() > 64 << 20 && ended(&out), "{} bytes", out.len());
    let grew = before
        .iter()
        .map(|&(p, kib)| peak_rss_kib(p).saturating_sub(kib))
        .max()
        .unwrap_or(0);
    // The server holds a few writes of 4 KiB at a time.
    assert!(grew < 8 << 10, "a child's peak RSS grew by {grew} KiB");
}

#[test]
fn trailers_reach_an_http_2_client() {
    let site = "LoadModule http2_module @LIBEXECDIR@/mod_http2.so\nProtocols h2c http/1.1\n"
        .to_string()
        + &component("/probe", "probe-py", "")
        + &component("/probe3", "probe-py3", "");
    let s = Apache::start(&site);
    for p in PROBES {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--http2-prior-knowledge",
                "-D",
                "-",
                "--max-time",
                "20",
            ])
            .arg(format!("http://127.0.0.1:{}{p}/trailers", s.port))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("HTTP/2 200"),
            "{p}: {text}\n{}",
            s.error_log()
        );
        assert!(text.contains("body\n"), "{p}: {text}");
        assert!(text.contains("x-checksum: 42"), "{p}: {text}");
    }
    assert!(!s.error_log().contains("WASM00066"), "{}", s.error_log());
}
