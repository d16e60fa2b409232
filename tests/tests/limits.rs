//! Issue "Limits": no guest can hurt the server or another request.

use std::time::{Duration, Instant};

use e2e::apache::{configtest, Apache, Mpm, Options};
use e2e::http::{get, Request};

fn fault_site(extra: &str) -> String {
    format!(
        "<Location /fault>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/fault.wasm\n{extra}</Location>\n\
         <Location /hello>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/hello.wasm\n</Location>\n"
    )
}

/// What the fault guest's "alloc" reports: "allocated N MiB".
fn allocated_mib(r: &e2e::http::Response) -> u64 {
    let text = r.text();
    let n = text
        .trim()
        .trim_start_matches("allocated ")
        .trim_end_matches(" MiB");
    n.parse()
        .unwrap_or_else(|_| panic!("unexpected answer: {text}"))
}

fn limits_under(mpm: Mpm) {
    let site = fault_site("  WasmTimeout 1\n  WasmMaxMemory 16M\n  WasmMaxOutput 64K\n");
    let s = Apache::start_with(Options::new(&site).mpm(mpm));

    let started = Instant::now();
    let r = get(s.port, "/fault?loop");
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{mpm:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{mpm:?}: {took:?}"
    );
    assert!(s.error_log().contains("WasmTimeout"), "{}", s.error_log());

    let r = get(s.port, "/fault?alloc");
    assert_eq!(r.status, 200, "{mpm:?}");
    let mib = allocated_mib(&r);
    assert!(
        mib < 16,
        "{mpm:?}: allocated {mib} MiB under WasmMaxMemory 16M"
    );

    let r = get(s.port, "/fault?output");
    assert_eq!(r.status, 500, "{mpm:?}");
    assert!(
        r.body.len() < 64 << 10,
        "{mpm:?}: part of an oversized response was sent"
    );
    assert!(s.error_log().contains("WasmMaxOutput"), "{}", s.error_log());

    assert_eq!(get(s.port, "/hello").body, b"Hello, World!");
    assert!(s.log_lines("exit signal").is_empty(), "{}", s.error_log());
}

#[test]
fn limits_under_event() {
    limits_under(Mpm::Event);
}

#[test]
fn limits_under_worker() {
    limits_under(Mpm::Worker);
}

#[test]
fn limits_under_prefork() {
    limits_under(Mpm::Prefork);
}

#[test]
fn default_memory_limit_lets_the_guest_see_allocation_failure() {
    let s = Apache::start(&fault_site(""));
    let r = get(s.port, "/fault?alloc");
    assert_eq!(r.status, 200);
    let mib = allocated_mib(&r);
    assert!(
        (200..256).contains(&mib),
        "allocated {mib} MiB under the 256M default"
    );
}

/// Starts `n` requests for guests that loop until their `WasmTimeout`, and
/// returns once they fill the pool (a hello request gets 503); each thread
/// gives its request's status.
fn fill_pool(port: u16, n: usize) -> Vec<std::thread::JoinHandle<u16>> {
    let busy = (0..n)
        .map(|_| {
            // A probe below may hold a slot for a moment: then try again.
            std::thread::spawn(move || loop {
                match get(port, "/fault?loop").status {
                    503 => continue,
                    status => break status,
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(port, "/hello").status != 503 {
        assert!(Instant::now() < deadline, "the pool never filled");
        std::thread::sleep(Duration::from_millis(10));
    }
    busy
}

#[test]
fn a_full_pool_answers_503_and_names_the_limit() {
    // One child only, so that both requests meet the same pool.
    let site = format!(
        "ServerLimit 1\nMaxRequestWorkers 8\nWasmPoolSlots 1\n{}",
        fault_site("  WasmTimeout 2\n")
    );
    let s = Apache::start(&site);
    for b in fill_pool(s.port, 1) {
        assert_eq!(b.join().unwrap(), 504);
    }
    assert!(
        s.error_log().contains("raise WasmPoolSlots"),
        "{}",
        s.error_log()
    );
    assert_eq!(get(s.port, "/hello").status, 200);
}

#[test]
fn the_slots_of_every_shard_serve_and_each_shard_stops_its_guests() {
    // Three slots over two shards: three guests run at once wherever their
    // threads are, a fourth request finds no slot, and all three time out
    // (each shard's engine is ticked).
    let site = format!(
        "ServerLimit 1\nMaxRequestWorkers 8\nWasmPoolSlots 3\nWasmPoolShards 2\n{}",
        fault_site("  WasmTimeout 2\n")
    );
    let s = Apache::start(&site);
    for b in fill_pool(s.port, 3) {
        assert_eq!(b.join().unwrap(), 504);
    }
    assert!(
        s.error_log().contains("all 3 instance slots"),
        "{}",
        s.error_log()
    );
    assert_eq!(get(s.port, "/hello").status, 200);
}

#[test]
fn wasm_status_shows_the_childs_slots_requests_and_heap() {
    // One child, so that every request below meets the same runtime.
    let site = format!(
        "ServerLimit 1\nMaxRequestWorkers 8\nWasmPoolSlots 6\nWasmPoolShards 2\n\
         <Location /wasm-status>\n  SetHandler wasm-status\n</Location>\n{}",
        fault_site("")
    );
    let s = Apache::start(&site);
    for _ in 0..3 {
        assert_eq!(get(s.port, "/hello").status, 200);
    }
    let r = get(s.port, "/wasm-status");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let text = r.text();
    let value = |key: &str| e2e::status::value(&text, key);
    assert_eq!(value("Shards"), "2");
    assert_eq!(value("Slots"), "6");
    assert_eq!(value("SlotsPerShard"), "3 3");
    assert_eq!(value("Requests"), "3");
    assert_eq!(value("Busy"), "0");
    assert_eq!(value("PoolExhausted"), "0");
    assert!(value("HeapInUse").parse::<u64>().unwrap() > 0);
    let post = Request::new("POST", "/wasm-status")
        .body(b"x".to_vec())
        .send(s.port)
        .unwrap();
    assert_eq!(post.status, 405);
    let head = Request::new("HEAD", "/wasm-status").send(s.port).unwrap();
    assert_eq!((head.status, head.body.len()), (200, 0));
    let options = Request::new("OPTIONS", "/wasm-status")
        .send(s.port)
        .unwrap();
    assert_eq!(options.status, 200);
    assert!(
        options.header("allow").is_some_and(|a| a.contains("GET")),
        "{options:?}"
    );
}

#[test]
fn pool_directives_are_server_wide_and_take_auto() {
    let (ok, out) = configtest(&Options::new("WasmPoolShards auto\nWasmPoolShards 4\n"));
    assert!(ok, "{out}");
    let (ok, out) = configtest(&Options::new(
        "<VirtualHost *:80>\n  WasmPoolShards 2\n</VirtualHost>\n",
    ));
    assert!(!ok, "WasmPoolShards passed in a virtual host");
    assert!(
        out.contains("WasmPoolShards") && out.contains("line "),
        "{out}"
    );
}

#[test]
fn a_module_that_cannot_start_within_its_memory_limit_is_named() {
    // hello's memory starts at 128 KiB.
    let site = format!(
        "{}<Location /hello/small>\n  WasmMaxMemory 64K\n</Location>\n",
        fault_site("")
    );
    let s = Apache::start(&site);
    assert_eq!(get(s.port, "/hello/small").status, 500);
    let log = s.error_log();
    assert!(
        log.contains(
            "hello.wasm: its memory starts at 128 KiB, more than WasmMaxMemory (64 KiB) allows"
        ),
        "{log}"
    );
    assert_eq!(get(s.port, "/hello").status, 200);
}

#[test]
fn limits_are_inherited_and_overridden() {
    let site = format!(
        "{}<Location /fault/quick>\n  WasmTimeout 200ms\n</Location>\n",
        fault_site("  WasmTimeout 3\n")
    );
    let s = Apache::start(&site);
    let started = Instant::now();
    assert_eq!(get(s.port, "/fault/quick?loop").status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn bad_limit_values_fail_configtest_naming_the_directive() {
    for (directive, needle) in [
        ("WasmTimeout abc", "WasmTimeout"),
        ("WasmTimeout 0", "WasmTimeout"),
        ("WasmMaxMemory 12Q", "WasmMaxMemory"),
        ("WasmMaxMemory 1K", "WasmMaxMemory"),
        ("WasmMaxOutput -5", "WasmMaxOutput"),
        ("WasmPoolSlots none", "WasmPoolSlots"),
        ("WasmPoolShards 0", "WasmPoolShards"),
        ("WasmPoolShards many", "WasmPoolShards"),
        ("WasmPoolShards 65", "WasmPoolShards"),
        (
            "WasmInstanceReuse 0",
            "WasmInstanceReuse: '0' is not a number between 1 and 1000000",
        ),
        ("WasmInstanceReuse 1000001", "WasmInstanceReuse"),
        ("WasmInstanceReuse lots", "WasmInstanceReuse"),
        (
            "WasmMaxOpenFiles 65537",
            "WasmMaxOpenFiles: '65537' is not a number between 1 and 65536",
        ),
    ] {
        let (ok, out) = configtest(&Options::new(&format!("{directive}\n")));
        assert!(!ok, "{directive} passed configtest");
        assert!(
            out.contains(needle) && out.contains("line "),
            "{directive}: {out}"
        );
    }
}

#[test]
fn stop_is_prompt_while_a_guest_loops() {
    let site = fault_site("  WasmTimeout 2\n")
        + "ServerLimit 1\nMaxRequestWorkers 8\n<Location /wasm-status>\n  SetHandler wasm-status\n</Location>\n";
    let mut s = Apache::start(&site);
    let port = s.port;
    let looping = std::thread::spawn(move || {
        Request::new("GET", "/fault?loop")
            .send(port)
            .map(|r| r.status)
    });
    // Until the guest runs.
    let deadline = Instant::now() + Duration::from_secs(5);
    while e2e::status::fetch(s.port, "/wasm-status", "Busy") != "1" {
        assert!(Instant::now() < deadline, "the guest never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    s.stop();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "stop took {:?}",
        started.elapsed()
    );
    let _ = looping.join();
}
