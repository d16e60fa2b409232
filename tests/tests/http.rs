//! wasi:http components served by a real Apache: the request the guest
//! sees, its response streamed out, and configtest's checks.

use e2e::apache::{Apache, Mpm, Options};
use e2e::http::{get, Request};

fn component(path: &str, name: &str, extra: &str) -> String {
    format!(
        "<Location {path}>\n  SetHandler wasm-handler\n  WasmModule @ROOT@/build/components/{name}.wasm\n{extra}</Location>\n"
    )
}

fn hello_under(mpm: Mpm) {
    let s = Apache::start_with(Options::new(&component("/py", "hello-py", "")).mpm(mpm));
    for _ in 0..3 {
        let r = get(s.port, "/py/a?b=1");
        assert_eq!(r.status, 200, "{}", s.error_log());
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.text(), "Hello from Python, /py/a?b=1");
    }
    // HEAD runs the guest and sends no body.
    let r = Request::new("HEAD", "/py/").send(s.port).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
}

#[test]
fn a_python_component_says_hello_under_event() {
    hello_under(Mpm::Event);
}

#[test]
fn a_python_component_says_hello_under_worker() {
    hello_under(Mpm::Worker);
}

#[test]
fn a_python_component_says_hello_under_prefork() {
    hello_under(Mpm::Prefork);
}
