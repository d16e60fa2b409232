//! One request of a command module: a fresh store from the pool, a WASI
//! context built from the CGI environment, the guest run to completion or
//! to a limit, and its output collected.

use std::time::Instant;

use bytes::Bytes;
use wasmtime::{PoolConcurrencyLimitError, Store, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi::{WasiCtxBuilder, WasiView};

use super::command::START;
use super::environ::Environ;
use super::host::Host;
use super::request::{preopen, Request};
use crate::body::{Body, StreamedStdin};
use crate::error::{chain, Code, Error, Result};
use crate::limits::{Limits, MAX_STDERR};
use crate::outcome::{classify, timed_out};
use crate::pipe::{CappedPipe, Output, Overflow};
use crate::runtime::Runtime;

/// Handles WASI holds before the guest opens anything, besides one per
/// preopened directory: stdin, stdout and stderr.
const WASI_HANDLES: usize = 3;

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
    /// What the server has to say about the request besides its result,
    /// for the error log (a component's refused outgoing requests).
    pub notes: Vec<String>,
}

impl Runtime {
    /// Runs module `index` for one request.
    ///
    /// `WasmTimeout` bounds the whole run, wall clock: a guest waiting in a
    /// host call (a sleep, `poll_oneoff`, a read of the request body) is
    /// stopped as surely as one that computes, and its slot comes back.
    pub fn run(&self, index: usize, req: Request<'_>) -> Outcome {
        let deadline = Instant::now() + req.limits.timeout;
        let leased = self.lease(index, &req.limits).and_then(|lease| {
            let loaded = lease.module(index);
            Ok((lease, &loaded.name, loaded.command()?))
        });
        let (lease, name, module) = match leased {
            Ok(l) => l,
            Err(e) => return Outcome::failed(e),
        };
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
        if let Err(e) = preopen(&mut wasi, &req.dirs) {
            return Outcome::failed(e);
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
            lease.engine(),
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
        self.arm_deadline(&mut store, req.limits.timeout);

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
                    Err(e) => return (Err(self.instantiate_error(name, e)), -1),
                };
                let func = match module.entry_func(instance, &mut store, entry) {
                    Ok(f) => f,
                    Err(e) => {
                        return (
                            Err(Error::new(
                                Code::Link,
                                format!("{}: entry point `{entry}`: {}", name, chain(&e)),
                            )),
                            -1,
                        )
                    }
                };
                match func.call_async(&mut store, ()).await {
                    Ok(()) => (Ok(()), 0),
                    Err(e) => classify(name, e, &limits),
                }
            };
            tokio::time::timeout_at(deadline.into(), run)
                .await
                .unwrap_or_else(|_| (Err(timed_out(name, timeout)), -1))
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
                result = Err(timed_out(name, timeout));
            } else if !was_timeout {
                result = Err(Error::new(
                    Code::Aborted,
                    format!("{}: the response could not be sent: {e}", name),
                ));
            }
        } else if stdout_over && !was_timeout {
            result = Err(Error::new(
                Code::OutputLimit,
                format!(
                    "{}: the guest wrote more than {} bytes to stdout (WasmMaxOutput)",
                    name, req.limits.max_output
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
            notes: Vec::new(),
        }
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

impl Outcome {
    /// A run that failed before the guest started.
    pub(crate) fn failed(e: Error) -> Outcome {
        Outcome {
            result: Err(e),
            exit_code: -1,
            stdout: Output::default(),
            streamed: 0,
            stderr: Bytes::new(),
            stderr_truncated: false,
            notes: Vec::new(),
        }
    }
}
