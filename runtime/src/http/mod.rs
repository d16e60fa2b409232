//! `wasi:http` components (the `wasi:http/proxy` world of WASI 0.2 and the
//! `wasi:http/service` world of WASI 0.3): the server hands the guest its
//! request as a `wasi:http` request, the guest reads the body as the client
//! sends it, and its response goes out as the guest sets the head and
//! writes the body (see `serve.rs`).
//!
//! [`Proxy`] is the component as loaded ([`crate::executor`] decides a
//! module is one, `component.rs` which version of the handler it exports),
//! [`host`] what it may import, `body.rs` the request body as the guest
//! sees it, `call_p2.rs` and `call_p3.rs` how each version is called,
//! `send.rs` how the response goes out, `outbound.rs` and `client.rs`
//! where the guest's own requests may go and how they are sent.

mod body;
mod call_p2;
mod call_p3;
mod client;
mod component;
pub mod host;
pub mod outbound;
mod request;
mod reuse;
mod send;
mod serve;

/// A guest's call, as its version's caller hands it back.
struct Called {
    /// The store, with the instance.
    store: wasmtime::Store<HttpHost>,
    /// How the guest's run ended.
    run: wasmtime::Result<()>,
    /// How the sending of its response ended.
    sent: send::Sent,
    /// Its exports, when the instance may serve another request (it
    /// returned, and none of its tasks is left running).
    reusable: Option<component::Bindings>,
}

pub(crate) use component::resources_required;
pub use component::{check_component, needs_concurrency, Proxy};
pub use host::HttpHost;
pub use request::{HeadSink, Request};
pub(crate) use reuse::{Kept, Shelf};
