//! `wasi:http` components (the `wasi:http/proxy` world of WASI 0.2): the
//! server hands the guest its request as a `wasi:http` incoming request,
//! the guest reads the body as the client sends it, and its response goes
//! out as the guest sets the head and writes the body (see `serve.rs`).
//!
//! [`Proxy`] is the component as loaded ([`crate::executor`] decides a
//! module is one), [`host`] what it may import, `body.rs` the request body
//! as the guest sees it.

mod body;
mod component;
pub mod host;
mod request;
mod reuse;
mod serve;

pub(crate) use component::resources_required;
pub use component::{check_component, Proxy};
pub use host::HttpHost;
pub use request::{HeadSink, Request};
pub(crate) use reuse::{Kept, Shelf};
