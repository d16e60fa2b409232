//! The per-child runtime: pooled engines (one per shard), their epoch
//! ticker, and every configured module loaded into each, shared by every
//! worker thread; and what every request goes through before its module's
//! executor runs it (see `executor.rs`): the module found, its memory
//! checked against the request's limit, a slot leased.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::{Engine, Module, Precompiled, Store};

use crate::cache::Entry;
use crate::engine::{
    deadline_ticks, format_size, pool_reservation, runtime_engine, while_dumpable, EngineOptions,
    PoolSize, Ticker, KEEP_RESIDENT,
};
use crate::error::{chain, Code, Error, Result};
use crate::executor::{Kind, Linkers, Loaded};
use crate::http::{Kept, Shelf};
use crate::limits::{human_size, Limits};
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

/// How a child's runtime is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Instance slots in all shards: the most requests the child runs at
    /// once (`WasmPoolSlots`).
    pub slots: u32,
    /// Engines the slots are spread over (`WasmPoolShards`); `None`: one
    /// per CPU ([`auto_shards`]). Never more shards than slots.
    pub shards: Option<u32>,
    /// Engine variant (benchmarks; production uses the default).
    pub engine: EngineOptions,
    /// Bytes of each memory and table a slot keeps resident between
    /// instances (`WasmPoolKeepResident`); `None`: [`KEEP_RESIDENT`].
    pub keep_resident: Option<usize>,
}

impl RuntimeOptions {
    /// `slots` slots, shards and engine as in production.
    pub fn with_slots(slots: u32) -> RuntimeOptions {
        RuntimeOptions {
            slots,
            shards: None,
            engine: EngineOptions::default(),
            keep_resident: None,
        }
    }
}

/// Everything a child process needs to run requests.
///
/// The instance pool is split into shards (see `shard.rs`), each an engine
/// with its own pool and its own copy of every module; a request runs in the
/// shard of the CPU it runs on.
pub struct Runtime {
    shards: Vec<Shard>,
    homes: HomeShards,
    /// Whether epochs (and so timeouts) are on.
    epochs: bool,
    /// Requests turned away because every slot was busy.
    exhausted: AtomicU64,
    _ticker: Option<Ticker>,
}

/// One engine, the modules loaded into it, and its share of the slots.
pub(crate) struct Shard {
    pub(crate) engine: Engine,
    /// What a module loads into belongs to one engine: each shard has its
    /// own copy of every module.
    modules: Vec<Loaded>,
    counter: SlotCounter,
    /// Component instances kept for reuse, each holding one slot.
    shelf: Shelf,
}

impl AsRef<SlotCounter> for Shard {
    fn as_ref(&self) -> &SlotCounter {
        &self.counter
    }
}

/// A slot held in a shard for the length of one request; only
/// [`Runtime::lease`] and [`Runtime::lease_reusing`] make one, after taking
/// the slot.
pub(crate) struct Lease<'a> {
    shard: &'a Shard,
}

impl<'a> Lease<'a> {
    /// The engine of the shard the slot is in.
    pub(crate) fn engine(&self) -> &'a Engine {
        &self.shard.engine
    }

    /// Module `index` as loaded into the slot's shard.
    pub(crate) fn module(&self, index: usize) -> &'a Loaded {
        &self.shard.modules[index]
    }
}

impl Lease<'_> {
    /// Keeps `kept` in the slot's shard for a later request; the slot stays
    /// taken until a request takes the instance or evicts it.
    pub(crate) fn keep(self, kept: Kept) {
        self.shard.shelf.put(kept);
        // The slot now belongs to the kept instance: not given back.
        std::mem::forget(self);
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.shard.counter.give_back();
    }
}

impl Runtime {
    /// Loads `specs` into pooled engines as `options` say.
    ///
    /// # Errors
    /// [`Code::Io`] / [`Code::Compile`] when a cache entry cannot be loaded,
    /// [`Code::Link`] when a module's imports cannot be satisfied,
    /// [`Code::Internal`] when the pool cannot be reserved.
    pub fn new(specs: &[ModuleSpec], options: &RuntimeOptions) -> Result<Runtime> {
        Runtime::build(specs, options).map_err(|e| e.error)
    }

    /// [`Runtime::new`], telling which module a failure is about.
    ///
    /// This is also the configuration-time check of what every child will
    /// do (in a throw-away process: see [`crate::forked::check_forked`]): a
    /// module that does not fit the pool, an import of the wrong type, and a
    /// pool the process cannot reserve fail there rather than in each child.
    ///
    /// # Errors
    /// As [`Runtime::new`], with the index of the module at fault, or none
    /// when the instance pool itself cannot be reserved (the message then
    /// says how much address space it needs).
    pub fn build(
        specs: &[ModuleSpec],
        options: &RuntimeOptions,
    ) -> std::result::Result<Runtime, BuildError> {
        let engine_options = options.engine;
        let slots = options.slots;
        let (pool, kinds) = pool_for(specs, engine_options)?;
        let shares = split(slots, options.shards.unwrap_or_else(|| auto_shards(slots)));
        let count = shares.len();
        let shards = shares
            .iter()
            .enumerate()
            .map(|(i, &share)| {
                let size = PoolSize {
                    slots: share,
                    keep_resident: options.keep_resident.unwrap_or(KEEP_RESIDENT),
                    ..pool
                };
                let engine = runtime_engine(&size, engine_options).map_err(|e| {
                    BuildError::pool(pool_failure(&pool, &shares, engine_options, e))
                })?;
                Shard::new(engine, specs, &kinds, share).map_err(|mut e| {
                    if count > 1 {
                        e.error.message =
                            format!("shard {} of {count}: {}", i + 1, e.error.message);
                    }
                    e
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let ticker = if engine_options.epochs {
            Some(Ticker::start(shards.iter().map(|s| &s.engine)).map_err(BuildError::pool)?)
        } else {
            None
        };
        Ok(Runtime {
            homes: HomeShards::new(count),
            shards,
            epochs: engine_options.epochs,
            exhausted: AtomicU64::new(0),
            _ticker: ticker,
        })
    }

    /// A slot for one request of module `index` under `limits`: in the
    /// shard of the calling thread's CPU, or in the next one with a free
    /// slot, or else the slot of an instance kept for reuse, which is
    /// dropped.
    ///
    /// # Errors
    /// [`Code::InvalidArgument`] for an unknown module,
    /// [`Code::MemoryLimit`] when the module's memory starts above
    /// `WasmMaxMemory` (instantiating would fail on every request: the
    /// message says what to change), [`Code::PoolExhausted`] when every
    /// slot is busy.
    pub(crate) fn lease(&self, index: usize, limits: &Limits) -> Result<Lease<'_>> {
        let module = self.checked(index, limits)?;
        self.free_slot(&module.name)
    }

    /// [`Runtime::lease`] for a component's request `req`, with the instance
    /// kept for one like it when its section reuses instances
    /// (`WasmInstanceReuse`) and one is kept.
    ///
    /// # Errors
    /// As [`Runtime::lease`].
    pub(crate) fn lease_reusing(
        &self,
        index: usize,
        req: &crate::http::Request<'_>,
    ) -> Result<(Lease<'_>, Option<Kept>)> {
        let module = self.checked(index, &req.limits)?;
        if req.reuse > 1 {
            let home = self.homes.current();
            let n = self.shards.len();
            for shard in (0..n).map(|i| &self.shards[(home + i) % n]) {
                if let Some(kept) = shard.shelf.take(index, req) {
                    shard.counter.count_reuse();
                    return Ok((Lease { shard }, Some(kept)));
                }
            }
        }
        Ok((self.free_slot(&module.name)?, None))
    }

    /// Module `index`, if `limits` let it run.
    fn checked(&self, index: usize, limits: &Limits) -> Result<&Loaded> {
        let module = self.module(index).ok_or_else(|| {
            Error::new(
                Code::InvalidArgument,
                format!("no module with index {index}"),
            )
        })?;
        if module.min_memory > limits.max_memory as u64 {
            return Err(Error::new(
                Code::MemoryLimit,
                format!(
                    "{}: its memory starts at {}, more than WasmMaxMemory ({}) allows; \
                     raise WasmMaxMemory where this module is configured",
                    module.name,
                    human_size(module.min_memory),
                    human_size(limits.max_memory as u64)
                ),
            ));
        }
        Ok(module)
    }

    /// A free slot, or the slot of the instance kept longest (dropped).
    fn free_slot(&self, name: &str) -> Result<Lease<'_>> {
        if let Some(shard) = take(&self.shards, self.homes.current()) {
            return Ok(Lease { shard });
        }
        for shard in &self.shards {
            if let Some(kept) = shard.shelf.evict() {
                drop(kept);
                shard.counter.count_reuse();
                return Ok(Lease { shard });
            }
        }
        self.exhausted.fetch_add(1, Ordering::Relaxed);
        Err(self.pool_exhausted(name))
    }

    /// The error of a request that finds every slot busy.
    pub(crate) fn pool_exhausted(&self, name: &str) -> Error {
        Error::new(
            Code::PoolExhausted,
            format!(
                "{name}: all {} instance slots of this child are busy; raise WasmPoolSlots \
                 or lower the MPM's ThreadsPerChild",
                self.slots()
            ),
        )
    }

    /// Makes `store` trap once `timeout` has passed while the guest
    /// computes (epochs are checked at loop heads and calls; waits in host
    /// calls are the caller's to bound).
    pub(crate) fn arm_deadline<T>(&self, store: &mut Store<T>, timeout: Duration) {
        if self.epochs {
            store.set_epoch_deadline(deadline_ticks(timeout));
            store.epoch_deadline_trap();
        }
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
                kept: s.shelf.len() as u32,
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
    pub fn module(&self, index: usize) -> Option<&Loaded> {
        self.shards[0].modules.get(index)
    }
}

impl Shard {
    /// `engine`, whose pool has `slots` slots, with every module in it
    /// (`kinds[i]`: what `specs[i]` is).
    fn new(
        engine: Engine,
        specs: &[ModuleSpec],
        kinds: &[Kind],
        slots: u32,
    ) -> std::result::Result<Shard, BuildError> {
        let linkers = Linkers::new(&engine, kinds).map_err(BuildError::pool)?;
        let modules = specs
            .iter()
            .zip(kinds)
            .enumerate()
            .map(|(i, (spec, &kind))| {
                Loaded::load(&engine, &linkers, spec, kind).map_err(|error| BuildError {
                    module: Some(i),
                    error,
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Shard {
            engine,
            modules,
            counter: SlotCounter::new(slots),
            shelf: Shelf::default(),
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

/// The pool sizes `specs` need, and what each of them is (read once, for
/// every shard), read from the modules themselves: loading
/// them needs an engine, so they are loaded into a probe engine first. The
/// probe allocates on demand: it never instantiates, and a pool roomy
/// enough for any module would reserve more address space (16 GiB) than the
/// real pool of a small child, and fail first under a `ulimit -v`. The
/// allocation strategy is not part of what makes a `.cwasm` loadable.
fn pool_for(
    specs: &[ModuleSpec],
    engine_options: EngineOptions,
) -> std::result::Result<(PoolSize, Vec<Kind>), BuildError> {
    let on_demand = EngineOptions {
        pooling: false,
        ..engine_options
    };
    let probe = runtime_engine(&PoolSize::with_slots(1), on_demand).map_err(BuildError::pool)?;
    let mut pool = PoolSize::with_slots(1);
    let mut kinds = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let at = |error| BuildError {
            module: Some(i),
            error,
        };
        let kind = entry_kind(spec).map_err(at)?;
        kinds.push(kind);
        let need = match kind {
            Kind::Command => load_module(&probe, spec).map_err(at)?.resources_required(),
            Kind::Http => {
                pool.components = true;
                crate::http::resources_required(&probe, spec).map_err(at)?
            }
        };
        pool.max_memories_per_module = pool.max_memories_per_module.max(need.num_memories);
        pool.max_tables_per_module = pool.max_tables_per_module.max(need.num_tables);
        pool.memories_per_slot = pool.memories_per_slot.max(need.num_memories);
        pool.tables_per_slot = pool.tables_per_slot.max(need.num_tables);
        if let Some(t) = need.max_initial_table_size {
            pool.table_elements = pool.table_elements.max(t as usize);
        }
    }
    Ok((pool, kinds))
}

/// `cause`, the failure to create the engine of one of the shards (with
/// `shares` slots each, sized like `pool`), with the address space all of
/// them need: the pooling allocator reserves every slot's memory up front
/// (about 4 GiB each), so too many slots, or a `ulimit -v`, make it fail.
fn pool_failure(
    pool: &PoolSize,
    shares: &[u32],
    engine_options: EngineOptions,
    cause: Error,
) -> Error {
    let slots: u32 = shares.iter().sum();
    let in_shards = match shares.len() {
        1 => String::new(),
        n => format!(" in {n} shards"),
    };
    let need = match pool_reservation(pool, shares, engine_options) {
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

/// Whether a cache entry holds a command module or a component, read from
/// the entry itself (its open file when it has one).
pub(crate) fn entry_kind(spec: &ModuleSpec) -> Result<Kind> {
    match with_entry_path(spec, |p| Engine::detect_precompiled_file(p)) {
        Ok(Some(Precompiled::Module)) => Ok(Kind::Command),
        Ok(Some(Precompiled::Component)) => Ok(Kind::Http),
        Ok(None) => Err(Error::new(
            Code::Compile,
            format!(
                "cannot load {} ({}): not a compiled module or component",
                spec.cwasm.path.display(),
                spec.name
            ),
        )),
        Err(e) => Err(Error::new(Code::Io, load_failure(spec, &e).message)),
    }
}

/// `f` of a path that opens the entry of `spec`: the open file the parent
/// checked (as `/proc/self/fd/N`) when there is one, else its name.
///
/// A child running as `User` is not dumpable, which makes its
/// `/proc/self/fd` root's: `f` runs with the process made dumpable.
pub(crate) fn with_entry_path<T>(spec: &ModuleSpec, f: impl FnOnce(&Path) -> T) -> T {
    match &spec.cwasm.file {
        Some(file) => {
            let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            while_dumpable(|| f(&path))
        }
        None => f(&spec.cwasm.path),
    }
}

/// The error of a cache entry Wasmtime would not load.
pub(crate) fn load_failure(spec: &ModuleSpec, e: &wasmtime::Error) -> Error {
    Error::new(
        Code::Compile,
        format!(
            "cannot load {} ({}): {}",
            spec.cwasm.path.display(),
            spec.name,
            chain(e)
        ),
    )
}

/// Loads a cache entry: from the file the parent opened and checked when
/// there is one (a duplicate of it: Wasmtime keeps the file it is given),
/// else by name.
pub(crate) fn load_module(engine: &Engine, spec: &ModuleSpec) -> Result<Module> {
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
    loaded.map_err(|e| load_failure(spec, &e))
}
