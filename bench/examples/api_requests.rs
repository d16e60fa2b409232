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
//! (WasmArg), `--dir GUEST=HOST` (read-only WasmMapDir), `--query Q`,
//! `--threads N` (N threads share the runtime, each runs COUNT requests),
//! `--slots N` (instance slots, default 4; Apache's default is ThreadsPerChild + 1),
//! `--shards N` (engines the pool is split into; default as a server child),
//! `--gap-us N` (sleep N µs between requests, as a server thread waits for
//! the next one: caches and branch predictors cool down in between).

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use mod_wasm_bench::{request, runtime_for};
use wasm_runtime::Preopen;

fn main() {
    let mut argv = std::env::args().skip(1);
    let usage = "usage: api_requests MODULE.wasm COUNT [--trap] [--arg A] [--dir G=H] [--query Q] [--threads N] [--slots N] [--shards N] [--gap-us N]";
    let module = PathBuf::from(argv.next().expect(usage));
    let count: usize = argv.next().and_then(|n| n.parse().ok()).expect(usage);
    let (mut trap, mut args, mut dirs, mut query) = (false, vec![], vec![], String::new());
    let mut threads = 1usize;
    let mut slots = 4u32;
    let mut gap = std::time::Duration::ZERO;
    let mut shards = None;
    while let Some(flag) = argv.next() {
        match flag.as_str() {
            "--trap" => trap = true,
            "--shards" => shards = Some(argv.next().and_then(|n| n.parse().ok()).expect(usage)),
            "--arg" => args.push(argv.next().expect(usage)),
            "--query" => query = argv.next().expect(usage),
            "--slots" => slots = argv.next().and_then(|n| n.parse().ok()).expect(usage),
            "--gap-us" => {
                gap = std::time::Duration::from_micros(
                    argv.next().and_then(|n| n.parse().ok()).expect(usage),
                )
            }
            "--threads" => threads = argv.next().and_then(|n| n.parse().ok()).expect(usage),
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
    let rt = runtime_for(&module, trap, slots, shards);
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
    let started = Instant::now();
    let mut times: Vec<f64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    (0..count)
                        .map(|_| {
                            if !gap.is_zero() {
                                std::thread::sleep(gap);
                            }
                            let t = Instant::now();
                            one();
                            t.elapsed().as_secs_f64() * 1e6
                        })
                        .collect::<Vec<f64>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let n = times.len();
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / n as f64;
    println!(
        "{} requests on {} thread(s): p50 {:.2} µs, mean {:.2} µs, p99 {:.2} µs, {:.0} requests/s",
        n,
        threads,
        times[n / 2],
        mean,
        times[n * 99 / 100],
        n as f64 / wall
    );
}
