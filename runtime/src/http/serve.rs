//! One request of a component: a store from the pool (fresh, or one kept
//! from an earlier request), the guest called with its version's caller
//! (`call_p2.rs`, `call_p3.rs`), and what that comes to: the request's
//! result, and whether the instance is kept.
//!
//! The caller's future owns the store and hands it back when the guest is
//! done; when `WasmTimeout` cuts it, the store goes with it, before the
//! lease of its slot.

use std::cell::Cell;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store};
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi::WasiCtxBuilder;

use super::body::IncomingBody;
use super::component::{Bindings, Handler};
use super::host::{HttpHost, Notes, Outbound};
use super::request::Request;
use super::reuse::{Kept, ReuseKey};
use super::send::{sent_result, Sink};
use super::{call_p2, call_p3, Called};
use crate::cgi::{preopen, Outcome};
use crate::error::{Code, Error, Result};
use crate::limits::{MemoryCap, MAX_STDERR};
use crate::outcome::{classify, timed_out};
use crate::pipe::{CappedPipe, Output, Overflow};
use crate::runtime::Runtime;

/// Resources a component may hold at once besides its open files: requests,
/// fields, bodies, streams and pollables.
const HTTP_HANDLES: usize = 1024;

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
        let notes = Notes::default();
        store.data_mut().outbound = Outbound::new(&req.allow_outbound, deadline, &notes);

        let (body, revoke) = IncomingBody::new(req.body, deadline);
        let request = request.map(|()| body);
        let https = req.scheme == "https";
        let sent_bytes = Cell::new(0usize);
        let sink = Sink::new(
            req.head,
            req.output,
            limits.max_output,
            deadline,
            &sent_bytes,
        );
        let call = async {
            match (&proxy.pre, bindings) {
                (Handler::P2(pre), b) => {
                    let kept = b.and_then(|b| match b {
                        Bindings::P2(b) => Some(b),
                        Bindings::P3(_) => None,
                    });
                    call_p2::call(store, pre, kept, request, https, sink).await
                }
                (Handler::P3(pre), b) => {
                    let kept = b.and_then(|b| match b {
                        Bindings::P3(b) => Some(b),
                        Bindings::P2(_) => None,
                    });
                    call_p3::call(store, pre, kept, request, sink, keep).await
                }
            }
        };
        // The timer needs the runtime `in_tokio` enters.
        let joined = in_tokio(async { tokio::time::timeout_at(deadline.into(), call).await });
        // Whatever the guest kept of the request can no longer reach it.
        drop(revoke);
        let (stderr, stderr_truncated) = log.take();
        let (result, exit_code, to_keep) = match joined {
            // The store went with the future, before the lease.
            Err(_) => (Err(timed_out(name, limits.timeout)), -1, None),
            Ok(Err(e)) => (
                Err(Error::new(e.code, format!("{name}: {}", e.message))),
                -1,
                None,
            ),
            Ok(Ok(called)) => conclude(name, called, &limits, keep),
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
            notes: notes.take(),
        }
    }
}

/// An instance that may serve another request: its store and exports.
type Reusable = (Store<HttpHost>, Bindings);

/// What a guest's call comes to: the request's result and exit status,
/// and the instance to keep, if any.
fn conclude(
    name: &str,
    called: Called,
    limits: &crate::limits::Limits,
    keep: bool,
) -> (Result<()>, i32, Option<Reusable>) {
    let Called {
        mut store,
        run,
        sent,
        reusable,
    } = called;
    store.data_mut().outbound.end();
    let refused = store.data_mut().limits.refused();
    let (result, exit_code, bindings) = match (run, sent) {
        (_, sent) if sent.cut() => (sent_result(name, sent, limits), -1, None),
        (Err(e), _) => {
            let (result, code) = classify(name, e, limits);
            let result = result.map_err(|e| match refused {
                true if e.code == Code::Trap => at_memory_cap(e, limits),
                _ => e,
            });
            (result, code, None)
        }
        (Ok(()), sent) => {
            let result = sent_result(name, sent, limits);
            let bindings = reusable.filter(|_| result.is_ok());
            (result, 0, bindings)
        }
    };
    // Only an instance that served its request completely is kept:
    // never one that trapped, timed out or hit a limit.
    let to_keep = match (bindings, keep) {
        (Some(b), true) => Some((store, b)),
        _ => {
            drop(store);
            None
        }
    };
    (result, exit_code, to_keep)
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
