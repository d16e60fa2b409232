//! What a component gets for one request: the HTTP request itself, and the
//! CLI world's arguments, environment and preopened directories
//! (`WasmArg`, `WasmEnv`, `WasmDir`/`WasmMapDir`).

use std::borrow::Cow;

use crate::body::Body;
use crate::cgi::{EnvVar, Preopen};
use crate::limits::Limits;
use crate::pipe::OutputSink;

/// Where the response head goes once the guest sets it, and its trailers
/// once the body has gone.
pub trait HeadSink: Send {
    /// Sends the status and headers (names lower-case, values as the guest
    /// set them). An error means nothing can be sent: the guest's writes
    /// then fail.
    fn send_head(&mut self, status: u16, headers: &[(&[u8], &[u8])]) -> std::io::Result<()>;

    /// Sends the trailers the guest finished its body with (or drops them:
    /// the server decides). An error ends the response as cut.
    fn send_trailers(&mut self, trailers: &[(&[u8], &[u8])]) -> std::io::Result<()>;
}

/// One HTTP request to a component.
#[derive(Default)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: Cow<'a, str>,
    /// `http` or `https`.
    pub scheme: Cow<'a, str>,
    /// The request's Host (`example.com:8080`).
    pub authority: Cow<'a, str>,
    /// The path with its query, as the client sent it.
    pub path_with_query: Cow<'a, str>,
    /// Header fields, in order (hop-by-hop ones already removed).
    pub headers: Vec<EnvVar<'a>>,
    /// `wasi:cli` arguments, `argv[0]` included.
    pub args: Vec<String>,
    /// `wasi:cli` environment.
    pub env: Vec<EnvVar<'a>>,
    /// Preopened directories.
    pub dirs: Vec<Preopen>,
    /// The request body.
    pub body: Body,
    /// Where the head goes; `None`: the response is refused (tests).
    pub head: Option<Box<dyn HeadSink>>,
    /// Where the body goes; `None`: it is dropped (tests).
    pub output: Option<Box<dyn OutputSink>>,
    /// Limits of this request.
    pub limits: Limits,
    /// Requests one instance may serve (`WasmInstanceReuse`); 0 and 1: a
    /// fresh instance for each.
    pub reuse: u32,
    /// An instance is only reused by requests of the same scope (the server
    /// passes its virtual host and section: what one site's requests left
    /// in a guest never reaches another site's).
    pub reuse_scope: Cow<'a, str>,
    /// `WasmAllowOutbound` patterns: where the guest's outgoing requests
    /// may go (none: nowhere).
    pub allow_outbound: Vec<Cow<'a, str>>,
}
