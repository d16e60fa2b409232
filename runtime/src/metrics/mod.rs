//! Server-wide metrics: what every child counts of its requests, in one
//! table of shared memory (`table.rs`), and the forms it is read in
//! (`render.rs`): `wasm-status` text and JSON, the Prometheus exposition
//! format of `wasm-metrics`, and mod_status's section.

mod render;
mod table;

pub use render::{render, Format, Snapshot};
pub use table::{size, ChildCounts, ModuleCounts, Table};

use crate::error::Code;

/// Upper bounds of the histogram of the time a request spends in the
/// runtime, microseconds (50 µs to 10 s; longer ones land in +Inf).
pub const BUCKETS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// How a request ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// The guest answered, with a status below 500.
    Ok,
    /// The guest answered 5xx itself, or exited with a non-zero status.
    GuestError,
    /// The guest trapped.
    Trap,
    /// `WasmTimeout` stopped it.
    Timeout,
    /// `WasmMaxMemory` refused it memory it needed.
    MemoryLimit,
    /// It wrote more than `WasmMaxOutput`.
    OutputLimit,
    /// It opened more files than `WasmMaxOpenFiles`.
    FileLimit,
    /// Every instance slot of the child was busy.
    PoolExhausted,
    /// The client went away, or the server refused the response.
    ClientAborted,
    /// Anything else (a bad request, a failure of the runtime).
    Error,
}

impl Outcome {
    /// Every outcome, in the table's order.
    pub const ALL: [Outcome; 10] = [
        Outcome::Ok,
        Outcome::GuestError,
        Outcome::Trap,
        Outcome::Timeout,
        Outcome::MemoryLimit,
        Outcome::OutputLimit,
        Outcome::FileLimit,
        Outcome::PoolExhausted,
        Outcome::ClientAborted,
        Outcome::Error,
    ];

    /// Its name: a Prometheus label value, and the `wasm-outcome` note.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::GuestError => "guest_error",
            Outcome::Trap => "trap",
            Outcome::Timeout => "timeout",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::OutputLimit => "output_limit",
            Outcome::FileLimit => "file_limit",
            Outcome::PoolExhausted => "pool_exhausted",
            Outcome::ClientAborted => "client_aborted",
            Outcome::Error => "error",
        }
    }

    /// [`Outcome::name`] as a C string (static storage).
    pub fn c_name(self) -> &'static std::ffi::CStr {
        match self {
            Outcome::Ok => c"ok",
            Outcome::GuestError => c"guest_error",
            Outcome::Trap => c"trap",
            Outcome::Timeout => c"timeout",
            Outcome::MemoryLimit => c"memory_limit",
            Outcome::OutputLimit => c"output_limit",
            Outcome::FileLimit => c"file_limit",
            Outcome::PoolExhausted => c"pool_exhausted",
            Outcome::ClientAborted => c"client_aborted",
            Outcome::Error => c"error",
        }
    }

    /// The outcome of a request whose run ended with `code` and which
    /// went out with HTTP `status`.
    pub fn of(code: Code, status: i32) -> Outcome {
        match code {
            Code::Ok if status >= 500 => Outcome::GuestError,
            Code::Ok => Outcome::Ok,
            Code::Exit => Outcome::GuestError,
            Code::Trap => Outcome::Trap,
            Code::Timeout => Outcome::Timeout,
            Code::MemoryLimit => Outcome::MemoryLimit,
            Code::OutputLimit => Outcome::OutputLimit,
            Code::FileLimit => Outcome::FileLimit,
            Code::PoolExhausted => Outcome::PoolExhausted,
            Code::Aborted => Outcome::ClientAborted,
            Code::InvalidArgument
            | Code::Io
            | Code::Compile
            | Code::Link
            | Code::Panic
            | Code::Internal => Outcome::Error,
        }
    }
}

#[cfg(test)]
mod tests;
