//! The component path without Apache: `wasi:http` components built by
//! `make` (`build/components/`), compiled through the cache and served from
//! a pooled runtime.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use wasm_runtime::cache::precompile;
use wasm_runtime::executor::Kind;
use wasm_runtime::http::{HeadSink, Request};
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
    let compiled = precompile(&component(name), &d.join("cache")).unwrap();
    Runtime::new(
        &[ModuleSpec {
            cwasm: compiled.cwasm,
            name: name.into(),
            trap_unknown_imports: false,
        }],
        &RuntimeOptions::with_slots(2),
    )
    .unwrap()
}

/// What the guest sent: status, headers, body.
#[derive(Default)]
struct Sent {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Sent>>);

impl HeadSink for Collect {
    fn send_head(&mut self, status: u16, headers: &[(&[u8], &[u8])]) -> std::io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.status = status;
        s.headers = headers
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
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
