//! The C ABI declared in `include/wasm_runtime.h`.
//!
//! Every entry point catches panics and reports failures as a
//! [`Code`](crate::Code) plus a message; nothing unwinds into Apache. All
//! error reporting crosses the boundary here and nowhere else.

#![allow(non_camel_case_types, reason = "names mirror the C header")]

use std::borrow::Cow;
use std::ffi::{c_char, c_void, CStr, CString};
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::body::{Body, BodyReader};
use crate::cache::{Entry, Options};
use crate::engine::Flavor;
use crate::error::{Code, Error, Result};
use crate::isolate::{check_isolated, precompile_isolated};
use crate::pipe::{Output, OutputSink};
use crate::request::{Limits, Preopen, Request};
use crate::runtime::{ModuleSpec, Runtime};

/// Opaque runtime handle handed to C.
pub type wasm_rt_runtime = Runtime;

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
/// `send_output` in the header.
pub type wasm_rt_send_output =
    unsafe extern "C" fn(*mut c_void, *const wasm_rt_chunk, usize, u64) -> i32;

/// See `wasm_rt_io` in the header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct wasm_rt_io {
    /// Passed back to both callbacks.
    pub ctx: *mut c_void,
    /// Reads the request body; NULL for an empty stdin.
    pub read_body: Option<wasm_rt_read_body>,
    /// Sends output; NULL to keep all of it in the response.
    pub send_output: Option<wasm_rt_send_output>,
}

/// The caller's callbacks, for the length of one `wasm_rt_run`.
///
/// SAFETY of `Send`: the WASI stream that holds it lives in the request's
/// store, which is dropped before `wasm_rt_run` returns, and the guest only
/// runs on the calling thread (inside `block_on`), so the callbacks are
/// called while `ctx` is valid. Should WASI ever poll a stream from another
/// thread (a Tokio task), the call is refused rather than made there: the
/// C side is Apache's filter chain, which belongs to the request's thread.
struct Callbacks<F> {
    ctx: *mut c_void,
    f: F,
    thread: std::thread::ThreadId,
}

unsafe impl<F: Send> Send for Callbacks<F> {}

impl<F> Callbacks<F> {
    fn new(ctx: *mut c_void, f: F) -> Self {
        Callbacks {
            ctx,
            f,
            thread: std::thread::current().id(),
        }
    }

    fn on_own_thread(&self) -> std::io::Result<()> {
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
}

/// Runs `f`, turning a panic into [`Code::Panic`].
fn guard(what: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let detail = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::new(
            Code::Panic,
            format!("{what} panicked: {detail}"),
        ))
    })
}

/// Frees what `p` owns with `free`, unless `p` is NULL; a panic in a
/// destructor is caught like any other (there is no caller to tell).
///
/// # Safety
/// `free` must be the right way to release `p`, and `p` not yet released.
unsafe fn release<T>(what: &str, p: *mut T, free: unsafe fn(*mut T)) {
    if !p.is_null() {
        let _ = guard(what, || {
            unsafe { free(p) };
            Ok(())
        });
    }
}

/// A C string for a message; interior NULs (which C could not print) become spaces.
fn c_message(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

/// Stores `r`'s message in `*error` and returns its code.
///
/// # Safety
/// `error` is NULL or valid for a write.
unsafe fn report(r: Result<()>, error: *mut *mut c_char) -> i32 {
    match r {
        Ok(()) => Code::Ok as i32,
        Err(e) => {
            if !error.is_null() {
                unsafe { *error = c_message(&e.message).into_raw() };
            }
            e.code as i32
        }
    }
}

/// Borrows a C string argument.
///
/// # Safety
/// `p` is NULL or a valid NUL-terminated string.
unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a CStr> {
    if p.is_null() {
        return Err(Error::new(Code::InvalidArgument, format!("{what} is NULL")));
    }
    Ok(unsafe { CStr::from_ptr(p) })
}

/// A path argument: any bytes, as Unix paths are.
unsafe fn c_path(p: *const c_char, what: &str) -> Result<PathBuf> {
    Ok(Path::new(std::ffi::OsStr::from_bytes(
        unsafe { c_str(p, what) }?.to_bytes(),
    ))
    .to_owned())
}

/// A text argument. WASI strings are UTF-8; header values may not be, so
/// invalid sequences become U+FFFD rather than failing the request.
unsafe fn c_text(p: *const c_char, what: &str) -> Result<String> {
    Ok(unsafe { c_str(p, what) }?.to_string_lossy().into_owned())
}

/// The bytes of a C string, borrowed (environment variables: CGI hands a
/// script the bytes the client sent, UTF-8 or not).
///
/// # Safety
/// As [`c_str`]; the string must outlive `'a`.
unsafe fn c_bytes<'a>(p: *const c_char, what: &str) -> Result<Cow<'a, [u8]>> {
    Ok(Cow::Borrowed(unsafe { c_str(p, what) }?.to_bytes()))
}

/// Borrows a C array of `n` elements; NULL is fine when `n` is 0.
unsafe fn c_array<'a, T>(p: *const T, n: usize, what: &str) -> Result<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::new(Code::InvalidArgument, format!("{what} is NULL")));
    }
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// The runtime's version. Static storage.
#[no_mangle]
pub extern "C" fn wasm_rt_version() -> *const c_char {
    static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (wasmtime 48.0.8)\0");
    VERSION.as_ptr().cast()
}

/// The version of the C interface (`WASM_RT_ABI_VERSION` in the header):
/// bump it with any change to a prototype or a `#[repr(C)]` struct.
pub const ABI_VERSION: u32 = 3;

/// The version of the C interface this library implements.
#[no_mangle]
pub extern "C" fn wasm_rt_abi_version() -> u32 {
    ABI_VERSION
}

/// See `wasm_rt_defaults` in the header.
#[repr(C)]
pub struct wasm_rt_defaults {
    /// `WasmTimeout`, milliseconds.
    pub timeout_ms: u64,
    /// `WasmMaxMemory`, bytes.
    pub max_memory: u64,
    /// `WasmMaxOutput`, bytes.
    pub max_output: u64,
    /// `WasmCacheMaxAge`, milliseconds.
    pub cache_max_age_ms: u64,
    /// `WasmMaxOpenFiles`.
    pub max_open_files: u32,
}

/// The defaults of the directives the runtime decides.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_defaults_get(out: *mut wasm_rt_defaults) {
    use crate::limits::*;
    if out.is_null() {
        return;
    }
    let d = wasm_rt_defaults {
        timeout_ms: DEFAULT_TIMEOUT.as_millis() as u64,
        max_memory: DEFAULT_MAX_MEMORY as u64,
        max_output: DEFAULT_MAX_OUTPUT as u64,
        cache_max_age_ms: DEFAULT_CACHE_MAX_AGE.as_millis() as u64,
        max_open_files: DEFAULT_MAX_OPEN_FILES,
    };
    // SAFETY: as the caller promises; nothing here can panic.
    unsafe { out.write(d) };
}

/// Releases a string the runtime returned.
///
/// # Safety
/// `s` is NULL or was returned by this library and not yet released.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_string_free(s: *mut c_char) {
    // SAFETY: as the caller promises, `s` came from `CString::into_raw`.
    unsafe { release("wasm_rt_string_free", s, |s| drop(CString::from_raw(s))) }
}

/// Compiles a module into the cache, in a forked child process, and opens
/// the entry, checked against its digest, for the caller to keep.
///
/// # Safety
/// Pointers are NULL or valid as the header describes.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_precompile(
    wasm_path: *const c_char,
    cache_dir: *const c_char,
    trap_unknown_imports: i32,
    cwasm_path: *mut *mut c_char,
    cwasm_fd: *mut i32,
    cache_hit: *mut i32,
    millis: *mut u64,
    replaced: *mut *mut c_char,
    error: *mut *mut c_char,
) -> i32 {
    if !cwasm_fd.is_null() {
        unsafe { *cwasm_fd = -1 };
    }
    let r = guard("wasm_rt_precompile", || {
        let wasm = unsafe { c_path(wasm_path, "wasm_path") }?;
        let cache = unsafe { c_path(cache_dir, "cache_dir") }?;
        if cwasm_path.is_null() || cwasm_fd.is_null() {
            return Err(Error::new(
                Code::InvalidArgument,
                "cwasm_path or cwasm_fd is NULL",
            ));
        }
        let opts = Options {
            trap_unknown_imports: trap_unknown_imports != 0,
            ..Options::default()
        };
        let compiled = precompile_isolated(&wasm, &cache, &opts)?;
        let path = CString::new(compiled.cwasm.path.as_os_str().as_bytes())
            .map_err(|_| Error::new(Code::Internal, "cache path contains NUL"))?;
        // The only reference: precompile_isolated just opened it.
        let file = compiled
            .cwasm
            .file
            .and_then(|f| Arc::try_unwrap(f).ok())
            .ok_or_else(|| Error::new(Code::Internal, "the checked entry is not open"))?;
        unsafe {
            *cwasm_path = path.into_raw();
            *cwasm_fd = file.into_raw_fd();
            if !cache_hit.is_null() {
                *cache_hit = i32::from(compiled.hit);
            }
            if !millis.is_null() {
                *millis = compiled.millis;
            }
            if !replaced.is_null() {
                *replaced = compiled
                    .replaced
                    .map_or(ptr::null_mut(), |why| c_message(&why).into_raw());
            }
        }
        Ok(())
    });
    unsafe { report(r, error) }
}

/// Removes unused cache entries; see [`crate::cache::prune`].
///
/// # Safety
/// Pointers are NULL or valid as the header describes.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_cache_prune(
    cache_dir: *const c_char,
    keep: *const *const c_char,
    n: usize,
    max_age_ms: u64,
    removed: *mut u32,
    error: *mut *mut c_char,
) -> i32 {
    let r = guard("wasm_rt_cache_prune", || {
        let dir = unsafe { c_path(cache_dir, "cache_dir") }?;
        let keep = unsafe { c_array(keep, n, "keep") }?
            .iter()
            .map(|&p| unsafe { c_path(p, "kept entry") })
            .collect::<Result<Vec<_>>>()?;
        let count = crate::cache::prune(&dir, &keep, Duration::from_millis(max_age_ms))?;
        if !removed.is_null() {
            unsafe { *removed = u32::try_from(count).unwrap_or(u32::MAX) };
        }
        Ok(())
    });
    unsafe { report(r, error) }
}

/// Parses a size directive value ("64M").
///
/// # Safety
/// Pointers are NULL or valid as the header describes.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_parse_size(
    text: *const c_char,
    out: *mut u64,
    error: *mut *mut c_char,
) -> i32 {
    let r = guard("wasm_rt_parse_size", || {
        let t = unsafe { c_text(text, "text") }?;
        let v = crate::limits::parse_size(&t)?;
        if !out.is_null() {
            unsafe { *out = v };
        }
        Ok(())
    });
    unsafe { report(r, error) }
}

/// The modules of `wasm_rt_runtime_new` and `wasm_rt_runtime_check`.
///
/// # Safety
/// The arrays are valid for `n` elements (`fds` may be NULL), their strings
/// NUL-terminated, the descriptors open.
unsafe fn c_specs(
    paths: *const *const c_char,
    fds: *const i32,
    names: *const *const c_char,
    traps: *const i32,
    n: usize,
) -> Result<Vec<ModuleSpec>> {
    let paths = unsafe { c_array(paths, n, "cwasm_paths") }?;
    let fds = if fds.is_null() {
        vec![-1; n]
    } else {
        unsafe { c_array(fds, n, "cwasm_fds") }?.to_vec()
    };
    let names = unsafe { c_array(names, n, "names") }?;
    let traps = unsafe { c_array(traps, n, "trap_unknown_imports") }?;
    (0..n)
        .map(|i| {
            let path = unsafe { c_path(paths[i], "cwasm path") }?;
            let file = if fds[i] < 0 {
                None
            } else {
                // A duplicate: the descriptor stays the caller's.
                // SAFETY: the caller passes an open descriptor.
                let fd = unsafe { BorrowedFd::borrow_raw(fds[i]) };
                let owned = fd.try_clone_to_owned().map_err(|e| {
                    Error::new(
                        Code::Io,
                        format!("descriptor {} of {}: {e}", fds[i], path.display()),
                    )
                })?;
                Some(Arc::new(std::fs::File::from(owned)))
            };
            Ok(ModuleSpec {
                cwasm: Entry { path, file },
                name: unsafe { c_text(names[i], "module name") }?,
                trap_unknown_imports: traps[i] != 0,
            })
        })
        .collect()
}

/// Creates the runtime of a child process.
///
/// # Safety
/// Pointers are NULL or valid as the header describes.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_runtime_new(
    cwasm_paths: *const *const c_char,
    cwasm_fds: *const i32,
    names: *const *const c_char,
    trap_unknown_imports: *const i32,
    n: usize,
    slots: u32,
    shards: u32,
    out: *mut *mut wasm_rt_runtime,
    error: *mut *mut c_char,
) -> i32 {
    let r = guard("wasm_rt_runtime_new", || {
        if out.is_null() {
            return Err(Error::new(Code::InvalidArgument, "out is NULL"));
        }
        let specs = unsafe { c_specs(cwasm_paths, cwasm_fds, names, trap_unknown_imports, n) }?;
        let shards = (shards != 0).then_some(shards);
        let rt = Runtime::new_sharded(&specs, slots, shards, Flavor::default())?;
        unsafe { *out = Box::into_raw(Box::new(rt)) };
        Ok(())
    });
    unsafe { report(r, error) }
}

/// Builds, in a forked child process, the runtime `wasm_rt_runtime_new`
/// would build, and throws it away.
///
/// # Safety
/// Pointers are NULL or valid as the header describes.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_runtime_check(
    cwasm_paths: *const *const c_char,
    cwasm_fds: *const i32,
    names: *const *const c_char,
    trap_unknown_imports: *const i32,
    n: usize,
    slots: u32,
    shards: u32,
    module: *mut i32,
    error: *mut *mut c_char,
) -> i32 {
    if !module.is_null() {
        unsafe { *module = -1 };
    }
    let r = guard("wasm_rt_runtime_check", || {
        let specs = unsafe { c_specs(cwasm_paths, cwasm_fds, names, trap_unknown_imports, n) }?;
        let shards = (shards != 0).then_some(shards);
        check_isolated(&specs, slots, shards, Flavor::default()).map_err(|e| {
            if let (Some(i), false) = (e.module, module.is_null()) {
                unsafe { *module = i32::try_from(i).unwrap_or(-1) };
            }
            e.error
        })
    });
    unsafe { report(r, error) }
}

/// Destroys a runtime.
///
/// # Safety
/// `rt` is NULL or came from `wasm_rt_runtime_new`, and no request runs.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_runtime_free(rt: *mut wasm_rt_runtime) {
    // SAFETY: as the caller promises, `rt` came from `Box::into_raw`.
    unsafe { release("wasm_rt_runtime_free", rt, |rt| drop(Box::from_raw(rt))) }
}

/// This child's status text (see `status.rs`).
///
/// # Safety
/// `rt` is NULL or came from `wasm_rt_runtime_new`; `text` and `error` are
/// NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_status(
    rt: *const wasm_rt_runtime,
    text: *mut *mut c_char,
    error: *mut *mut c_char,
) -> i32 {
    let r = guard("wasm_rt_status", || {
        if rt.is_null() || text.is_null() {
            return Err(Error::new(Code::InvalidArgument, "runtime or text is NULL"));
        }
        let status = unsafe { &*rt }.status_text();
        unsafe { *text = c_message(&status).into_raw() };
        Ok(())
    });
    unsafe { report(r, error) }
}

/// Tells whether a module can read its environment.
///
/// # Safety
/// `rt` is NULL or came from `wasm_rt_runtime_new`; `reads_env` is NULL or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_module_reads_env(
    rt: *const wasm_rt_runtime,
    module: usize,
    reads_env: *mut i32,
) -> i32 {
    let r = guard("wasm_rt_module_reads_env", || {
        if rt.is_null() || reads_env.is_null() {
            return Err(Error::new(
                Code::InvalidArgument,
                "runtime or reads_env is NULL",
            ));
        }
        let reads = unsafe { &*rt }.module_reads_env(module).ok_or_else(|| {
            Error::new(
                Code::InvalidArgument,
                format!("no module with index {module}"),
            )
        })?;
        unsafe { *reads_env = i32::from(reads) };
        Ok(())
    });
    unsafe { report(r, std::ptr::null_mut()) }
}

/// Converts the C request into the runtime's.
unsafe fn request_from_c<'a>(req: &'a wasm_rt_request) -> Result<Request<'a>> {
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
    let entry = if req.entry_point.is_null() {
        None
    } else {
        Some(unsafe { c_text(req.entry_point, "entry point") }?)
    };
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
    Ok(Request {
        args,
        env,
        dirs,
        entry,
        body,
        output,
        limits,
    })
}

fn response(
    result: Result<()>,
    exit_code: i32,
    stdout: Output,
    streamed: usize,
    stderr: Bytes,
    stderr_truncated: bool,
) -> Box<ResponseBox> {
    let (code, message) = match result {
        Ok(()) => (Code::Ok, CString::default()),
        Err(e) => (e.code, c_message(&e.message)),
    };
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
        },
        _chunks: chunks,
        _stdout: stdout,
        _stderr: stderr,
        _message: message,
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
        let failed = |e| response(Err(e), -1, Output::default(), 0, Bytes::new(), false);
        if rt.is_null() || req.is_null() {
            return failed(Error::new(
                Code::InvalidArgument,
                "runtime or request is NULL",
            ));
        }
        match unsafe { request_from_c(&*req) } {
            Err(e) => failed(e),
            Ok(request) => {
                let o = unsafe { &*rt }.run(module, request);
                response(
                    o.result,
                    o.exit_code,
                    o.stdout,
                    o.streamed,
                    o.stderr,
                    o.stderr_truncated,
                )
            }
        }
    }))
    .unwrap_or_else(|_| {
        let e = Error::new(Code::Panic, "wasm_rt_run panicked");
        response(Err(e), -1, Output::default(), 0, Bytes::new(), false)
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
