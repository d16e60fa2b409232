//! The runtime's request path, without Apache: guests written in WAT,
//! compiled through the cache, run from a pooled runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasm_runtime::cache::precompile;
use wasm_runtime::scratch::Scratch;
use wasm_runtime::shard::{auto_shards, shards_for};
use wasm_runtime::{Code, Limits, ModuleSpec, Request, Runtime, RuntimeOptions};

/// WASI imports and a `write(fd, offset, len)` helper shared by the guests.
const PRELUDE: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $env_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
"#;

fn scratch(name: &str) -> Scratch {
    Scratch::new(&format!("run-{name}"))
}

/// A runtime with one module whose body is `body` (after the prelude).
fn runtime(name: &str, body: &str, slots: u32) -> Runtime {
    runtime_of(name, &format!("(module {PRELUDE} {body})"), slots)
}

/// A runtime with one module, the whole of it written in `wat`, sharded as
/// a server child would be.
fn runtime_of(name: &str, wat: &str, slots: u32) -> Runtime {
    runtime_sharded(name, wat, slots, None)
}

/// [`runtime_of`] with the pool split into `shards` engines.
fn runtime_sharded(name: &str, wat: &str, slots: u32, shards: Option<u32>) -> Runtime {
    let d = scratch(name);
    let wasm = d.join(format!("{name}.wasm"));
    std::fs::write(&wasm, wat::parse_str(wat).unwrap()).unwrap();
    let compiled = precompile(&wasm, &d.join("cache")).unwrap();
    Runtime::new(
        &[ModuleSpec {
            cwasm: compiled.cwasm,
            name: name.into(),
            trap_unknown_imports: false,
        }],
        &RuntimeOptions {
            shards,
            ..RuntimeOptions::with_slots(slots)
        },
    )
    .unwrap()
}

fn request() -> Request<'static> {
    Request {
        args: vec!["guest.wasm".into()],
        ..Request::default()
    }
}

/// [`request`] with these environment variables.
fn request_with_env(vars: &[(&'static str, &'static str)]) -> Request<'static> {
    Request {
        env: vars
            .iter()
            .map(|&(k, v)| (k.as_bytes().into(), v.as_bytes().into()))
            .collect(),
        ..request()
    }
}

const HELLO: &str = r#"
  (data (i32.const 100) "Content-Type: text/plain\r\n\r\nhi")
  (data (i32.const 200) "oops\n")
  (func (export "_start")
    (drop (call $write (i32.const 1) (i32.const 100) (i32.const 30)))
    (drop (call $write (i32.const 2) (i32.const 200) (i32.const 5))))
"#;

#[test]
fn stdout_and_stderr_are_collected() {
    let rt = runtime("hello", HELLO, 2);
    let o = rt.run(0, request());
    o.result.unwrap();
    assert_eq!(o.exit_code, 0);
    assert_eq!(
        &o.stdout.to_bytes()[..],
        b"Content-Type: text/plain\r\n\r\nhi"
    );
    assert_eq!(&o.stderr[..], b"oops\n");
    assert!(!o.stderr_truncated);
}

#[test]
fn unknown_module_index_is_invalid_argument() {
    let rt = runtime("index", HELLO, 2);
    assert_eq!(
        rt.run(1, request()).result.unwrap_err().code,
        Code::InvalidArgument
    );
}

#[test]
fn missing_entry_point_is_a_link_error() {
    let rt = runtime("entry", HELLO, 2);
    let mut req = request();
    req.entry = Some("nope".into());
    let e = rt.run(0, req).result.unwrap_err();
    assert_eq!(e.code, Code::Link);
    assert!(e.message.contains("nope"));
}

#[test]
fn a_start_of_the_wrong_type_is_a_link_error() {
    let rt = runtime("badstart", r#"(func (export "_start") (param i32))"#, 2);
    let e = rt.run(0, request()).result.unwrap_err();
    assert_eq!(e.code, Code::Link);
    assert!(e.message.contains("_start"), "{}", e.message);
}

#[test]
fn only_a_module_importing_the_environment_reads_it() {
    let reader = runtime("reader", HELLO, 2);
    assert!(reader.module(0).unwrap().reads_env());
    assert!(reader.module(1).is_none());
    let silent = runtime_of(
        "silent",
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (data (i32.const 16) "Content-Type: text/plain\r\n\r\nok")
             (func (export "_start")
               (i32.store (i32.const 0) (i32.const 16))
               (i32.store (i32.const 4) (i32.const 30))
               (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        2,
    );
    assert!(!silent.module(0).unwrap().reads_env());
    // Whatever environment it is given, it runs the same.
    let req = request_with_env(&[("A", "1")]);
    let o = silent.run(0, req);
    o.result.unwrap();
    assert_eq!(
        &o.stdout.to_bytes()[..],
        b"Content-Type: text/plain\r\n\r\nok"
    );
}

#[test]
fn stdin_is_the_request_body() {
    let rt = runtime(
        "stdin",
        r#"(func (export "_start") (local $n i32)
             (i32.store (i32.const 16) (i32.const 1024))
             (i32.store (i32.const 20) (i32.const 4096))
             (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
             (drop (call $write (i32.const 1) (i32.const 1024) (i32.load (i32.const 24)))))"#,
        2,
    );
    let mut req = request();
    req.body = wasm_runtime::Body::Bytes(bytes::Bytes::from_static(b"request body bytes"));
    let o = rt.run(0, req);
    o.result.unwrap();
    assert_eq!(&o.stdout.to_bytes()[..], b"request body bytes");
}

#[test]
fn environment_is_exactly_what_was_given() {
    let rt = runtime(
        "env",
        r#"(func (export "_start")
             ;; both calls must succeed (errno 0)
             (if (call $env_sizes (i32.const 16) (i32.const 20)) (then unreachable))
             (if (call $env_get (i32.const 1024) (i32.const 2048)) (then unreachable))
             (drop (call $write (i32.const 1) (i32.const 2048) (i32.load (i32.const 20)))))"#,
        2,
    );
    let req = request_with_env(&[("A", "1"), ("B", "two")]);
    let o = rt.run(0, req);
    o.result.unwrap();
    assert_eq!(&o.stdout.to_bytes()[..], b"A=1\0B=two\0");
}

#[test]
fn each_environment_pointer_points_at_its_variable() {
    let rt = runtime(
        "envptr",
        r#"(func (export "_start")
             ;; both calls must succeed (errno 0)
             (if (call $env_sizes (i32.const 16) (i32.const 20)) (then unreachable))
             (if (call $env_get (i32.const 1024) (i32.const 2048)) (then unreachable))
             ;; the count, then the second variable through its pointer
             (drop (call $write (i32.const 1) (i32.const 16) (i32.const 4)))
             (drop (call $write (i32.const 1) (i32.load (i32.const 1028)) (i32.const 5))))"#,
        2,
    );
    let req = request_with_env(&[("A", "1"), ("B", "two")]);
    let o = rt.run(0, req);
    o.result.unwrap();
    assert_eq!(&o.stdout.to_bytes()[..], b"\x02\0\0\0B=two");
}

#[test]
fn an_environment_pointer_out_of_bounds_traps() {
    let rt = runtime(
        "envoob",
        r#"(func (export "_start")
             (drop (call $env_get (i32.const 65532) (i32.const 2048))))"#,
        2,
    );
    let req = request_with_env(&[("A", "1"), ("B", "2")]);
    let e = rt.run(0, req).result.unwrap_err();
    assert_eq!(e.code, Code::Trap);
    assert!(e.message.contains("out of bounds"), "{}", e.message);
    // A misaligned one traps too, and the runtime goes on.
    let rt = runtime(
        "envalign",
        r#"(func (export "_start")
             (drop (call $env_sizes (i32.const 17) (i32.const 24))))"#,
        2,
    );
    let e = rt.run(0, request()).result.unwrap_err();
    assert_eq!(e.code, Code::Trap);
    assert!(e.message.contains("not aligned"), "{}", e.message);
}

#[test]
fn proc_exit_zero_is_success_and_nonzero_is_an_exit_error() {
    let rt = runtime(
        "exit",
        r#"(global $code (mut i32) (i32.const 0))
           (func (export "_start") (call $proc_exit (i32.const 0)))
           (func (export "fail") (call $proc_exit (i32.const 7)))"#,
        2,
    );
    let o = rt.run(0, request());
    o.result.unwrap();
    assert_eq!(o.exit_code, 0);
    let mut req = request();
    req.entry = Some("fail".into());
    let o = rt.run(0, req);
    let e = o.result.unwrap_err();
    assert_eq!((e.code, o.exit_code), (Code::Exit, 7));
    assert_eq!(e.code.http_status(), 500);
}

#[test]
fn trap_fails_the_request_and_the_runtime_goes_on() {
    let rt = runtime(
        "trap",
        &format!(r#"(func (export "boom") unreachable) {}"#, HELLO),
        2,
    );
    let mut req = request();
    req.entry = Some("boom".into());
    let e = rt.run(0, req).result.unwrap_err();
    assert_eq!(e.code, Code::Trap);
    assert!(e.message.contains("unreachable"), "{}", e.message);
    rt.run(0, request()).result.unwrap();
}

#[test]
fn endless_loop_is_stopped_at_the_timeout() {
    let rt = runtime("loop", r#"(func (export "_start") (loop $l (br $l)))"#, 2);
    let mut req = request();
    req.limits = Limits {
        timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let started = Instant::now();
    let e = rt.run(0, req).result.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code, Code::Timeout);
    assert_eq!(e.code.http_status(), 504);
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

/// A guest that sleeps `ns` nanoseconds in `poll_oneoff` (one relative
/// clock, as `nanosleep` does), then writes "woke".
fn sleeper(ns: u64) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 300) "woke")
  (func (export "_start")
    ;; subscription at 0: userdata 9, clock, timeout at 24, flags 0
    (i64.store (i32.const 0) (i64.const 9))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i64.store (i32.const 24) (i64.const {ns}))
    (if (i32.ne (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)) (i32.const 0))
      (then unreachable))
    ;; one event, for userdata 9
    (if (i32.ne (i32.load (i32.const 128)) (i32.const 1)) (then unreachable))
    (if (i64.ne (i64.load (i32.const 64)) (i64.const 9)) (then unreachable))
    (i32.store (i32.const 200) (i32.const 300))
    (i32.store (i32.const 204) (i32.const 4))
    (drop (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 208)))))"#
    )
}

#[test]
fn poll_oneoff_handed_on_to_wasi_works_as_the_first_call() {
    // Two clock subscriptions (WASI's own path), before any other WASI
    // call: WASI's bindings give each call its copy allowance first.
    let rt = runtime_of(
        "poll2",
        r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store8 (i32.const 56) (i32.const 0))
    (if (i32.ne (call $poll (i32.const 0) (i32.const 128) (i32.const 2) (i32.const 256)) (i32.const 0))
      (then unreachable))))"#,
        2,
    );
    rt.run(0, request()).result.unwrap();
}

#[test]
fn a_guest_sleeping_in_the_host_is_stopped_at_the_timeout() {
    let rt = runtime_of("sleep", &sleeper(u64::MAX), 2);
    let mut req = request();
    req.limits.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let e = rt.run(0, req).result.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code, Code::Timeout, "{}", e.message);
    assert!(e.message.contains("WasmTimeout"), "{}", e.message);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // A short sleep still ends as the guest asked, with its event.
    let short = runtime_of("nap", &sleeper(20_000_000), 2);
    let started = Instant::now();
    let o = short.run(0, request());
    o.result.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(20));
    assert_eq!(&o.stdout.to_bytes()[..], b"woke");
}

#[test]
fn memory_growth_past_the_limit_fails_inside_the_guest() {
    // Writes "ok" if growing by 16 pages (1 MiB) failed, "grew" otherwise.
    let rt = runtime(
        "grow",
        r#"(data (i32.const 100) "okgrew")
           (func (export "_start")
             (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1))
               (then (drop (call $write (i32.const 1) (i32.const 100) (i32.const 2))))
               (else (drop (call $write (i32.const 1) (i32.const 102) (i32.const 4))))))"#,
        2,
    );
    let mut req = request();
    req.limits.max_memory = 512 << 10;
    let o = rt.run(0, req);
    o.result.unwrap();
    assert_eq!(&o.stdout.to_bytes()[..], b"ok");
    let o = rt.run(0, request());
    assert_eq!(&o.stdout.to_bytes()[..], b"grew");
}

#[test]
fn stdout_past_the_limit_fails_the_request() {
    let rt = runtime(
        "flood",
        r#"(func (export "_start") (loop $l (drop (call $write (i32.const 1) (i32.const 100) (i32.const 1000))) (br $l)))"#,
        2,
    );
    let mut req = request();
    req.limits.max_output = 10_000;
    let started = Instant::now();
    let o = rt.run(0, req);
    let e = o.result.unwrap_err();
    assert_eq!(e.code, Code::OutputLimit);
    assert!(o.stdout.len() <= 10_000);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the guest was not stopped at the limit"
    );
}

#[test]
fn stderr_past_its_cap_is_truncated_not_fatal() {
    let rt = runtime(
        "noisy",
        r#"(func (export "_start") (local $i i32)
             (loop $l
               (drop (call $write (i32.const 2) (i32.const 100) (i32.const 1000)))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $l (i32.lt_u (local.get $i) (i32.const 200)))))"#,
        2,
    );
    let o = rt.run(0, request());
    o.result.unwrap();
    assert!(o.stderr_truncated);
    assert_eq!(o.stderr.len(), wasm_runtime::limits::MAX_STDERR);
}

#[test]
fn a_full_pool_is_reported_as_exhausted() {
    let rt = Arc::new(runtime(
        "pool",
        r#"(func (export "_start") (loop $l (br $l)))"#,
        1,
    ));
    let busy = {
        let rt = rt.clone();
        std::thread::spawn(move || {
            let mut req = request();
            req.limits.timeout = Duration::from_millis(1500);
            rt.run(0, req).result.unwrap_err().code
        })
    };
    // Until the looping guest holds the one slot.
    let deadline = Instant::now() + Duration::from_secs(5);
    while rt.shard_status().iter().map(|s| s.busy).sum::<u32>() == 0 {
        assert!(Instant::now() < deadline, "the guest never took its slot");
        std::thread::sleep(Duration::from_millis(5));
    }
    let e = rt.run(0, request()).result.unwrap_err();
    assert_eq!(e.code, Code::PoolExhausted);
    assert_eq!(e.code.http_status(), 503);
    assert!(e.message.contains("WasmPoolSlots"), "{}", e.message);
    assert_eq!(busy.join().unwrap(), Code::Timeout);
}

/// Each shard's share of the slots.
fn slots_of(rt: &Runtime) -> Vec<u32> {
    rt.shard_status().iter().map(|s| s.slots).collect()
}

#[test]
fn the_slots_of_all_shards_add_up_and_every_shard_times_out() {
    let rt = Arc::new(runtime_sharded(
        "shards",
        &format!(r#"(module {PRELUDE} (func (export "_start") (loop $l (br $l))))"#),
        3,
        Some(2),
    ));
    assert_eq!(slots_of(&rt), [2, 1]);
    // Three guests hold a slot each, wherever their threads run: a request
    // whose CPU's shard is full takes a slot in the other one.
    let (done, finished) = std::sync::mpsc::channel();
    for _ in 0..3 {
        let (rt, done) = (rt.clone(), done.clone());
        std::thread::spawn(move || loop {
            let mut req = request();
            req.limits.timeout = Duration::from_millis(2000);
            let code = rt.run(0, req).result.unwrap_err().code;
            // The main thread's probes may hold a slot for a moment.
            if code != Code::PoolExhausted {
                break done.send(code).unwrap();
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let e = loop {
        let mut probe = request();
        probe.limits.timeout = Duration::from_millis(20);
        let e = rt.run(0, probe).result.unwrap_err();
        if e.code == Code::PoolExhausted || Instant::now() > deadline {
            break e;
        }
    };
    assert_eq!(e.code, Code::PoolExhausted);
    assert!(e.message.contains("all 3 instance slots"), "{}", e.message);
    assert!(rt.exhausted() >= 1);
    assert!(
        rt.status_text().contains("Busy: 3\n"),
        "{}",
        rt.status_text()
    );
    // Each shard's engine is ticked: every guest is stopped in time.
    for _ in 0..3 {
        let code = finished.recv_timeout(Duration::from_secs(10));
        assert_eq!(code, Ok(Code::Timeout));
    }
    let mut req = request();
    req.limits.timeout = Duration::from_millis(50);
    assert_eq!(rt.run(0, req).result.unwrap_err().code, Code::Timeout);
}

#[test]
fn the_status_counts_requests_per_shard() {
    let rt = runtime("status", HELLO, 4);
    for _ in 0..3 {
        rt.run(0, request()).result.unwrap();
    }
    let text = rt.status_text();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .to_string()
    };
    assert_eq!(value("Requests"), "3");
    assert_eq!(value("Busy"), "0");
    assert_eq!(value("Slots"), "4");
    assert_eq!(value("PoolExhausted"), "0");
    assert_eq!(value("Pid"), std::process::id().to_string());
    let per_shard: u64 = value("RequestsPerShard")
        .split(' ')
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    assert_eq!(per_shard, 3);
    if wasm_runtime::status::heap().is_some() {
        assert!(value("HeapInUse").parse::<u64>().unwrap() > 0);
    }
}

#[test]
fn shards_are_one_per_cpu_within_bounds() {
    // A prefork child (one thread, two slots) keeps one engine.
    assert_eq!(auto_shards(2), 1);
    assert_eq!(auto_shards(1), 1);
    assert_eq!(shards_for(2, 2), 1);
    // One per CPU, at most 8, at least two slots each.
    assert_eq!(shards_for(2, 26), 2);
    assert_eq!(shards_for(1, 26), 1);
    assert_eq!(shards_for(16, 26), 8);
    assert_eq!(shards_for(16, 10), 5);
    assert_eq!(shards_for(64, 1000), 8);
    assert_eq!(shards_for(0, 1000), 1);
    // Asked for more shards than slots: one slot each.
    let rt = runtime_sharded("fewslots", &format!("(module {PRELUDE})"), 2, Some(5));
    assert_eq!(slots_of(&rt), [1, 1]);
}

#[test]
fn many_threads_share_one_runtime() {
    let rt = Arc::new(runtime("threads", HELLO, 5));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let rt = rt.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    let o = rt.run(0, request());
                    o.result.unwrap();
                    assert!(o.stdout.to_bytes().ends_with(b"hi"));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn a_guest_has_no_sockets() {
    // WASI preview 1 can only use sockets it is given; mod_wasm gives none.
    // Writes "refused" when accepting on every plausible descriptor fails.
    let rt = runtime(
        "sockets",
        r#"(data (i32.const 100) "refusedaccepted")
           (func (export "_start") (local $fd i32)
             (local.set $fd (i32.const 0))
             (loop $l
               (if (i32.eqz (call $accept (local.get $fd) (i32.const 0) (i32.const 16)))
                 (then (drop (call $write (i32.const 1) (i32.const 107) (i32.const 8))) (return)))
               (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
               (br_if $l (i32.lt_u (local.get $fd) (i32.const 64))))
             (drop (call $write (i32.const 1) (i32.const 100) (i32.const 7))))"#,
        2,
    );
    let o = rt.run(0, request());
    o.result.unwrap();
    assert_eq!(&o.stdout.to_bytes()[..], b"refused");
}

#[test]
fn a_module_whose_memory_starts_above_the_limit_is_told_so() {
    // The prelude's memory starts at one page (64 KiB).
    let rt = runtime("bigstart", r#"(func (export "_start"))"#, 2);
    let mut req = request();
    req.limits.max_memory = 32 << 10;
    let e = rt.run(0, req).result.unwrap_err();
    assert_eq!(e.code, Code::MemoryLimit, "{}", e.message);
    assert!(
        e.message.contains("64 KiB") && e.message.contains("WasmMaxMemory"),
        "{}",
        e.message
    );
    rt.run(0, request()).result.unwrap();
}

#[test]
fn the_pool_is_sized_for_a_large_table() {
    // Larger than the pool's default table size: the child reads the
    // module's needs first and sizes the pool for them.
    let rt = runtime(
        "bigtable",
        r#"(table 30000 funcref)
           (data (i32.const 100) "ok")
           (func (export "_start") (drop (call $write (i32.const 1) (i32.const 100) (i32.const 2))))"#,
        2,
    );
    let o = rt.run(0, request());
    o.result.unwrap();
    assert_eq!(&o.stdout.to_bytes()[..], b"ok");
}
