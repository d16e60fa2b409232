//! The heap figures of `wasm-status`, alone in their own test binary: other
//! tests allocating and freeing on other threads would move them.

use wasm_runtime::status::heap;

#[test]
#[cfg_attr(
    any(not(target_env = "gnu"), feature = "mimalloc"),
    ignore = "glibc's counters do not see this allocator"
)]
fn the_heap_in_use_follows_allocations() {
    let before = heap().unwrap();
    let block = std::hint::black_box(vec![1u8; 64 << 20]);
    let during = heap().unwrap();
    assert!(
        during.in_use >= before.in_use + (64 << 20),
        "{before:?} {during:?}"
    );
    assert!(during.held >= during.in_use);
    drop(block);
    let after = heap().unwrap();
    assert!(after.in_use < during.in_use, "{during:?} {after:?}");
}
