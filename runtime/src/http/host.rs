//! What a component may import: WASI 0.2 and 0.3 (clocks, random, the CLI
//! world's environment, arguments and stdio, the filesystem of its
//! preopened directories) and `wasi:http`, whose outgoing requests go only
//! where `WasmAllowOutbound` allows (`outbound.rs`): by default a guest gets
//! no network, as a CGI module gets none.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::Engine;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::client;
use super::outbound::{self, Target};
use crate::error::{chain, Code, Error, Result};
use crate::limits::MemoryCap;

/// Refused outgoing requests one request logs at most: a guest calling in a
/// loop must not write a log line per call.
const MAX_NOTES: usize = 8;

/// The state of a component's store: one request's, or with
/// `WasmInstanceReuse` several requests' in turn.
pub struct HttpHost {
    /// The guest's WASI context: arguments, environment, stdio, preopens.
    pub wasi: WasiCtx,
    /// `wasi:http`'s context.
    pub http: WasiHttpCtx,
    /// The resources the guest holds (requests, bodies, streams, files).
    pub table: ResourceTable,
    /// `WasmMaxMemory` of its instance.
    pub(crate) limits: MemoryCap,
    /// Where its outgoing requests may go, for the request it serves.
    pub(crate) outbound: Outbound,
}

impl HttpHost {
    /// State for one instance.
    pub(crate) fn new(wasi: WasiCtx, table: ResourceTable, limits: MemoryCap) -> Self {
        HttpHost {
            wasi,
            http: WasiHttpCtx::new(),
            table,
            limits,
            outbound: Outbound::default(),
        }
    }
}

impl WasiView for HttpHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpHost {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// `wasi:http` hooks: each outgoing request is checked against the
/// section's `WasmAllowOutbound` patterns, then sent (`client.rs`) or
/// refused with `HTTP-request-denied` and noted for the error log.
#[derive(Default)]
pub(crate) struct Outbound {
    /// The request being served (`None` before and after: nothing allowed).
    serving: Option<Serving>,
    notes: Notes,
}

/// What bounds the outgoing requests of the request being served.
struct Serving {
    /// Its section's `WasmAllowOutbound` patterns.
    allowed: Vec<String>,
    deadline: Instant,
    /// Dropped when the request ends: every outgoing request it made, and
    /// its connection, ends with it (a kept instance must not carry one
    /// into a later request).
    lifetime: tokio::sync::watch::Sender<()>,
    /// Its outgoing requests at once.
    at_once: Arc<tokio::sync::Semaphore>,
}

impl Outbound {
    /// The hooks for one request: its section's patterns, its deadline,
    /// and where refusals are noted (outside the store, which a timeout
    /// drops).
    pub(crate) fn new(
        allowed: &[std::borrow::Cow<'_, str>],
        deadline: Instant,
        notes: &Notes,
    ) -> Outbound {
        Outbound {
            serving: Some(Serving {
                allowed: allowed.iter().map(|p| p.to_string()).collect(),
                deadline,
                lifetime: tokio::sync::watch::channel(()).0,
                at_once: Arc::new(tokio::sync::Semaphore::new(client::PER_REQUEST)),
            }),
            notes: notes.clone(),
        }
    }

    /// Ends every outgoing request the request made: what the guest kept
    /// of them fails from now on, and it may make no more.
    pub(crate) fn end(&mut self) {
        self.serving = None;
    }

    fn refuse(&mut self, note: String) -> Box<dyn Future<Output = SendResult> + Send> {
        self.notes.add(note);
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// What the error log should say about one request's outgoing requests:
/// each one refused, up to [`MAX_NOTES`].
#[derive(Default, Clone)]
pub(crate) struct Notes(Arc<Mutex<(Vec<String>, usize)>>);

impl Notes {
    fn add(&self, note: String) {
        let mut n = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match n.0.len() < MAX_NOTES {
            true => n.0.push(note),
            false => n.1 += 1,
        }
    }

    /// The notes so far, with a line for those beyond [`MAX_NOTES`].
    pub(crate) fn take(&self) -> Vec<String> {
        let mut n = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut notes = std::mem::take(&mut n.0);
        if n.1 > 0 {
            notes.push(format!("{} more outgoing requests refused", n.1));
            n.1 = 0;
        }
        notes
    }
}

type SendResult = std::result::Result<client::Sent, wasmtime_wasi_http::Error>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = std::result::Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        // Only the scheme, host and port are logged: a path or query may
        // carry a token.
        let target = match Target::of(request.uri()) {
            Ok(t) => t,
            Err(why) => return self.refuse(format!("an outgoing request was refused: {why}")),
        };
        let Some(serving) = self.serving.as_ref().filter(|s| !s.allowed.is_empty()) else {
            return self.refuse(format!(
                "outgoing request to {target} refused: no WasmAllowOutbound allows any here"
            ));
        };
        if outbound::allowed(&serving.allowed, &target).is_none() {
            let list = serving.allowed.join(" ");
            return self.refuse(format!(
                "outgoing request to {target} refused: not allowed by WasmAllowOutbound {list}"
            ));
        }
        let budget = client::Budget {
            at_once: serving.at_once.clone(),
            ended: serving.lifetime.subscribe(),
            deadline: serving.deadline,
        };
        Box::new(client::send(target, request, options, budget))
    }

    // The Host header is the checked target's (client.rs), not the
    // guest's authority text.
    fn set_host_header(&mut self) -> bool {
        false
    }
}

/// A linker with WASI 0.2 and `wasi:http` 0.2 (async bindings: a request
/// runs as one future, see `serve.rs`) and, on an engine with the component
/// model's concurrency, WASI 0.3 and `wasi:http` 0.3 as well. Both, because
/// a 0.3 component may import 0.2 interfaces too: componentize-py's does,
/// for its C library.
pub fn linker(engine: &Engine) -> Result<Linker<HttpHost>> {
    let mut linker = Linker::new(engine);
    let internal = |e: wasmtime::Error| Error::new(Code::Internal, chain(&e));
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
        .map_err(internal)?;
    if engine.get_concurrency_support() {
        wasmtime_wasi::p3::add_to_linker(&mut linker)
            .and_then(|()| wasmtime_wasi_http::p3::add_to_linker(&mut linker))
            .map_err(internal)?;
    }
    Ok(linker)
}
