//! One request of a component: a fresh store from the pool, the request
//! handed to the guest's `incoming-handler`, and its response sent on while
//! the guest still writes it.
//!
//! The guest and the sender of its response are two futures joined on the
//! request's own thread (inside `in_tokio`'s `block_on`), so that reading
//! the body and sending the response can call into the server's filters,
//! which belong to that thread. The guest's future owns the store and drops
//! it when the guest returns: that closes the response body's channel, so
//! the sender ends with it.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store};
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::Proxy as Bindings;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use super::body::IncomingBody;
use super::host::HttpHost;
use super::request::{HeadSink, Request};
use super::reuse::{Kept, ReuseKey};
use crate::cgi::{preopen, Outcome};
use crate::error::{chain, Code, Error, Result};
use crate::limits::{time_left, MemoryCap, MAX_STDERR};
use crate::outcome::{classify, timed_out};
use crate::pipe::{CappedPipe, Output, OutputSink, Overflow};
use crate::runtime::Runtime;

/// Resources a component may hold at once besides its open files: requests,
/// fields, bodies, streams and pollables.
const HTTP_HANDLES: usize = 1024;

/// How the sending of a response ended.
enum Sent {
    /// All of the body went out.
    Complete,
    /// The guest returned, or failed, without setting a response.
    NotSet,
    /// The guest set an error instead of a response.
    Refused(ErrorCode),
    /// The head or a part of the body could not be sent.
    Failed(std::io::Error),
    /// The body outgrew `WasmMaxOutput`.
    TooLong,
    /// The body ended in an error (a `content-length` it did not match, or
    /// the guest's abort).
    Broken(String),
    /// The guest returned without setting a response or finishing its body.
    Unfinished,
}

impl Runtime {
    /// Serves one HTTP request with component `index`, in a fresh instance
    /// or, where the section reuses instances, in one kept from an earlier
    /// request (see `reuse.rs`).
    ///
    /// `WasmTimeout` bounds the whole request, waits included.
    pub fn serve(&self, index: usize, req: Request<'_>) -> Outcome {
        let deadline = Instant::now() + req.limits.timeout;
        // A bad request costs no instance (nor a kept one).
        let request = match http_request(
            &req.method,
            &req.authority,
            &req.path_with_query,
            &req.headers,
            &req.scheme,
        ) {
            Ok(r) => r,
            Err(e) => return Outcome::failed(e),
        };
        let leased = self.lease_reusing(index, &req).and_then(|(lease, kept)| {
            let loaded = lease.module(index);
            Ok((lease, kept, loaded.name.as_str(), loaded.proxy()?))
        });
        let (lease, kept, name, proxy) = match leased {
            Ok(l) => l,
            Err(e) => return Outcome::failed(e),
        };
        let limits = req.limits;
        let (mut store, bindings, log, served, key) = match kept {
            Some(k) => (k.store, Some(k.bindings), k.log, k.served, Some(k.key)),
            None => {
                // The guest's stdout and stderr both go to the error log.
                let log = CappedPipe::new(MAX_STDERR, Overflow::Truncate);
                match new_store(lease.engine(), &req, &log) {
                    Ok(store) => (store, None, log, 0, None),
                    Err(e) => return Outcome::failed(e),
                }
            }
        };
        // This request is the instance's `served + 1`th.
        let keep = req.reuse > served + 1;
        let key = match key {
            Some(k) => Some(k),
            None if keep => Some(ReuseKey::of(index, &req)),
            None => None,
        };
        self.arm_deadline(&mut store, limits.timeout);

        let (body, revoke) = IncomingBody::new(req.body, deadline);
        let request = request.map(|()| body);
        let scheme = if req.scheme == "https" {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handles = {
            let mut view = store.data_mut().http();
            view.new_incoming_request(scheme, request)
                .and_then(|r| view.new_response_outparam(tx).map(|o| (r, o)))
        };
        let (request, outparam) = match handles {
            Ok(h) => h,
            Err(e) => {
                return Outcome::failed(Error::new(
                    Code::Internal,
                    format!("{name}: cannot hand the request over: {}", chain(&e)),
                ))
            }
        };
        let pre = &proxy.pre;
        let (head, output) = (req.head, req.output);
        let sent_bytes = std::cell::Cell::new(0usize);
        let joined = in_tokio(async {
            let guest = async move {
                let called: wasmtime::Result<Bindings> = async {
                    let bindings = match bindings {
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
            let send = send_response(rx, head, output, limits.max_output, deadline, &sent_bytes);
            tokio::time::timeout_at(deadline.into(), drive(guest, send)).await
        });
        // Whatever the guest kept of the request can no longer reach it.
        drop(revoke);
        let (stderr, stderr_truncated) = log.take();
        let (result, exit_code, to_keep) = match joined {
            // The store went with the futures, before the lease.
            Err(_) => (Err(timed_out(name, limits.timeout)), -1, None),
            Ok(((mut store, called), sent)) => {
                let refused = store.data_mut().limits.refused();
                let (result, exit_code, bindings) = match (called, sent) {
                    // The server stopped taking the body, or the body broke
                    // its content-length: the guest's failure to write or
                    // finish it is the consequence, not the cause.
                    (_, sent @ (Sent::TooLong | Sent::Failed(_) | Sent::Broken(_))) => {
                        (sent_result(name, sent, &limits), -1, None)
                    }
                    (Err(e), _) => {
                        let (result, code) = classify(name, e, &limits);
                        let result = result.map_err(|e| match refused {
                            true if e.code == Code::Trap => at_memory_cap(e, &limits),
                            _ => e,
                        });
                        (result, code, None)
                    }
                    (Ok(bindings), sent) => {
                        let result = sent_result(name, sent, &limits);
                        let bindings = result.is_ok().then_some(bindings);
                        (result, 0, bindings)
                    }
                };
                // Only an instance that served its request completely is
                // kept: never one that trapped, timed out or hit a limit.
                let to_keep = match (bindings, keep) {
                    (Some(b), true) => Some((store, b)),
                    _ => {
                        drop(store);
                        None
                    }
                };
                (result, exit_code, to_keep)
            }
        };
        match (to_keep, key) {
            (Some((store, bindings)), Some(key)) => lease.keep(Kept {
                key,
                store,
                bindings,
                log,
                served: served + 1,
            }),
            _ => drop(lease),
        }
        Outcome {
            result,
            exit_code,
            stdout: Output::default(),
            streamed: sent_bytes.get(),
            stderr: stderr.to_bytes(),
            stderr_truncated,
        }
    }
}

/// A store for one instance of a component serving `req`: its `wasi:cli`
/// world, its limits, its stdout and stderr going to `log`.
fn new_store(engine: &Engine, req: &Request<'_>, log: &CappedPipe) -> Result<Store<HttpHost>> {
    let limits = req.limits;
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(&req.args)
        .stdout(log.clone())
        .stderr(log.clone())
        .allow_blocking_current_thread(true);
    for (k, v) in &req.env {
        wasi.env(
            String::from_utf8_lossy(k).as_ref(),
            String::from_utf8_lossy(v).as_ref(),
        );
    }
    preopen(&mut wasi, &req.dirs)?;
    let mut table = ResourceTable::new();
    table.set_max_capacity(HTTP_HANDLES + req.dirs.len() + limits.max_open_files as usize);
    let mut store = Store::new(
        engine,
        HttpHost::new(wasi.build(), table, MemoryCap::new(limits.max_memory)),
    );
    store.limiter(|h| &mut h.limits);
    Ok(store)
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
    use std::task::Poll;
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
    for _ in 0..DRAIN_POLLS {
        if let Poll::Ready(s) = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await
        {
            return (out, s);
        }
        tokio::task::yield_now().await;
    }
    (out, Sent::Unfinished)
}

/// The request as `wasi:http` takes it.
fn http_request(
    method: &str,
    authority: &str,
    path_with_query: &str,
    headers: &[crate::cgi::EnvVar<'_>],
    scheme: &str,
) -> Result<http::Request<()>> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Error::new(
            Code::InvalidArgument,
            format!("the request's {what} is invalid: {e}"),
        )
    };
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path_with_query)
        .build()
        .map_err(|e| bad("URI", &e))?;
    let mut builder = http::Request::builder()
        .method(http::Method::from_bytes(method.as_bytes()).map_err(|e| bad("method", &e))?)
        .uri(uri);
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k).map_err(|e| bad("header name", &e))?;
        let value = http::HeaderValue::from_bytes(v).map_err(|e| bad("header value", &e))?;
        builder = builder.header(name, value);
    }
    builder.body(()).map_err(|e| bad("head", &e))
}

/// What the guest's run comes to, given how its response was sent.
fn sent_result(name: &str, sent: Sent, limits: &crate::limits::Limits) -> Result<()> {
    let err = |code, text: String| Err(Error::new(code, format!("{name}: {text}")));
    match sent {
        Sent::Complete => Ok(()),
        Sent::NotSet => err(
            Code::Trap,
            "the guest returned without setting a response".into(),
        ),
        Sent::Refused(code) => err(
            Code::Trap,
            format!("the guest answered with an error: {code:?}"),
        ),
        Sent::Failed(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            Err(timed_out(name, limits.timeout))
        }
        Sent::Failed(e) => err(
            Code::Aborted,
            format!("the response could not be sent: {e}"),
        ),
        Sent::TooLong => err(
            Code::OutputLimit,
            format!(
                "the guest wrote more than {} bytes of body (WasmMaxOutput)",
                limits.max_output
            ),
        ),
        Sent::Broken(why) => err(Code::Trap, format!("the response body failed: {why}")),
        Sent::Unfinished => err(
            Code::Trap,
            "the guest returned without setting its response or finishing its body".into(),
        ),
    }
}

/// Waits for the guest's response, sends its head, then its body as the
/// guest writes it.
async fn send_response(
    rx: tokio::sync::oneshot::Receiver<
        std::result::Result<http::Response<HyperOutgoingBody>, ErrorCode>,
    >,
    mut head: Option<Box<dyn HeadSink>>,
    mut output: Option<Box<dyn OutputSink>>,
    max_output: usize,
    deadline: Instant,
    sent_bytes: &std::cell::Cell<usize>,
) -> Sent {
    let response = match rx.await {
        Ok(Ok(r)) => r,
        Ok(Err(code)) => return Sent::Refused(code),
        Err(_) => return Sent::NotSet,
    };
    let (parts, mut body) = response.into_parts();
    let declared: Option<usize> = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    // wasi:http refuses a finish short of the content-length; the body
    // that was to go out does not match what the head said.
    let mismatch = |written: usize, declared: usize| {
        Sent::Broken(format!(
            "the body does not match its content-length ({declared} bytes): \
             the guest wrote {written}"
        ))
    };
    let fields: Vec<(&[u8], &[u8])> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()))
        .collect();
    if let Some(h) = head.as_mut() {
        if let Err(e) = h.send_head(parts.status.as_u16(), &fields) {
            return Sent::Failed(e);
        }
    }
    let mut written = 0usize;
    while let Some(frame) = body.frame().await {
        let data: Bytes = match frame.map(|f| f.into_data()) {
            Ok(Ok(d)) => d,
            Ok(Err(f)) => {
                if let (Some(h), Ok(trailers)) = (head.as_mut(), f.into_trailers()) {
                    let fields: Vec<(&[u8], &[u8])> = trailers
                        .iter()
                        .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()))
                        .collect();
                    if let Err(e) = h.send_trailers(&fields) {
                        return Sent::Failed(e);
                    }
                }
                continue;
            }
            Err(e) => match declared {
                Some(d) if d != written => return mismatch(written, d),
                _ => return Sent::Broken(e.to_string()),
            },
        };
        written += data.len();
        if written > max_output {
            return Sent::TooLong;
        }
        // Never a byte past the length the head announced: on a kept-alive
        // connection it would be read as the start of the next response.
        if let Some(d) = declared.filter(|&d| written > d) {
            return mismatch(written, d);
        }
        if let Some(out) = output.as_mut() {
            let timeout = match time_left(deadline, "sending the response") {
                Ok(t) => t,
                Err(e) => return Sent::Failed(e),
            };
            if let Err(e) = out.send(&[data], timeout) {
                return Sent::Failed(e);
            }
            sent_bytes.set(written);
        }
    }
    match declared {
        Some(d) if d != written => mismatch(written, d),
        _ => Sent::Complete,
    }
}

/// `e`, the failure of a guest that was refused memory first: most likely
/// its consequence (an interpreter's out-of-memory error), so said.
fn at_memory_cap(e: Error, limits: &crate::limits::Limits) -> Error {
    Error::new(
        e.code,
        format!(
            "{} (after WasmMaxMemory, {}, refused it memory)",
            e.message,
            crate::limits::human_size(limits.max_memory as u64)
        ),
    )
}
