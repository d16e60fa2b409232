//! Server-wide metrics: every child's requests counted in one table of
//! shared memory, read by `SetHandler wasm-metrics` (Prometheus),
//! `wasm-status` (text, `?json`) and mod_status, through restarts and the
//! deaths of children.

use std::time::{Duration, Instant};

use e2e::apache::{Apache, Mpm, Options};
use e2e::http::get;

fn site(extra: &str) -> String {
    format!(
        "LoadModule status_module @LIBEXECDIR@/mod_status.so\n\
         CustomLog @DIR@/access.log \"%U%q %>s %{{wasm-outcome}}n\"\n\
         <Location /hello>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/hello.wasm\n</Location>\n\
         <Location /fault>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/fault.wasm\n\
         \x20 WasmTimeout 1\n</Location>\n\
         <Location /echo>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/echo.wasm\n</Location>\n\
         <Location /small>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/echo.wasm\n\
         \x20 LimitRequestBody 10\n</Location>\n\
         <Location /wasm-metrics>\n  SetHandler wasm-metrics\n</Location>\n\
         <Location /wasm-status>\n  SetHandler wasm-status\n</Location>\n\
         <Location /server-status>\n  SetHandler server-status\n</Location>\n{extra}"
    )
}

/// The value of the sample `series` (name and labels, as written) in the
/// Prometheus text, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

fn requests(location: &str, module: &str, outcome: &str) -> String {
    format!(
        "mod_wasm_requests_total{{location=\"{location}\",module=\"{module}\",outcome=\"{outcome}\"}}"
    )
}

/// Scrapes until `series` reads `want` (a request is counted when it is
/// logged, just after its response went out), at most 10 s.
fn wait_for(s: &Apache, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(s.port, "/wasm-metrics");
        assert_eq!(r.status, 200, "{}", s.error_log());
        let text = r.text();
        if sample(&text, series) == Some(want) || Instant::now() > deadline {
            assert_eq!(sample(&text, series), Some(want), "{series}\n{text}");
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn wasm_metrics_counts_requests_by_outcome_in_prometheus_format() {
    let s = Apache::start(&site(""));
    for _ in 0..5 {
        assert_eq!(get(s.port, "/hello").status, 200);
    }
    assert_eq!(get(s.port, "/fault?trap").status, 500);
    assert_eq!(get(s.port, "/fault?exit3").status, 500);
    assert_eq!(get(s.port, "/fault?loop").status, 504);
    wait_for(&s, &requests("/fault", "fault.wasm", "timeout"), 1.0);
    let text = wait_for(&s, &requests("/hello", "hello.wasm", "ok"), 5.0);
    assert_eq!(
        sample(&text, &requests("/fault", "fault.wasm", "trap")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &requests("/fault", "fault.wasm", "guest_error")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &requests("/hello", "hello.wasm", "trap")),
        Some(0.0)
    );
    for family in [
        "# TYPE mod_wasm_requests_total counter",
        "# TYPE mod_wasm_runtime_seconds histogram",
        "# TYPE mod_wasm_response_bytes_total counter",
        "# TYPE mod_wasm_busy_slots gauge",
    ] {
        assert!(text.contains(family), "{family}\n{text}");
    }
    // The histogram: cumulative buckets up to +Inf, which is the count.
    let l = "location=\"/hello\",module=\"hello.wasm\"";
    let inf = sample(
        &text,
        &format!("mod_wasm_runtime_seconds_bucket{{{l},le=\"+Inf\"}}"),
    );
    assert_eq!(inf, Some(5.0), "{text}");
    assert_eq!(
        sample(&text, &format!("mod_wasm_runtime_seconds_count{{{l}}}")),
        Some(5.0)
    );
    let sum = sample(&text, &format!("mod_wasm_runtime_seconds_sum{{{l}}}")).unwrap();
    assert!(sum > 0.0 && sum < 5.0, "{sum}");
    let tiny = sample(
        &text,
        &format!("mod_wasm_runtime_seconds_bucket{{{l},le=\"0.00005\"}}"),
    );
    assert!(tiny.unwrap() <= 5.0);
    // The loop ran its whole second: in the le=1 bucket or above it.
    let f = "location=\"/fault\",module=\"fault.wasm\"";
    let below_half = sample(
        &text,
        &format!("mod_wasm_runtime_seconds_bucket{{{f},le=\"0.5\"}}"),
    );
    let all = sample(&text, &format!("mod_wasm_runtime_seconds_count{{{f}}}"));
    assert_eq!(all, Some(3.0));
    assert_eq!(below_half, Some(2.0), "{text}");
    // Bytes: hello's response.
    let out = sample(&text, &format!("mod_wasm_response_bytes_total{{{l}}}")).unwrap();
    assert!(out >= 5.0 * "Hello, World!".len() as f64, "{out}");
    // Children and their pools.
    assert!(sample(&text, "mod_wasm_children").unwrap() >= 1.0, "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("mod_wasm_slots{pid=\"")),
        "{text}"
    );
}

/// The text through Prometheus' own Python client's parser (Debian's
/// python3-prometheus-client): every family and sample, or its error.
fn parsed(text: &str) -> String {
    use std::io::Write;
    let mut p = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys\n\
             from prometheus_client.parser import text_string_to_metric_families as parse\n\
             for f in parse(sys.stdin.read()):\n\
             \x20   print('family', f.name, f.type)\n\
             \x20   for s in f.samples:\n\
             \x20       print(s.name, sorted(s.labels.items()), s.value)\n",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 with python3-prometheus-client (make deps)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the output: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn prometheus_s_parser_reads_every_family_and_a_killed_child_loses_no_count() {
    let s = Apache::start_with(Options::new(&site("")).mpm(Mpm::Prefork));
    for _ in 0..6 {
        assert_eq!(get(s.port, "/hello").status, 200);
    }
    assert_eq!(get(s.port, "/fault?trap").status, 500);
    let ok = requests("/hello", "hello.wasm", "ok");
    wait_for(&s, &ok, 6.0);
    // Every child that served them, killed without a chance to say goodbye.
    let children = s.child_pids();
    assert!(!children.is_empty());
    for pid in &children {
        // SAFETY: a pid of this test's own server's child.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.child_pids().iter().any(|p| children.contains(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(s.port, "/hello").status, 200);
    let text = wait_for(&s, &ok, 7.0);
    let families = parsed(&text);
    for family in [
        "family mod_wasm_requests counter",
        "family mod_wasm_runtime_seconds histogram",
        "family mod_wasm_request_bytes counter",
        "family mod_wasm_response_bytes counter",
        "family mod_wasm_children gauge",
        "family mod_wasm_slots gauge",
        "family mod_wasm_busy_slots gauge",
        "family mod_wasm_kept_instances gauge",
        "family mod_wasm_engines gauge",
    ] {
        assert!(families.contains(family), "{family}\n{families}");
    }
    let trap = "mod_wasm_requests_total [('location', '/fault'), ('module', 'fault.wasm'), \
                ('outcome', 'trap')] 1.0";
    assert!(families.contains(trap), "{families}");
    let count =
        "mod_wasm_runtime_seconds_count [('location', '/hello'), ('module', 'hello.wasm')] 7.0";
    assert!(families.contains(count), "{families}");
}

#[test]
fn request_body_bytes_and_the_access_log_s_outcome_are_recorded() {
    let s = Apache::start(&site(""));
    let r = e2e::http::Request::new("POST", "/echo")
        .body(vec![b'x'; 10_000])
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(get(s.port, "/fault?trap").status, 500);
    // Refused before the guest runs: counted, as an error.
    let r = e2e::http::Request::new("POST", "/small")
        .body(vec![b'x'; 100])
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 413);
    wait_for(&s, &requests("/small", "echo.wasm", "error"), 1.0);
    wait_for(&s, &requests("/fault", "fault.wasm", "trap"), 1.0);
    let text = wait_for(&s, &requests("/echo", "echo.wasm", "ok"), 1.0);
    let l = "location=\"/echo\",module=\"echo.wasm\"";
    assert_eq!(
        sample(&text, &format!("mod_wasm_request_bytes_total{{{l}}}")),
        Some(10_000.0),
        "{text}"
    );
    // Requests that ran no module carry no outcome. A line is written
    // just after its response went out.
    let wanted = [
        "/echo 200 ok\n",
        "/fault?trap 500 trap\n",
        "/wasm-metrics 200 -\n",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(s.dir.join("access.log")).unwrap_or_default();
        if wanted.iter().all(|w| log.contains(w)) {
            break;
        }
        assert!(Instant::now() < deadline, "{wanted:?}\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn counts_of_two_event_children_add_up() {
    let s = Apache::start(&site(
        "StartServers 2\nMinSpareThreads 16\nCustomLog @DIR@/pids.log \"%P\"\n",
    ));
    // Enough connections at once that both children take some.
    let port = s.port;
    let mut pids = std::collections::BTreeSet::new();
    for _round in 0..10 {
        let threads: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(move || get(port, "/hello").status))
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 200);
        }
        std::thread::sleep(Duration::from_millis(20));
        pids = std::fs::read_to_string(s.dir.join("pids.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if pids.len() >= 2 {
            break;
        }
    }
    assert!(pids.len() >= 2, "one child served everything: {pids:?}");
    // A request is logged just after its response went out.
    std::thread::sleep(Duration::from_millis(300));
    let served = std::fs::read_to_string(s.dir.join("pids.log"))
        .unwrap()
        .lines()
        .count();
    let text = wait_for(&s, &requests("/hello", "hello.wasm", "ok"), served as f64);
    assert_eq!(sample(&text, "mod_wasm_children"), Some(2.0), "{text}");
}

#[test]
fn counters_survive_children_that_exit_and_graceful_restarts() {
    // Every child exits after two connections: the requests are counted
    // by many children, most of them gone when the counters are read.
    let mut s =
        Apache::start_with(Options::new(&site("MaxConnectionsPerChild 2\n")).mpm(Mpm::Prefork));
    for _ in 0..12 {
        assert_eq!(get(s.port, "/hello").status, 200);
    }
    let ok = requests("/hello", "hello.wasm", "ok");
    wait_for(&s, &ok, 12.0);
    s.graceful();
    assert_eq!(get(s.port, "/hello").status, 200);
    wait_for(&s, &ok, 13.0);
    // A module no longer configured leaves; a new one starts at zero; the
    // others keep counting.
    s.reconfigure(&site("").replace("<Location /echo>", "<Location /echo2>"));
    let text = wait_for(&s, &ok, 13.0);
    assert!(!text.contains("location=\"/echo\""), "{text}");
    assert_eq!(
        sample(&text, &requests("/echo2", "echo.wasm", "ok")),
        Some(0.0)
    );
}

#[test]
fn wasm_status_and_mod_status_show_the_whole_server() {
    let s = Apache::start(&site("ExtendedStatus On\n"));
    for _ in 0..3 {
        assert_eq!(get(s.port, "/hello").status, 200);
    }
    wait_for(&s, &requests("/hello", "hello.wasm", "ok"), 3.0);
    let text = get(s.port, "/wasm-status").text();
    // This child's lines first, then the server's.
    e2e::status::value(&text, "Pid");
    assert!(
        e2e::status::value(&text, "ServerChildren")
            .parse::<u32>()
            .unwrap()
            >= 1
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("Module: location=/hello file=")
                && l.contains(" requests=3 ok=3 ")),
        "{text}"
    );
    let r = get(s.port, "/wasm-status?json");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let json = r.text();
    assert!(
        json.contains(r#""location":"/hello""#) && json.contains(r#""ok":3"#),
        "{json}"
    );
    let auto = get(s.port, "/server-status?auto").text();
    assert!(
        auto.contains("\nWasmRequests: 3\n") || auto.contains("WasmRequests: 3\n"),
        "{auto}"
    );
    assert!(auto.contains("WasmOk: 3\n"), "{auto}");
    let html = get(s.port, "/server-status").text();
    assert!(
        html.contains("<h2>mod_wasm</h2>") && html.contains("<td>/hello</td>"),
        "{html}"
    );
}

#[test]
fn wasm_metrics_answers_only_get() {
    let s = Apache::start(&site(""));
    let r = e2e::http::Request::new("POST", "/wasm-metrics")
        .body("x")
        .send(s.port)
        .unwrap();
    assert_eq!(r.status, 405);
    let r = get(s.port, "/wasm-metrics");
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
}
