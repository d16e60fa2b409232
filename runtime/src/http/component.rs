//! A `wasi:http` component as loaded into one engine: its imports resolved
//! and its handler found once (`wasi:http/incoming-handler` of WASI 0.2 or
//! `wasi:http/handler` of WASI 0.3), so that a request only instantiates
//! and calls.

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, ResourcesRequired};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use super::host::HttpHost;
use crate::error::{chain, Code, Error, Result};
use crate::runtime::{load_failure, with_entry_path, ModuleSpec};

/// The 0.2 handler, in any 0.2 version.
pub(crate) const HANDLER_P2: &str = "wasi:http/incoming-handler@0.2";

/// The 0.3 handler. Wasmtime finds any 0.3 version by this name (never a
/// pre-release: a `0.3.0-rc` guest is refused at configuration time).
pub(crate) const HANDLER_P3: &str = "wasi:http/handler@0.3.0";

/// A component ready to instantiate.
pub struct Proxy {
    /// Imports resolved and the handler found once.
    pub(crate) pre: Handler,
}

/// The handler a component exports, found when it is loaded.
pub(crate) enum Handler {
    /// `wasi:http/incoming-handler@0.2.x`, called with a request and an
    /// outparam the guest sets its response in.
    P2(ProxyPre<HttpHost>),
    /// `wasi:http/handler@0.3.x`, an async function from a request to a
    /// response.
    P3(ServicePre<HttpHost>),
}

/// An instance's exports, kept with its store between requests.
pub(crate) enum Bindings {
    /// Of a 0.2 component.
    P2(wasmtime_wasi_http::p2::bindings::Proxy),
    /// Of a 0.3 component.
    P3(wasmtime_wasi_http::p3::bindings::Service),
}

impl Proxy {
    /// Loads `spec` into `engine` and resolves it with `linker`; also
    /// returns the bytes of memory its instances start with.
    pub(crate) fn load(
        engine: &Engine,
        linker: &Linker<HttpHost>,
        spec: &ModuleSpec,
    ) -> Result<(Proxy, u64)> {
        let component = load_component(engine, spec)?;
        let pre = handler_pre(linker, &component, &spec.name)?;
        let pages = component
            .resources_required()
            .and_then(|r| r.max_initial_memory_size)
            .unwrap_or(0);
        Ok((Proxy { pre }, pages.saturating_mul(64 << 10)))
    }
}

/// What one instance of the component in `spec` needs of the pool.
pub(crate) fn resources_required(engine: &Engine, spec: &ModuleSpec) -> Result<ResourcesRequired> {
    let component = load_component(engine, spec)?;
    component.resources_required().ok_or_else(|| {
        Error::new(
            Code::Link,
            format!(
                "{}: the component imports core modules, which mod_wasm does not provide",
                spec.name
            ),
        )
    })
}

/// `component` linked, with its handler found: the 0.3 one when it exports
/// both.
fn handler_pre(linker: &Linker<HttpHost>, component: &Component, name: &str) -> Result<Handler> {
    let pre = linker.instantiate_pre(component).map_err(|e| {
        Error::new(
            Code::Link,
            format!(
                "{name}: the component imports what mod_wasm does not provide: {}",
                chain(&e)
            ),
        )
    })?;
    let p3 = component.get_export_index(None, HANDLER_P3).is_some();
    let found = match p3 {
        true => ServicePre::new(pre).map(Handler::P3),
        false => ProxyPre::new(pre).map(Handler::P2),
    };
    found.map_err(|e| {
        let what = match p3 {
            true => format!("its {HANDLER_P3} export is not wasi:http 0.3's handler"),
            false => format!(
                "the component exports neither {HANDLER_P2}.x nor {HANDLER_P3} (exports: {})",
                exports(component)
            ),
        };
        Error::new(Code::Link, format!("{name}: {what}: {}", chain(&e)))
    })
}

/// Whether `wasm` is a component that exports the 0.3 handler, and so needs
/// an engine with the component model's concurrency
/// ([`crate::engine::EngineOptions::concurrency`]). Read from the binary's
/// top-level exports, without compiling: the server decides its engines'
/// settings from every configured module before it compiles any.
pub fn needs_concurrency(wasm: &[u8]) -> bool {
    use wasmtime::wasmparser::{Parser, Payload};
    // 0.3.x, as Wasmtime finds the export: never a pre-release.
    let is_p3 = |name: &str| {
        name.strip_prefix("wasi:http/handler@0.3.")
            .is_some_and(|patch| !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()))
    };
    // Each module and component, nested ones too, starts with its version
    // and ends with its end.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload {
            Ok(Payload::Version { .. }) => depth += 1,
            Ok(Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(Payload::ComponentExportSection(exports)) if depth == 1 => {
                if exports.into_iter().flatten().any(|e| is_p3(e.name.name)) {
                    return true;
                }
            }
            Ok(_) => {}
            // Not ours to report: compiling it says what is wrong.
            Err(_) => return false,
        }
    }
    false
}

/// The names a component exports, for messages.
fn exports(component: &Component) -> String {
    let engine = component.engine();
    let names: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Checks, at configuration time, that `component` links and exports a
/// handler (see [`crate::cache::precompile`]).
///
/// # Errors
/// [`Code::Link`] naming what is missing.
pub fn check_component(engine: &Engine, component: &Component, name: &str) -> Result<()> {
    handler_pre(&super::host::linker(engine)?, component, name).map(drop)
}

/// Loads a cache entry holding a component, from the file the parent
/// opened and checked when there is one (Wasmtime maps components by path
/// only: see `runtime::with_entry_path`), else by name.
fn load_component(engine: &Engine, spec: &ModuleSpec) -> Result<Component> {
    // SAFETY: as for modules (see `runtime::load_module`): the parent
    // checked this file against its digest and entries are never rewritten
    // in place; without an open file, callers trust the directory.
    with_entry_path(spec, |path| unsafe {
        Component::deserialize_file(engine, path)
    })
    .map_err(|e| load_failure(spec, &e))
}
