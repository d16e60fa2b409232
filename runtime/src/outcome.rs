//! How a guest's run ended, sorted into the classes the server reports
//! (see [`Code`]): the same for every kind of module.

use std::time::Duration;

use wasmtime::component::ResourceTableError;
use wasmtime::{Trap, WasmBacktrace};
use wasmtime_wasi::I32Exit;

use crate::error::{chain, Code, Error, Result};
use crate::limits::Limits;

/// The error of a run stopped by `WasmTimeout`.
pub(crate) fn timed_out(name: &str, timeout: Duration) -> Error {
    Error::new(
        Code::Timeout,
        format!("{name}: the guest ran longer than {timeout:?} (WasmTimeout) and was stopped"),
    )
}

/// Sorts a failed run of module `name` into a result and an exit status
/// (-1 when the guest did not exit).
pub(crate) fn classify(name: &str, e: wasmtime::Error, limits: &Limits) -> (Result<()>, i32) {
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
