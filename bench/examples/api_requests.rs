//! Runs one module for a fixed number of requests through the runtime API
//! alone (no Apache) and prints the per-request time. It is the "without
//! Apache" row of `perf-scripts/python`, and a repeatable workload for
//! instruction-count profiles on a noisy machine:
//!
//!   cargo build --release -p mod_wasm_bench --example api_requests
//!   target/release/examples/api_requests build/guests/hello.wasm 20000
//!   valgrind --tool=callgrind target/release/examples/api_requests build/guests/hello.wasm 2000
//!
//! Options after the count: `--trap` (WasmTrapUnknownImports On), `--arg A`
//! (WasmArg), `--dir GUEST=HOST` (read-only WasmMapDir), `--query Q`.

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use mod_wasm_bench::{request, runtime_for};
use wasm_runtime::Preopen;

fn main() {
    let mut argv = std::env::args().skip(1);
    let usage = "usage: api_requests MODULE.wasm COUNT [--trap] [--arg A] [--dir G=H] [--query Q]";
    let module = PathBuf::from(argv.next().expect(usage));
    let count: usize = argv.next().and_then(|n| n.parse().ok()).expect(usage);
    let (mut trap, mut args, mut dirs, mut query) = (false, vec![], vec![], String::new());
    while let Some(flag) = argv.next() {
        match flag.as_str() {
            "--trap" => trap = true,
            "--arg" => args.push(argv.next().expect(usage)),
            "--query" => query = argv.next().expect(usage),
            "--dir" => {
                let spec = argv.next().expect(usage);
                let (guest, host) = spec.split_once('=').expect(usage);
                dirs.push(Preopen {
                    guest: guest.into(),
                    host: host.into(),
                    read_only: true,
                });
            }
            _ => panic!("{usage}"),
        }
    }
    let rt = runtime_for(&module, trap);
    let one = || {
        let mut req = request(22, &query, Bytes::new());
        req.args.extend(args.iter().cloned());
        req.dirs = dirs.clone();
        let o = rt.run(0, req);
        assert!(o.result.is_ok(), "{:?}", o.result);
    };
    // Warm the pool slot, the page cache and the allocator first.
    for _ in 0..count.div_ceil(10).min(100) {
        one();
    }
    let mut times: Vec<f64> = (0..count)
        .map(|_| {
            let t = Instant::now();
            one();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / count as f64;
    println!(
        "{} requests: p50 {:.2} µs, mean {:.2} µs, p99 {:.2} µs",
        count,
        times[count / 2],
        mean,
        times[count * 99 / 100]
    );
}
