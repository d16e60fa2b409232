//! JavaScript fetch-event apps (componentize-js 0.23.0) served by a real
//! Apache: guests/http/js/app-probe.js, built by `scripts/build-components
//! app-probe-js` into build/components/app-probe-js.wasm.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::apache::{scratch_dir, Apache, Options};
use e2e::http::{get, Request};
use e2e::root;
use e2e::upstream::Upstream;

/// The probe at /js, and the JavaScript hello at /hello (a target for the
/// probe's outgoing requests), each with `extra`.
fn probe(extra: &str) -> Apache {
    let wasm = root().join("build/components/app-probe-js.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run `scripts/build-components app-probe-js`",
        wasm.display()
    );
    let location = |path: &str, name: &str| {
        format!(
            "<Location {path}>\n  SetHandler wasm-handler\n  WasmModule @ROOT@/build/components/{name}.wasm\n{extra}</Location>\n"
        )
    };
    Apache::start(&(location("/js", "app-probe-js") + &location("/hello", "hello-js")))
}

/// `GET path` on a raw, kept-alive HTTP/1.1 connection, read until the
/// last chunk or until the server closes; with the time each of `marks`
/// first appeared in what had arrived.
fn timed_get(port: u16, path: &str, marks: &[&str]) -> (String, Vec<Option<Duration>>) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let (mut out, mut buf) = (Vec::new(), [0u8; 65536]);
    let mut seen = vec![None; marks.len()];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&out);
                for (mark, at) in marks.iter().zip(seen.iter_mut()) {
                    if at.is_none() && text.contains(mark) {
                        *at = Some(started.elapsed());
                    }
                }
                if out.ends_with(b"0\r\n\r\n") {
                    break;
                }
            }
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), seen)
}

#[test]
fn a_get_sees_its_query_and_the_headers_the_server_adds() {
    let s = probe("");
    let r = Request::new("GET", "/js/echo?a=1&b=h%C3%A9+x&a=2")
        .header("X-Test", "yes")
        .header("wasm-client-addr", "6.6.6.6:1")
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 200, "{}", s.error_log());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let t = r.text();
    assert!(t.contains(r#""method":"GET""#), "{t}");
    assert!(t.contains(r#""path":"/js/echo""#), "{t}");
    // Object.fromEntries keeps the last of a repeated parameter.
    assert!(t.contains(r#""query":{"a":"2","b":"hé x"}"#), "{t}");
    assert!(t.contains(r#""x-test":"yes""#), "{t}");
    assert!(t.contains(r#""wasm-base-path":"/js""#), "{t}");
    assert!(t.contains(r#""wasm-client-addr":"127.0.0.1:"#), "{t}");
    assert!(
        !t.contains("6.6.6.6"),
        "the client's wasm-client-addr reached the guest: {t}"
    );
}

#[test]
fn a_json_post_is_answered_with_json() {
    let s = probe("");
    let r = Request::new("POST", "/js/sum")
        .header("Content-Type", "application/json")
        .body(r#"{"numbers": [1, 2, 3.5, -10]}"#)
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 200, "{}", s.error_log());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), r#"{"count":4,"sum":-3.5}"#);
    // The app's own 400, not a failure.
    let r = Request::new("POST", "/js/sum")
        .body(r#"{"numbers": "one"}"#)
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn a_1_mib_body_reaches_the_guest_whole_with_content_length_and_chunked() {
    let s = probe("");
    let body: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let byte_sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
    // sha256 of that body (python3: hashlib.sha256(bytes(i*7%251 for i in
    // range(1<<20)))): the tests have no hashing crate.
    let sha256 = "e76e4c02227083fd12207b7bc85287bb9e02a618fed3bd8eab1bc2daeda2fb53";
    let expected = format!(r#"{{"length":1048576,"byteSum":{byte_sum},"sha256":"{sha256}"}}"#);
    for chunked in [false, true] {
        let mut req = Request::new("POST", "/js/digest").body(body.clone());
        if chunked {
            req = req.chunked(10_000);
        }
        let r = req.send(s.port).unwrap();
        assert_eq!(r.status, 200, "chunked {chunked}: {}", s.error_log());
        assert_eq!(r.text(), expected, "chunked {chunked}");
    }
}

#[test]
fn a_readable_stream_reaches_the_client_chunk_by_chunk() {
    let s = probe("");
    // Five chunks 200 ms apart: 800 ms between the first and the last.
    let marks = ["chunk 0", "chunk 1", "chunk 2", "chunk 3", "chunk 4"];
    let (text, seen) = timed_get(s.port, "/js/stream?chunks=5&ms=200", &marks);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{text}\n{}",
        s.error_log()
    );
    assert!(text.ends_with("0\r\n\r\n"), "not ended: {text}");
    let at: Vec<Duration> = seen
        .iter()
        .zip(marks)
        .map(|(t, m)| t.unwrap_or_else(|| panic!("{m} never came: {text}")))
        .collect();
    assert!(
        at[4] - at[0] >= Duration::from_millis(600),
        "chunks at {at:?}: sent all at once, not streamed"
    );
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "{at:?}");
}

#[test]
fn a_custom_status_and_headers_reach_the_client() {
    let s = probe("");
    for code in [201, 404, 451, 503] {
        let r = get(s.port, &format!("/js/status?code={code}"));
        assert_eq!(r.status, code, "{}", s.error_log());
        assert_eq!(r.header("x-probe"), Some("status"));
        assert_eq!(r.text(), "a custom status\n");
    }
}

/// A status Apache 2.4 has no reason phrase for reaches the client as
/// itself, not as Apache's "500 Internal Server Error" (the shim then sets
/// a status line of the bare code, as mod_cgi sets the script's).
#[test]
fn a_status_apache_has_no_reason_phrase_for_reaches_the_client() {
    let s = probe("");
    let r = get(s.port, "/js/status?code=418");
    assert_eq!(r.status, 418);
}

#[test]
fn utf8_text_reaches_the_client_byte_for_byte() {
    let s = probe("");
    let r = get(s.port, "/js/utf8");
    assert_eq!(r.status, 200, "{}", s.error_log());
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.body, "héllo wörld ✓ 日本\n".as_bytes());
    assert_eq!(r.header("content-length"), Some("25"));
}

#[test]
fn an_exception_in_the_handler_is_500_and_logged() {
    let s = probe("");
    // Thrown inside the promise given to respondWith: the engine logs it
    // and sets no response, so the server answers 500 itself.
    let r = get(s.port, "/js/throw");
    assert_eq!(r.status, 500);
    assert!(
        !r.text().contains("on purpose"),
        "the error reached the client"
    );
    // Thrown by the listener before respondWith: StarlingMonkey sends a 500
    // of its own ("no fetch-event handler triggered") and never finishes
    // its body, so the server cuts the response.
    let (text, _) = timed_get(s.port, "/js/throw-sync", &[]);
    assert!(text.starts_with("HTTP/1.1 500"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a cut response was ended: {text}"
    );
    let log = s.error_log();
    assert!(
        log.contains("Error while running request handler: the probe fails on purpose")
            && log.contains("app-probe.js:") // the stack names the line
            && log.contains("WASM00042"),
        "{log}"
    );
    assert!(
        log.contains("Exception in event listener for fetch")
            && log.contains("Error: the probe fails on purpose, synchronously")
            && log.contains("WASM00060"),
        "{log}"
    );
    // The child lives on.
    assert_eq!(get(s.port, "/js/utf8").status, 200);
}

#[test]
fn a_denied_outgoing_fetch_is_a_type_error_in_the_guest() {
    let s = probe("");
    // A target that would answer, on this very server: what fails is the
    // server's refusal, not the network.
    assert_eq!(get(s.port, "/hello/").status, 200);
    let target = format!("http://127.0.0.1:{}/hello/", s.port);
    let r = get(s.port, &format!("/js/fetch?url={target}"));
    assert_eq!(r.status, 200, "{}", s.error_log());
    assert_eq!(
        r.text(),
        r#"{"error":"TypeError: NetworkError when attempting to fetch resource"}"#
    );
    assert_eq!(
        s.wait_log_lines("WASM00069", 1).len(),
        1,
        "{}",
        s.error_log()
    );
}

#[test]
fn an_allowed_fetch_reaches_its_upstream() {
    let up = Upstream::start("upstream says hi");
    let s = probe(&format!(
        "  WasmAllowOutbound http://127.0.0.1:{}\n",
        up.port
    ));
    let target = format!("http://127.0.0.1:{}/from/js", up.port);
    let r = get(s.port, &format!("/js/fetch?url={target}"));
    assert_eq!(r.status, 200, "{}", s.error_log());
    assert_eq!(r.text(), r#"{"status":200,"body":"upstream says hi"}"#);
    assert!(
        up.seen()[0].starts_with("GET /from/js HTTP/1.1"),
        "{:?}",
        up.seen()
    );
}

/// componentize-js 0.23.0 cannot serve a second request from one instance
/// (StarlingMonkey issue 247): its FetchEvent is never reset, so the
/// listener's respondWith throws. (An app that exports `incomingHandler`
/// and uses wasi:http itself, without the fetch event, is reused fine.)
/// This pins that behaviour; when an update
/// of componentize-js makes it fail, WasmInstanceReuse works for
/// JavaScript and docs/guests.md should say so.
#[test]
fn a_reused_instance_of_componentize_js_fails_its_second_request() {
    // One shard, so that the second request finds the kept instance.
    let s = Apache::start(
        "WasmPoolShards 1\n<Location /kept>\n  SetHandler wasm-handler\n  WasmModule @ROOT@/build/components/app-probe-js.wasm\n  WasmInstanceReuse 3\n</Location>\n",
    );
    let first = get(s.port, "/kept/count");
    assert_eq!((first.status, first.text().as_str()), (200, "1"));
    let second = get(s.port, "/kept/count");
    assert_eq!(second.status, 500, "{}", second.text());
    assert!(
        s.error_log()
            .contains("FetchEvent#respondWith can't be called twice on the same event"),
        "{}",
        s.error_log()
    );
    // The failed instance is dropped: the next request starts afresh.
    let third = get(s.port, "/kept/count");
    assert_eq!((third.status, third.text().as_str()), (200, "1"));
}

/// The documented command builds the demo (examples/js/app.js), and what
/// it built serves the demo's page, form, API and stream.
#[test]
fn scripts_build_js_builds_the_demo_app_that_then_serves_it() {
    let dir = scratch_dir("build-js");
    let wasm = dir.join("app.wasm");
    let build = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(root().join("scripts/build-js"))
            .args(args)
            .output()
            .expect("cannot run scripts/build-js");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, text) = build(&["no-such-app.js".as_ref(), "-o".as_ref(), wasm.as_os_str()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no-such-app.js: no such file"), "{text}");
    let app = root().join("examples/js/app.js");
    let (code, text) = build(&[app.as_os_str(), "-o".as_ref(), wasm.as_os_str()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("built ") && text.contains(" bytes"), "{text}");
    assert!(fs::metadata(&wasm).unwrap().len() > 1 << 20, "{text}");

    // componentize-js's output differs from one build to the next: its
    // compiled form goes into a cache of this test's own, not the shared
    // one, where each run would leave another.
    let s = Apache::start_with(
        Options::new(&format!(
            "<Location /app>\n  SetHandler wasm-handler\n  WasmModule {}\n</Location>\n",
            wasm.display()
        ))
        .cache_dir(&dir.join("cache")),
    );
    let r = get(s.port, "/app/");
    assert_eq!(r.status, 200, "{}", s.error_log());
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(
        r.text().contains(r#"<form method="post" action="/app/">"#),
        "{}",
        r.text()
    );

    let r = Request::new("POST", "/app/")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("name=Ann+Lee&message=caf%C3%A9+%26+%3Ctea%3E")
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains(
            "<dt>name</dt><dd>Ann Lee</dd><dt>message</dt><dd>café &#38; &#60;tea&#62;</dd>"
        ),
        "{}",
        r.text()
    );

    let r = Request::new("POST", "/app/api/sum")
        .header("Content-Type", "application/json")
        .body(r#"{"numbers": [1, 2, 3.5]}"#)
        .send(s.port)
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, r#"{"sum":6.5}"#));
    let r = Request::new("POST", "/app/api/sum")
        .body("[")
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(get(s.port, "/app/api/sum").status, 405);
    assert_eq!(get(s.port, "/app/nothing-here").status, 404);

    // Seven lines half a second apart.
    let (text, seen) = timed_get(s.port, "/app/stream", &["Counting", "Done."]);
    assert!(text.ends_with("0\r\n\r\n"), "{text}");
    let (first, last) = (seen[0].expect(&text), seen[1].expect(&text));
    assert!(
        last - first >= Duration::from_millis(2000),
        "first line at {first:?}, the last at {last:?}: not streamed"
    );
    drop(s);
    let _ = fs::remove_dir_all(&dir);
}
