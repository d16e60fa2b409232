//! The entry points of a request, of either kind of module: the request,
//! the callbacks that move its body in and its head and output out while the
//! guest runs, and the response. What each kind reads of the request is in
//! `cgi.rs` and `http.rs`.

use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use bytes::Bytes;

use super::{c_array, c_bytes, c_message, c_path, c_text, release, wasm_rt_runtime};
use crate::body::{Body, BodyReader};
use crate::cgi::{EnvVar, Outcome, Preopen};
use crate::error::{Code, Error, Result};
use crate::executor::Kind;
use crate::limits::Limits;
use crate::pipe::{Output, OutputSink};

/// See `wasm_rt_dir` in the header.
#[repr(C)]
pub struct wasm_rt_dir {
    /// Where the guest sees the directory.
    pub guest_path: *const c_char,
    /// The directory on the host.
    pub host_path: *const c_char,
    /// Non-zero for read-only access.
    pub read_only: i32,
}

/// See `wasm_rt_request` in the header.
#[repr(C)]
pub struct wasm_rt_request {
    /// `argv`, `argv[0]` included.
    pub argv: *const *const c_char,
    /// Number of `argv` entries.
    pub argc: usize,
    /// Environment names.
    pub env_names: *const *const c_char,
    /// Environment values.
    pub env_values: *const *const c_char,
    /// Number of environment entries.
    pub envc: usize,
    /// Preopened directories.
    pub dirs: *const wasm_rt_dir,
    /// Number of directories.
    pub ndirs: usize,
    /// Export to call, or NULL for `_start`.
    pub entry_point: *const c_char,
    /// Body in, output out.
    pub io: wasm_rt_io,
    /// Time limit in milliseconds, 0 for the default.
    pub timeout_ms: u64,
    /// Memory limit in bytes, 0 for the default.
    pub max_memory: u64,
    /// Output limit in bytes, 0 for the default.
    pub max_output: u64,
    /// Open file limit, 0 for the default.
    pub max_open_files: u32,
    /// HTTP method (components).
    pub method: *const c_char,
    /// `http` or `https` (components).
    pub scheme: *const c_char,
    /// The request's Host (components).
    pub authority: *const c_char,
    /// The path with its query, as the client sent it (components).
    pub path_with_query: *const c_char,
    /// Header fields (components).
    pub headers: *const wasm_rt_field,
    /// Number of header fields.
    pub nheaders: usize,
    /// Requests one instance may serve (components; 0 or 1: one).
    pub instance_reuse: u32,
    /// Where instances may be reused (components); NULL: everywhere.
    pub reuse_scope: *const c_char,
    /// `WasmAllowOutbound` patterns (components).
    pub allow_outbound: *const *const c_char,
    /// Number of patterns.
    pub n_allow_outbound: usize,
}

/// See `wasm_rt_field` in the header.
#[repr(C)]
pub struct wasm_rt_field {
    /// The name's bytes.
    pub name: *const u8,
    /// How many.
    pub name_len: usize,
    /// The value's bytes.
    pub value: *const u8,
    /// How many.
    pub value_len: usize,
}

/// See `wasm_rt_chunk` in the header.
#[repr(C)]
pub struct wasm_rt_chunk {
    /// The bytes.
    pub data: *const u8,
    /// How many.
    pub len: usize,
}

/// `read_body` in the header.
pub type wasm_rt_read_body = unsafe extern "C" fn(*mut c_void, *mut u8, usize, u64) -> i64;
/// `send_head` in the header.
pub type wasm_rt_send_head =
    unsafe extern "C" fn(*mut c_void, i32, *const wasm_rt_field, usize) -> i32;
/// `send_trailers` in the header.
pub type wasm_rt_send_trailers =
    unsafe extern "C" fn(*mut c_void, *const wasm_rt_field, usize) -> i32;
/// `send_output` in the header.
pub type wasm_rt_send_output =
    unsafe extern "C" fn(*mut c_void, *const wasm_rt_chunk, usize, u64) -> i32;

/// See `wasm_rt_io` in the header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct wasm_rt_io {
    /// Passed back to every callback.
    pub ctx: *mut c_void,
    /// Reads the request body; NULL for an empty stdin.
    pub read_body: Option<wasm_rt_read_body>,
    /// Sends output; NULL to keep all of it in the response.
    pub send_output: Option<wasm_rt_send_output>,
    /// Sends a component's response head; NULL for command modules.
    pub send_head: Option<wasm_rt_send_head>,
    /// Sends a component's response trailers; NULL: they are dropped.
    pub send_trailers: Option<wasm_rt_send_trailers>,
}

/// The caller's callbacks, for the length of one `wasm_rt_run`.
///
/// SAFETY of `Send`: the WASI stream that holds it lives in the request's
/// store, which is dropped before `wasm_rt_run` returns (or, for a
/// component's store kept for reuse, no longer reaches it: see
/// `http::body::Revoke`), and the guest only
/// runs on the calling thread (inside `block_on`), so the callbacks are
/// called while `ctx` is valid. Should WASI ever poll a stream from another
/// thread (a Tokio task), the call is refused rather than made there: the
/// C side is Apache's filter chain, which belongs to the request's thread.
pub(super) struct Callbacks<F> {
    pub(super) ctx: *mut c_void,
    pub(super) f: F,
    thread: std::thread::ThreadId,
}

unsafe impl<F: Send> Send for Callbacks<F> {}

impl<F> Callbacks<F> {
    pub(super) fn new(ctx: *mut c_void, f: F) -> Self {
        Callbacks {
            ctx,
            f,
            thread: std::thread::current().id(),
        }
    }

    pub(super) fn on_own_thread(&self) -> std::io::Result<()> {
        if std::thread::current().id() == self.thread {
            Ok(())
        } else {
            Err(std::io::Error::other(
                "the request's streams were used from another thread",
            ))
        }
    }
}

/// Microseconds for a C callback.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl BodyReader for Callbacks<wasm_rt_read_body> {
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> std::io::Result<usize> {
        self.on_own_thread()?;
        // SAFETY: see the type; `buf` is valid for `buf.len()` bytes.
        let n = unsafe { (self.f)(self.ctx, buf.as_mut_ptr(), buf.len(), micros(timeout)) };
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= buf.len())
            .ok_or_else(|| std::io::Error::other("the server could not read the request body"))
    }
}

impl OutputSink for Callbacks<wasm_rt_send_output> {
    fn send(&mut self, chunks: &[Bytes], timeout: Duration) -> std::io::Result<()> {
        self.on_own_thread()?;
        let c: Vec<wasm_rt_chunk> = chunks
            .iter()
            .map(|b| wasm_rt_chunk {
                data: b.as_ptr(),
                len: b.len(),
            })
            .collect();
        // SAFETY: see the type; the chunks outlive the call.
        match unsafe { (self.f)(self.ctx, c.as_ptr(), c.len(), micros(timeout)) } {
            0 => Ok(()),
            _ => Err(std::io::Error::other("the server stopped taking output")),
        }
    }
}

/// See `wasm_rt_response` in the header.
#[repr(C)]
pub struct wasm_rt_response {
    /// A `wasm_rt_code`.
    pub code: i32,
    /// The HTTP status this outcome calls for.
    pub http_status: i32,
    /// The guest's exit status, -1 if it did not exit.
    pub exit_code: i32,
    /// 1 when stderr was cut.
    pub stderr_truncated: i32,
    /// stdout, in chunks.
    pub out: *const wasm_rt_chunk,
    /// Number of chunks.
    pub out_chunks: usize,
    /// stdout length.
    pub out_len: usize,
    /// Bytes sent through `send_output`.
    pub streamed: u64,
    /// stderr bytes.
    pub err: *const u8,
    /// stderr length.
    pub err_len: usize,
    /// NUL-terminated message, never NULL.
    pub message: *const c_char,
    /// Lines for the error log besides stderr; "" when none.
    pub notes: *const c_char,
}

/// A response and the buffers it points into; `c` must stay first so a
/// pointer to it is a pointer to the whole.
#[repr(C)]
struct ResponseBox {
    c: wasm_rt_response,
    _chunks: Vec<wasm_rt_chunk>,
    _stdout: Output,
    _stderr: Bytes,
    _message: CString,
    _notes: CString,
}

/// What every kind of request takes from the C request: body, output,
/// arguments, environment, directories and limits.
pub(super) struct Common<'a> {
    pub(super) body: Body,
    pub(super) output: Option<Box<dyn OutputSink>>,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<EnvVar<'a>>,
    pub(super) dirs: Vec<Preopen>,
    pub(super) limits: Limits,
}

/// Reads the parts of `req` every kind of request has.
///
/// # Safety
/// `req` is valid as the header describes.
pub(super) unsafe fn common_from_c<'a>(req: &'a wasm_rt_request) -> Result<Common<'a>> {
    let io = req.io;
    let body = match io.read_body {
        None => Body::default(),
        Some(f) => Body::Reader(Box::new(Callbacks::new(io.ctx, f))),
    };
    let output = io
        .send_output
        .map(|f| Box::new(Callbacks::new(io.ctx, f)) as Box<dyn OutputSink>);
    let args = unsafe { c_array(req.argv, req.argc, "argv") }?
        .iter()
        .map(|&a| unsafe { c_text(a, "argument") })
        .collect::<Result<Vec<_>>>()?;
    let names = unsafe { c_array(req.env_names, req.envc, "env_names") }?;
    let values = unsafe { c_array(req.env_values, req.envc, "env_values") }?;
    let env = names
        .iter()
        .zip(values)
        .map(|(&n, &v)| {
            Ok((unsafe { c_bytes(n, "env name") }?, unsafe {
                c_bytes(v, "env value")
            }?))
        })
        .collect::<Result<Vec<_>>>()?;
    let dirs = unsafe { c_array(req.dirs, req.ndirs, "dirs") }?
        .iter()
        .map(|d| {
            Ok(Preopen {
                guest: unsafe { c_text(d.guest_path, "guest path") }?,
                host: unsafe { c_path(d.host_path, "host path") }?,
                read_only: d.read_only != 0,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let defaults = Limits::default();
    let or = |v: u64, d: usize| {
        if v == 0 {
            d
        } else {
            usize::try_from(v).unwrap_or(usize::MAX)
        }
    };
    let limits = Limits {
        timeout: if req.timeout_ms == 0 {
            defaults.timeout
        } else {
            Duration::from_millis(req.timeout_ms)
        },
        max_memory: or(req.max_memory, defaults.max_memory),
        max_output: or(req.max_output, defaults.max_output),
        max_open_files: match req.max_open_files {
            0 => defaults.max_open_files,
            n => n,
        },
    };
    Ok(Common {
        body,
        output,
        args,
        env,
        dirs,
        limits,
    })
}

fn response(outcome: Outcome) -> Box<ResponseBox> {
    let Outcome {
        result,
        exit_code,
        stdout,
        streamed,
        stderr,
        stderr_truncated,
        notes,
    } = outcome;
    let (code, message) = match result {
        Ok(()) => (Code::Ok, CString::default()),
        Err(e) => (e.code, c_message(&e.message)),
    };
    let notes = c_message(&notes.join("\n"));
    // The chunks point into `stdout`'s buffers, which do not move when the
    // `Output` itself is moved into the box.
    let chunks: Vec<wasm_rt_chunk> = stdout
        .chunks()
        .iter()
        .map(|b| wasm_rt_chunk {
            data: b.as_ptr(),
            len: b.len(),
        })
        .collect();
    Box::new(ResponseBox {
        c: wasm_rt_response {
            code: code as i32,
            http_status: code.http_status(),
            exit_code,
            stderr_truncated: i32::from(stderr_truncated),
            out: chunks.as_ptr(),
            out_chunks: chunks.len(),
            out_len: stdout.len(),
            streamed: streamed as u64,
            err: stderr.as_ptr(),
            err_len: stderr.len(),
            message: message.as_ptr(),
            notes: notes.as_ptr(),
        },
        _chunks: chunks,
        _stdout: stdout,
        _stderr: stderr,
        _message: message,
        _notes: notes,
    })
}

/// Runs one request.
///
/// # Safety
/// `rt` came from `wasm_rt_runtime_new`; `req` is valid as the header
/// describes; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_run(
    rt: *const wasm_rt_runtime,
    module: usize,
    req: *const wasm_rt_request,
    out: *mut *mut wasm_rt_response,
) -> i32 {
    let boxed = catch_unwind(AssertUnwindSafe(|| {
        let failed = |e| response(Outcome::failed(e));
        if rt.is_null() || req.is_null() {
            return failed(Error::new(
                Code::InvalidArgument,
                "runtime or request is NULL",
            ));
        }
        let rt = unsafe { &*rt };
        let req = unsafe { &*req };
        let outcome = match rt.module(module).map(|m| m.kind()) {
            None => Err(Error::new(
                Code::InvalidArgument,
                format!("no module with index {module}"),
            )),
            Some(Kind::Command) => {
                unsafe { super::cgi::request_from_c(req) }.map(|r| rt.run(module, r))
            }
            Some(Kind::Http) => {
                unsafe { super::http::request_from_c(req) }.map(|r| rt.serve(module, r))
            }
        };
        match outcome {
            Err(e) => failed(e),
            Ok(o) => response(o),
        }
    }))
    .unwrap_or_else(|p| {
        let e = super::panicked("wasm_rt_run", &*p);
        response(Outcome::failed(e))
    });
    let code = boxed.c.code;
    if out.is_null() {
        drop(boxed);
    } else {
        unsafe { *out = Box::into_raw(boxed).cast::<wasm_rt_response>() };
    }
    code
}

/// Releases a response.
///
/// # Safety
/// `resp` is NULL or came from `wasm_rt_run` and was not yet released.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_response_free(resp: *mut wasm_rt_response) {
    // SAFETY: `c` is the first field of the repr(C) ResponseBox that
    // `wasm_rt_run` boxed.
    unsafe {
        release("wasm_rt_response_free", resp, |r| {
            drop(Box::from_raw(r.cast::<ResponseBox>()))
        })
    }
}
