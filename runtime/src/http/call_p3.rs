//! A request to a `wasi:http/handler@0.3` component: an async call from a
//! request to a response, whose body the guest goes on writing, from its
//! own tasks, after the call returned.
//!
//! Everything runs inside one `run_concurrent` of the store, polled on the
//! request's own thread (inside `in_tokio`'s `block_on`): the guest's tasks,
//! the request body the guest reads (which calls into the server's input
//! filters) and the sending of the response (its output filters). Nothing
//! is spawned; the guest's body only moves while that loop is polled,
//! which is why the response is sent from inside it.
//!
//! One instance serves one request at a time: the call is made once per
//! `run_concurrent`, and an instance is only kept for the next request once
//! none of its tasks is left running.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use wasmtime::component::Accessor;
use wasmtime::Store;
use wasmtime_wasi_http::p3::bindings::{Service, ServicePre};
use wasmtime_wasi_http::{FieldMap, WasiHttpView};

use super::body::IncomingBody;
use super::component::Bindings;
use super::host::HttpHost;
use super::send::{within_turns, Sent, Sink};
use super::Called;
use crate::error::{chain, Result};

/// Times the store's loop is let run, after the response went out, for the
/// guest's tasks to end (componentize-py's task writing the body ends just
/// after the body does). An instance with tasks still running after that
/// is not kept: the next request would wait for them, or share it with
/// them.
const SETTLE_POLLS: usize = 4;

/// Calls the guest (instantiated from `pre` unless `kept` has its exports)
/// with `request`, sending its response to `sink` as the guest writes it.
/// `keep`: the instance is to be kept if it serves the request completely.
///
/// # Errors
/// None of its own: the guest's failures are in [`Called::run`].
pub(super) async fn call(
    mut store: Store<HttpHost>,
    pre: &ServicePre<HttpHost>,
    kept: Option<Service>,
    request: http::Request<IncomingBody>,
    mut sink: Sink<'_>,
    keep: bool,
) -> Result<Called> {
    let service = match kept {
        Some(s) => s,
        None => match pre.instantiate_async(&mut store).await {
            Ok(s) => s,
            Err(e) => {
                return Ok(Called {
                    store,
                    run: Err(e),
                    sent: Sent::NotSet,
                    reusable: None,
                })
            }
        },
    };
    let (parts, body) = request.into_parts();
    // Whether the whole response went out, whatever happens after.
    let delivered_whole = std::cell::Cell::new(false);
    let ran = store
        .run_concurrent(async |acc| -> wasmtime::Result<(Sent, bool)> {
            // Forbidden fields (`host` among them: the authority says it)
            // are dropped here, as wasi:http 0.3 requires.
            let headers =
                acc.with(|mut a| FieldMap::new_immutable(a.get().http().hooks, parts.headers));
            let uri = parts.uri.into_parts();
            // The second half is what the guest reports of reading the
            // body; a body it stopped reading ends with the request anyway.
            let (request, _read) = wasmtime_wasi_http::p3::Request::new(
                parts.method,
                uri.scheme,
                uri.authority,
                uri.path_and_query,
                headers,
                None,
                body,
            );
            let response = match service.handle(acc, request).await? {
                Ok(r) => r,
                Err(code) => return Ok((Sent::Refused(format!("{code:?}")), false)),
            };
            // What the guest learns of its response's delivery.
            let (done, delivered) = tokio::sync::oneshot::channel();
            let response = acc.with(|mut a| {
                response.into_http(&mut a, async move {
                    delivered
                        .await
                        .unwrap_or(Err(wasmtime_wasi_http::Error::ConnectionTerminated))
                })
            });
            let response = match response {
                Ok(r) => r,
                // A content-length that is no number.
                Err(e) => return Ok((Sent::Broken(chain(&e)), false)),
            };
            let sent = sink.send(response.map(|b| Watched::new(b, acc))).await;
            let complete = matches!(sent, Sent::Complete);
            delivered_whole.set(complete);
            let _ = done.send(match complete {
                true => Ok(()),
                false => Err(wasmtime_wasi_http::Error::ConnectionTerminated),
            });
            let idle = keep && complete && settled(acc).await;
            Ok((sent, idle))
        })
        .await;
    let (run, sent, reusable) = match ran.and_then(|r| r) {
        Ok((sent, idle)) => (Ok(()), sent, idle.then_some(Bindings::P3(service))),
        // A task that failed while the instance settled, after its response
        // had gone out whole: the request succeeded; the instance goes.
        Err(_) if delivered_whole.get() => (Ok(()), Sent::Complete, None),
        Err(e) => (Err(e), Sent::NotSet, None),
    };
    Ok(Called {
        store,
        run,
        sent,
        reusable,
    })
}

/// Whether the guest's tasks all end within [`SETTLE_POLLS`] turns of the
/// store's loop.
async fn settled(acc: &Accessor<HttpHost>) -> bool {
    within_turns(SETTLE_POLLS, |cx| acc.poll_no_interesting_tasks(cx))
        .await
        .is_some()
}

/// A response body whose guest may stop writing it for good: once none of
/// the guest's tasks is left and the body still waits for bytes, nothing
/// will ever finish it (the instance serves no one else meanwhile), so it
/// ends in an error at once instead of holding the request until
/// `WasmTimeout`.
struct Watched<'a, B> {
    body: B,
    acc: &'a Accessor<HttpHost>,
    /// Polls in a row that found the body waiting and no task left.
    idle: usize,
}

impl<'a, B> Watched<'a, B> {
    fn new(body: B, acc: &'a Accessor<HttpHost>) -> Self {
        Watched { body, acc, idle: 0 }
    }
}

/// Why a [`Watched`] body failed.
enum WatchError<E> {
    /// The body's own error.
    Body(E),
    /// The guest's tasks all ended with the body unfinished.
    Unfinished,
}

impl<E: std::fmt::Display> std::fmt::Display for WatchError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchError::Body(e) => e.fmt(f),
            WatchError::Unfinished => f.write_str(
                "the guest left its body unfinished: none of its tasks is left to finish it",
            ),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Watched<'_, B> {
    type Data = Bytes;
    type Error = WatchError<B::Error>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.idle = 0;
                Poll::Ready(frame.map(|f| f.map_err(WatchError::Body)))
            }
            Poll::Pending if this.acc.poll_no_interesting_tasks(cx).is_ready() => {
                // What the last task wrote may still be on its way through
                // the store's loop: let it run a few turns first.
                this.idle += 1;
                if this.idle > SETTLE_POLLS {
                    return Poll::Ready(Some(Err(WatchError::Unfinished)));
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => {
                this.idle = 0;
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}
