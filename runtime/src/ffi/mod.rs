//! The C ABI declared in `include/wasm_runtime.h`: the boundary's rules
//! and versions (here), configuration time and a child's runtime
//! (`setup.rs`), and requests (`run.rs`, with what a command module reads
//! of one in `cgi.rs` and a component in `http.rs`).
//!
//! Every entry point catches panics and reports failures as a
//! [`Code`](crate::Code) plus a message; nothing unwinds into Apache. All
//! error reporting crosses the boundary here and nowhere else.

#![allow(non_camel_case_types, reason = "names mirror the C header")]

mod cgi;
mod http;
mod metrics;
mod run;
mod setup;

pub use metrics::*;
pub use run::*;
pub use setup::*;

use std::borrow::Cow;
use std::ffi::{c_char, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use crate::error::{Code, Error, Result};
use crate::runtime::Runtime;

/// Opaque runtime handle handed to C.
pub type wasm_rt_runtime = Runtime;

/// Runs `f`, turning a panic into [`Code::Panic`].
pub(crate) fn guard(what: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(panicked(what, &*p)))
}

/// The error of `what`, which panicked with `payload`.
pub(crate) fn panicked(what: &str, payload: &(dyn std::any::Any + Send)) -> Error {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    Error::new(Code::Panic, format!("{what} panicked: {detail}"))
}

/// Frees what `p` owns with `free`, unless `p` is NULL; a panic in a
/// destructor is caught like any other (there is no caller to tell).
///
/// # Safety
/// `free` must be the right way to release `p`, and `p` not yet released.
pub(crate) unsafe fn release<T>(what: &str, p: *mut T, free: unsafe fn(*mut T)) {
    if !p.is_null() {
        let _ = guard(what, || {
            unsafe { free(p) };
            Ok(())
        });
    }
}

/// A C string for a message; interior NULs (which C could not print) become spaces.
pub(crate) fn c_message(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

/// Stores `r`'s message in `*error` and returns its code.
///
/// # Safety
/// `error` is NULL or valid for a write.
pub(crate) unsafe fn report(r: Result<()>, error: *mut *mut c_char) -> i32 {
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
pub(crate) unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a CStr> {
    if p.is_null() {
        return Err(Error::new(Code::InvalidArgument, format!("{what} is NULL")));
    }
    Ok(unsafe { CStr::from_ptr(p) })
}

/// A path argument: any bytes, as Unix paths are.
pub(crate) unsafe fn c_path(p: *const c_char, what: &str) -> Result<PathBuf> {
    Ok(Path::new(std::ffi::OsStr::from_bytes(
        unsafe { c_str(p, what) }?.to_bytes(),
    ))
    .to_owned())
}

/// A text argument. WASI strings are UTF-8; header values may not be, so
/// invalid sequences become U+FFFD rather than failing the request.
pub(crate) unsafe fn c_text(p: *const c_char, what: &str) -> Result<String> {
    Ok(unsafe { c_str(p, what) }?.to_string_lossy().into_owned())
}

/// The bytes of a C string, borrowed (environment variables: CGI hands a
/// script the bytes the client sent, UTF-8 or not).
///
/// # Safety
/// As [`c_str`]; the string must outlive `'a`.
pub(crate) unsafe fn c_bytes<'a>(p: *const c_char, what: &str) -> Result<Cow<'a, [u8]>> {
    Ok(Cow::Borrowed(unsafe { c_str(p, what) }?.to_bytes()))
}

/// Borrows a C array of `n` elements; NULL is fine when `n` is 0.
pub(crate) unsafe fn c_array<'a, T>(p: *const T, n: usize, what: &str) -> Result<&'a [T]> {
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
pub const ABI_VERSION: u32 = 9;

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

/// Checks one `WasmAllowOutbound` pattern.
///
/// # Safety
/// Pointers are NULL or valid as the header describes.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_outbound_check(
    pattern: *const c_char,
    error: *mut *mut c_char,
) -> i32 {
    let r = guard("wasm_rt_outbound_check", || {
        let p = unsafe { c_text(pattern, "pattern") }?;
        crate::http::outbound::Pattern::parse(&p)
            .map(|_| ())
            .map_err(|e| Error::new(Code::InvalidArgument, e))
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
