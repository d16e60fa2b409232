//! What `SetHandler wasm-status` shows: one child's instance pool and
//! memory, as `Key: value` lines in the style of mod_status's `?auto`
//! output, for operators and for `perf-scripts/soak`.

use std::fmt::Write;

use crate::runtime::Runtime;

/// The C library's heap, as glibc counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heap {
    /// Bytes allocated and not freed (small blocks in arenas plus blocks
    /// mapped on their own).
    pub in_use: u64,
    /// Bytes the allocator holds from the kernel, in use or free.
    pub held: u64,
}

/// This process's heap; `None` where glibc's `mallinfo2` is not available,
/// or does not see the runtime's allocations (built with mimalloc).
///
/// RSS mixes what is allocated with what the allocator keeps for reuse and
/// with file pages; a leak shows as growth of `in_use`. Each call locks
/// every arena in turn and walks its free lists: cheap for a status page,
/// not for every request.
pub fn heap() -> Option<Heap> {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
    {
        // SAFETY: mallinfo2 takes no arguments; it takes the allocator's
        // own locks while it counts.
        let m = unsafe { libc::mallinfo2() };
        Some(Heap {
            in_use: m.uordblks as u64 + m.hblkhd as u64,
            held: m.arena as u64 + m.hblkhd as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc"))))]
    None
}

impl Runtime {
    /// The status text of this child.
    pub fn status_text(&self) -> String {
        let shards = self.shard_status();
        let join =
            |f: &dyn Fn(&ShardStatus) -> String| shards.iter().map(f).collect::<Vec<_>>().join(" ");
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "Pid: {}", std::process::id());
        let _ = writeln!(out, "Modules: {}", self.module_count());
        let _ = writeln!(out, "Shards: {}", shards.len());
        let _ = writeln!(out, "Slots: {}", self.slots());
        let _ = writeln!(out, "SlotsPerShard: {}", join(&|s| s.slots.to_string()));
        let _ = writeln!(out, "Busy: {}", shards.iter().map(|s| s.busy).sum::<u32>());
        let _ = writeln!(out, "BusyPerShard: {}", join(&|s| s.busy.to_string()));
        // Kept instances are counted in Busy: each holds its slot.
        let _ = writeln!(out, "Kept: {}", shards.iter().map(|s| s.kept).sum::<u32>());
        let _ = writeln!(
            out,
            "Requests: {}",
            shards.iter().map(|s| s.served).sum::<u64>()
        );
        let _ = writeln!(out, "RequestsPerShard: {}", join(&|s| s.served.to_string()));
        let _ = writeln!(out, "PoolExhausted: {}", self.exhausted());
        if let Some(h) = heap() {
            let _ = writeln!(out, "HeapInUse: {}", h.in_use);
            let _ = writeln!(out, "HeapHeld: {}", h.held);
        }
        out
    }
}

/// One shard's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardStatus {
    /// Its share of the slots.
    pub slots: u32,
    /// Slots in use now (kept instances included).
    pub busy: u32,
    /// Component instances kept for reuse now (`WasmInstanceReuse`).
    pub kept: u32,
    /// Requests that got a slot in it so far.
    pub served: u64,
}
