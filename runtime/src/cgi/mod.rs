//! WASI preview-1 command modules served CGI-style: the server hands the
//! guest a CGI environment, argv and the request body as stdin, and sends
//! its stdout on as a CGI response.
//!
//! [`Command`] is the module as loaded ([`crate::executor`] decides a module
//! is one), [`host`] what it may import, and `run.rs` a request.

mod command;
pub mod environ;
pub mod host;
pub mod poll;
mod request;
mod run;

pub use command::Command;
pub use host::Host;
pub(crate) use request::preopen;
pub use request::{EnvVar, Preopen, Request};
pub use run::Outcome;
