//! The component path without Apache: `wasi:http` components built by
//! `make` (`build/components/`), compiled through the cache and served from
//! a pooled runtime.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use wasm_runtime::cache::precompile;
use wasm_runtime::executor::Kind;
use wasm_runtime::http::{needs_concurrency, HeadSink, Request};
use wasm_runtime::scratch::Scratch;
use wasm_runtime::{ModuleSpec, OutputSink, Runtime, RuntimeOptions};

fn component(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../build/components")
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run `make all` first",
        p.display()
    );
    p
}

fn runtime(name: &str) -> Runtime {
    let d = Scratch::new(&format!("http-{name}"));
    let path = component(name);
    let compiled = precompile(&path, &d.join("cache")).unwrap();
    let mut options = RuntimeOptions::with_slots(2);
    // As the server decides it (a 0.3 component is compiled for it).
    options.engine.concurrency = needs_concurrency(&std::fs::read(&path).unwrap());
    Runtime::new(
        &[ModuleSpec {
            cwasm: compiled.cwasm,
            name: name.into(),
            trap_unknown_imports: false,
        }],
        &options,
    )
    .unwrap()
}

/// What the guest sent: status, headers, body.
#[derive(Default)]
struct Sent {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Sent>>);

/// Header fields as text.
fn text_fields(fields: &[(&[u8], &[u8])]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

impl HeadSink for Collect {
    fn send_head(&mut self, status: u16, headers: &[(&[u8], &[u8])]) -> std::io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.status = status;
        s.headers = text_fields(headers);
        Ok(())
    }

    fn send_trailers(&mut self, trailers: &[(&[u8], &[u8])]) -> std::io::Result<()> {
        self.0.lock().unwrap().trailers = text_fields(trailers);
        Ok(())
    }
}

impl OutputSink for Collect {
    fn send(&mut self, chunks: &[Bytes], _timeout: Duration) -> std::io::Result<()> {
        let mut s = self.0.lock().unwrap();
        for c in chunks {
            s.body.extend_from_slice(c);
        }
        Ok(())
    }
}

fn get(path: &str) -> (Request<'static>, Collect) {
    let c = Collect::default();
    let req = Request {
        method: "GET".into(),
        scheme: "http".into(),
        authority: "localhost:8080".into(),
        path_with_query: path.to_string().into(),
        args: vec!["hello".into()],
        head: Some(Box::new(c.clone())),
        output: Some(Box::new(c.clone())),
        ..Request::default()
    };
    (req, c)
}

#[test]
fn only_a_0_3_component_needs_the_component_model_s_concurrency() {
    let needs = |name: &str| needs_concurrency(&std::fs::read(component(name)).unwrap());
    assert!(needs("probe-py3") && needs("hello-py3"));
    for name in ["probe-py", "hello-c", "hello-js"] {
        assert!(!needs(name), "{name}");
    }
    assert!(!needs_concurrency(&wat::parse_str("(module)").unwrap()));
}

#[test]
fn a_python_component_answers_with_its_head_and_body() {
    let rt = runtime("hello-py");
    assert_eq!(rt.module(0).unwrap().kind(), Kind::Http);
    for _ in 0..3 {
        let (req, c) = get("/x?y=1");
        let o = rt.serve(0, req);
        o.result.unwrap();
        let s = c.0.lock().unwrap();
        assert_eq!(s.status, 200);
        assert!(
            s.headers
                .contains(&("content-type".into(), "text/plain".into())),
            "{:?}",
            s.headers
        );
        assert_eq!(
            String::from_utf8_lossy(&s.body),
            "Hello from Python, /x?y=1"
        );
    }
    assert!(rt.shard_status().iter().all(|s| s.busy == 0));
}

/// `path` of the probe component, its instances reused `reuse` times;
/// returns the status and the body.
fn probe(rt: &Runtime, path: &str, reuse: u32) -> (u16, String) {
    let (mut req, c) = get(path);
    req.reuse = reuse;
    let _ = rt.serve(0, req).result;
    let s = c.0.lock().unwrap();
    (s.status, String::from_utf8_lossy(&s.body).into_owned())
}

/// The probe components of wasi:http 0.2 (guests/http/probe.py) and 0.3
/// (guests/http/p3/probe.py).
const PROBES: [&str; 2] = ["probe-py", "probe-py3"];

#[test]
fn an_instance_is_reused_only_as_often_as_allowed_and_never_after_a_trap() {
    for name in PROBES {
        reused_only_as_often_as_allowed(name);
    }
}

fn reused_only_as_often_as_allowed(name: &str) {
    let rt = runtime(name);
    // A fresh instance for every request by default.
    for _ in 0..2 {
        assert_eq!(probe(&rt, "/count", 1), (200, "1".into()));
    }
    assert_eq!(rt.shard_status().iter().map(|s| s.kept).sum::<u32>(), 0);
    // Reused three times: the guest's state carries over, then a fresh one.
    let counts: Vec<String> = (0..4).map(|_| probe(&rt, "/count", 3).1).collect();
    assert_eq!(counts, ["1", "2", "3", "1"]);
    assert_eq!(rt.shard_status().iter().map(|s| s.kept).sum::<u32>(), 1);
    // A trap discards the instance: the next request starts afresh.
    assert_eq!(probe(&rt, "/trap-before", 3).0, 0);
    assert_eq!(probe(&rt, "/count", 3).1, "1");
    // Another configuration (its environment) never gets that instance.
    let (mut req, c) = get("/count");
    req.reuse = 3;
    req.env = vec![(b"MODE".as_slice().into(), b"other".as_slice().into())];
    rt.serve(0, req).result.unwrap();
    assert_eq!(String::from_utf8_lossy(&c.0.lock().unwrap().body), "1");
    // Both kept instances hold a slot of the two; a third configuration
    // evicts one instead of being turned away.
    let (mut req, c) = get("/count");
    req.reuse = 3;
    req.args = vec!["third".into()];
    rt.serve(0, req).result.unwrap();
    assert_eq!(String::from_utf8_lossy(&c.0.lock().unwrap().body), "1");
    let st = rt.shard_status();
    assert_eq!(st.iter().map(|s| s.kept).sum::<u32>(), 2);
    assert_eq!(st.iter().map(|s| s.busy).sum::<u32>(), 2);
    assert_eq!(rt.exhausted(), 0);
}

#[test]
fn trailers_follow_the_body_and_a_content_length_is_held_to() {
    for name in PROBES {
        trailers_and_content_length(name);
    }
}

fn trailers_and_content_length(name: &str) {
    let rt = runtime(name);
    let (req, c) = get("/trailers");
    rt.serve(0, req).result.unwrap();
    let s = c.0.lock().unwrap();
    assert_eq!(String::from_utf8_lossy(&s.body), "body\n");
    assert_eq!(s.trailers, [("x-checksum".to_string(), "42".to_string())]);
    drop(s);
    // A body that matches its content-length is sent whole.
    let (req, c) = get("/length?5,5");
    rt.serve(0, req).result.unwrap();
    assert_eq!(c.0.lock().unwrap().body.len(), 5);
    // Shorter or longer than said: the response fails, and says why.
    for q in ["3,5", "9,5"] {
        let (req, _) = get(&format!("/length?{q}"));
        let e = rt.serve(0, req).result.unwrap_err();
        assert!(
            e.message.contains("does not match its content-length"),
            "{q}: {}",
            e.message
        );
    }
}

#[test]
fn a_guest_that_returns_without_finishing_its_body_fails_at_once_and_is_not_kept() {
    for name in PROBES {
        unfinished(name);
    }
}

fn unfinished(name: &str) {
    let rt = runtime(name);
    for reuse in [1, 3] {
        let started = std::time::Instant::now();
        let (mut req, c) = get("/unfinished");
        req.reuse = reuse;
        req.limits.timeout = Duration::from_secs(10);
        let e = rt.serve(0, req).result.unwrap_err();
        // 0.2: the guest returned; 0.3: its tasks did.
        assert!(
            e.message
                .contains("without setting its response or finishing its body")
                || e.message.contains("left its body unfinished"),
            "{name}: {}",
            e.message
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "reuse {reuse}: waited {:?}",
            started.elapsed()
        );
        assert_eq!(c.0.lock().unwrap().body, b"partial");
        assert_eq!(rt.shard_status().iter().map(|s| s.kept).sum::<u32>(), 0);
    }
    // The next request, reusing, starts afresh.
    assert_eq!(probe(&rt, "/count", 3).1, "1");
}
