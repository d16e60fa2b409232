//! wasi:http components served by a real Apache: the request the guest
//! sees, its response streamed out, and configtest's checks.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e::apache::{Apache, Mpm, Options};
use e2e::http::{get, Request};

fn component(path: &str, name: &str, extra: &str) -> String {
    format!(
        "<Location {path}>\n  SetHandler wasm-handler\n  WasmModule @ROOT@/build/components/{name}.wasm\n{extra}</Location>\n"
    )
}

fn hello_under(mpm: Mpm) {
    let s = Apache::start_with(Options::new(&component("/py", "hello-py", "")).mpm(mpm));
    for _ in 0..3 {
        let r = get(s.port, "/py/a?b=1");
        assert_eq!(r.status, 200, "{}", s.error_log());
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.text(), "Hello from Python, /py/a?b=1");
    }
    // HEAD runs the guest and sends no body.
    let r = Request::new("HEAD", "/py/").send(s.port).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
}

#[test]
fn a_python_component_says_hello_under_event() {
    hello_under(Mpm::Event);
}

#[test]
fn a_python_component_says_hello_under_worker() {
    hello_under(Mpm::Worker);
}

#[test]
fn a_python_component_says_hello_under_prefork() {
    hello_under(Mpm::Prefork);
}

/// The probe component (guests/http/probe.py) at /probe, with `extra`.
fn probe(extra: &str) -> Apache {
    Apache::start(&component("/probe", "probe-py", extra))
}

/// A request on a raw connection (HTTP/1.1, kept alive, so that the
/// response is chunked unless it says its length), read to its end; with
/// the time the first and the last byte came.
fn raw(port: u16, request: &str) -> (Vec<u8>, Duration, Duration) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    c.write_all(request.as_bytes()).unwrap();
    let (mut out, mut buf) = (Vec::new(), [0u8; 65536]);
    let mut first = None;
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                first.get_or_insert_with(|| started.elapsed());
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"0\r\n\r\n") {
                    break;
                }
            }
        }
    }
    (out, first.unwrap_or_default(), started.elapsed())
}

#[test]
fn the_guest_sees_the_request_as_the_client_sent_it_less_hop_by_hop_headers() {
    let s = probe("");
    let r = Request::new("GET", "/probe/head?q=1&r=%20")
        .header("X-Test", "yes")
        .header("Keep-Alive", "timeout=5")
        .header("Proxy-Authorization", "Basic c2VjcmV0")
        .header("Authorization", "Basic c2VjcmV0")
        .header("wasm-client-addr", "6.6.6.6:1")
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 200, "{}", s.error_log());
    let t = r.text();
    assert!(t.contains(r#""method": "GET""#), "{t}");
    assert!(t.contains(r#""scheme": "Scheme_Http""#), "{t}");
    assert!(
        t.contains(&format!(r#""authority": "127.0.0.1:{}""#, s.port)),
        "{t}"
    );
    assert!(t.contains(r#""path": "/probe/head?q=1&r=%20""#), "{t}");
    assert!(t.contains(r#"["x-test", "yes"]"#), "{t}");
    assert!(t.contains(r#"["wasm-client-addr", "127.0.0.1:"#), "{t}");
    assert!(t.contains(r#"["wasm-base-path", "/probe"]"#), "{t}");
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
    // With CGIPassAuth On, credentials reach it.
    let s = probe("  CGIPassAuth On\n");
    let t = Request::new("GET", "/probe/head")
        .header("Authorization", "Basic c2VjcmV0")
        .send(s.port)
        .unwrap()
        .text();
    assert!(t.contains(r#"["authorization", "Basic c2VjcmV0"]"#), "{t}");
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
    for chunked in [false, true] {
        let mut req = Request::new("POST", "/probe/echo").body(body.clone());
        if chunked {
            req = req.chunked(10_000);
        }
        let r = req.send(s.port).unwrap();
        assert_eq!(r.status, 200, "chunked {chunked}: {}", s.error_log());
        assert!(
            r.body == body,
            "chunked {chunked}: {} bytes back",
            r.body.len()
        );
    }
}

#[test]
fn a_body_over_limit_request_body_is_413() {
    let s = probe("  LimitRequestBody 1000\n");
    let r = Request::new("POST", "/probe/echo")
        .body(vec![b'a'; 2000])
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 413);
}

#[test]
fn the_response_reaches_the_client_as_the_guest_writes_it() {
    let s = probe("");
    let (out, first, total) = raw(s.port, "GET /probe/slow HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("first") && text.contains("second"), "{text}");
    assert!(
        first < Duration::from_millis(800) && total - first >= Duration::from_millis(800),
        "first bytes at {first:?}, the end at {total:?}: not streamed"
    );
    assert!(out.ends_with(b"0\r\n\r\n"));
}

#[test]
fn a_trap_before_the_head_is_500_and_after_it_cuts_the_response() {
    let s = probe("");
    assert_eq!(get(s.port, "/probe/trap-before").status, 500);
    let (out, _, _) = raw(s.port, "GET /probe/trap-after HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("partial"), "{text}");
    assert!(
        !out.ends_with(b"0\r\n\r\n"),
        "a cut response was ended: {text}"
    );
    // The child lives on.
    assert_eq!(get(s.port, "/probe/head").status, 200);
    assert!(
        s.error_log().contains("the probe fails on purpose"),
        "{}",
        s.error_log()
    );
}

#[test]
fn wasm_timeout_stops_a_spinning_component() {
    let s = probe("  WasmTimeout 2\n");
    let started = Instant::now();
    assert_eq!(get(s.port, "/probe/spin").status, 504);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(get(s.port, "/probe/head").status, 200);
}

#[test]
fn wasm_max_output_cuts_a_component_that_writes_too_much() {
    let s = probe("  WasmMaxOutput 1M\n");
    assert_eq!(get(s.port, "/probe/big?1").body.len(), 1 << 20);
    let (out, _, _) = raw(s.port, "GET /probe/big?3 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        !out.ends_with(b"0\r\n\r\n"),
        "an over-long response was ended"
    );
    assert!(s.error_log().contains("WasmMaxOutput"), "{}", s.error_log());
}

#[test]
fn a_component_without_a_handler_fails_configtest_naming_it() {
    let dir = e2e::apache::scratch_dir("nohandler");
    std::fs::write(
        dir.join("empty.wasm"),
        wat::parse_str("(component)").unwrap(),
    )
    .unwrap();
    let site = format!(
        "<Location /x>\n  SetHandler wasm-handler\n  WasmModule {}/empty.wasm\n</Location>\n",
        dir.display()
    );
    let (ok, out) = e2e::apache::configtest(&Options::new(&site).cache_dir(&dir.join("cache")));
    assert!(!ok, "{out}");
    assert!(
        out.contains("empty.wasm")
            && out.contains("incoming-handler")
            && out.contains("httpd.conf:"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
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
    let dir = e2e::apache::scratch_dir("componentimports");
    let wasm = wat::parse_str(
        r#"(component (import "acme:mystery/thing" (instance (export "poke" (func)))))"#,
    )
    .unwrap();
    std::fs::write(dir.join("imports.wasm"), wasm).unwrap();
    let site = format!(
        "<Location /x>\n  SetHandler wasm-handler\n  WasmModule {}/imports.wasm\n</Location>\n",
        dir.display()
    );
    let (ok, out) = e2e::apache::configtest(&Options::new(&site).cache_dir(&dir.join("cache")));
    assert!(!ok, "{out}");
    assert!(
        out.contains("imports.wasm")
            && out.contains("does not provide")
            && out.contains("acme:mystery/thing")
            && out.contains("httpd.conf:"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
