//! One request: a fresh store from the pool, a WASI context built from the
//! CGI environment, the guest run to completion or to a limit, and its
//! output collected.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::{
    Instance, PoolConcurrencyLimitError, Store, StoreLimitsBuilder, Trap, TypedFunc, WasmBacktrace,
};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::engine::deadline_ticks;
use crate::environ::Environ;
use crate::error::{chain, Code, Error, Result};
use crate::host::Host;
use crate::pipe::{CappedPipe, Output, Overflow};
use crate::runtime::{Loaded, Runtime, START};

/// Default of `WasmTimeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `WasmMaxMemory`.
pub const DEFAULT_MAX_MEMORY: usize = 256 << 20;
/// Default of `WasmMaxOutput`.
pub const DEFAULT_MAX_OUTPUT: usize = 64 << 20;
/// Most stderr kept per request; the rest is dropped (and said so in the log).
pub const MAX_STDERR: usize = 64 << 10;

/// A host directory the guest may see.
#[derive(Debug, Clone)]
pub struct Preopen {
    /// Where the guest sees it.
    pub guest: String,
    /// The directory on the host.
    pub host: PathBuf,
    /// Whether the guest may only read.
    pub read_only: bool,
}

/// Limits of one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock time the guest may run.
    pub timeout: Duration,
    /// Most linear memory the instance may have, bytes.
    pub max_memory: usize,
    /// Most stdout the guest may write, bytes.
    pub max_output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: DEFAULT_TIMEOUT,
            max_memory: DEFAULT_MAX_MEMORY,
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }
}

/// Everything a guest gets for one request.
///
/// The environment may borrow: it is laid out into one buffer for the guest
/// anyway (see `environ.rs`), so the C boundary lends the server's strings
/// instead of copying each variable twice on every request.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// `argv`, including `argv[0]`.
    pub args: Vec<String>,
    /// The environment: exactly these variables, nothing from the host.
    pub env: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Preopened directories.
    pub dirs: Vec<Preopen>,
    /// Export to call; `_start` when `None`.
    pub entry: Option<String>,
    /// The request body, the guest's stdin.
    pub body: Bytes,
    /// Limits of this request.
    pub limits: Limits,
}

/// What a run produced. Output is kept even when the run failed, so that
/// stderr can still be logged.
#[derive(Debug)]
pub struct Outcome {
    /// `Ok` when the guest finished normally (returned or `proc_exit(0)`).
    pub result: Result<()>,
    /// The guest's exit status (0 when it returned normally).
    pub exit_code: i32,
    /// Everything the guest wrote to stdout.
    pub stdout: Output,
    /// What the guest wrote to stderr, up to [`MAX_STDERR`].
    pub stderr: Bytes,
    /// True when stderr was cut at [`MAX_STDERR`].
    pub stderr_truncated: bool,
}

impl Runtime {
    /// Runs module `index` for one request.
    pub fn run(&self, index: usize, req: Request<'_>) -> Outcome {
        let Some(module) = self.module(index) else {
            return Outcome::failed(Error::new(
                Code::InvalidArgument,
                format!("no module with index {index}"),
            ));
        };
        if module.min_memory > req.limits.max_memory as u64 {
            // Instantiation would fail on every request: say why, and what to change.
            return Outcome::failed(Error::new(
                Code::MemoryLimit,
                format!(
                    "{}: its memory starts at {}, more than WasmMaxMemory ({}) allows; \
                     raise WasmMaxMemory where this module is configured",
                    module.name,
                    human_size(module.min_memory),
                    human_size(req.limits.max_memory as u64)
                ),
            ));
        }
        let Some(lease) = self.lease() else {
            return Outcome::failed(self.pool_exhausted(&module.name));
        };
        // An `InstancePre` belongs to one engine: use the leased shard's copy.
        let module = &lease.shard().modules[index];
        let stdout = CappedPipe::new(req.limits.max_output, Overflow::Trap);
        let stderr = CappedPipe::new(MAX_STDERR, Overflow::Truncate);
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(&req.args)
            .stdin(MemoryInputPipe::new(req.body))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            // No async runtime round trip for file operations.
            .allow_blocking_current_thread(true);
        for d in &req.dirs {
            let perms = if d.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            if let Err(e) = wasi.preopened_dir(&d.host, &d.guest, perms) {
                return Outcome::failed(Error::new(
                    Code::Io,
                    format!("cannot open directory {}: {}", d.host.display(), chain(&e)),
                ));
            }
        }
        let limits = StoreLimitsBuilder::new()
            .memory_size(req.limits.max_memory)
            .instances(1)
            // A failed memory.grow returns -1 to the guest, which can cope.
            .trap_on_grow_failure(false)
            .build();
        // A Store is the unit of per-request isolation: it owns the instance
        // and its pooled memory, and dies with the request.
        let mut store = Store::new(
            &lease.shard().engine,
            Host {
                wasi: wasi.build_p1(),
                environ: if module.reads_env {
                    Environ::new(&req.env)
                } else {
                    Environ::default()
                },
                limits,
            },
        );
        store.limiter(|h| &mut h.limits);
        if self.epochs {
            store.set_epoch_deadline(deadline_ticks(req.limits.timeout));
            store.epoch_deadline_trap();
        }

        let entry = req.entry.as_deref().unwrap_or(START);
        let timeout = req.limits.timeout;
        // One Tokio entry for the whole request, with the guest on a pooled
        // fiber stack: WASI's synchronous bindings enter Tokio on every host
        // call instead, which cost MicroPython ~6% of its request (it makes
        // ~200 calls, most of them small file reads).
        let (result, exit_code) = in_tokio(async {
            let instance = match module.pre.instantiate_async(&mut store).await {
                Ok(i) => i,
                Err(e) => return (Err(self.instantiate_error(&module.name, e)), -1),
            };
            let func = match entry_func(module, instance, &mut store, entry) {
                Ok(f) => f,
                Err(e) => {
                    return (
                        Err(Error::new(
                            Code::Link,
                            format!("{}: entry point `{entry}`: {}", module.name, chain(&e)),
                        )),
                        -1,
                    )
                }
            };
            match func.call_async(&mut store, ()).await {
                Ok(()) => (Ok(()), 0),
                Err(e) => classify(&module.name, e, timeout),
            }
        });
        // The slot returns to the pool with the store, before the lease ends.
        drop(store);
        drop(lease);

        let (stdout, stdout_over) = stdout.take();
        let (stderr, stderr_truncated) = stderr.take();
        // stderr is small and read line by line: one buffer is simpler.
        let stderr = stderr.to_bytes();
        let mut result = result;
        // The trap comes from inside a WASI call, so it surfaces as a plain
        // error; whatever the guest did after, its response is cut.
        let timed_out = matches!(&result, Err(e) if e.code == Code::Timeout);
        if stdout_over && !timed_out {
            result = Err(Error::new(
                Code::OutputLimit,
                format!(
                    "{}: the guest wrote more than {} bytes to stdout (WasmMaxOutput)",
                    module.name, req.limits.max_output
                ),
            ));
        }
        Outcome {
            result,
            exit_code,
            stdout,
            stderr,
            stderr_truncated,
        }
    }

    fn pool_exhausted(&self, name: &str) -> Error {
        Error::new(
            Code::PoolExhausted,
            format!(
                "{name}: all {} instance slots of this child are busy; raise WasmPoolSlots \
                 or lower the MPM's ThreadsPerChild",
                self.slots()
            ),
        )
    }

    fn instantiate_error(&self, name: &str, e: wasmtime::Error) -> Error {
        // Leases keep each shard within its pool, so this should not happen;
        // kept in case Wasmtime counts a slot longer than the store lives.
        if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
            return self.pool_exhausted(name);
        }
        // A trap in a start function, or a memory that cannot be created.
        match e.downcast_ref::<Trap>() {
            Some(_) => classify(name, e, Duration::ZERO).0.unwrap_err(),
            None => Error::new(
                Code::Internal,
                format!("{name}: instantiation failed: {}", chain(&e)),
            ),
        }
    }
}

/// The function a request calls: `_start` through the export resolved when
/// the module was loaded, any other entry by name.
fn entry_func(
    module: &Loaded,
    instance: Instance,
    store: &mut Store<Host>,
    entry: &str,
) -> wasmtime::Result<TypedFunc<(), ()>> {
    if entry == START {
        if let Some(func) = module
            .start
            .as_ref()
            .and_then(|e| instance.get_module_export(&mut *store, e))
            .and_then(|e| e.into_func())
        {
            // SAFETY: `Loaded::start` is only set for a `_start` of type
            // `() -> ()`, and `get_module_export` returns `None` for an
            // instance of any other module (it compares module ids).
            return Ok(unsafe { TypedFunc::new_unchecked(&*store, func) });
        }
    }
    instance.get_typed_func::<(), ()>(store, entry)
}

/// `bytes` in the unit an operator would write in a directive.
fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// Sorts a failed run into the classes the server reports.
fn classify(name: &str, e: wasmtime::Error, timeout: Duration) -> (Result<()>, i32) {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return if exit.0 == 0 {
            (Ok(()), 0)
        } else {
            (
                Err(Error::new(
                    Code::Exit,
                    format!("{name}: the guest exited with status {}", exit.0),
                )),
                exit.0,
            )
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => (
            Err(Error::new(
                Code::Timeout,
                format!(
                    "{name}: the guest ran longer than {timeout:?} (WasmTimeout) and was stopped"
                ),
            )),
            -1,
        ),
        Some(trap) => (
            Err(Error::new(
                Code::Trap,
                format!("{name}: the guest trapped: {}", describe_trap(&e, trap)),
            )),
            -1,
        ),
        None => (
            Err(Error::new(
                Code::Trap,
                format!("{name}: the guest failed: {}", chain(&e)),
            )),
            -1,
        ),
    }
}

/// The trap's reason and the innermost frames, on one line.
fn describe_trap(e: &wasmtime::Error, trap: &Trap) -> String {
    let mut text = trap.to_string();
    if let Some(bt) = e.downcast_ref::<WasmBacktrace>() {
        // Stripped modules have no names: then there is nothing to show.
        let frames: Vec<&str> = bt
            .frames()
            .iter()
            .filter_map(|f| f.func_name())
            .take(6)
            .collect();
        if !frames.is_empty() {
            text += &format!(" (in {})", frames.join(" < "));
        }
    }
    text
}

impl Outcome {
    fn failed(e: Error) -> Outcome {
        Outcome {
            result: Err(e),
            exit_code: -1,
            stdout: Output::default(),
            stderr: Bytes::new(),
            stderr_truncated: false,
        }
    }
}
