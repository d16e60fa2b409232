//! The per-child runtime: pooled engines (one per shard), their epoch
//! ticker, and one `InstancePre` per configured module in each, shared by
//! every worker thread.

use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::{Engine, ExternType, InstancePre, Linker, Module, ModuleExport};

use crate::cache::Entry;
use crate::engine::{format_size, pool_reservation, runtime_engine, Flavor, PoolSize, Ticker};
use crate::environ;
use crate::error::{chain, Code, Error, Result};
use crate::host::{self, Host};
use crate::shard::{auto_shards, split, take, HomeShards, SlotCounter};
use crate::status::ShardStatus;

/// A module to load into a child: its cache entry and a name for log lines.
#[derive(Debug, Clone)]
pub struct ModuleSpec {
    /// The `.cwasm` produced by [`crate::cache::precompile`]: loaded from
    /// its open file when it has one, else by name.
    pub cwasm: Entry,
    /// How logs refer to the module (normally the `.wasm` path).
    pub name: String,
    /// Link imports mod_wasm does not provide as trapping functions.
    pub trap_unknown_imports: bool,
}

/// A module ready to instantiate.
pub struct Loaded {
    /// How logs refer to the module.
    pub name: String,
    /// Imports resolved once; instantiating from it is a table copy.
    pub pre: InstancePre<Host>,
    /// Bytes of linear memory the module starts with.
    pub min_memory: u64,
    /// `_start`, found and type-checked once, so that a request does not
    /// look the entry up by name (`None`: the module has no such command
    /// entry; a request that names it fails with the reason).
    pub(crate) start: Option<ModuleExport>,
    /// Whether the module imports WASI's environment calls. One that does
    /// not can never see an environment, so the server need not build it.
    pub(crate) reads_env: bool,
}

/// Everything a child process needs to run requests.
///
/// The instance pool is split into shards (see `shard.rs`), each an engine
/// with its own pool and its own copy of every module; a request runs in the
/// shard of the CPU it runs on.
pub struct Runtime {
    pub(crate) shards: Vec<Shard>,
    homes: HomeShards,
    /// Whether epochs (and so timeouts) are on.
    pub(crate) epochs: bool,
    /// Requests turned away because every slot was busy.
    exhausted: AtomicU64,
    _ticker: Option<Ticker>,
}

/// One engine, the modules loaded into it, and its share of the slots.
pub(crate) struct Shard {
    pub(crate) engine: Engine,
    /// An `InstancePre` belongs to one engine: each shard has its own.
    pub(crate) modules: Vec<Loaded>,
    counter: SlotCounter,
}

impl AsRef<SlotCounter> for Shard {
    fn as_ref(&self) -> &SlotCounter {
        &self.counter
    }
}

/// A slot held in a shard for the length of one request; only
/// [`Runtime::lease`] makes one, after taking the slot.
pub(crate) struct Lease<'a> {
    shard: &'a Shard,
}

impl<'a> Lease<'a> {
    /// The shard the slot is in.
    pub(crate) fn shard(&self) -> &'a Shard {
        self.shard
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.shard.counter.give_back();
    }
}

impl Runtime {
    /// Loads `specs` into pooled engines with `slots` instance slots in all:
    /// the most requests this process can run at once.
    ///
    /// # Errors
    /// [`Code::Io`] / [`Code::Compile`] when a cache entry cannot be loaded,
    /// [`Code::Link`] when a module's imports cannot be satisfied,
    /// [`Code::Internal`] when the pool cannot be reserved.
    pub fn new(specs: &[ModuleSpec], slots: u32) -> Result<Runtime> {
        Runtime::new_flavored(specs, slots, Flavor::default())
    }

    /// [`Runtime::new`] for an engine variant (benchmarks); modules must
    /// have been compiled for the same variant.
    pub fn new_flavored(specs: &[ModuleSpec], slots: u32, flavor: Flavor) -> Result<Runtime> {
        Runtime::new_sharded(specs, slots, None, flavor)
    }

    /// [`Runtime::new_flavored`] with the pool split into `shards` engines
    /// (`None`: [`auto_shards`]; never more shards than slots). The slots
    /// are spread over the shards, adding up to exactly `slots`.
    ///
    /// # Errors
    /// As [`Runtime::new`].
    pub fn new_sharded(
        specs: &[ModuleSpec],
        slots: u32,
        shards: Option<u32>,
        flavor: Flavor,
    ) -> Result<Runtime> {
        Runtime::build(specs, slots, shards, flavor).map_err(|e| e.error)
    }

    /// [`Runtime::new_sharded`], telling which module a failure is about.
    ///
    /// This is also the configuration-time check of what every child will
    /// do (in a throw-away process: see
    /// [`crate::isolate::check_isolated`]): a module that does not fit the
    /// pool, an import of the wrong type, and a pool the process cannot
    /// reserve fail there rather than in each child.
    ///
    /// # Errors
    /// As [`Runtime::new`], with the index of the module at fault, or none
    /// when the instance pool itself cannot be reserved (the message then
    /// says how much address space it needs).
    pub fn build(
        specs: &[ModuleSpec],
        slots: u32,
        shards: Option<u32>,
        flavor: Flavor,
    ) -> std::result::Result<Runtime, BuildError> {
        let pool = pool_for(specs, flavor)?;
        let shares = split(slots, shards.unwrap_or_else(|| auto_shards(slots)));
        let count = shares.len();
        let shards = shares
            .iter()
            .enumerate()
            .map(|(i, &share)| {
                let size = PoolSize {
                    slots: share,
                    ..pool
                };
                let engine = runtime_engine(&size, flavor)
                    .map_err(|e| BuildError::pool(pool_failure(&pool, &shares, flavor, e)))?;
                Shard::new(engine, specs, share).map_err(|mut e| {
                    if count > 1 {
                        e.error.message =
                            format!("shard {} of {count}: {}", i + 1, e.error.message);
                    }
                    e
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let ticker = if flavor.epochs {
            Some(Ticker::start(shards.iter().map(|s| &s.engine)).map_err(BuildError::pool)?)
        } else {
            None
        };
        Ok(Runtime {
            homes: HomeShards::new(count),
            shards,
            epochs: flavor.epochs,
            exhausted: AtomicU64::new(0),
            _ticker: ticker,
        })
    }

    /// A slot for one request: in the shard of the calling thread's CPU,
    /// or in the next one with a free slot; `None` when all are busy.
    pub(crate) fn lease(&self) -> Option<Lease<'_>> {
        let lease = take(&self.shards, self.homes.current()).map(|shard| Lease { shard });
        if lease.is_none() {
            self.exhausted.fetch_add(1, Ordering::Relaxed);
        }
        lease
    }

    /// Slots in all shards: the most requests this child runs at once.
    pub fn slots(&self) -> u32 {
        self.shards.iter().map(|s| s.counter.slots()).sum()
    }

    /// Requests turned away so far because every slot was busy.
    pub fn exhausted(&self) -> u64 {
        self.exhausted.load(Ordering::Relaxed)
    }

    /// Each shard's slots, slots in use and requests served, in shard order.
    pub fn shard_status(&self) -> Vec<ShardStatus> {
        self.shards
            .iter()
            .map(|s| ShardStatus {
                slots: s.counter.slots(),
                busy: s.counter.busy(),
                served: s.counter.taken(),
            })
            .collect()
    }

    /// Number of modules loaded.
    pub fn module_count(&self) -> usize {
        self.shards[0].modules.len()
    }

    /// Module `index` as loaded into the first shard (every shard has the
    /// same modules), for what does not depend on the engine.
    pub(crate) fn module(&self, index: usize) -> Option<&Loaded> {
        self.shards[0].modules.get(index)
    }
}

impl Shard {
    /// `engine`, whose pool has `slots` slots, with every module in it.
    fn new(
        engine: Engine,
        specs: &[ModuleSpec],
        slots: u32,
    ) -> std::result::Result<Shard, BuildError> {
        let linker = host::linker(&engine).map_err(BuildError::pool)?;
        let modules = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                Shard::link(&engine, &linker, spec).map_err(|error| BuildError {
                    module: Some(i),
                    error,
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Shard {
            engine,
            modules,
            counter: SlotCounter::new(slots),
        })
    }

    /// Loads `spec` into `engine` and resolves its imports once.
    fn link(engine: &Engine, linker: &Linker<Host>, spec: &ModuleSpec) -> Result<Loaded> {
        // The probe engine loaded it already (see `pool_for`): an error here
        // is this pool's own validation of the module's needs.
        let module = load(engine, spec).map_err(|e| {
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
        Ok(Loaded {
            name: spec.name.clone(),
            pre,
            min_memory: pages.unwrap_or(0).saturating_mul(WASM_PAGE),
            start: command_entry(&module),
            reads_env: environ::imported_by(&module),
        })
    }
}

/// Why [`Runtime::build`] failed.
#[derive(Debug)]
pub struct BuildError {
    /// Index (in the specs) of the module at fault; `None` when no module
    /// is (above all: the instance pool cannot be reserved).
    pub module: Option<usize>,
    /// What went wrong.
    pub error: Error,
}

impl BuildError {
    /// A failure that is no module's fault.
    fn pool(error: Error) -> BuildError {
        BuildError {
            module: None,
            error,
        }
    }
}

/// The pool sizes `specs` need, read from the modules themselves: loading
/// them needs an engine, so they are loaded into a probe engine first. The
/// probe allocates on demand: it never instantiates, and a pool roomy
/// enough for any module would reserve more address space (16 GiB) than the
/// real pool of a small child, and fail first under a `ulimit -v`. The
/// allocation strategy is not part of what makes a `.cwasm` loadable.
fn pool_for(specs: &[ModuleSpec], flavor: Flavor) -> std::result::Result<PoolSize, BuildError> {
    let on_demand = Flavor {
        pooling: false,
        ..flavor
    };
    let probe = runtime_engine(&PoolSize::with_slots(1), on_demand).map_err(BuildError::pool)?;
    let mut pool = PoolSize::with_slots(1);
    for (i, spec) in specs.iter().enumerate() {
        let module = load(&probe, spec).map_err(|error| BuildError {
            module: Some(i),
            error,
        })?;
        let need = module.resources_required();
        pool.max_memories_per_module = pool.max_memories_per_module.max(need.num_memories);
        pool.max_tables_per_module = pool.max_tables_per_module.max(need.num_tables);
        if let Some(t) = need.max_initial_table_size {
            pool.table_elements = pool.table_elements.max(t as usize);
        }
    }
    Ok(pool)
}

/// `cause`, the failure to create the engine of one of the shards (with
/// `shares` slots each, sized like `pool`), with the address space all of
/// them need: the pooling allocator reserves every slot's memory up front
/// (about 4 GiB each), so too many slots, or a `ulimit -v`, make it fail.
fn pool_failure(pool: &PoolSize, shares: &[u32], flavor: Flavor, cause: Error) -> Error {
    let slots: u32 = shares.iter().sum();
    let in_shards = match shares.len() {
        1 => String::new(),
        n => format!(" in {n} shards"),
    };
    let need = match pool_reservation(pool, shares, flavor) {
        Some(r) => format!(
            " needs about {} of address space ({} per slot)",
            format_size(r.total),
            format_size(r.per_slot)
        ),
        None => " cannot be reserved".to_string(),
    };
    Error::new(
        cause.code,
        format!(
            "an instance pool of {slots} slots{in_shards}{need}, more than this process \
             could reserve (ulimit -v: {}): {}",
            address_space_limit(),
            cause.message
        ),
    )
}

/// `ulimit -v` of this process, in words.
fn address_space_limit() -> String {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return "unlimited".to_string();
    }
    format_size(limit.rlim_cur)
}

impl Runtime {
    /// Whether module `index` can read its environment (see
    /// [`Loaded::reads_env`]); `None` when there is no such module.
    pub fn module_reads_env(&self, index: usize) -> Option<bool> {
        self.module(index).map(|m| m.reads_env)
    }
}

/// The name of the entry point of a WASI command.
pub(crate) const START: &str = "_start";

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

/// Size of a WebAssembly memory page.
const WASM_PAGE: u64 = 64 << 10;

/// Loads a cache entry: from the file the parent opened and checked when
/// there is one (a duplicate of it: Wasmtime keeps the file it is given),
/// else by name.
fn load(engine: &Engine, spec: &ModuleSpec) -> Result<Module> {
    let entry = &spec.cwasm;
    let loaded = match &entry.file {
        // SAFETY: the parent checked this file against the digest recorded
        // when `cache::precompile` wrote it, and entries are never
        // rewritten in place; Wasmtime still checks the header against
        // this engine.
        Some(file) => file
            .try_clone()
            .map_err(wasmtime::Error::from)
            .and_then(|f| unsafe { Module::deserialize_open_file(engine, f) }),
        // SAFETY: as above, less the check: callers without an open file
        // (tests, benchmarks) trust the directory.
        None => unsafe { Module::deserialize_file(engine, &entry.path) },
    };
    loaded.map_err(|e| {
        Error::new(
            Code::Compile,
            format!(
                "cannot load {} ({}): {}",
                entry.path.display(),
                spec.name,
                chain(&e)
            ),
        )
    })
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
