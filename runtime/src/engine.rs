//! Engine configuration, shared by the compiler (Apache parent) and the
//! executing engines (Apache children).
//!
//! A `.cwasm` is only accepted by an engine whose code-generation settings
//! match the ones that produced it, so both sides start from [`base_config`].
//! The allocation strategy is not part of that contract: the compiler uses
//! the on-demand allocator, children use the pooling allocator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::error::{chain, Code, Error, Result};

/// How often the epoch advances. A guest is interrupted within about one
/// tick after its deadline; shorter ticks cost a wake-up per tick per child.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Engine variants. Production uses the default (pooling and epochs on)
/// with `concurrency` as the configured modules need; the others exist so
/// benchmarks can measure what each costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Pooling allocator (true) or on-demand allocation (false).
    pub pooling: bool,
    /// Epoch interruption (true), which `WasmTimeout` needs.
    pub epochs: bool,
    /// The component model's concurrency (`Config::concurrency_support`),
    /// which `wasi:http` 0.3 components need. Off unless one is configured:
    /// it routes every component call through Wasmtime's task machinery,
    /// which costs a 0.2 C hello component about a fifth of its requests
    /// per second (docs/performance.md); command modules do not notice it.
    pub concurrency: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            pooling: true,
            epochs: true,
            concurrency: false,
        }
    }
}

/// Settings every engine shares; they decide whether a `.cwasm` is usable.
pub fn base_config(engine_options: EngineOptions) -> Config {
    let mut config = Config::new();
    // Epochs rather than fuel: a check at loop heads and calls, ~2% on C guests.
    config.epoch_interruption(engine_options.epochs);
    // Interpreters built with exception handling (e.g. MicroPython) need it;
    // it costs nothing for modules that do not use it.
    config.wasm_exceptions(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    config.concurrency_support(engine_options.concurrency);
    config
}

/// What the `.cwasm` files of an engine with `engine_options` on this host
/// depend on, as `key=value` words: the Wasmtime version, the settings
/// that differ between engines, and the CPU features code generation uses.
/// Cache records carry it (see [`crate::digest::Origin`]) so that an entry
/// made by another engine can be refused by what differs; the entry's name
/// holds Wasmtime's own compatibility hash, which is what decides.
pub fn describe(engine_options: EngineOptions) -> String {
    format!(
        "wasmtime={} arch={} epochs={} concurrency={} cpu={}",
        env!("MOD_WASM_WASMTIME_VERSION"),
        std::env::consts::ARCH,
        u8::from(engine_options.epochs),
        u8::from(engine_options.concurrency),
        cpu_features().join(",")
    )
}

/// The features of this CPU that Cranelift's native target detects.
fn cpu_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {
                $(if std::arch::is_x86_feature_detected!($f) {
                    found.push($f);
                })*
            };
        }
        probe!(
            "sse3",
            "ssse3",
            "sse4.1",
            "sse4.2",
            "popcnt",
            "avx",
            "avx2",
            "bmi1",
            "bmi2",
            "lzcnt",
            "fma",
            "cmpxchg16b",
            "avx512bitalg",
            "avx512dq",
            "avx512f",
            "avx512vl",
            "avx512vbmi"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {
                $(if std::arch::is_aarch64_feature_detected!($f) {
                    found.push($f);
                })*
            };
        }
        probe!("lse", "paca", "fp16");
    }
    found
}

/// Why an entry described by `theirs` is not one an engine described by
/// `ours` can use, in words; `None` when the descriptions agree (the
/// difference is then one this description does not cover).
pub fn difference(theirs: &str, ours: &str) -> Option<String> {
    let words = |d: &str| -> Vec<(String, String)> {
        d.split(' ')
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    let (theirs, ours) = (words(theirs), words(ours));
    let get = |set: &[(String, String)], key: &str| {
        set.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut why = Vec::new();
    for key in ["wasmtime", "arch", "epochs", "concurrency"] {
        let (t, o) = (get(&theirs, key), get(&ours, key));
        if t != o {
            why.push(match key {
                "wasmtime" => format!("it was compiled by Wasmtime {t}, this server has {o}"),
                _ => format!("it was compiled with {key}={t}, this server uses {key}={o}"),
            });
        }
    }
    let (t, o) = (get(&theirs, "cpu"), get(&ours, "cpu"));
    let set = |s: &str| -> Vec<String> {
        s.split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let (t, o) = (set(&t), set(&o));
    let missing: Vec<_> = t.iter().filter(|f| !o.contains(f)).cloned().collect();
    let extra: Vec<_> = o.iter().filter(|f| !t.contains(f)).cloned().collect();
    if !missing.is_empty() {
        why.push(format!(
            "it was compiled for a CPU with {}, which this CPU lacks",
            missing.join(", ")
        ));
    }
    if !extra.is_empty() {
        why.push(format!(
            "it was compiled for a CPU without {}, which this CPU has",
            extra.join(", ")
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// The engine the parent compiles with: parallel compilation, no pool.
///
/// Creating it installs Wasmtime's signal handlers in the calling process, so
/// it is only ever created in a short-lived compiler process (see
/// `forked.rs`) or in tests.
pub fn compile_engine(engine_options: EngineOptions) -> Result<Engine> {
    let mut config = base_config(engine_options);
    config.parallel_compilation(true);
    Engine::new(&config).map_err(|e| Error::new(Code::Internal, chain(&e)))
}

/// Sizes of the instance pool of one child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    /// Instance slots: the most requests this child can run at once.
    pub slots: u32,
    /// Largest table (elements) any configured module needs.
    pub table_elements: usize,
    /// Largest instance metadata (`vmctx`) any configured module needs, bytes.
    pub max_core_instance_size: usize,
    /// Most memories any configured module defines.
    pub max_memories_per_module: u32,
    /// Most tables any configured module defines.
    pub max_tables_per_module: u32,
    /// Whether any configured module is a component.
    pub components: bool,
    /// Most memories one instance of any configured module needs (a
    /// component's core instances together).
    pub memories_per_slot: u32,
    /// Most tables one instance of any configured module needs.
    pub tables_per_slot: u32,
    /// Bytes of each memory and table a slot keeps resident between
    /// instances (`WasmPoolKeepResident`).
    pub keep_resident: usize,
}

impl PoolSize {
    /// A pool for `slots` concurrent instances of small modules.
    pub fn with_slots(slots: u32) -> Self {
        PoolSize {
            slots: slots.max(1),
            table_elements: 20_000,
            max_core_instance_size: MAX_INSTANCE_SIZE,
            max_memories_per_module: 1,
            max_tables_per_module: 1,
            components: false,
            memories_per_slot: 1,
            keep_resident: KEEP_RESIDENT,
            tables_per_slot: 1,
        }
    }
}

/// Most instance metadata (`vmctx`: functions, globals, tables, memories)
/// one instance may have. A bound, not a reservation: the metadata is
/// allocated at its real size. CPython 3.12 needs far less than 1 MiB; a
/// module over this fails `configtest` with Wasmtime's breakdown of its needs.
const MAX_INSTANCE_SIZE: usize = 16 << 20;

/// Core instances one component may create: toolchains' outputs create a
/// few (a wit-bindgen C guest and its WASI adapter: 3 to 4; componentize-py
/// links CPython's shared libraries as a dozen or so). A bound of the pool,
/// not a reservation: instance metadata is allocated at its real size.
const CORE_INSTANCES_PER_COMPONENT: u32 = 32;

/// Memory below this size is reset with `memset` rather than `madvise` when a
/// slot is reused: measured on a prototype, 29 µs per hello request at 0 and
/// 15 µs at 128 KiB and above. It is also what each used slot keeps resident
/// for good: at 1 MiB, children grew by up to 1 MiB per slot as a soak test
/// touched more slots (26 slots per child); 128 KiB bounds that.
/// `WasmPoolKeepResident` raises it for interpreters whose pre-initialized
/// heap is megabytes: with `pagemap_scan` a kept page costs a copy only when
/// a request dirtied it, and one not kept costs a page fault and a TLB
/// shootdown on the next request.
pub const KEEP_RESIDENT: usize = 128 << 10;

/// Fiber stacks per slot on an engine with the component model's
/// concurrency: a 0.3 guest holds one for each of its fibers suspended at
/// once (a worker blocked in a call to an async import keeps its stack and
/// the next piece of work gets a new fiber), so one stack per slot would
/// let one guest's request take the stacks of its shard's other slots.
/// componentize-py's guests use one; a bound, reserved as address space.
const STACKS_PER_SLOT_CONCURRENT: u32 = 4;

fn stacks_per_slot(engine_options: EngineOptions) -> u32 {
    match engine_options.concurrency {
        true => STACKS_PER_SLOT_CONCURRENT,
        false => 1,
    }
}

/// The engine a child process runs requests with: pooling allocator sized by
/// `pool` (unless `engine_options` says otherwise), epoch interruption on.
pub fn runtime_engine(pool: &PoolSize, engine_options: EngineOptions) -> Result<Engine> {
    let mut p = PoolingAllocationConfig::new();
    let core_instances = if pool.components {
        CORE_INSTANCES_PER_COMPONENT
    } else {
        1
    };
    p.total_core_instances(pool.slots * core_instances)
        .total_memories(pool.slots * pool.memories_per_slot.max(pool.max_memories_per_module))
        .total_tables(pool.slots * pool.tables_per_slot.max(pool.max_tables_per_module))
        // GC heaps are reserved like memories; keep them from dwarfing the pool.
        .total_gc_heaps(pool.slots)
        .total_component_instances(if pool.components { pool.slots } else { 0 })
        .max_core_instances_per_component(core_instances)
        .max_memories_per_component(pool.memories_per_slot.max(1))
        .max_tables_per_component(pool.tables_per_slot.max(1))
        // Guests run on fiber stacks (see `cgi/run.rs`): one per slot, more
        // with concurrency (below).
        .total_stacks(pool.slots * stacks_per_slot(engine_options))
        .max_memories_per_module(pool.max_memories_per_module)
        .max_tables_per_module(pool.max_tables_per_module)
        .table_elements(pool.table_elements)
        .max_core_instance_size(pool.max_core_instance_size)
        .linear_memory_keep_resident(pool.keep_resident)
        .table_keep_resident(pool.keep_resident)
        // Where the kernel can tell which pages a request dirtied (Linux 6.7+),
        // reset only those instead of the whole kept-resident prefix.
        .pagemap_scan(Enabled::Auto);
    let mut config = base_config(engine_options);
    if engine_options.pooling {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    // Children never compile: a stray compilation must not spawn threads.
    config.parallel_compilation(false);
    while_dumpable(|| Engine::new(&config)).map_err(|e| {
        Error::new(
            Code::Internal,
            format!(
                "cannot create the instance pool ({} slots): {}",
                pool.slots,
                chain(&e)
            ),
        )
    })
}

/// The address space instance pools reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// All the pools together, bytes.
    pub total: u64,
    /// What one more slot adds, bytes.
    pub per_slot: u64,
}

/// The address space that one engine per entry of `shares`, each with a
/// pool of that many slots sized like `pool`, reserves in all.
///
/// Measured rather than computed from Wasmtime's defaults, which change
/// between versions: this reserves (and releases) pools of one and of two
/// slots and reads the growth of this process's address space, so it is
/// meant for error messages in a throw-away process. `None` when the
/// measurement fails.
pub fn pool_reservation(
    pool: &PoolSize,
    shares: &[u32],
    engine_options: EngineOptions,
) -> Option<Reservation> {
    let with = |slots| reserved_by(&PoolSize { slots, ..*pool }, engine_options);
    let one = with(1)?;
    let per_slot = with(2)?.checked_sub(one)?;
    let fixed = one.saturating_sub(per_slot);
    let slots: u64 = shares.iter().map(|&s| u64::from(s)).sum();
    Some(Reservation {
        total: fixed * shares.len() as u64 + per_slot * slots,
        per_slot,
    })
}

/// How much this process's address space grows while an engine with `pool`
/// exists.
fn reserved_by(pool: &PoolSize, engine_options: EngineOptions) -> Option<u64> {
    let before = address_space()?;
    let engine = runtime_engine(pool, engine_options).ok()?;
    let after = address_space()?;
    drop(engine);
    after.checked_sub(before)
}

/// This process's address space in bytes (`VmSize`).
fn address_space() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib << 10)
}

/// A byte count for people: `4.0 GiB`, `393.2 TiB`, `512 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Runs `f` with the process marked dumpable, then restores the flag.
///
/// The pool opens `/proc/self/pagemap` when it is created, to reset only the
/// pages a request dirtied. An Apache child has switched to its `User` by
/// then, which makes it non-dumpable, and the `/proc/self` files of a
/// non-dumpable process belong to root: the open fails, and every request
/// then pays a `memset` of the whole kept-resident prefix and page faults on
/// everything past it (measured: 14 faults and ~25% more time per MicroPython
/// request). The open file keeps working once the flag is restored; Apache
/// itself makes children dumpable for good when `CoreDumpDirectory` is set.
pub(crate) fn while_dumpable<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: PR_GET_DUMPABLE / PR_SET_DUMPABLE only read and set a flag of
    // this process.
    let was = unsafe { libc::prctl(libc::PR_GET_DUMPABLE) };
    if was != 0 {
        return f();
    }
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1) };
    let out = f();
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, was) };
    out
}

/// The thread that advances the epoch of a child's engines every
/// [`EPOCH_TICK`]: one thread for all of them, so shards cost no wake-ups.
///
/// It holds only weak references to the engines and stops when dropped.
pub struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Ticker {
    /// Starts ticking the epoch of every engine in `engines`.
    pub fn start<'a>(engines: impl IntoIterator<Item = &'a Engine>) -> Result<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let weak: Vec<_> = engines.into_iter().map(Engine::weak).collect();
        thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    let mut alive = false;
                    for engine in weak.iter().filter_map(|w| w.upgrade()) {
                        engine.increment_epoch();
                        alive = true;
                    }
                    if !alive {
                        break;
                    }
                }
            })
            .map_err(|e| {
                Error::new(
                    Code::Internal,
                    format!("cannot start the epoch thread: {e}"),
                )
            })?;
        Ok(Ticker { stop })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Number of epoch ticks that covers `timeout`, plus one because the current
/// tick may be almost over when the request starts.
pub fn deadline_ticks(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    (timeout.as_nanos().div_ceil(tick) as u64).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(4 << 30), "4.0 GiB");
        assert_eq!(format_size((393 << 40) + (1 << 39)), "393.5 TiB");
    }

    #[test]
    fn a_foreign_engine_is_told_apart_by_what_differs() {
        let ours = describe(EngineOptions::default());
        assert!(ours.starts_with("wasmtime=48."), "{ours}");
        assert_eq!(difference(&ours, &ours), None);
        let old = ours.replace("wasmtime=48.", "wasmtime=47.");
        assert!(difference(&old, &ours)
            .unwrap()
            .contains("compiled by Wasmtime 47."));
        let a = "wasmtime=48.0.8 arch=x86_64 epochs=1 concurrency=0 cpu=sse3,avx2,avx512f";
        let b = "wasmtime=48.0.8 arch=x86_64 epochs=1 concurrency=1 cpu=sse3,avx2,bmi2";
        let why = difference(a, b).unwrap();
        assert!(
            why.contains("concurrency=0, this server uses concurrency=1"),
            "{why}"
        );
        assert!(
            why.contains("CPU with avx512f, which this CPU lacks"),
            "{why}"
        );
        assert!(
            why.contains("CPU without bmi2, which this CPU has"),
            "{why}"
        );
    }
}
