//! Issue "Hardening": a guest that waits, hoards descriptors or writes a
//! lot, a client that sends a large body or a crafted header line, each
//! fails its own request and leaves the server as it was.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e::apache::{configtest, Apache, Mpm, Options};
use e2e::http::{get, Request};

/// Directives that leave one child with one worker thread or more, so that
/// consecutive requests meet the same runtime.
fn one_child(mpm: Mpm) -> &'static str {
    match mpm {
        Mpm::Prefork => {
            "ServerLimit 1\nStartServers 1\nMinSpareServers 1\nMaxSpareServers 1\n\
             MaxRequestWorkers 1\n"
        }
        _ => "ServerLimit 1\nMaxRequestWorkers 8\n",
    }
}

fn site(mpm: Mpm, extra: &str) -> String {
    format!(
        "{}<Location /fault>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/fault.wasm\n\
         \x20 WasmMapDir /data @ROOT@/build/test-data ro\n{extra}</Location>\n\
         <Location /hello>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/hello.wasm\n</Location>\n\
         <Location /echo>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/echo.wasm\n</Location>\n\
         <Location /wasm-status>\n  SetHandler wasm-status\n</Location>\n",
        one_child(mpm)
    )
}

/// Starts `site`, with a file for the guest to open.
fn start(mpm: Mpm, extra: &str) -> Apache {
    let data = e2e::root().join("build/test-data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("file"), b"x").unwrap();
    Apache::start_with(Options::new(&site(mpm, extra)).mpm(mpm))
}

/// A `Key: value` line of `wasm-status`.
fn status_value(port: u16, key: &str) -> String {
    e2e::status::fetch(port, "/wasm-status", key)
}

/// The PID of the one child, as it reports it (the parent may still have
/// a short-lived process of its own, such as its compiler, right after the
/// port answers).
fn only_child(s: &Apache) -> i32 {
    status_value(s.port, "Pid").parse().unwrap()
}

fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// A field of `/proc/pid/status`, in KiB.
fn proc_kib(pid: i32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

fn waits_are_bounded_by_the_timeout(mpm: Mpm) {
    let s = start(mpm, "  WasmTimeout 2\n");
    // A relative clock (mod_wasm's own path), an absolute one (WASI's).
    for what in ["sleep", "poll", "pollabs"] {
        let started = Instant::now();
        let r = get(s.port, &format!("/fault?{what}"));
        let took = started.elapsed();
        assert_eq!(r.status, 504, "{mpm:?} {what}");
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
            "{mpm:?} {what}: answered after {took:?} under WasmTimeout 2"
        );
        // The slot came back with the request.
        assert_eq!(status_value(s.port, "Busy"), "0", "{mpm:?} {what}");
    }
    assert!(s.error_log().contains("WasmTimeout"), "{}", s.error_log());
    // Calls handed on to WASI work as WASI's own bindings do, every time.
    assert_eq!(get(s.port, "/fault?poll2").text(), "polled\n", "{mpm:?}");
    assert_eq!(get(s.port, "/hello").status, 200);
    assert!(s.log_lines("exit signal").is_empty(), "{}", s.error_log());
}

#[test]
fn a_short_sleep_is_as_short_as_asked() {
    // 1,000 sleeps of 0 ns: Tokio's 1 ms timer would make that a second.
    let s = start(Mpm::Event, "");
    let started = Instant::now();
    assert_eq!(get(s.port, "/fault?naps").text(), "napped\n");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "1,000 sleeps of 0 took {took:?}"
    );
}

#[test]
fn waits_are_bounded_by_the_timeout_under_event() {
    waits_are_bounded_by_the_timeout(Mpm::Event);
}

#[test]
fn waits_are_bounded_by_the_timeout_under_worker() {
    waits_are_bounded_by_the_timeout(Mpm::Worker);
}

#[test]
fn waits_are_bounded_by_the_timeout_under_prefork() {
    waits_are_bounded_by_the_timeout(Mpm::Prefork);
}

#[test]
fn a_graceful_restart_is_not_held_up_by_a_waiting_guest() {
    let s = start(Mpm::Event, "  WasmTimeout 3\n");
    let old = only_child(&s);
    let port = s.port;
    let waiting = std::thread::spawn(move || get(port, "/fault?poll").status);
    // Until the guest holds its slot.
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_value(s.port, "Busy") != "1" {
        assert!(Instant::now() < deadline, "the guest never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.graceful();
    assert_eq!(waiting.join().unwrap(), 504);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::metadata(format!("/proc/{old}")).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the old child {old} still runs 10 s after a graceful restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn descriptors_are_capped_and_closed(mpm: Mpm, extra: &str, cap: usize) {
    let s = start(mpm, extra);
    let child = only_child(&s);
    assert_eq!(get(s.port, "/hello").status, 200);
    let before = open_fds(child);
    let r = get(s.port, "/fault?files");
    assert_eq!(r.status, 500, "{mpm:?}: {}", r.text());
    assert!(
        s.error_log().contains(&format!(
            "held more than {cap} files, directories and poll handles"
        )),
        "{}",
        s.error_log()
    );
    // The guest said on stderr how many it held: exactly the cap (at most
    // 100 stderr lines are logged).
    let held = s.log_lines("holding ");
    if cap <= 100 {
        assert_eq!(held.len(), cap, "{mpm:?}: {held:?}");
        assert!(
            held.last()
                .is_some_and(|l| l.ends_with(&format!("holding {cap} files"))),
            "{mpm:?}: {held:?}"
        );
    }
    // Everything the request opened is closed with it.
    let after = open_fds(child);
    assert!(
        after <= before + 1,
        "{mpm:?}: the child held {before} descriptors before and {after} after"
    );
    assert_eq!(get(s.port, "/hello").status, 200);
    assert!(s.log_lines("exit signal").is_empty(), "{}", s.error_log());
}

#[test]
fn descriptors_are_capped_and_closed_under_event() {
    descriptors_are_capped_and_closed(Mpm::Event, "", 128);
}

#[test]
fn descriptors_are_capped_and_closed_under_worker() {
    descriptors_are_capped_and_closed(Mpm::Worker, "  WasmMaxOpenFiles 20\n", 20);
}

#[test]
fn descriptors_are_capped_and_closed_under_prefork() {
    descriptors_are_capped_and_closed(Mpm::Prefork, "  WasmMaxOpenFiles 5\n", 5);
}

#[test]
fn wasm_max_open_files_takes_a_positive_number() {
    fs::create_dir_all(e2e::root().join("build/test-data")).unwrap();
    for bad in ["0", "-1", "lots", "65537"] {
        let extra = format!("  WasmMaxOpenFiles {bad}\n");
        let (ok, out) = configtest(&Options::new(&site(Mpm::Event, &extra)));
        assert!(!ok && out.contains("WasmMaxOpenFiles"), "{bad}: {out}");
    }
}

#[test]
fn a_body_the_guest_does_not_read_is_never_held_in_memory() {
    let s = start(Mpm::Event, "");
    let child = only_child(&s);
    let big = vec![b'b'; 64 << 20];
    // Warm up: the slot's memory and Apache's buffers.
    let r = Request::new("POST", "/hello")
        .body(vec![b'b'; 1 << 20])
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 200);
    let peak = proc_kib(child, "VmHWM");
    let r = Request::new("POST", "/hello")
        .body(big.clone())
        .send(s.port)
        .unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"Hello, World!"[..]));
    let grown = proc_kib(child, "VmHWM").saturating_sub(peak);
    assert!(
        grown < 16 << 10,
        "a 64 MiB body that the guest never read raised the child's peak RSS by {grown} KiB"
    );
    // A guest that reads it all gets every byte, with either framing.
    for chunked in [false, true] {
        let mut req = Request::new("POST", "/fault?count").body(big.clone());
        if chunked {
            req = req.chunked(100_000);
        }
        let r = req.send(s.port).unwrap();
        assert_eq!(
            r.text(),
            format!("read {}\n", big.len()),
            "chunked {chunked}"
        );
    }
    let grown = proc_kib(child, "VmHWM").saturating_sub(peak);
    assert!(
        grown < 16 << 10,
        "reading 64 MiB bodies raised the peak RSS by {grown} KiB"
    );
}

#[test]
fn a_body_over_the_limit_is_refused_with_413() {
    let s = start(Mpm::Event, "  LimitRequestBody 1000\n");
    let r = Request::new("POST", "/fault?count")
        .body(vec![b'x'; 2000])
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 413);
    // Chunked: the limit is only known while the guest reads.
    let r = Request::new("POST", "/fault?count")
        .body(vec![b'x'; 2000])
        .chunked(300)
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 413);
    let r = Request::new("POST", "/fault?count")
        .body(vec![b'x'; 900])
        .send(s.port)
        .unwrap();
    assert_eq!(r.text(), "read 900\n");
    // A body the guest does not read leaves the connection usable.
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = "x".repeat(500);
    let one = format!("POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{body}");
    let two = "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    c.write_all(one.as_bytes()).unwrap();
    c.write_all(two.as_bytes()).unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    assert_eq!(raw.matches("Hello, World!").count(), 2, "{raw}");
}

/// Sends `head`, then `body` in slices of `step` bytes every `pause`
/// (until the server stops taking them), and returns what came back and
/// when its first byte came (the server may linger over the end of the
/// connection while the client still sends).
fn trickle(
    port: u16,
    head: &str,
    body: &[u8],
    step: usize,
    pause: Duration,
) -> (Vec<u8>, Duration) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    let mut w = c.try_clone().unwrap();
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        for piece in body.chunks(step) {
            if w.write_all(piece).is_err() {
                return;
            }
            std::thread::sleep(pause);
        }
    });
    let started = Instant::now();
    let mut first = None;
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| started.elapsed());
        raw.extend_from_slice(&buf[..n]);
    }
    drop(c);
    writer.join().unwrap();
    (raw, first.unwrap_or_else(|| started.elapsed()))
}

#[test]
fn a_body_over_the_limit_after_the_response_started_cuts_it() {
    // The guest writes 300 KiB (streamed out), then reads a chunked body
    // that goes over LimitRequestBody: the response must end cut, and the
    // guest's later output must not follow it.
    let s = start(Mpm::Event, "  LimitRequestBody 1000\n");
    let head = "POST /fault?writeread HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut body = b"800\r\n".to_vec();
    body.extend(vec![b'z'; 0x800]);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let (raw, _) = trickle(s.port, head, &body, body.len(), Duration::ZERO);
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(300)]
    );
    assert!(raw.len() > 256 << 10, "{}", raw.len());
    assert!(
        !raw.ends_with(b"0\r\n\r\n"),
        "the cut response was ended as complete"
    );
    assert!(
        !text.contains("read "),
        "the guest's output followed the end"
    );
    assert_eq!(get(s.port, "/hello").status, 200);
}

#[test]
fn a_redirect_with_an_unreadable_body_is_not_followed() {
    let s = start(Mpm::Event, "  LimitRequestBody 1000\n");
    let r = Request::new("POST", "/fault?redirect")
        .body(vec![b'x'; 5000])
        .chunked(2500)
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(!r.text().contains("Hello, World!"), "{}", r.text());
    // With a body that fits, the redirect is followed.
    let r = Request::new("POST", "/fault?redirect")
        .body(vec![b'x'; 500])
        .send(s.port)
        .unwrap();
    assert_eq!(r.text(), "Hello, World!");
}

#[test]
fn a_client_trickling_its_body_is_stopped_at_the_timeout() {
    // A chunk-size line sent one byte every 300 ms: each read of the
    // socket gets what is left of WasmTimeout, not Apache's Timeout anew.
    let s = start(Mpm::Event, "  WasmTimeout 2\n");
    let head = "POST /fault?count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;";
    let (raw, took) = trickle(s.port, head, &[b'x'; 40], 1, Duration::from_millis(300));
    let text = String::from_utf8_lossy(&raw);
    assert!(
        took < Duration::from_secs(6),
        "answered after {took:?}: {text}"
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(get(s.port, "/hello").status, 200);
}

#[test]
fn a_header_line_too_long_for_the_scanner_is_a_500_not_two_headers() {
    let s = start(Mpm::Event, "");
    let r = get(s.port, "/fault?longhead");
    assert_eq!(r.status, 500);
    assert!(r.header("set-cookie").is_none(), "{:?}", r.headers);
    assert!(
        s.error_log().contains("fault.wasm"),
        "the failure is not logged with the module: {}",
        s.error_log()
    );
}

#[test]
fn a_long_response_is_streamed_in_bounded_memory() {
    let s = start(Mpm::Event, "");
    let child = only_child(&s);
    let r = get(s.port, "/fault?big1");
    assert_eq!(r.body.len(), 1 << 20);
    let peak = proc_kib(child, "VmHWM");
    let r = get(s.port, "/fault?big48");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 48 << 20);
    assert!(r.body.iter().all(|&b| b == b'x'));
    let grown = proc_kib(child, "VmHWM").saturating_sub(peak);
    assert!(
        grown < 16 << 10,
        "a 48 MiB response raised the child's peak RSS by {grown} KiB"
    );
}

#[test]
fn a_long_response_reaches_the_client_as_the_guest_writes_it() {
    let s = start(Mpm::Event, "");
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /fault?slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    // The guest writes 300 KiB, pauses 1 s, and writes 300 KiB more.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let mut first_part_at = None;
    let started = Instant::now();
    loop {
        let n = c.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if first_part_at.is_none() && raw.len() >= 256 << 10 {
            first_part_at = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let first = first_part_at.expect("the response was short");
    assert!(
        total - first >= Duration::from_millis(500),
        "the first 256 KiB came at {first:?}, the end at {total:?}: not streamed"
    );
    assert!(raw.ends_with(b"0\r\n\r\n"), "the response was not ended");
}

#[test]
fn a_guest_failing_after_its_response_started_leaves_it_visibly_cut() {
    let s = start(Mpm::Event, "");
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /fault?late HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw[..raw.len().min(200)]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("Transfer-Encoding: chunked"), "{text}");
    assert!(raw.len() > 256 << 10);
    assert!(
        !raw.ends_with(b"0\r\n\r\n"),
        "a cut response was ended as if complete"
    );
    assert!(
        s.error_log().contains("the guest trapped")
            && s.error_log().contains("connection is closed"),
        "{}",
        s.error_log()
    );
    assert_eq!(get(s.port, "/hello").status, 200);
}

#[test]
fn request_headers_reach_the_guest_as_bytes() {
    let s = Apache::start(
        "<Location /env>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/env.wasm\n</Location>\n",
    );
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        b"GET /env HTTP/1.1\r\nHost: x\r\nX-Bytes: caf\xe9 \xff\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    let needle = b"HTTP_X_BYTES=caf\xe9 \xff\n";
    assert!(
        raw.windows(needle.len()).any(|w| w == needle),
        "{}",
        String::from_utf8_lossy(&raw)
    );
}

#[test]
fn a_second_module_in_one_section_fails_configtest() {
    let (ok, out) = configtest(&Options::new(
        "<Location /x>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/hello.wasm\n\
         \x20 WasmModule @GUESTS@/echo.wasm\n</Location>\n",
    ));
    assert!(!ok, "{out}");
    assert!(
        out.contains("Syntax error on line")
            && out.contains("already runs")
            && out.contains("hello.wasm"),
        "{out}"
    );
}

#[test]
fn stderr_lines_of_one_request_are_capped() {
    let s = start(Mpm::Event, "");
    let r = get(s.port, "/fault?chatty");
    assert_eq!(r.status, 200);
    assert_eq!(s.log_lines("chatty line").len(), 100, "{}", s.error_log());
    assert!(
        s.error_log().contains("150 more stderr lines not logged"),
        "{}",
        s.error_log()
    );
}

#[test]
fn a_slow_client_within_the_timeout_gets_its_body_read_whole() {
    // Chunk-size lines and data arrive in 3-byte pieces: each line must be
    // gathered whole across the pauses.
    let s = start(Mpm::Event, "  WasmTimeout 10\n");
    let head = "POST /fault?count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let body = b"4\r\nabcd\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
    let (raw, _) = trickle(s.port, head, body, 3, Duration::from_millis(40));
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("read 30\n"), "{text}");
}
