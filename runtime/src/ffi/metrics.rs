//! The server-wide metrics table (`metrics/`) across the boundary: the
//! parent lays it out in the shared memory the shim creates and binds the
//! configured modules to entries; each child joins it, counts its requests
//! in it and publishes its pool's figures; any process reads it out.

use std::ffi::c_char;

use super::{c_array, c_message, c_text, guard, report};
use crate::error::{Code, Error, Result};
use crate::metrics::{render, ChildCounts, Format, Outcome, Snapshot, Table};
use crate::runtime::Runtime;

/// See `wasm_rt_metrics` in the header: a child's place in the table.
pub struct wasm_rt_metrics {
    table: Table,
    child: Option<usize>,
    pid: u64,
}

/// See `wasm_rt_metrics_shm` in the header: where the table is, and the
/// sizes it was made with (kept by the caller, never read back from the
/// shared memory).
#[repr(C)]
pub struct wasm_rt_metrics_shm {
    /// Its first byte.
    pub base: *mut u8,
    /// Its length, bytes.
    pub len: usize,
    /// Module entries.
    pub modules: u32,
    /// Child entries.
    pub children: u32,
}

/// See `wasm_rt_metrics_key` in the header.
#[repr(C)]
pub struct wasm_rt_metrics_key {
    /// The section the module is configured in.
    pub location: *const c_char,
    /// The module's file.
    pub file: *const c_char,
}

/// The `wasm_rt_metrics_format` values, in the header's order.
pub const FORMATS: &[(&str, Format)] = &[
    ("WASM_RT_METRICS_TEXT", Format::Text),
    ("WASM_RT_METRICS_JSON", Format::Json),
    ("WASM_RT_METRICS_PROMETHEUS", Format::Prometheus),
    ("WASM_RT_METRICS_STATUS_HTML", Format::StatusHtml),
    ("WASM_RT_METRICS_STATUS_AUTO", Format::StatusAuto),
];

/// Whether process `pid` runs (a child that died leaves its entry behind).
fn alive(pid: u64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let sent = unsafe { libc::kill(pid, 0) };
    sent == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The table `shm` describes, or why there is none.
unsafe fn attach(shm: *const wasm_rt_metrics_shm) -> Result<Table> {
    let Some(shm) = (unsafe { shm.as_ref() }) else {
        return Err(Error::new(Code::InvalidArgument, "shm is NULL"));
    };
    unsafe {
        Table::attach(
            shm.base,
            shm.len,
            shm.modules as usize,
            shm.children as usize,
        )
    }
    .ok_or_else(|| {
        Error::new(
            Code::InvalidArgument,
            "the shared memory holds no metrics table of these sizes and this version",
        )
    })
}

/// The bytes of a table with room for `modules` modules and `children`
/// children; 0 when that is more than an address space holds.
#[no_mangle]
pub extern "C" fn wasm_rt_metrics_size(modules: u32, children: u32) -> usize {
    crate::metrics::size(modules as usize, children as usize).unwrap_or(0)
}

/// Lays a table out in the zeroed memory `shm` describes.
///
/// # Safety
/// `shm` is NULL or valid, its memory zeroed; `error` NULL or valid for a
/// write.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_metrics_create(
    shm: *const wasm_rt_metrics_shm,
    error: *mut *mut c_char,
) -> i32 {
    let r = guard("wasm_rt_metrics_create", || {
        let Some(shm) = (unsafe { shm.as_ref() }) else {
            return Err(Error::new(Code::InvalidArgument, "shm is NULL"));
        };
        let (base, len, modules, children) = (shm.base, shm.len, shm.modules, shm.children);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        unsafe { Table::create(base, len, modules as usize, children as usize, now) }
            .map(|_| ())
            .ok_or_else(|| {
                Error::new(
                    Code::InvalidArgument,
                    "the metrics memory is NULL, misaligned or too small",
                )
            })
    });
    unsafe { report(r, error) }
}

/// Starts a new generation and binds the `n` modules of `keys` to entries,
/// written to `entries` (-1 where the table is full).
///
/// # Safety
/// `shm` NULL or valid; `keys` and `entries` valid for `n`.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_metrics_bind(
    shm: *const wasm_rt_metrics_shm,
    keys: *const wasm_rt_metrics_key,
    n: usize,
    entries: *mut i32,
    error: *mut *mut c_char,
) -> i32 {
    let r = guard("wasm_rt_metrics_bind", || {
        let table = unsafe { attach(shm) }?;
        let keys = unsafe { c_array(keys, n, "keys") }?;
        if entries.is_null() && n > 0 {
            return Err(Error::new(Code::InvalidArgument, "entries is NULL"));
        }
        let texts = keys
            .iter()
            .map(|k| {
                Ok((unsafe { c_text(k.location, "location") }?, unsafe {
                    c_text(k.file, "file")
                }?))
            })
            .collect::<Result<Vec<_>>>()?;
        let pairs: Vec<(&str, &str)> = texts
            .iter()
            .map(|(l, f)| (l.as_str(), f.as_str()))
            .collect();
        for (i, e) in table.bind(&pairs).into_iter().enumerate() {
            let v = e.map_or(-1, |e| i32::try_from(e).unwrap_or(-1));
            unsafe { *entries.add(i) = v };
        }
        Ok(())
    });
    unsafe { report(r, error) }
}

/// Joins the table `shm` describes as process `pid`.
///
/// # Safety
/// `shm` NULL or valid, its memory mapped for as long as the handle lives;
/// `out` and `error` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_metrics_open(
    shm: *const wasm_rt_metrics_shm,
    pid: u64,
    out: *mut *mut wasm_rt_metrics,
    error: *mut *mut c_char,
) -> i32 {
    let r = guard("wasm_rt_metrics_open", || {
        if out.is_null() {
            return Err(Error::new(Code::InvalidArgument, "out is NULL"));
        }
        let table = unsafe { attach(shm) }?;
        // A child of a full table still counts requests, unseen as a child.
        let child = table.join(pid, table.generation(), alive);
        unsafe { *out = Box::into_raw(Box::new(wasm_rt_metrics { table, child, pid })) };
        Ok(())
    });
    unsafe { report(r, error) }
}

/// Leaves the table and frees the handle.
///
/// # Safety
/// `m` is NULL or came from `wasm_rt_metrics_open`.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_metrics_close(m: *mut wasm_rt_metrics) {
    unsafe {
        super::release("wasm_rt_metrics_close", m, |m| {
            let m = Box::from_raw(m);
            if let Some(c) = m.child {
                m.table.leave(c, m.pid);
            }
        })
    }
}

/// This child's figures from its runtime.
fn child_counts(rt: &Runtime) -> ChildCounts {
    let shards = rt.shard_status();
    ChildCounts {
        slots: shards.iter().map(|s| u64::from(s.slots)).sum(),
        busy: shards.iter().map(|s| u64::from(s.busy)).sum(),
        kept: shards.iter().map(|s| u64::from(s.kept)).sum(),
        engines: shards.len() as u64,
        requests: shards.iter().map(|s| s.served).sum(),
        ..ChildCounts::default()
    }
}

/// Counts one finished request of entry `entry` and publishes this
/// child's figures (from `rt`, when not NULL). Returns the outcome's name
/// (static storage), NULL when `m` is NULL.
///
/// # Safety
/// `m` and `rt` are NULL or came from their constructors.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_metrics_record(
    m: *const wasm_rt_metrics,
    rt: *const Runtime,
    entry: i32,
    code: i32,
    status: i32,
    run_us: u64,
    bytes_in: u64,
    bytes_out: u64,
) -> *const c_char {
    let mut name: *const c_char = std::ptr::null();
    let _ = guard("wasm_rt_metrics_record", || {
        let Some(m) = (unsafe { m.as_ref() }) else {
            return Ok(());
        };
        let code = Code::from_i32(code).unwrap_or(Code::Internal);
        let outcome = Outcome::of(code, status);
        if let Ok(e) = usize::try_from(entry) {
            m.table.record(e, outcome, run_us, bytes_in, bytes_out);
        }
        if let (Some(c), Some(rt)) = (m.child, unsafe { rt.as_ref() }) {
            m.table.publish(c, &child_counts(rt));
        }
        name = outcome.c_name().as_ptr();
        Ok(())
    });
    name
}

/// The table `shm` describes in form `format` (a `wasm_rt_metrics_format`).
///
/// # Safety
/// `shm` NULL or valid; `out` and `error` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn wasm_rt_metrics_render(
    shm: *const wasm_rt_metrics_shm,
    format: i32,
    out: *mut *mut c_char,
    error: *mut *mut c_char,
) -> i32 {
    let r = guard("wasm_rt_metrics_render", || {
        if out.is_null() {
            return Err(Error::new(Code::InvalidArgument, "out is NULL"));
        }
        let table = unsafe { attach(shm) }?;
        let format = usize::try_from(format)
            .ok()
            .and_then(|i| FORMATS.get(i))
            .ok_or_else(|| Error::new(Code::InvalidArgument, format!("no format {format}")))?
            .1;
        let snap = Snapshot {
            generation: table.generation(),
            created: table.created(),
            modules: table.modules(),
            children: table.children(alive),
        };
        unsafe { *out = c_message(&render(&snap, format)).into_raw() };
        Ok(())
    });
    unsafe { report(r, error) }
}
