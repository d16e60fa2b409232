//! The Rust half of mod_wasm.
//!
//! Apache's C module (`mod_wasm_c/`) hands configuration and requests to this
//! library through the C ABI in `include/wasm_runtime.h` (see [`ffi`]).
//! At configuration time modules are compiled once into a cache ([`cache`],
//! in a throw-away process: [`isolate`]; every entry is checked against its
//! digest before it is used: [`digest`]); every child process then loads them
//! into a pooled engine ([`runtime`]) and runs each request in a fresh store
//! ([`request`]), its body read ([`body`]) and its output sent ([`pipe`])
//! through the server while the guest runs.

#![deny(missing_docs)]

pub mod body;
pub mod cache;
pub mod digest;
pub mod engine;
pub mod environ;
pub mod error;
pub mod ffi;
pub mod host;
pub mod isolate;
pub mod limits;
pub mod pipe;
pub mod poll;
pub mod request;
pub mod runtime;
#[doc(hidden)]
pub mod scratch;
pub mod shard;
pub mod status;

pub use body::{Body, BodyReader};
pub use error::{Code, Error, Result};
pub use limits::Limits;
pub use pipe::OutputSink;
pub use request::{Outcome, Preopen, Request};
pub use runtime::{ModuleSpec, Runtime};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
