//! A request to a `wasi:http/incoming-handler@0.2` component: the guest is
//! called with the request and an outparam, and sets its response there
//! while the call is still running.
//!
//! The guest and the sender of its response are two futures joined on the
//! request's own thread (inside `in_tokio`'s `block_on`), so that reading
//! the body and sending the response can call into the server's filters,
//! which belong to that thread. The guest's future owns the store and
//! hands it back when the guest returns.

use std::task::Poll;

use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::WasiHttpView;

use super::body::IncomingBody;
use super::component::Bindings;
use super::host::HttpHost;
use super::send::{within_turns, Sent, Sink};
use super::Called;
use crate::error::{chain, Code, Error, Result};

/// Calls the guest (instantiated from `pre` unless `kept` has its exports)
/// with `request`, sending its response to `sink` as it sets and writes it.
///
/// # Errors
/// [`Code::Internal`] when the request cannot be handed over; the guest's
/// own failures are in [`Called::run`].
pub(super) async fn call(
    mut store: Store<HttpHost>,
    pre: &ProxyPre<HttpHost>,
    kept: Option<wasmtime_wasi_http::p2::bindings::Proxy>,
    request: http::Request<IncomingBody>,
    https: bool,
    mut sink: Sink<'_>,
) -> Result<Called> {
    let scheme = if https { Scheme::Https } else { Scheme::Http };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handles = {
        let mut view = store.data_mut().http();
        view.new_incoming_request(scheme, request)
            .and_then(|r| view.new_response_outparam(tx).map(|o| (r, o)))
    };
    let (request, outparam) = handles.map_err(|e| {
        Error::new(
            Code::Internal,
            format!("cannot hand the request over: {}", chain(&e)),
        )
    })?;
    let guest = async move {
        let called: wasmtime::Result<_> = async {
            let bindings = match kept {
                Some(b) => b,
                None => pre.instantiate_async(&mut store).await?,
            };
            bindings
                .wasi_http_incoming_handler()
                .call_handle(&mut store, request, outparam)
                .await?;
            Ok(bindings)
        }
        .await;
        (store, called)
    };
    let send = async {
        match rx.await {
            Ok(Ok(response)) => sink.send(response).await,
            Ok(Err(code)) => Sent::Refused(format!("{code:?}")),
            Err(_) => Sent::NotSet,
        }
    };
    let ((store, called), sent) = drive(guest, send).await;
    let (run, reusable) = match called {
        Ok(b) => (Ok(()), Some(Bindings::P2(b))),
        Err(e) => (Err(e), None),
    };
    Ok(Called {
        store,
        run,
        sent,
        reusable,
    })
}

/// Times the sender of a response is polled, yielding in between, after the
/// guest returned: enough to take what the guest wrote and finished.
const DRAIN_POLLS: usize = 4;

/// Runs the guest and the sender of its response together until the guest
/// returns, then lets the sender take what is left of what the guest wrote.
/// A sender still waiting after that waits for a head or a body the guest
/// will never finish: wasi:http ends such a body as if it were whole when
/// the store goes, so it is reported, rather than awaited (an instance
/// kept for reuse would hold it until `WasmTimeout`) or taken for whole.
async fn drive<G: std::future::Future>(
    guest: G,
    send: impl std::future::Future<Output = Sent>,
) -> (G::Output, Sent) {
    let mut send = std::pin::pin!(send);
    let mut guest = std::pin::pin!(guest);
    let mut sent = None;
    let out = std::future::poll_fn(|cx| {
        if sent.is_none() {
            if let Poll::Ready(s) = send.as_mut().poll(cx) {
                sent = Some(s);
            }
        }
        guest.as_mut().poll(cx)
    })
    .await;
    if let Some(s) = sent {
        return (out, s);
    }
    let sent = within_turns(DRAIN_POLLS, |cx| send.as_mut().poll(cx)).await;
    (out, sent.unwrap_or(Sent::Unfinished))
}
