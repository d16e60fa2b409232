//! One request: a fresh store from the pool, a WASI context built from the
//! CGI environment, the guest run to completion or to a limit, and its
//! output collected.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::ResourceTableError;
use wasmtime::{
    Instance, PoolConcurrencyLimitError, Store, StoreLimitsBuilder, Trap, TypedFunc, WasmBacktrace,
};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder, WasiView};

use crate::body::{Body, StreamedStdin};
use crate::engine::deadline_ticks;
use crate::environ::Environ;
use crate::error::{chain, Code, Error, Result};
use crate::host::Host;
pub use crate::limits::Limits;
use crate::limits::MAX_STDERR;
use crate::pipe::{CappedPipe, Output, OutputSink, Overflow};
use crate::runtime::{Loaded, Runtime, START};

/// Handles WASI holds before the guest opens anything, besides one per
/// preopened directory: stdin, stdout and stderr.
const WASI_HANDLES: usize = 3;

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

/// One environment variable: its name and value, as bytes.
pub type EnvVar<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// Everything a guest gets for one request.
///
/// The environment may borrow: it is laid out into one buffer for the guest
/// anyway (see `environ.rs`), so the C boundary lends the server's strings
/// instead of copying each variable twice on every request. It is bytes, not
/// text: a header that is not UTF-8 reaches the guest as the client sent
/// it, as it reaches a CGI program.
#[derive(Default)]
pub struct Request<'a> {
    /// `argv`, including `argv[0]`.
    pub args: Vec<String>,
    /// The environment: exactly these variables, nothing from the host.
    pub env: Vec<EnvVar<'a>>,
    /// Preopened directories.
    pub dirs: Vec<Preopen>,
    /// Export to call; `_start` when `None`.
    pub entry: Option<String>,
    /// The request body, the guest's stdin.
    pub body: Body,
    /// Where stdout goes once it outgrows what a request keeps (see
    /// `pipe.rs`); `None`: all of it is kept and returned.
    pub output: Option<Box<dyn OutputSink>>,
    /// Limits of this request.
    pub limits: Limits,
}

impl Request<'_> {
    /// Sets the environment from text pairs (tests, benchmarks).
    pub fn set_env<K: AsRef<str>, V: AsRef<str>>(&mut self, vars: &[(K, V)]) {
        self.env = vars
            .iter()
            .map(|(k, v)| {
                (
                    Cow::Owned(k.as_ref().as_bytes().to_vec()),
                    Cow::Owned(v.as_ref().as_bytes().to_vec()),
                )
            })
            .collect();
    }
}

/// What a run produced. Output is kept even when the run failed, so that
/// stderr can still be logged.
#[derive(Debug)]
pub struct Outcome {
    /// `Ok` when the guest finished normally (returned or `proc_exit(0)`).
    pub result: Result<()>,
    /// The guest's exit status (0 when it returned normally).
    pub exit_code: i32,
    /// What the guest wrote to stdout and was not handed to the request's
    /// [`OutputSink`].
    pub stdout: Output,
    /// Bytes of stdout handed to the sink while the guest ran.
    pub streamed: usize,
    /// What the guest wrote to stderr, up to [`MAX_STDERR`].
    pub stderr: Bytes,
    /// True when stderr was cut at [`MAX_STDERR`].
    pub stderr_truncated: bool,
}

impl Runtime {
    /// Runs module `index` for one request.
    ///
    /// `WasmTimeout` bounds the whole run, wall clock: a guest waiting in a
    /// host call (a sleep, `poll_oneoff`, a read of the request body) is
    /// stopped as surely as one that computes, and its slot comes back.
    pub fn run(&self, index: usize, req: Request<'_>) -> Outcome {
        let deadline = Instant::now() + req.limits.timeout;
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
        let stdout = match req.output {
            Some(sink) => {
                CappedPipe::streaming(req.limits.max_output, Overflow::Trap, sink, deadline)
            }
            None => CappedPipe::new(req.limits.max_output, Overflow::Trap),
        };
        let stderr = CappedPipe::new(MAX_STDERR, Overflow::Truncate);
        let mut wasi = WasiCtxBuilder::new();
        match req.body {
            Body::Bytes(b) => wasi.stdin(MemoryInputPipe::new(b)),
            Body::Reader(r) => wasi.stdin(StreamedStdin::new(r, deadline)),
        };
        wasi.args(&req.args)
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
        let mut wasi = wasi.build_p1();
        // Every file the guest opens is a handle in this table: bounding it
        // bounds the host descriptors one request holds (a guest opening
        // files in a loop took a child to its RLIMIT_NOFILE, and Apache's
        // own accept then failed). Dropping the store closes them all.
        wasi.ctx()
            .table
            .set_max_capacity(WASI_HANDLES + req.dirs.len() + req.limits.max_open_files as usize);
        // A Store is the unit of per-request isolation: it owns the instance
        // and its pooled memory, and dies with the request.
        let mut store = Store::new(
            &lease.shard().engine,
            Host {
                wasi,
                environ: if module.reads_env {
                    Environ::new(&req.env)
                } else {
                    Environ::default()
                },
                limits,
                deadline,
            },
        );
        store.limiter(|h| &mut h.limits);
        if self.epochs {
            store.set_epoch_deadline(deadline_ticks(req.limits.timeout));
            store.epoch_deadline_trap();
        }

        let entry = req.entry.as_deref().unwrap_or(START);
        let limits = req.limits;
        let timeout = limits.timeout;
        // One Tokio entry for the whole request, with the guest on a pooled
        // fiber stack: WASI's synchronous bindings enter Tokio on every host
        // call instead, which cost MicroPython ~6% of its request (it makes
        // ~200 calls, most of them small file reads).
        //
        // The epoch deadline stops a guest that computes; the timer stops
        // one that waits in a host call, where epochs are not checked.
        // Dropping the call's future unwinds the guest's fiber.
        let (result, exit_code) = in_tokio(async {
            let run = async {
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
                    Err(e) => classify(&module.name, e, &limits),
                }
            };
            tokio::time::timeout_at(deadline.into(), run)
                .await
                .unwrap_or_else(|_| (Err(timed_out(&module.name, timeout)), -1))
        });
        // The slot returns to the pool with the store, before the lease ends.
        drop(store);
        drop(lease);

        let (stdout_left, stdout_over) = stdout.take();
        let (stderr, stderr_truncated) = stderr.take();
        // stderr is small and read line by line: one buffer is simpler.
        let stderr = stderr.to_bytes();
        let mut result = result;
        // The trap comes from inside a WASI call, so it surfaces as a plain
        // error; whatever the guest did after, its response is cut.
        let was_timeout = matches!(&result, Err(e) if e.code == Code::Timeout);
        if let Some(e) = stdout.send_error() {
            if e.kind() == std::io::ErrorKind::TimedOut {
                result = Err(timed_out(&module.name, timeout));
            } else if !was_timeout {
                result = Err(Error::new(
                    Code::Aborted,
                    format!("{}: the response could not be sent: {e}", module.name),
                ));
            }
        } else if stdout_over && !was_timeout {
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
            stdout: stdout_left,
            streamed: stdout.sent(),
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
            Some(_) => classify(name, e, &Limits::default()).0.unwrap_err(),
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

/// The error of a run stopped by `WasmTimeout`.
fn timed_out(name: &str, timeout: Duration) -> Error {
    Error::new(
        Code::Timeout,
        format!("{name}: the guest ran longer than {timeout:?} (WasmTimeout) and was stopped"),
    )
}

/// Sorts a failed run into the classes the server reports.
fn classify(name: &str, e: wasmtime::Error, limits: &Limits) -> (Result<()>, i32) {
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
    if matches!(
        e.downcast_ref::<ResourceTableError>(),
        Some(ResourceTableError::Full)
    ) {
        return (
            Err(Error::new(
                Code::FileLimit,
                format!(
                    "{name}: the guest held more than {} files, directories and poll \
                     handles open at once (WasmMaxOpenFiles) and was stopped",
                    limits.max_open_files
                ),
            )),
            -1,
        );
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => (Err(timed_out(name, limits.timeout)), -1),
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
            streamed: 0,
            stderr: Bytes::new(),
            stderr_truncated: false,
        }
    }
}
