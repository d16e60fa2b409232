//! A `wasi:http/proxy` component as loaded into one engine: its imports
//! resolved and its `incoming-handler` export found once, so that a request
//! only instantiates and calls.

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, ResourcesRequired};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::host::HttpHost;
use crate::error::{chain, Code, Error, Result};
use crate::runtime::{load_failure, with_entry_path, ModuleSpec};

/// The export a component must have, in any 0.2 version.
pub(crate) const HANDLER: &str = "wasi:http/incoming-handler@0.2";

/// A component ready to instantiate.
pub struct Proxy {
    /// Imports resolved and the handler found once.
    pub(crate) pre: ProxyPre<HttpHost>,
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
        let pre = proxy_pre(linker, &component, &spec.name)?;
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

/// `component` linked, with its handler found.
fn proxy_pre(
    linker: &Linker<HttpHost>,
    component: &Component,
    name: &str,
) -> Result<ProxyPre<HttpHost>> {
    let pre = linker.instantiate_pre(component).map_err(|e| {
        Error::new(
            Code::Link,
            format!(
                "{name}: the component imports what mod_wasm does not provide: {}",
                chain(&e)
            ),
        )
    })?;
    ProxyPre::new(pre).map_err(|e| {
        Error::new(
            Code::Link,
            format!(
                "{name}: the component does not export {HANDLER}.x (exports: {}): {}",
                exports(component),
                chain(&e)
            ),
        )
    })
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
    proxy_pre(&super::host::linker(engine)?, component, name).map(drop)
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
