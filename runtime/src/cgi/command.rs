//! A command module as loaded into one engine: its imports resolved and its
//! entry point found once, so that a request only instantiates and calls.

use wasmtime::TypedFunc;
use wasmtime::{Engine, ExternType, Instance, InstancePre, Linker, Module, ModuleExport, Store};

use super::environ;
use super::host::{self, Host};
use crate::error::{chain, Code, Error, Result};
use crate::runtime::{load_module, ModuleSpec};

/// The name of the entry point of a WASI command.
pub(crate) const START: &str = "_start";

/// Size of a WebAssembly memory page.
const WASM_PAGE: u64 = 64 << 10;

/// A command module ready to instantiate.
pub struct Command {
    /// Imports resolved once; instantiating from it is a table copy.
    pub(crate) pre: InstancePre<Host>,
    /// `_start`, found and type-checked once, so that a request does not
    /// look the entry up by name (`None`: the module has no such command
    /// entry; a request that names it fails with the reason).
    start: Option<ModuleExport>,
    /// Whether the module imports WASI's environment calls. One that does
    /// not can never see an environment, so the server need not build it.
    pub(crate) reads_env: bool,
}

impl Command {
    /// Loads `spec` into `engine` and resolves its imports with `linker`;
    /// also returns the bytes of memory the module starts with.
    pub(crate) fn load(
        engine: &Engine,
        linker: &Linker<Host>,
        spec: &ModuleSpec,
    ) -> Result<(Command, u64)> {
        // The probe engine loaded it already (see `runtime.rs`): an error
        // here is this pool's own validation of the module's needs.
        let module = load_module(engine, spec).map_err(|e| {
            Error::new(
                e.code,
                format!(
                    "{} does not fit the instance pool: {}",
                    spec.name, e.message
                ),
            )
        })?;
        let linker = if spec.trap_unknown_imports {
            host::with_trapping_imports(linker.clone(), &module)
                .map_err(|e| Error::new(e.code, format!("{}: {}", spec.name, e.message)))?
        } else {
            linker.clone()
        };
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| Error::new(Code::Link, format!("{}: {}", spec.name, chain(&e))))?;
        let pages = module.resources_required().max_initial_memory_size;
        let command = Command {
            pre,
            start: command_entry(&module),
            reads_env: environ::imported_by(&module),
        };
        Ok((command, pages.unwrap_or(0).saturating_mul(WASM_PAGE)))
    }

    /// The function a request calls: `_start` through the export resolved
    /// when the module was loaded, any other entry by name.
    pub(crate) fn entry_func(
        &self,
        instance: Instance,
        store: &mut Store<Host>,
        entry: &str,
    ) -> wasmtime::Result<TypedFunc<(), ()>> {
        if entry == START {
            if let Some(func) = self
                .start
                .as_ref()
                .and_then(|e| instance.get_module_export(&mut *store, e))
                .and_then(|e| e.into_func())
            {
                // SAFETY: `start` is only set for a `_start` of type
                // `() -> ()`, and `get_module_export` returns `None` for an
                // instance of any other module (it compares module ids).
                return Ok(unsafe { TypedFunc::new_unchecked(&*store, func) });
            }
        }
        instance.get_typed_func::<(), ()>(store, entry)
    }
}

/// `_start` when the module exports it as a function of no arguments and no
/// results, the only type a request calls.
fn command_entry(module: &Module) -> Option<ModuleExport> {
    match module.get_export(START)? {
        ExternType::Func(ty) if ty.params().len() == 0 && ty.results().len() == 0 => {
            module.get_export_index(START)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(wat: &str) -> Module {
        Module::new(&Engine::default(), wat::parse_str(wat).unwrap()).unwrap()
    }

    #[test]
    fn only_a_start_of_no_arguments_and_no_results_is_resolved_ahead() {
        assert!(command_entry(&module(r#"(module (func (export "_start")))"#)).is_some());
        assert!(
            command_entry(&module(r#"(module (func (export "_start") (param i32)))"#)).is_none()
        );
        assert!(command_entry(&module(r#"(module (func (export "main")))"#)).is_none());
        assert!(command_entry(&module(
            r#"(module (global (export "_start") i32 (i32.const 0)))"#
        ))
        .is_none());
    }
}
