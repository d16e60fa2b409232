//! A component's own HTTP requests (wasi:http/outgoing-handler) through a
//! real Apache: refused unless `WasmAllowOutbound` allows them, sent when
//! it does (to upstreams on 127.0.0.1 that the tests start), bounded by
//! `WasmTimeout`, and over https verified against the CA store.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::apache::{configtest, scratch_dir, Apache, Options};
use e2e::http::get;
use e2e::upstream::{silent, Upstream};

fn probe_at(path: &str, extra: &str) -> String {
    format!(
        "<Location {path}>\n  SetHandler wasm-handler\n  \
         WasmModule @ROOT@/build/components/probe-py.wasm\n{extra}</Location>\n"
    )
}

/// The path that makes the probe GET `url` (its answer: "STATUS BODY" or
/// "error NAME").
fn fetch(base: &str, url: &str) -> String {
    let mut q = String::new();
    for b in url.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => q.push(b as char),
            _ => q.push_str(&format!("%{b:02X}")),
        }
    }
    format!("{base}/fetch?{q}")
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let (l, port) = silent();
    drop(l);
    port
}

/// The refusals logged, once there are `n`.
fn refusals(s: &Apache, n: usize) -> Vec<String> {
    s.wait_log_lines("WASM00069", n)
}

#[test]
fn an_allowed_host_is_reached_and_sees_the_guest_s_request() {
    let up = Upstream::start("hello from upstream");
    let allow = format!("  WasmAllowOutbound http://127.0.0.1:{}\n", up.port);
    let s = Apache::start(&probe_at("/x", &allow));
    let url = format!("http://127.0.0.1:{}/api/v1?token=secret", up.port);
    let r = get(s.port, &fetch("/x", &url));
    assert_eq!(r.status, 200, "{}", s.error_log());
    assert_eq!(r.text(), "200 hello from upstream", "{}", s.error_log());
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with("GET /api/v1?token=secret HTTP/1.1\r\n"),
        "{seen:?}"
    );
    let host = format!("host: 127.0.0.1:{}\r\n", up.port);
    assert!(seen[0].to_ascii_lowercase().contains(&host), "{seen:?}");
    assert!(refusals(&s, 0).is_empty(), "{:?}", refusals(&s, 0));
}

#[test]
fn nothing_is_allowed_by_default_and_a_refusal_is_logged_without_the_path() {
    let up = Upstream::start("never");
    let s = Apache::start(&probe_at("/x", ""));
    let url = format!("http://127.0.0.1:{}/api?token=secret", up.port);
    let r = get(s.port, &fetch("/x", &url));
    assert_eq!(r.status, 200, "{}", s.error_log());
    assert_eq!(r.text(), "error ErrorCode_HttpRequestDenied");
    assert!(up.seen().is_empty());
    let lines = refusals(&s, 1);
    assert_eq!(lines.len(), 1, "{}", s.error_log());
    let target = format!("http://127.0.0.1:{}", up.port);
    assert!(lines[0].contains(&target), "{lines:?}");
    assert!(lines[0].contains("probe-py.wasm at /x:"), "{lines:?}");
    assert!(
        lines[0].contains("no WasmAllowOutbound allows any here"),
        "{lines:?}"
    );
    assert!(
        !lines[0].contains("secret") && !lines[0].contains("/api"),
        "{lines:?}"
    );
}

#[test]
fn a_host_or_port_the_patterns_do_not_name_is_refused() {
    let up = Upstream::start("allowed");
    let other = Upstream::start("not allowed");
    let allow = format!(
        "  WasmAllowOutbound http://127.0.0.1:{} https://*.example.com\n",
        up.port
    );
    let s = Apache::start(&probe_at("/x", &allow));
    let r = get(
        s.port,
        &fetch("/x", &format!("http://127.0.0.1:{}/", other.port)),
    );
    assert_eq!(
        r.text(),
        "error ErrorCode_HttpRequestDenied",
        "{}",
        s.error_log()
    );
    // The scheme counts: https to the allowed http port is refused.
    let r = get(
        s.port,
        &fetch("/x", &format!("https://127.0.0.1:{}/", up.port)),
    );
    assert_eq!(
        r.text(),
        "error ErrorCode_HttpRequestDenied",
        "{}",
        s.error_log()
    );
    // The domain of a *. pattern is not one of its subdomains.
    let r = get(s.port, &fetch("/x", "https://example.com/"));
    assert_eq!(
        r.text(),
        "error ErrorCode_HttpRequestDenied",
        "{}",
        s.error_log()
    );
    assert!(other.seen().is_empty());
    let lines = refusals(&s, 3);
    assert_eq!(lines.len(), 3, "{}", s.error_log());
    assert!(
        lines[0].contains(&format!("http://127.0.0.1:{} refused", other.port)),
        "{lines:?}"
    );
    assert!(
        lines[0].contains("not allowed by WasmAllowOutbound"),
        "{lines:?}"
    );
    assert!(
        lines[2].contains("https://example.com:443 refused"),
        "{lines:?}"
    );
    let r = get(
        s.port,
        &fetch("/x", &format!("http://127.0.0.1:{}/", up.port)),
    );
    assert_eq!(r.text(), "200 allowed", "{}", s.error_log());
}

#[test]
fn a_wildcard_pattern_allows_any_host_or_subdomain_it_covers() {
    let up = Upstream::start("any host");
    let allow = format!(
        "  WasmAllowOutbound http://*:{} http://*.localhost\n",
        up.port
    );
    let s = Apache::start(&probe_at("/x", &allow));
    let r = get(
        s.port,
        &fetch("/x", &format!("http://127.0.0.1:{}/", up.port)),
    );
    assert_eq!(r.text(), "200 any host", "{}", s.error_log());
    // Allowed, so tried: whatever comes of it (no such name here, or a
    // closed port), it is not a refusal.
    let r = get(s.port, &fetch("/x", "http://a.b.localhost/"));
    assert_eq!(r.status, 200, "{}", s.error_log());
    assert!(r.text().starts_with("error ErrorCode_"), "{}", r.text());
    assert_ne!(r.text(), "error ErrorCode_HttpRequestDenied");
    assert!(refusals(&s, 0).is_empty(), "{:?}", refusals(&s, 0));
    let r = get(s.port, &fetch("/x", "http://localhost/"));
    assert_eq!(
        r.text(),
        "error ErrorCode_HttpRequestDenied",
        "{}",
        s.error_log()
    );
}

#[test]
fn a_section_s_patterns_replace_those_it_inherits_and_none_allows_nothing() {
    let up = Upstream::start("outer");
    let allow = format!("  WasmAllowOutbound http://127.0.0.1:{}\n", up.port);
    let site = probe_at("/x", &allow)
        + "<Location /x/closed>\n  WasmAllowOutbound none\n</Location>\n"
        + "<Location /x/other>\n  WasmAllowOutbound http://127.0.0.2\n</Location>\n";
    let s = Apache::start(&site);
    let url = format!("http://127.0.0.1:{}/", up.port);
    assert_eq!(get(s.port, &fetch("/x/open", &url)).text(), "200 outer");
    for base in ["/x/closed", "/x/other"] {
        let r = get(s.port, &fetch(base, &url));
        assert_eq!(r.text(), "error ErrorCode_HttpRequestDenied", "{base}");
    }
    assert_eq!(up.seen().len(), 1);
}

#[test]
fn a_connection_refused_upstream_is_the_guest_s_error_not_a_refusal() {
    let port = closed_port();
    let allow = format!("  WasmAllowOutbound http://127.0.0.1:{port}\n");
    let s = Apache::start(&probe_at("/x", &allow));
    let r = get(s.port, &fetch("/x", &format!("http://127.0.0.1:{port}/")));
    assert_eq!(r.status, 200, "{}", s.error_log());
    assert_eq!(r.text(), "error ErrorCode_ConnectionRefused");
    assert!(refusals(&s, 0).is_empty());
}

#[test]
fn an_upstream_that_never_answers_is_cut_by_wasm_timeout() {
    let (_listener, port) = silent();
    let allow = format!("  WasmAllowOutbound http://127.0.0.1:{port}\n  WasmTimeout 2\n");
    let s = Apache::start(&probe_at("/x", &allow));
    let started = Instant::now();
    let r = get(s.port, &fetch("/x", &format!("http://127.0.0.1:{port}/")));
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", s.error_log());
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(!s.log_lines("WasmTimeout").is_empty(), "{}", s.error_log());
    // The worker is not stuck: the next request is answered.
    assert_eq!(get(s.port, "/x/count").status, 200);
}

#[test]
fn an_outgoing_request_ends_with_the_request_that_made_it() {
    // A kept instance must not carry a pending request (or its connection)
    // into a later request, which may be another section's.
    let (_listener, port) = silent();
    let allow = format!("  WasmAllowOutbound http://127.0.0.1:{port}\n  WasmInstanceReuse 10\n");
    let s = Apache::start(&probe_at("/x", &allow));
    let r = get(
        s.port,
        &fetch("/x", &format!("http://127.0.0.1:{port}/")).replace("/fetch?", "/fetch-keep?"),
    );
    assert_eq!(r.text(), "kept", "{}", s.error_log());
    let started = Instant::now();
    let r = get(s.port, "/x/fetch-kept");
    assert_eq!(r.status, 200, "{}", s.error_log());
    assert_eq!(r.text(), "error ErrorCode_ConnectionTerminated");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        get(s.port, "/x/count").text(),
        "3",
        "the same instance served all three"
    );
}

#[test]
fn bad_patterns_fail_configtest_naming_the_directive_and_line() {
    for (pattern, why) in [
        ("example.com", "no scheme://"),
        ("https://example.com/api", "names a path"),
        ("https://a.*.example.com", "a * may only"),
        ("http://127.0.0.1:99999", "port"),
        ("none http://127.0.0.1", "'none' cannot go with patterns"),
    ] {
        let site = probe_at("/x", &format!("  WasmAllowOutbound {pattern}\n"));
        let (ok, out) = configtest(&Options::new(&site));
        assert!(!ok, "{pattern}: {out}");
        assert!(out.contains("WasmAllowOutbound"), "{pattern}: {out}");
        assert!(out.contains(why), "{pattern}: {out}");
        assert!(out.contains("httpd.conf"), "{pattern}: {out}");
    }
}

/// A certificate authority and a certificate of 127.0.0.1 it signed,
/// made with openssl for one test.
struct Certs {
    ca: PathBuf,
    leaf: PathBuf,
    key: PathBuf,
}

fn certs(dir: &Path) -> Certs {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=mod_wasm test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
    ]);
    Certs {
        ca: dir.join("ca.pem"),
        leaf: dir.join("leaf.pem"),
        key: dir.join("leaf.key"),
    }
}

/// An https upstream on 127.0.0.1 (Python's ssl module), stopped by its
/// PID when dropped.
struct TlsUpstream {
    child: Child,
    port: u16,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TLS_SERVER: &str = r#"
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(8)
print(s.getsockname()[1], flush=True)
for _ in range(20):
    c, _ = s.accept()
    try:
        t = ctx.wrap_socket(c, server_side=True)
        data = b""
        while b"\r\n\r\n" not in data:
            more = t.recv(4096)
            if not more:
                break
            data += more
        t.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nhello by TLS")
        t.close()
    except (ssl.SSLError, OSError):
        c.close()
"#;

fn tls_upstream(c: &Certs) -> TlsUpstream {
    let mut child = Command::new("python3")
        .args(["-c", TLS_SERVER])
        .arg(&c.leaf)
        .arg(&c.key)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().unwrap();
    TlsUpstream { child, port }
}

#[test]
fn https_is_verified_against_the_ca_store() {
    let dir = scratch_dir("tls");
    let c = certs(&dir);
    let up = tls_upstream(&c);
    let allow = format!("  WasmAllowOutbound https://127.0.0.1:{}\n", up.port);
    let url = format!("https://127.0.0.1:{}/", up.port);
    {
        // The system's store does not know the test CA.
        let s = Apache::start(&probe_at("/x", &allow));
        let r = get(s.port, &fetch("/x", &url));
        assert_eq!(
            r.text(),
            "error ErrorCode_TlsCertificateError",
            "{}",
            s.error_log()
        );
    }
    // With the test CA as the store (OpenSSL's SSL_CERT_FILE, which the
    // system's store is read through), the same upstream verifies.
    let opts = Options::new(&probe_at("/x", &allow)).env("SSL_CERT_FILE", c.ca.to_str().unwrap());
    let s = Apache::start_with(opts);
    let r = get(s.port, &fetch("/x", &url));
    assert_eq!(r.text(), "200 hello by TLS", "{}", s.error_log());
}

#[test]
fn the_upstream_s_body_is_read_whole() {
    // 300 KB, several reads of the guest's 64 KiB.
    let body: &'static str = Box::leak("0123456789".repeat(30_000).into_boxed_str());
    let up = Upstream::start(body);
    let allow = format!("  WasmAllowOutbound http://127.0.0.1:{}\n", up.port);
    let s = Apache::start(&probe_at("/x", &allow));
    let r = get(
        s.port,
        &fetch("/x", &format!("http://127.0.0.1:{}/big", up.port)),
    );
    assert_eq!(r.status, 200, "{}", s.error_log());
    let got = r.text();
    assert!(got == format!("200 {body}"), "{} bytes", got.len());
}
