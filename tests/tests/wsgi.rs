//! WSGI applications served as wasi:http components: Flask apps built by
//! scripts/build-wsgi with python/mod_wasm_wsgi.py, the probe of
//! guests/wsgi/probe_app.py (`wsgi-probe`) and the demo of examples/flask
//! (`flask-demo`), against a real Apache.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::apache::Apache;
use e2e::http::{get, Request, Response};
use e2e::upstream::Upstream;

fn component(path: &str, name: &str, extra: &str) -> String {
    let wasm = e2e::root().join(format!("build/components/{name}.wasm"));
    assert!(
        wasm.is_file(),
        "{} is missing: build it with scripts/build-wsgi (see docs/guests.md)",
        wasm.display()
    );
    format!(
        "<Location {path}>\n  SetHandler wasm-handler\n  WasmModule {}\n{extra}</Location>\n",
        wasm.display()
    )
}

/// A server with the probe at /probe.
fn probe(extra: &str) -> Apache {
    Apache::start(&component("/probe", "wsgi-probe", extra))
}

fn ok(s: &Apache, r: Response) -> String {
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.error_log());
    r.text()
}

/// A 200 response's JSON body (Flask ends it with a newline and writes
/// non-ASCII characters as `\u` escapes).
fn json(s: &Apache, r: Response) -> String {
    ok(s, r).trim_end().to_string()
}

fn post(port: u16, path: &str, ctype: &str, body: impl Into<Vec<u8>>) -> Response {
    Request::new("POST", path)
        .header("Content-Type", ctype)
        .body(body)
        .send(port)
        .unwrap()
}

/// `e2e::http::raw`, its response as text.
fn raw(port: u16, request: &str) -> (String, Duration, Duration) {
    let (out, first, total) = e2e::http::raw(port, request);
    (String::from_utf8_lossy(&out).into_owned(), first, total)
}

fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

#[test]
fn flask_routes_path_parameters_and_query_strings() {
    let s = probe("");
    assert_eq!(
        json(&s, get(s.port, "/probe/user/ada/21")),
        r#"{"n":21,"name":"ada","twice":42}"#
    );
    // The path is percent-decoded before routing.
    assert_eq!(
        json(&s, get(s.port, "/probe/user/J%C3%BCrgen%20K/3")),
        r#"{"n":3,"name":"J\u00fcrgen K","twice":6}"#
    );
    assert_eq!(get(s.port, "/probe/user/ada/x").status, 404);
    assert_eq!(
        json(&s, get(s.port, "/probe/query?a=1&a=2&b=%C3%BC&c=x+y&d=")),
        r#"{"a":["1","2"],"b":["\u00fc"],"c":["x y"],"d":[""]}"#
    );
    assert_eq!(get(s.port, "/probe/missing").status, 404);
}

#[test]
fn forms_json_and_a_1_mib_upload_reach_flask() {
    let s = probe("");
    let r = post(
        s.port,
        "/probe/form",
        "application/x-www-form-urlencoded",
        "name=Ada+L&tag=a&tag=b&note=%E2%9C%93",
    );
    assert_eq!(
        json(&s, r),
        r#"{"name":["Ada L"],"note":["\u2713"],"tag":["a","b"]}"#
    );
    let r = post(
        s.port,
        "/probe/json",
        "application/json",
        r#"{"b": [1, 2.5, null], "a": {"ü": true}}"#,
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{}",
        r.text()
    );
    assert_eq!(
        json(&s, r),
        r#"{"got":{"a":{"\u00fc":true},"b":[1,2.5,null]},"keys":["a","b"]}"#
    );
    // Over Werkzeug's 500 KiB the upload goes to tempfile, kept in memory.
    let file: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31 % 253) as u8).collect();
    let mut body =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"data.bin\"\r\n\
Content-Type: application/octet-stream\r\n\r\n"
            .to_vec();
    body.extend_from_slice(&file);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    for chunked in [false, true] {
        let mut req = Request::new("POST", "/probe/upload")
            .header("Content-Type", "multipart/form-data; boundary=XyZ")
            .body(body.clone());
        if chunked {
            req = req.chunked(30_000);
        }
        let t = json(&s, req.send(s.port).unwrap());
        assert_eq!(
            t,
            format!(
                r#"{{"name":"data.bin","sha256":"{}","size":1048576}}"#,
                sha256_hex(&file)
            ),
            "chunked {chunked}"
        );
    }
}

#[test]
fn redirects_custom_statuses_and_utf_8_pass_through() {
    let s = probe("");
    let r = get(s.port, "/probe/redirect");
    assert_eq!(r.status, 302, "{}", s.error_log());
    // Flask's url_for builds on SCRIPT_NAME: the location's path.
    assert_eq!(r.header("location"), Some("/probe/user/moved/1"));
    // 418 is not in Apache 2.4's table of status lines (it would send 500).
    let r = get(s.port, "/probe/status/422");
    assert_eq!(r.status, 422, "{}", s.error_log());
    assert_eq!(r.header("x-custom"), Some("yes"));
    assert_eq!(r.text(), "status 422, on purpose\n");
    let r = get(s.port, "/probe/utf8");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.text(), "Grüße, 世界, ☕\n");
    // start_response's write() and an empty body.
    assert_eq!(
        ok(&s, get(s.port, "/probe/raw/write")),
        "written, then returned\n"
    );
    let r = get(s.port, "/probe/raw/empty");
    assert_eq!((r.status, r.header("x-empty")), (204, Some("yes")));
    assert!(r.body.is_empty());
}

#[test]
fn an_exception_is_a_500_with_its_traceback_in_the_error_log_only() {
    let s = probe("");
    // Flask's own handler, then one that escapes the application.
    for (path, needle) in [
        ("/probe/fail", "the WSGI probe fails on purpose"),
        (
            "/probe/raw/fail-before",
            "the WSGI probe fails before its head on purpose",
        ),
    ] {
        let r = get(s.port, path);
        assert_eq!(r.status, 500, "{path}: {}", r.text());
        let body = r.text();
        assert!(
            !body.contains("Traceback") && !body.contains(needle) && !body.contains(".py"),
            "{path}: {body}"
        );
        assert!(body.contains("Internal Server Error"), "{path}: {body}");
        let log = s.error_log();
        assert!(log.contains(needle), "{path}: {log}");
        assert!(log.contains("Traceback (most recent call last)"), "{log}");
    }
    assert_eq!(
        get(s.port, "/probe/raw/fail-before").text(),
        "Internal Server Error\n"
    );
    // The probe lives on.
    assert_eq!(get(s.port, "/probe/user/a/1").status, 200);
}

#[test]
fn an_exception_after_the_head_cuts_the_response() {
    let s = probe("");
    for (path, needle) in [
        (
            "/probe/raw/fail-after",
            "the WSGI probe fails after its head on purpose",
        ),
        (
            "/probe/stream-fail",
            "the WSGI probe fails mid-stream on purpose",
        ),
    ] {
        let (text, _, _) = raw(s.port, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
        assert!(text.contains("partial\n"), "{path}: {text}");
        assert!(
            !text.ends_with("0\r\n\r\n"),
            "{path}: a failed response was ended as whole: {text}"
        );
        let log = s.error_log();
        assert!(log.contains(needle), "{path}: {log}");
    }
    assert_eq!(get(s.port, "/probe/user/a/1").status, 200);
}

#[test]
fn a_generator_s_chunks_reach_the_client_as_they_are_produced() {
    let s = probe("");
    let (text, first, total) = raw(s.port, "GET /probe/stream HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for i in 0..5 {
        assert!(text.contains(&format!("chunk {i}\n")), "{text}");
    }
    assert!(text.ends_with("0\r\n\r\n"), "{text}");
    // Four pauses of 0.2 s between five chunks.
    assert!(
        total - first >= Duration::from_millis(600) && first < total / 2,
        "first bytes at {first:?}, the end at {total:?}: not streamed"
    );
}

fn environ(s: &Apache, path: &str) -> String {
    let r = Request::new("GET", path)
        .header("X-Test", "yes")
        .header("Cookie", "a=1; b=2")
        .header("Accept", "text/html")
        .header("Accept", "application/json")
        .send(s.port)
        .unwrap();
    ok(s, r)
}

#[test]
fn script_name_is_the_location_and_path_info_the_rest() {
    let s = Apache::start(
        &(component("/outer/inner", "wsgi-probe", "") + &component("/probe", "wsgi-probe", "")),
    );
    let t = environ(&s, "/outer/inner/environ?x=1");
    assert!(t.contains(r#""SCRIPT_NAME":"/outer/inner""#), "{t}");
    assert!(t.contains(r#""PATH_INFO":"/environ""#), "{t}");
    assert!(t.contains(r#""QUERY_STRING":"x=1""#), "{t}");
    assert!(
        t.contains(&format!(
            r#""url_root":"http://127.0.0.1:{}/outer/inner/""#,
            s.port
        )),
        "{t}"
    );
    // PATH_INFO is decoded (a latin-1 str of the bytes, as PEP 3333 says).
    let t = environ(&s, "/outer/inner/a%20b/%C3%A9/environ");
    assert!(
        t.contains(r#""PATH_INFO":"/a b/\u00c3\u00a9/environ""#),
        "{t}"
    );
    assert!(t.contains(r#""SCRIPT_NAME":"/outer/inner""#), "{t}");
    let t = environ(&s, "/probe/environ");
    assert!(
        t.contains(r#""SCRIPT_NAME":"/probe""#) && t.contains(r#""PATH_INFO":"/environ""#),
        "{t}"
    );
}

#[test]
fn the_environ_has_pep_3333_s_keys() {
    let s = probe("");
    let t = environ(&s, "/probe/environ");
    for want in [
        r#""REQUEST_METHOD":"GET""#.to_string(),
        r#""REMOTE_ADDR":"127.0.0.1""#.into(),
        r#""SERVER_NAME":"127.0.0.1""#.into(),
        format!(r#""SERVER_PORT":"{}""#, s.port),
        r#""SERVER_PROTOCOL":"HTTP/1.1""#.into(),
        r#""QUERY_STRING":"""#.into(),
        r#""wsgi.url_scheme":"http""#.into(),
        r#""wsgi.version":[1,0]"#.into(),
        r#""wsgi.multithread":false"#.into(),
        r#""wsgi.multiprocess":true"#.into(),
        r#""wsgi.run_once":false"#.into(),
        r#""wsgi.input_terminated":true"#.into(),
        r#""wsgi.errors":"TextIOWrapper""#.into(),
        r#""HTTP_X_TEST":"yes""#.into(),
        r#""HTTP_COOKIE":"a=1; b=2""#.into(),
        // Apache joins a header sent twice.
        r#""HTTP_ACCEPT":"text/html, application/json""#.into(),
    ] {
        assert!(t.contains(&want), "{want} not in {t}");
    }
    assert!(t.contains(r#""REMOTE_PORT":""#), "{t}");
    assert!(!t.contains(r#""REMOTE_PORT":"""#), "{t}");
    for gone in ["HTTP_WASM_CLIENT_ADDR", "HTTP_WASM_BASE_PATH", "CONTENT_"] {
        assert!(!t.contains(gone), "{gone} in {t}");
    }
    // A body's type and length are CONTENT_*, not HTTP_CONTENT_*.
    let t = ok(
        &s,
        post(s.port, "/probe/environ", "text/plain", "twelve bytes"),
    );
    assert!(
        t.contains(r#""CONTENT_TYPE":"text/plain""#)
            && t.contains(r#""CONTENT_LENGTH":"12""#)
            && t.contains(r#""REQUEST_METHOD":"POST""#),
        "{t}"
    );
    assert!(!t.contains("HTTP_CONTENT"), "{t}");
}

#[test]
fn wsgi_input_is_read_only_as_far_as_the_application_asks() {
    // A chunked body over LimitRequestBody fails only once it is read that
    // far: reading 10 bytes of it must not read the rest.
    let s = probe("  LimitRequestBody 1000\n");
    let big = vec![b'z'; 200_000];
    let r = Request::new("POST", "/probe/chunks?size=10&max=1")
        .body(big.clone())
        .chunked(500)
        .send(s.port)
        .unwrap();
    assert_eq!(
        json(&s, r),
        format!(
            r#"{{"bytes":10,"chunks":1,"sha256":"{}"}}"#,
            sha256_hex(&big[..10])
        )
    );
    let s = probe("");
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 256) as u8).collect();
    for chunked in [false, true] {
        let mut req = Request::new("POST", "/probe/chunks?size=1000").body(body.clone());
        if chunked {
            req = req.chunked(777);
        }
        assert_eq!(
            json(&s, req.send(s.port).unwrap()),
            format!(
                r#"{{"bytes":10000,"chunks":10,"sha256":"{}"}}"#,
                sha256_hex(&body)
            ),
            "chunked {chunked}"
        );
    }
    // readline, then iteration over the lines.
    let r = post(s.port, "/probe/lines", "text/plain", "one\ntwo\n\nthree");
    assert_eq!(
        json(&s, r),
        r#"{"first":"one\n","rest":["two\n","\n","three"]}"#
    );
}

#[test]
fn wasm_instance_reuse_keeps_the_application_s_state() {
    let s = Apache::start(
        &(component("/probe", "wsgi-probe", "")
            + &component("/kept", "wsgi-probe", "  WasmInstanceReuse 10\n")),
    );
    let count = |path: &str| ok(&s, get(s.port, path));
    let fresh: Vec<String> = (0..3).map(|_| count("/probe/count")).collect();
    assert_eq!(fresh, ["1", "1", "1"]);
    let kept: Vec<String> = (0..4).map(|_| count("/kept/count")).collect();
    assert_eq!(kept, ["1", "2", "3", "4"]);
    // Requests in between change nothing of the next one's (the environ of
    // a POST is not the next GET's).
    let t = ok(&s, post(s.port, "/kept/environ", "text/plain", "body"));
    assert!(t.contains(r#""CONTENT_LENGTH":"4""#), "{t}");
    let t = ok(&s, get(s.port, "/kept/environ"));
    assert!(
        !t.contains("CONTENT_LENGTH") && t.contains(r#""REQUEST_METHOD":"GET""#),
        "{t}"
    );
    assert_eq!(count("/kept/count"), "7");
}

#[test]
fn warm_up_requests_made_at_build_time_are_in_every_fresh_instance() {
    // wsgi-probe-warm is the probe built with --warm 'GET /count': the
    // three warm-up requests counted, every fresh instance starts there.
    let s = Apache::start(
        &(component("/probe", "wsgi-probe", "")
            + &component("/warm", "wsgi-probe-warm", "")
            + &component("/warm-kept", "wsgi-probe-warm", "  WasmInstanceReuse 10\n")),
    );
    let count = |path: &str| ok(&s, get(s.port, path));
    let cold: Vec<String> = (0..2).map(|_| count("/probe/count")).collect();
    assert_eq!(cold, ["1", "1"]);
    let warm: Vec<String> = (0..3).map(|_| count("/warm/count")).collect();
    assert_eq!(warm, ["4", "4", "4"]);
    let kept: Vec<String> = (0..3).map(|_| count("/warm-kept/count")).collect();
    assert_eq!(kept, ["4", "5", "6"]);
}

#[test]
fn urllib_s_outbound_request_fails_with_the_wasi_http_error() {
    let s = probe("");
    let t = json(&s, get(s.port, "/probe/fetch?url=http://127.0.0.1:9/x"));
    assert_eq!(t, r#"{"error":"HTTP-request-denied"}"#);
}

#[test]
fn urllib_reaches_an_allowed_upstream_and_sees_its_errors_as_http_errors() {
    let up = Upstream::start("from upstream");
    let gone = Upstream::answering(404, "no such thing");
    let allow = format!(
        "  WasmAllowOutbound http://127.0.0.1:{} http://127.0.0.1:{}\n",
        up.port, gone.port
    );
    let s = probe(&allow);
    let url = format!("http://127.0.0.1:{}/v1/items?x=1", up.port);
    let t = json(&s, get(s.port, &format!("/probe/fetch?url={url}")));
    assert_eq!(t, r#"{"body":"from upstream","status":200}"#);
    let seen = up.seen();
    assert!(
        seen[0].starts_with("GET /v1/items?x=1 HTTP/1.1\r\n"),
        "{seen:?}"
    );
    let url = format!("http://127.0.0.1:{}/nothing", gone.port);
    let t = json(&s, get(s.port, &format!("/probe/fetch?url={url}")));
    assert!(
        t.contains(r#""status":404"#) && t.contains("HTTP Error 404"),
        "{t}"
    );
}

#[test]
fn the_flask_demo_serves_its_form_and_api() {
    let s = Apache::start(&component("/demo", "flask-demo", ""));
    let page = ok(&s, get(s.port, "/demo/"));
    assert!(
        page.contains("<form method=\"post\" action=\"/demo/\">"),
        "{page}"
    );
    let r = post(
        s.port,
        "/demo/",
        "application/x-www-form-urlencoded",
        "name=Ada&message=%3Cb%3Ehi%3C%2Fb%3E",
    );
    let page = ok(&s, r);
    assert!(
        page.contains("<dd>Ada</dd>") && page.contains("<dd>&lt;b&gt;hi&lt;/b&gt;</dd>"),
        "{page}"
    );
    let r = post(
        s.port,
        "/demo/api/sum",
        "application/json",
        r#"{"numbers": [1, 2, 3.5]}"#,
    );
    assert_eq!(json(&s, r), r#"{"count":3,"sum":6.5}"#);
    let r = post(
        s.port,
        "/demo/api/sum",
        "application/json",
        r#"{"numbers": "x"}"#,
    );
    assert_eq!(r.status, 400);
    let t = ok(&s, get(s.port, "/demo/api/echo?a=1"));
    assert!(
        t.contains(r#""method":"GET""#)
            && t.contains(r#""path":"/api/echo""#)
            && t.contains(r#""args":{"a":["1"]}"#),
        "{t}"
    );
}

/// What scripts/build-wsgi says when it fails; it must fail.
fn build_wsgi_failure(args: &[&str]) -> String {
    let out = Command::new(e2e::root().join("scripts/build-wsgi"))
        .args(args)
        .output()
        .expect("scripts/build-wsgi");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    text
}

#[test]
fn build_wsgi_names_a_missing_module_or_callable() {
    let dir = e2e::apache::scratch_dir("build-wsgi");
    std::fs::write(dir.join("plain.py"), "answer = 42\n").unwrap();
    let out = dir.join("out.wasm");
    let (src, out) = (dir.to_str().unwrap(), out.to_str().unwrap());
    let text = build_wsgi_failure(&["nowhere:app", "-s", src, "-o", out]);
    assert!(text.contains("build-wsgi: no module nowhere in"), "{text}");
    let text = build_wsgi_failure(&["plain:app", "-s", src, "-o", out]);
    // One line, not componentize-py's traceback.
    assert!(
        text.contains("build-wsgi: module plain has no app") && !text.contains("Traceback"),
        "{text}"
    );
    let text = build_wsgi_failure(&["plain:answer", "-s", src, "-o", out]);
    assert!(
        text.contains("build-wsgi: plain.answer is not callable (a int)"),
        "{text}"
    );
    assert!(!dir.join("out.wasm").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn build_wsgi_names_a_warm_up_request_that_fails() {
    let dir = e2e::apache::scratch_dir("build-wsgi-warm");
    std::fs::write(
        dir.join("tiny.py"),
        "def app(environ, start_response):\n    \
         found = environ['PATH_INFO'] == '/'\n    \
         start_response('200 OK' if found else '404 Not Found', [])\n    \
         return [b'']\n",
    )
    .unwrap();
    let out = dir.join("out.wasm");
    let (src, out) = (dir.to_str().unwrap(), out.to_str().unwrap());
    let text = build_wsgi_failure(&["tiny:app", "-s", src, "-o", out, "--warm", "GET /nope"]);
    assert!(
        text.contains("build-wsgi: warm-up request 'GET /nope' answered 404 Not Found"),
        "{text}"
    );
    let text = build_wsgi_failure(&["tiny:app", "-s", src, "-o", out, "--warm", "/"]);
    assert!(
        text.contains("build-wsgi: warm-up request '/' is not 'METHOD /PATH [CONTENT-TYPE BODY]'"),
        "{text}"
    );
    assert!(!dir.join("out.wasm").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
