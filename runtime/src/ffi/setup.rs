//! The entry points of configuration time and of a child's life: compiling
//! into the cache and cleaning it, building the child's runtime (or
//! checking, at configuration time, that it can be built), what a module
//! is, and the status page.

use std::ffi::c_char;
use std::ffi::CString;
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use super::{c_array, c_message, c_path, c_text, guard, release, report, wasm_rt_runtime};
use crate::cache::{Entry, Options};
use crate::engine::EngineOptions;
use crate::error::{Code, Error, Result};
use crate::executor::Kind;
use crate::forked::{check_forked, precompile_forked};
use crate::runtime::{ModuleSpec, Runtime, RuntimeOptions};

/// See `wasm_rt_compile_options` in the header.
#[repr(C)]
pub struct wasm_rt_compile_options {
    /// The `.wasm` to compile.
    pub wasm_path: *const c_char,
    /// The cache directory.
    pub cache_dir: *const c_char,
    /// Non-zero: imports mod_wasm does not provide become trapping functions.
    pub trap_unknown_imports: i32,
    /// Non-zero: for an engine with the component model's concurrency (see
    /// `wasm_rt_needs_concurrency`).
    pub concurrency: i32,
}

/// See `wasm_rt_compiled` in the header.
#[repr(C)]
pub struct wasm_rt_compiled {
    /// The entry's path (the caller frees it).
    pub cwasm_path: *mut c_char,
    /// The entry, open and checked (the caller closes it).
    pub cwasm_fd: i32,
    /// 1 if nothing was compiled.
    pub cache_hit: i32,
    /// Time taken.
    pub millis: u64,
    /// NULL, or why an existing entry was compiled again (the caller frees it).
    pub replaced: *mut c_char,
}

/// Compiles a module into the cache, in a forked child process, and opens
/// the entry, checked against its digest, for the caller to keep.
///
/// # Safety
/// Pointers are NULL or valid as the header describes.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_precompile(
    opts: *const wasm_rt_compile_options,
    out: *mut wasm_rt_compiled,
    error: *mut *mut c_char,
) -> i32 {
    if !out.is_null() {
        // SAFETY: as the caller promises.
        unsafe {
            out.write(wasm_rt_compiled {
                cwasm_path: ptr::null_mut(),
                cwasm_fd: -1,
                cache_hit: 0,
                millis: 0,
                replaced: ptr::null_mut(),
            })
        };
    }
    let r = guard("wasm_rt_precompile", || {
        if opts.is_null() || out.is_null() {
            return Err(Error::new(Code::InvalidArgument, "opts or out is NULL"));
        }
        let o = unsafe { &*opts };
        let wasm = unsafe { c_path(o.wasm_path, "wasm_path") }?;
        let cache = unsafe { c_path(o.cache_dir, "cache_dir") }?;
        let options = Options {
            trap_unknown_imports: o.trap_unknown_imports != 0,
            engine: engine_options(o.concurrency),
            check_only: false,
        };
        let compiled = precompile_forked(&wasm, &cache, &options)?;
        let path = CString::new(compiled.cwasm.path.as_os_str().as_bytes())
            .map_err(|_| Error::new(Code::Internal, "cache path contains NUL"))?;
        // The only reference: precompile_forked just opened it.
        let file = compiled
            .cwasm
            .file
            .and_then(|f| Arc::try_unwrap(f).ok())
            .ok_or_else(|| Error::new(Code::Internal, "the checked entry is not open"))?;
        let result = wasm_rt_compiled {
            cwasm_path: path.into_raw(),
            cwasm_fd: file.into_raw_fd(),
            cache_hit: i32::from(compiled.hit),
            millis: compiled.millis,
            replaced: compiled
                .replaced
                .map_or(ptr::null_mut(), |why| c_message(&why).into_raw()),
        };
        unsafe { out.write(result) };
        Ok(())
    });
    unsafe { report(r, error) }
}

/// Production engines, with the component model's concurrency if the C
/// side's `concurrency` says so: compiling and running must agree.
fn engine_options(concurrency: i32) -> EngineOptions {
    EngineOptions {
        concurrency: concurrency != 0,
        ..EngineOptions::default()
    }
}

/// Whether the module at `wasm_path` needs engines with the component
/// model's concurrency; see [`crate::http::needs_concurrency`].
///
/// # Safety
/// Pointers are NULL or valid as the header describes.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_needs_concurrency(
    wasm_path: *const c_char,
    out: *mut i32,
    error: *mut *mut c_char,
) -> i32 {
    let r = guard("wasm_rt_needs_concurrency", || {
        if out.is_null() {
            return Err(Error::new(Code::InvalidArgument, "out is NULL"));
        }
        let path = unsafe { c_path(wasm_path, "wasm_path") }?;
        let wasm = std::fs::read(&path)
            .map_err(|e| Error::new(Code::Io, format!("cannot read {}: {e}", path.display())))?;
        unsafe { out.write(i32::from(crate::http::needs_concurrency(&wasm))) };
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

/// See `wasm_rt_module_spec` in the header.
#[repr(C)]
pub struct wasm_rt_module_spec {
    /// The cache entry's path.
    pub cwasm_path: *const c_char,
    /// The entry, open (duplicated, not taken), or -1 to open it by path.
    pub cwasm_fd: i32,
    /// Non-zero: imports mod_wasm does not provide become trapping functions.
    pub trap_unknown_imports: i32,
    /// How log messages name the module.
    pub name: *const c_char,
}

/// See `wasm_rt_runtime_options` in the header.
#[repr(C)]
pub struct wasm_rt_runtime_options {
    /// The modules, in the order of their indexes.
    pub modules: *const wasm_rt_module_spec,
    /// How many.
    pub n_modules: usize,
    /// Instance slots in all.
    pub slots: u32,
    /// Engines the slots are spread over; 0: one per CPU.
    pub shards: u32,
    /// Non-zero: engines with the component model's concurrency, as the
    /// modules were compiled for.
    pub concurrency: i32,
    /// Bytes of each memory and table a slot keeps resident; 0: the
    /// runtime's default.
    pub keep_resident: u64,
}

/// The modules and options of `wasm_rt_runtime_new` and `wasm_rt_runtime_check`.
///
/// # Safety
/// `opts` is valid as the header describes: its array valid for
/// `n_modules` elements, their strings NUL-terminated, the descriptors open.
unsafe fn from_c(
    opts: *const wasm_rt_runtime_options,
) -> Result<(Vec<ModuleSpec>, RuntimeOptions)> {
    if opts.is_null() {
        return Err(Error::new(Code::InvalidArgument, "opts is NULL"));
    }
    let o = unsafe { &*opts };
    let specs = unsafe { c_array(o.modules, o.n_modules, "modules") }?
        .iter()
        .map(|m| {
            let path = unsafe { c_path(m.cwasm_path, "cwasm path") }?;
            let file = if m.cwasm_fd < 0 {
                None
            } else {
                // A duplicate: the descriptor stays the caller's.
                // SAFETY: the caller passes an open descriptor.
                let fd = unsafe { BorrowedFd::borrow_raw(m.cwasm_fd) };
                let owned = fd.try_clone_to_owned().map_err(|e| {
                    Error::new(
                        Code::Io,
                        format!("descriptor {} of {}: {e}", m.cwasm_fd, path.display()),
                    )
                })?;
                Some(Arc::new(std::fs::File::from(owned)))
            };
            Ok(ModuleSpec {
                cwasm: Entry { path, file },
                name: unsafe { c_text(m.name, "module name") }?,
                trap_unknown_imports: m.trap_unknown_imports != 0,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let options = RuntimeOptions {
        shards: (o.shards != 0).then_some(o.shards),
        engine: engine_options(o.concurrency),
        keep_resident: (o.keep_resident != 0)
            .then(|| usize::try_from(o.keep_resident).unwrap_or(usize::MAX)),
        ..RuntimeOptions::with_slots(o.slots)
    };
    Ok((specs, options))
}

/// Creates the runtime of a child process.
///
/// # Safety
/// Pointers are NULL or valid as the header describes.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_runtime_new(
    opts: *const wasm_rt_runtime_options,
    out: *mut *mut wasm_rt_runtime,
    error: *mut *mut c_char,
) -> i32 {
    let r = guard("wasm_rt_runtime_new", || {
        if out.is_null() {
            return Err(Error::new(Code::InvalidArgument, "out is NULL"));
        }
        let (specs, options) = unsafe { from_c(opts) }?;
        let rt = Runtime::new(&specs, &options)?;
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
    opts: *const wasm_rt_runtime_options,
    module: *mut i32,
    error: *mut *mut c_char,
) -> i32 {
    if !module.is_null() {
        unsafe { *module = -1 };
    }
    let r = guard("wasm_rt_runtime_check", || {
        let (specs, options) = unsafe { from_c(opts) }?;
        check_forked(&specs, &options).map_err(|e| {
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

/// See `wasm_rt_module_info` in the header.
#[repr(C)]
pub struct wasm_rt_module_info {
    /// A `wasm_rt_kind`: how requests run the module.
    pub kind: i32,
    /// 1 when the module imports WASI's environment calls.
    pub reads_env: i32,
}

/// The `wasm_rt_kind` values, in the header's order.
pub const KINDS: &[(&str, Kind)] = &[
    ("WASM_RT_KIND_COMMAND", Kind::Command),
    ("WASM_RT_KIND_HTTP", Kind::Http),
];

/// What a loaded module is.
///
/// # Safety
/// `rt` is NULL or came from `wasm_rt_runtime_new`; `out` is NULL or valid
/// for a write.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_module_info_get(
    rt: *const wasm_rt_runtime,
    module: usize,
    out: *mut wasm_rt_module_info,
) -> i32 {
    let r = guard("wasm_rt_module_info_get", || {
        if rt.is_null() || out.is_null() {
            return Err(Error::new(Code::InvalidArgument, "runtime or out is NULL"));
        }
        let m = unsafe { &*rt }.module(module).ok_or_else(|| {
            Error::new(
                Code::InvalidArgument,
                format!("no module with index {module}"),
            )
        })?;
        let info = wasm_rt_module_info {
            kind: m.kind() as i32,
            reads_env: i32::from(m.reads_env()),
        };
        unsafe { out.write(info) };
        Ok(())
    });
    unsafe { report(r, std::ptr::null_mut()) }
}
