//! Error classes that cross the C boundary, and the HTTP status each maps to.
//!
//! The runtime decides what a failure means for the client; the C side only
//! turns the status into a response and logs the message.

use std::fmt;

/// Outcome class of a runtime call, shared with C as `wasm_rt_code`.
///
/// The numeric values are part of the ABI in `include/wasm_runtime.h`.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// A caller passed a null pointer, a bad index or a malformed string.
    InvalidArgument = 1,
    /// Reading a module or writing the cache failed.
    Io = 2,
    /// The module is not valid WebAssembly or could not be compiled.
    Compile = 3,
    /// The module cannot be linked: an import the runtime does not provide,
    /// or a missing entry point.
    Link = 4,
    /// The guest trapped (unreachable, out-of-bounds access, stack overflow...).
    Trap = 5,
    /// The guest called `proc_exit` with a non-zero status.
    Exit = 6,
    /// The guest ran past its time limit and was interrupted.
    Timeout = 7,
    /// Every instance slot of the pool is busy.
    PoolExhausted = 8,
    /// The guest wrote more to stdout than it may.
    OutputLimit = 9,
    /// A panic inside the runtime was caught at the boundary.
    Panic = 10,
    /// Anything else that went wrong inside the runtime.
    Internal = 11,
    /// The module needs more memory to start than the request may use.
    MemoryLimit = 12,
    /// The guest opened more files at once than it may.
    FileLimit = 13,
    /// The response could not be sent while the guest ran (the client went
    /// away, or the server refused the response head).
    Aborted = 14,
}

impl Code {
    /// The HTTP status a request failing with this code should get.
    pub fn http_status(self) -> i32 {
        match self {
            Code::Ok => 200,
            Code::Timeout => 504,
            Code::PoolExhausted => 503,
            _ => 500,
        }
    }

    /// A short stable name, used in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::InvalidArgument => "invalid argument",
            Code::Io => "I/O error",
            Code::Compile => "compile error",
            Code::Link => "link error",
            Code::Trap => "trap",
            Code::Exit => "non-zero exit",
            Code::Timeout => "timeout",
            Code::PoolExhausted => "instance pool exhausted",
            Code::OutputLimit => "output limit exceeded",
            Code::Panic => "panic",
            Code::Internal => "internal error",
            Code::MemoryLimit => "memory limit too low",
            Code::FileLimit => "open file limit exceeded",
            Code::Aborted => "response not sent",
        }
    }

    /// Every code, in ABI order (used to check the header stays in sync).
    pub const ALL: [Code; 15] = [
        Code::Ok,
        Code::InvalidArgument,
        Code::Io,
        Code::Compile,
        Code::Link,
        Code::Trap,
        Code::Exit,
        Code::Timeout,
        Code::PoolExhausted,
        Code::OutputLimit,
        Code::Panic,
        Code::Internal,
        Code::MemoryLimit,
        Code::FileLimit,
        Code::Aborted,
    ];

    /// The code whose ABI value is `v`.
    pub fn from_i32(v: i32) -> Option<Code> {
        Code::ALL.into_iter().find(|c| *c as i32 == v)
    }
}

/// An error with its class and a message fit for an operator's error log.
#[derive(Debug, Clone)]
pub struct Error {
    /// The class, which decides the HTTP status.
    pub code: Code,
    /// What went wrong, in words; never contains request data.
    pub message: String,
}

impl Error {
    /// Creates an error of class `code`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl std::error::Error for Error {}

/// Result type of the runtime.
pub type Result<T> = std::result::Result<T, Error>;

/// Formats a Wasmtime error with its whole cause chain on one line.
pub fn chain(e: &wasmtime::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}
