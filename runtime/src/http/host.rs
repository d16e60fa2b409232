//! What a component may import: WASI 0.2 and 0.3 (clocks, random, the CLI
//! world's environment, arguments and stdio, the filesystem of its
//! preopened directories) and `wasi:http`, whose outgoing requests are
//! refused: a guest gets no network, as a CGI module gets none.

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::Engine;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::error::{chain, Code, Error, Result};
use crate::limits::MemoryCap;

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
    hooks: NoOutgoing,
}

impl HttpHost {
    /// State for one instance.
    pub(crate) fn new(wasi: WasiCtx, table: ResourceTable, limits: MemoryCap) -> Self {
        HttpHost {
            wasi,
            http: WasiHttpCtx::new(),
            table,
            limits,
            hooks: NoOutgoing,
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
            hooks: &mut self.hooks,
        }
    }
}

/// `wasi:http` hooks that refuse every outgoing request.
struct NoOutgoing;

impl WasiHttpHooks for NoOutgoing {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<
            dyn std::future::Future<Output = std::result::Result<(), wasmtime_wasi_http::Error>>
                + Send,
        >,
    ) -> Box<
        dyn std::future::Future<
                Output = std::result::Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<
                            dyn std::future::Future<
                                    Output = std::result::Result<(), wasmtime_wasi_http::Error>,
                                > + Send,
                        >,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
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
