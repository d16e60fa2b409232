//! `poll_oneoff` that never blocks the request's thread, so that
//! `WasmTimeout` can stop a guest that sleeps.
//!
//! WASI's preview-1 `poll_oneoff` serves a lone relative clock (what
//! `sleep`, `nanosleep` and `usleep` become) with `std::thread::sleep` when
//! blocking on the current thread is allowed, as it is here for the sake of
//! fast file reads (see `run.rs`). Nothing can interrupt that sleep: a
//! guest sleeping 20 s under `WasmTimeout 3` held its slot for 20 s, and one
//! polling a clock of `~0` never ended. Here that case waits on a Tokio
//! timer instead when the sleep would outlast the request's deadline (which
//! then cancels it); a sleep that ends before the deadline keeps WASI's
//! precise `std::thread::sleep` (Tokio's timer has 1 ms steps: a
//! `nanosleep(0)` would take a millisecond). Every other call goes to WASI's
//! own implementation, whose waits are Tokio futures already.

use std::time::{Duration, Instant};

use wasmtime::{AsContextMut, Caller, Linker, Result};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self, WasiSnapshotPreview1};
use wiggle::GuestMemory;

use super::environ::guest_memory;
use super::host::Host;

const MODULE: &str = "wasi_snapshot_preview1";
const POLL_ONEOFF: &str = "poll_oneoff";

/// Layout of preview 1's `subscription` and `event` (see its witx); both
/// are 8-byte aligned.
const SUBSCRIPTION_SIZE: usize = 48;
const ALIGN: usize = 8;
const EVENTTYPE_CLOCK: u8 = 0;
const SUBCLOCKFLAGS_ABSTIME: u16 = 1;
const EVENT_SIZE: usize = 32;

/// The sleep a `poll_oneoff` call asks for when it is exactly one relative
/// clock subscription: `(userdata, duration)`.
fn lone_relative_clock(subs: &[u8]) -> Option<(u64, Duration)> {
    let sub: &[u8; SUBSCRIPTION_SIZE] = subs.try_into().ok()?;
    let u64_at = |o: usize| u64::from_le_bytes(sub[o..o + 8].try_into().unwrap());
    let flags = u16::from_le_bytes([sub[40], sub[41]]);
    (sub[8] == EVENTTYPE_CLOCK && flags & SUBCLOCKFLAGS_ABSTIME == 0)
        .then(|| (u64_at(0), Duration::from_nanos(u64_at(24))))
}

/// The `event` that reports a clock subscription as done, as WASI's own
/// fast path writes it.
fn clock_event(userdata: u64) -> [u8; EVENT_SIZE] {
    let mut event = [0u8; EVENT_SIZE];
    event[..8].copy_from_slice(&userdata.to_le_bytes());
    // error = success (0); type = clock; fd_readwrite.nbytes = 1.
    event[10] = EVENTTYPE_CLOCK;
    event[16..24].copy_from_slice(&1u64.to_le_bytes());
    event
}

/// Sleeps `duration`: on this thread when that ends before `deadline`, else
/// on a timer that the run's deadline cancels.
async fn sleep(duration: Duration, deadline: Instant) {
    let now = Instant::now();
    if now.checked_add(duration).is_some_and(|end| end <= deadline) {
        std::thread::sleep(duration);
    } else {
        tokio::time::sleep(duration).await;
    }
}

/// Replaces WASI's `poll_oneoff` in `linker` with one whose sleeps can be
/// cancelled.
pub fn add_to_linker(linker: &mut Linker<Host>) -> Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        MODULE,
        POLL_ONEOFF,
        |mut caller: Caller<'_, Host>, (subs, events, n, out): (i32, i32, i32, i32)| {
            Box::new(async move {
                let memory = guest_memory(&mut caller)?;
                let (at, ev, nout) = (
                    subs as u32 as usize,
                    events as u32 as usize,
                    out as u32 as usize,
                );
                // Misaligned pointers go to WASI, which refuses them.
                let aligned = at % ALIGN == 0 && ev % ALIGN == 0 && nout % 4 == 0;
                let lone = (n == 1 && aligned)
                    .then(|| {
                        memory
                            .data(&caller)
                            .get(at..at.saturating_add(SUBSCRIPTION_SIZE))
                            .and_then(lone_relative_clock)
                    })
                    .flatten();
                if let Some((userdata, duration)) = lone {
                    sleep(duration, caller.data().deadline).await;
                    let data = memory.data_mut(&mut caller);
                    let fits = |at: usize, len: usize| at.saturating_add(len) <= data.len();
                    if !fits(ev, EVENT_SIZE) || !fits(nout, 4) {
                        return Ok(i32::from(ERRNO_FAULT));
                    }
                    data[ev..ev + EVENT_SIZE].copy_from_slice(&clock_event(userdata));
                    data[nout..nout + 4].copy_from_slice(&1u32.to_le_bytes());
                    return Ok(0);
                }
                // What WASI's own bindings do before each call: the fuel
                // bounds how much guest memory one call may copy, and is
                // not refilled by anything else.
                let fuel = caller.as_context_mut().hostcall_fuel();
                let (data, host) = memory.data_and_store_mut(&mut caller);
                host.wasi.set_hostcall_fuel(fuel);
                let mut mem = GuestMemory::Unshared(data);
                wasi_snapshot_preview1::poll_oneoff(&mut host.wasi, &mut mem, subs, events, n, out)
                    .await
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// WASI errno `fault`: a pointer outside the guest's memory.
const ERRNO_FAULT: u16 = 21;

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(tag: u8, timeout: u64, flags: u16) -> [u8; SUBSCRIPTION_SIZE] {
        let mut s = [0u8; SUBSCRIPTION_SIZE];
        s[..8].copy_from_slice(&7u64.to_le_bytes());
        s[8] = tag;
        s[24..32].copy_from_slice(&timeout.to_le_bytes());
        s[40..42].copy_from_slice(&flags.to_le_bytes());
        s
    }

    #[test]
    fn only_a_relative_clock_is_a_sleep() {
        assert_eq!(
            lone_relative_clock(&subscription(0, 1_500, 0)),
            Some((7, Duration::from_nanos(1_500)))
        );
        assert_eq!(lone_relative_clock(&subscription(0, 1_500, 1)), None);
        assert_eq!(lone_relative_clock(&subscription(1, 1_500, 0)), None);
        assert_eq!(lone_relative_clock(&[0u8; 40]), None);
    }

    #[test]
    fn the_event_reports_the_subscription() {
        let e = clock_event(0x0102_0304_0506_0708);
        assert_eq!(&e[..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!((e[8], e[9], e[10]), (0, 0, EVENTTYPE_CLOCK));
        assert_eq!(&e[16..24], &1u64.to_le_bytes());
    }
}
