//! The Rust half of mod_wasm.
//!
//! Apache's C module (`mod_wasm_c/`) hands configuration and requests to this
//! library through the C ABI in `include/wasm_runtime.h` (see [`ffi`]).
//! At configuration time modules are compiled once into a cache ([`cache`],
//! in a throw-away process: [`forked`]; every entry is checked against its
//! digest before it is used: [`digest`]); every child process then loads them
//! into pooled engines ([`runtime`]), each module with the [`executor`] that
//! serves it, and runs each request in a fresh store. What every kind of
//! module shares: the slot lease ([`runtime`], [`shard`]), the [`limits`],
//! the classification of how a run ended ([`outcome`]), the request body
//! read ([`body`]) and the output sent ([`pipe`]) through the server while
//! the guest runs, the [`status`] page. WASI preview-1 commands served
//! CGI-style live in [`cgi`], `wasi:http` components in [`http`]. The
//! `mod_wasm-precompile` command fills a cache for a fleet from what Apache
//! lists of a configuration ([`listing`]).

#![deny(missing_docs)]

pub mod body;
pub mod cache;
pub mod cgi;
pub mod digest;
pub mod engine;
pub mod error;
pub mod executor;
pub mod ffi;
pub mod forked;
pub mod http;
pub mod limits;
pub mod listing;
pub mod metrics;
pub mod outcome;
pub mod pipe;
pub mod runtime;
#[doc(hidden)]
pub mod scratch;
pub mod shard;
pub mod status;

pub use body::{Body, BodyReader};
pub use cgi::{Outcome, Preopen, Request};
pub use error::{Code, Error, Result};
pub use limits::Limits;
pub use pipe::OutputSink;
pub use runtime::{ModuleSpec, Runtime, RuntimeOptions};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
