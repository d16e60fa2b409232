use super::*;
use crate::error::Code;

/// A zeroed, aligned block for a table of `modules` and `children`.
fn block(modules: usize, children: usize) -> Vec<u64> {
    vec![0u64; size(modules, children).unwrap() / 8]
}

fn table(mem: &mut [u64], modules: usize, children: usize) -> Table {
    let len = mem.len() * 8;
    // SAFETY: the block is ours, aligned, zeroed and outlives the table.
    unsafe { Table::create(mem.as_mut_ptr().cast(), len, modules, children, 1000) }.unwrap()
}

fn snapshot(t: &Table) -> Snapshot {
    Snapshot {
        generation: t.generation(),
        created: t.created(),
        modules: t.modules(),
        children: t.children(|_| true),
    }
}

#[test]
fn a_block_too_small_or_not_a_table_is_refused() {
    let mut mem = block(2, 2);
    let len = mem.len() * 8;
    let p = mem.as_mut_ptr().cast::<u8>();
    assert!(
        unsafe { Table::attach(p, len, 2, 2) }.is_none(),
        "zeroed: no magic"
    );
    assert!(unsafe { Table::create(p, len - 8, 2, 2, 0) }.is_none());
    assert!(unsafe { Table::create(p, len, 2, 2, 0) }.is_some());
    assert!(unsafe { Table::attach(p, len, 2, 2) }.is_some());
    assert!(unsafe { Table::attach(p, len - 8, 2, 2) }.is_none());
    // Sizes that do not match the header's are refused, whatever the
    // header says: it is shared memory any child can write.
    assert!(unsafe { Table::attach(p, len, 1, 2) }.is_none());
    assert_eq!(size(usize::MAX / 8, 1), None);
    assert!(unsafe { Table::create(p, len, usize::MAX / 1000, 2, 0) }.is_none());
}

#[test]
fn requests_are_counted_by_outcome_and_time() {
    let mut mem = block(4, 2);
    let t = table(&mut mem, 4, 2);
    let ids = t.bind(&[("/app", "/srv/app.wasm"), ("/other", "/srv/b.wasm")]);
    assert_eq!(ids, [Some(0), Some(1)]);
    t.record(0, Outcome::of(Code::Ok, 200), 40, 10, 100);
    t.record(0, Outcome::of(Code::Ok, 503), 1_500, 0, 20);
    t.record(0, Outcome::of(Code::Trap, 500), 20_000_000, 0, 0);
    t.record(1, Outcome::of(Code::Timeout, 504), 3_000, 0, 0);
    let m = t.modules();
    assert_eq!(m.len(), 2);
    assert_eq!(
        (m[0].location.as_str(), m[0].file.as_str()),
        ("/app", "/srv/app.wasm")
    );
    assert_eq!(m[0].requests, 3);
    assert_eq!(m[0].outcomes[..3], [1, 1, 1]);
    assert_eq!(m[0].buckets[0], 1, "40 µs is in the first bucket");
    assert_eq!(m[0].buckets[5], 1, "1.5 ms is in le=2.5ms");
    assert_eq!(m[0].buckets[BUCKETS_US.len()], 1, "20 s is past the last");
    assert_eq!(
        (m[0].run_us, m[0].bytes_in, m[0].bytes_out),
        (20_001_540, 10, 120)
    );
    assert_eq!(m[1].outcomes[Outcome::Timeout as usize], 1);
}

#[test]
fn a_restart_keeps_the_counters_of_modules_still_configured() {
    let mut mem = block(3, 2);
    let t = table(&mut mem, 3, 2);
    t.bind(&[("/a", "a.wasm"), ("/b", "b.wasm")]);
    t.record(0, Outcome::Ok, 10, 0, 0);
    t.record(1, Outcome::Ok, 10, 0, 0);
    // /b goes, /c comes, /a stays (and the same key twice shares its entry).
    let ids = t.bind(&[("/c", "c.wasm"), ("/a", "a.wasm"), ("/a", "a.wasm")]);
    assert_eq!(ids, [Some(2), Some(0), Some(0)]);
    let m = t.modules();
    let names: Vec<_> = m
        .iter()
        .map(|m| (m.location.as_str(), m.requests))
        .collect();
    assert_eq!(names, [("/a", 1), ("/c", 0)], "/b is not shown");
    // The table is full: the entry of /b, no longer configured, is taken
    // again, its counters cleared.
    let ids = t.bind(&[("/a", "a.wasm"), ("/c", "c.wasm"), ("/d", "d.wasm")]);
    assert_eq!(ids, [Some(0), Some(2), Some(1)]);
    let d = t
        .modules()
        .into_iter()
        .find(|m| m.location == "/d")
        .unwrap();
    assert_eq!(d.requests, 0);
    // Entries of the last generation are never taken (its children may
    // still count into them): new modules then go uncounted.
    let ids = t.bind(&[("/a", "a"), ("/b", "b"), ("/c", "c"), ("/d", "d")]);
    assert_eq!(ids, [None, None, None, None]);
    // One generation later the oldest are free again.
    let ids = t.bind(&[("/e", "e")]);
    assert!(ids[0].is_some());
}

#[test]
fn long_texts_are_cut_and_read_back() {
    let mut mem = block(1, 1);
    let t = table(&mut mem, 1, 1);
    let long = "/x".repeat(400);
    t.bind(&[(&long, "f.wasm")]);
    let m = &t.modules()[0];
    assert_eq!(m.location.len(), table::LOCATION_MAX);
    assert!(long.starts_with(&m.location));
    assert_eq!(m.file, "f.wasm");
}

#[test]
fn children_join_publish_and_leave() {
    let mut mem = block(1, 2);
    let t = table(&mut mem, 1, 2);
    let a = t.join(10, 1, |_| true).unwrap();
    let b = t.join(11, 1, |_| true).unwrap();
    assert_ne!(a, b);
    assert_eq!(t.join(12, 1, |_| true), None, "full, and both alive");
    // A dead child's entry is taken over.
    let c = t.join(12, 2, |pid| pid != 10).unwrap();
    assert_eq!(c, a);
    t.publish(
        c,
        &ChildCounts {
            slots: 26,
            busy: 3,
            kept: 1,
            engines: 2,
            requests: 7,
            ..Default::default()
        },
    );
    let kids = t.children(|_| true);
    assert_eq!(kids.len(), 2);
    let k = kids.iter().find(|k| k.pid == 12).unwrap();
    assert_eq!(
        (k.generation, k.slots, k.busy, k.kept, k.engines, k.requests),
        (2, 26, 3, 1, 2, 7)
    );
    t.leave(b, 11);
    assert_eq!(t.children(|_| true).len(), 1);
    assert_eq!(
        t.children(|pid| pid != 12).len(),
        0,
        "dead children are not shown"
    );
}

#[test]
fn prometheus_output_follows_the_exposition_format() {
    let mut mem = block(2, 1);
    let t = table(&mut mem, 2, 1);
    t.bind(&[("/app", "/srv/wasm/app.wasm"), ("/q\"x", "/srv/q.wasm")]);
    t.record(0, Outcome::Ok, 80, 0, 0);
    t.record(0, Outcome::Trap, 3_000, 0, 0);
    let c = t.join(5, 1, |_| true).unwrap();
    t.publish(
        c,
        &ChildCounts {
            slots: 4,
            busy: 1,
            ..Default::default()
        },
    );
    let text = render(&snapshot(&t), Format::Prometheus);
    for line in [
        "# TYPE mod_wasm_requests_total counter",
        "mod_wasm_requests_total{location=\"/app\",module=\"app.wasm\",outcome=\"ok\"} 1",
        "mod_wasm_requests_total{location=\"/app\",module=\"app.wasm\",outcome=\"trap\"} 1",
        "mod_wasm_requests_total{location=\"/q\\\"x\",module=\"q.wasm\",outcome=\"ok\"} 0",
        "# TYPE mod_wasm_runtime_seconds histogram",
        "mod_wasm_runtime_seconds_bucket{location=\"/app\",module=\"app.wasm\",le=\"0.00005\"} 0",
        "mod_wasm_runtime_seconds_bucket{location=\"/app\",module=\"app.wasm\",le=\"0.0001\"} 1",
        "mod_wasm_runtime_seconds_bucket{location=\"/app\",module=\"app.wasm\",le=\"0.0025\"} 1",
        "mod_wasm_runtime_seconds_bucket{location=\"/app\",module=\"app.wasm\",le=\"0.005\"} 2",
        "mod_wasm_runtime_seconds_bucket{location=\"/app\",module=\"app.wasm\",le=\"+Inf\"} 2",
        "mod_wasm_runtime_seconds_sum{location=\"/app\",module=\"app.wasm\"} 0.00308",
        "mod_wasm_runtime_seconds_count{location=\"/app\",module=\"app.wasm\"} 2",
        "mod_wasm_children 1",
        "mod_wasm_slots{pid=\"5\"} 4",
        "mod_wasm_busy_slots{pid=\"5\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}\n{text}");
    }
    // Every sample line is `name{labels} value` or `name value`.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let value = l.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{l}");
        assert!(l.starts_with("mod_wasm_"), "{l}");
    }
}

#[test]
fn json_and_text_carry_the_same_figures() {
    let mut mem = block(1, 1);
    let t = table(&mut mem, 1, 1);
    t.bind(&[("/a\"b", "a.wasm")]);
    t.record(0, Outcome::PoolExhausted, 10, 0, 0);
    let snap = snapshot(&t);
    let j = render(&snap, Format::Json);
    assert!(j.contains(r#""location":"/a\"b""#), "{j}");
    assert!(j.contains(r#""pool_exhausted":1"#), "{j}");
    let text = render(&snap, Format::Text);
    assert!(
        text.contains("Module: location=/a\"b file=a.wasm requests=1"),
        "{text}"
    );
    assert!(text.contains(" pool_exhausted=1 "), "{text}");
    let auto = render(&snap, Format::StatusAuto);
    assert!(auto.contains("WasmPoolExhausted: 1\n"), "{auto}");
    assert!(auto.contains("WasmRequests: 1\n"), "{auto}");
    let html = render(&snap, Format::StatusHtml);
    assert!(html.contains("<td>/a&quot;b</td>"), "{html}");
}

#[test]
fn two_modules_of_one_name_in_one_location_get_series_of_their_own() {
    let mut mem = block(2, 1);
    let t = table(&mut mem, 2, 1);
    t.bind(&[("/api", "/srv/a/app.wasm"), ("/api", "/srv/b/app.wasm")]);
    let text = render(&snapshot(&t), Format::Prometheus);
    for file in ["/srv/a/app.wasm", "/srv/b/app.wasm"] {
        let series = format!(
            "mod_wasm_requests_total{{location=\"/api\",module=\"{file}\",outcome=\"ok\"}} 0"
        );
        assert!(text.lines().any(|l| l == series), "{series}\n{text}");
    }
}
