//! The fuzz target's property (`fuzz/src/property.rs`) on seeded inputs:
//! a valid echo module with bytes overwritten at random, and the module
//! unchanged, so that what the fuzzer checks is itself checked by
//! `make test`, without a nightly toolchain.

use wasm_runtime::scratch::Scratch;

#[path = "../../fuzz/src/property.rs"]
#[allow(dead_code)]
mod property;

use property::{check, mutate, Case, Reached};

/// Echoes stdin after a CGI header.
const ECHO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $r (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "Content-Type: text/plain\r\n\r\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 28))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (block $done
      (loop $more
        (i32.store (i32.const 0) (i32.const 1024))
        (i32.store (i32.const 4) (i32.const 4096))
        (br_if $done (call $r (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br_if $done (i32.eqz (i32.load (i32.const 8))))
        (i32.store (i32.const 4) (i32.load (i32.const 8)))
        (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 12)))
        (br $more)))))"#;

/// xorshift64: reproducible inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn the_valid_module_echoes_and_mutations_fail_cleanly() {
    let valid = wat::parse_str(ECHO).unwrap();
    let dir = Scratch::new("mutated");
    let first = check(
        &dir,
        Case {
            module: valid.clone(),
            unmutated: true,
            body: b"a body to echo".to_vec(),
            args: vec!["echo.wasm".into()],
            ..Case::default()
        },
    );
    assert_eq!(first, Reached::Ran(wasm_runtime::Code::Ok));
    let mut reached = Vec::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..150 {
        let edits: Vec<(u32, u8)> = (0..1 + rng.next() % 3)
            .map(|_| (rng.next() as u32, rng.next() as u8))
            .collect();
        let module = mutate(&valid, &edits);
        let unmutated = module == valid;
        reached.push(check(
            &dir,
            Case {
                module,
                unmutated,
                body: b"x".repeat((rng.next() % 64) as usize),
                args: vec!["echo.wasm".into()],
                ..Case::default()
            },
        ));
    }
    // Mutations must reach both the validator and the run, or the
    // property above was checked on less than it claims.
    let refused = reached.iter().filter(|r| **r == Reached::Refused).count();
    let ran = reached
        .iter()
        .filter(|r| matches!(r, Reached::Ran(_)))
        .count();
    eprintln!(
        "refused {refused}, ran {ran} of {}: {reached:?}",
        reached.len()
    );
    assert!(refused >= 15 && ran >= 15, "refused {refused}, ran {ran}");
}
