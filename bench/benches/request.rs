//! The runtime's hot path: Store from the pool + WASI context + instantiate
//! + run + collect output, for the variants that matter, side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mod_wasm_bench::{request, runtime, runtime_with};
use wasm_runtime::engine::EngineOptions;
use wasm_runtime::RuntimeOptions;

const ENV: usize = 22;

fn hello_variants(c: &mut Criterion) {
    let mut g = c.benchmark_group("hello");
    for (name, pooling, epochs) in [
        ("pooled+epochs", true, true),
        ("pooled", true, false),
        ("ondemand+epochs", false, true),
        ("ondemand", false, false),
    ] {
        let rt = runtime(
            &["hello"],
            4,
            EngineOptions {
                pooling,
                epochs,
                ..EngineOptions::default()
            },
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                let o = rt.run(0, request(ENV, "", Bytes::new()));
                assert!(o.result.is_ok());
                o
            })
        });
    }
    g.finish();
}

fn env_scaling(c: &mut Criterion) {
    // A guest that calls getenv, so every variable is laid out and copied
    // into it (hello does not import the environment and is never given one).
    let rt = runtime(&["respond"], 4, EngineOptions::default());
    let mut g = c.benchmark_group("env_vars");
    for n in [10, 50, 200] {
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| rt.run(0, request(n, "", Bytes::new())))
        });
    }
    g.finish();
}

fn body_sizes(c: &mut Criterion) {
    let rt = runtime(&["echo"], 4, EngineOptions::default());
    let mut g = c.benchmark_group("request_body");
    for size in [0usize, 64 << 10, 1 << 20] {
        let body = Bytes::from(vec![b'x'; size]);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| {
                let o = rt.run(0, request(ENV, "", body.clone()));
                assert!(o.stdout.len() >= size);
                o
            })
        });
    }
    g.finish();
}

fn response_sizes(c: &mut Criterion) {
    let rt = runtime(&["respond"], 4, EngineOptions::default());
    let mut g = c.benchmark_group("response_body");
    for size in [13usize, 64 << 10, 1 << 20] {
        let query = format!("big={size}");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &query, |b, q| {
            b.iter(|| rt.run(0, request(ENV, q, Bytes::new())))
        });
    }
    g.finish();
}

/// Time per request with `threads` threads sharing one runtime, whose pool
/// is sharded as in a server child (one engine per CPU) or kept in one engine.
fn threads(c: &mut Criterion) {
    let sharded = Arc::new(runtime(&["hello"], 8, EngineOptions::default()));
    let single = Arc::new(runtime_with(
        &["hello"],
        RuntimeOptions {
            shards: Some(1),
            ..RuntimeOptions::with_slots(8)
        },
    ));
    let mut g = c.benchmark_group("threads");
    for (name, n, rt) in [
        ("1", 1u64, &sharded),
        ("2", 2, &sharded),
        ("2, one engine", 2, &single),
    ] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(n);
                let start = Instant::now();
                let workers: Vec<_> = (0..n)
                    .map(|_| {
                        let rt = rt.clone();
                        std::thread::spawn(move || {
                            for _ in 0..per {
                                rt.run(0, request(ENV, "", Bytes::new()));
                            }
                        })
                    })
                    .collect();
                for w in workers {
                    w.join().unwrap();
                }
                // Wall time for `iters` requests spread over `n` threads.
                start.elapsed().mul_f64(iters as f64 / (per * n) as f64)
            })
        });
    }
    g.finish();
}

/// The Python app (examples/python/app.py) through the runtime API alone,
/// to set against the same request through Apache (perf-scripts/python).
fn interpreters(c: &mut Criterion) {
    let app = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/python");
    let mut g = c.benchmark_group("python_app");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for (name, guest, trap) in [
        ("micropython", "micropython", true),
        ("cpython", "python-3.12.0", false),
    ] {
        let rt = mod_wasm_bench::interpreter(guest, trap);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut req = request(ENV, "action=utf8", Bytes::new());
                req.args.push("/app/app.py".into());
                req.dirs = vec![wasm_runtime::Preopen {
                    guest: "/app".into(),
                    host: app.clone(),
                    read_only: true,
                }];
                let o = rt.run(0, req);
                assert!(o.result.is_ok(), "{:?}", o.result);
                o
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(30);
    targets = hello_variants, env_scaling, body_sizes, response_sizes, threads, interpreters
}
criterion_main!(benches);
