//! What must hold for any module and any request, checked by the fuzz
//! target (`fuzz_targets/request.rs`) on libFuzzer's inputs and by the
//! runtime's tests (`runtime/tests/mutated_modules.rs`) on seeded ones, so
//! that the property itself is exercised on every `make test`.

use std::path::Path;
use std::time::{Duration, Instant};

use wasm_runtime::cache::precompile;
use wasm_runtime::{Body, Code, Limits, ModuleSpec, Request, Runtime, RuntimeOptions};

/// One input: a module (a valid one with `edits` applied, or raw bytes) and
/// what the request gives it.
#[derive(Debug, Default)]
pub struct Case {
    /// The module's bytes.
    pub module: Vec<u8>,
    /// True when `module` is the valid echo module, unchanged.
    pub unmutated: bool,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    pub body: Vec<u8>,
    pub entry: Option<String>,
}

/// `valid` with each `(offset, byte)` of `edits` written over it (offsets
/// wrap around its length): modules close enough to valid that they pass
/// the parser's first checks and reach validation, compilation and
/// instantiation, which random bytes almost never do.
pub fn mutate(valid: &[u8], edits: &[(u32, u8)]) -> Vec<u8> {
    let mut m = valid.to_vec();
    for &(at, byte) in edits {
        let i = at as usize % m.len();
        m[i] = byte;
    }
    m
}

const TIMEOUT: Duration = Duration::from_millis(200);
const MAX_OUTPUT: usize = 1 << 20;
/// A run may overrun its deadline by about an epoch tick and the time to
/// unwind: far less than this.
const SLACK: Duration = Duration::from_secs(2);

/// How far a case got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// The cache refused the module.
    Refused,
    /// It compiled but did not link.
    NotLinked,
    /// It ran, ending with this code.
    Ran(Code),
}

/// Compiles and runs `case` in `dir`; panics when a property fails.
/// A module the cache refuses is fine (it must say why); anything it
/// accepts must load, run within its limits, and give a consistent outcome.
pub fn check(dir: &Path, case: Case) -> Reached {
    let path = dir.join("m.wasm");
    std::fs::write(&path, &case.module).unwrap();
    let compiled = match precompile(&path, &dir.join("cache")) {
        Ok(c) => c,
        Err(e) => {
            assert!(!case.unmutated, "the valid module was refused: {e:?}");
            assert!(!e.message.is_empty());
            assert!(
                matches!(e.code, Code::Compile | Code::Link | Code::Io),
                "{e:?}"
            );
            return Reached::Refused;
        }
    };
    let spec = ModuleSpec {
        cwasm: compiled.cwasm,
        name: "fuzz".into(),
        trap_unknown_imports: false,
    };
    let rt = match Runtime::new(&[spec], &RuntimeOptions::with_slots(2)) {
        Ok(rt) => rt,
        // Types of imports are checked here, not by the cache.
        Err(e) => {
            assert!(!case.unmutated, "the valid module did not load: {e:?}");
            assert_eq!(e.code, Code::Link, "{e:?}");
            return Reached::NotLinked;
        }
    };
    let body = case.body.clone();
    let started = Instant::now();
    let outcome = rt.run(
        0,
        Request {
            args: case.args,
            env: case
                .env
                .into_iter()
                .map(|(k, v)| (k.into_bytes().into(), v.into_bytes().into()))
                .collect(),
            body: Body::Bytes(case.body.into()),
            entry: case.entry.clone(),
            limits: Limits {
                timeout: TIMEOUT,
                max_memory: 16 << 20,
                max_output: MAX_OUTPUT,
                ..Limits::default()
            },
            ..Request::default()
        },
    );
    let took = started.elapsed();
    assert!(took < TIMEOUT + SLACK, "the run took {took:?}");
    assert!(outcome.stdout.len() <= MAX_OUTPUT);
    assert!(outcome.stderr.len() <= wasm_runtime::limits::MAX_STDERR);
    match &outcome.result {
        Ok(()) => assert_eq!(outcome.exit_code, 0),
        Err(e) if e.code == Code::Exit => assert_ne!(outcome.exit_code, 0, "{e:?}"),
        Err(e) => {
            assert_eq!(outcome.exit_code, -1, "{e:?}");
            assert!(!e.message.is_empty());
            // No failure of a guest is the runtime's own.
            assert!(
                !matches!(e.code, Code::Panic | Code::PoolExhausted),
                "{e:?}"
            );
        }
    }
    // The slot came back with the store.
    assert!(rt.shard_status().iter().all(|s| s.busy == 0));
    if case.unmutated && case.entry.is_none() {
        let out = outcome.stdout.to_bytes();
        assert!(outcome.result.is_ok(), "{:?}", outcome.result);
        assert!(out.ends_with(&body), "the echo lost the body");
    }
    Reached::Ran(outcome.result.err().map_or(Code::Ok, |e| e.code))
}
