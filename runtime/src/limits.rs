//! The limits of a request and the defaults of every directive whose value
//! the runtime decides, defined here once (the C side reads them through
//! `wasm_rt_defaults_get`, and a test checks `docs/directives.md` against
//! them), and the parsing of the limit directives' values, so that
//! `apachectl configtest` rejects a bad value with the directive's name.

use std::time::{Duration, Instant};

use crate::error::{Code, Error, Result};

/// Default of `WasmTimeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `WasmMaxMemory`.
pub const DEFAULT_MAX_MEMORY: usize = 256 << 20;
/// Default of `WasmMaxOutput`.
pub const DEFAULT_MAX_OUTPUT: usize = 64 << 20;
/// Default of `WasmMaxOpenFiles`.
pub const DEFAULT_MAX_OPEN_FILES: u32 = 128;
/// Default of `WasmInstanceReuse`: a fresh instance for every request.
pub const DEFAULT_INSTANCE_REUSE: u32 = 1;
/// Most stderr kept per request; the rest is dropped (and said so in the log).
pub const MAX_STDERR: usize = 64 << 10;
/// Default of `WasmCacheMaxAge`.
pub const DEFAULT_CACHE_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What is left of a request's time until `deadline`, for a callback into
/// the server that may wait; a `TimedOut` error (which the run reports as
/// `WasmTimeout`) once nothing is left, saying what was being `done`.
pub(crate) fn time_left(deadline: Instant, done: &str) -> std::io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("WasmTimeout reached while {done}"),
        ));
    }
    Ok(left)
}

/// Limits of one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock time the guest may run.
    pub timeout: Duration,
    /// Most linear memory the instance may have, bytes.
    pub max_memory: usize,
    /// Most stdout the guest may write, bytes.
    pub max_output: usize,
    /// Most handles the guest may hold at once: the files and directories
    /// it opened and the subscriptions of a `poll_oneoff` in progress (its
    /// preopened directories and stdio not counted).
    pub max_open_files: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: DEFAULT_TIMEOUT,
            max_memory: DEFAULT_MAX_MEMORY,
            max_output: DEFAULT_MAX_OUTPUT,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
        }
    }
}

/// `bytes` in the unit an operator would write in a directive.
pub(crate) fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// Parses a byte size: digits with an optional `K`, `M` or `G` suffix
/// (powers of 1024, case-insensitive, an optional trailing `B`).
///
/// # Errors
/// [`Code::InvalidArgument`] for anything else, for 0, and for sizes that do
/// not fit in 64 bits.
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = || {
        Error::new(
            Code::InvalidArgument,
            format!("'{text}' is not a size (use a number with an optional K, M or G suffix)"),
        )
    };
    let t = text.trim();
    let t = t.strip_suffix(['b', 'B']).unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let value = n.checked_mul(1 << shift).ok_or_else(bad)?;
    if value == 0 {
        return Err(Error::new(
            Code::InvalidArgument,
            format!("'{text}': the size must be above 0"),
        ));
    }
    Ok(value)
}

/// `StoreLimits` that remember whether they refused memory, so that a guest
/// that fails after a refused `memory.grow` (an interpreter raising its
/// out-of-memory error) is reported as having reached `WasmMaxMemory`.
pub(crate) struct MemoryCap {
    limits: wasmtime::StoreLimits,
    /// Whether a `memory.grow` was refused since the last [`MemoryCap::refused`].
    refused: bool,
}

impl MemoryCap {
    /// At most `max_memory` bytes per memory; a refused growth returns -1 to
    /// the guest, which can cope (the store's other limits: Wasmtime's
    /// defaults).
    pub(crate) fn new(max_memory: usize) -> MemoryCap {
        MemoryCap {
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(max_memory)
                .trap_on_grow_failure(false)
                .build(),
            refused: false,
        }
    }

    /// Whether memory was refused since the last call.
    pub(crate) fn refused(&mut self) -> bool {
        std::mem::take(&mut self.refused)
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.limits.memory_growing(current, desired, maximum)?;
        self.refused |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("12K").unwrap(), 12 << 10);
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1MB").unwrap(), 1 << 20);
        for bad in [
            "",
            "12Q",
            "abc",
            "-1",
            "1.5M",
            "M",
            "0",
            "99999999999999999999G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
