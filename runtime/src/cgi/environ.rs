//! The guest's environment, served by our own `environ_sizes_get` and
//! `environ_get`.
//!
//! WASI's implementation keeps the variables as two `String`s each and
//! clones the whole list on both calls: with the 22 variables of a CGI
//! request that is ~130 allocations, a large part of a small request (a
//! guest that calls `getenv` took 8.2 µs with 10 variables and 53 µs with
//! 200). Here the variables are laid out once, in the form the guest
//! receives them, and each call is a bounds check and a copy.

use wasmtime::{Caller, Extern, Linker, Memory, Result};

use super::host::Host;

/// WASI errno `success`.
const SUCCESS: i32 = 0;
/// WASI errno `overflow`: the environment does not fit in 32 bits.
const OVERFLOW: i32 = 61;
const MODULE: &str = "wasi_snapshot_preview1";
const SIZES_GET: &str = "environ_sizes_get";
const GET: &str = "environ_get";

/// An environment as `environ_get` hands it over: `NAME=value\0` for each
/// variable, in one buffer.
#[derive(Debug, Default)]
pub struct Environ {
    count: usize,
    bytes: Vec<u8>,
}

impl Environ {
    /// Lays out `vars`, byte for byte. A variable with a NUL byte in it
    /// cannot be represented in a C environment and is left out.
    pub fn new<K: AsRef<[u8]>, V: AsRef<[u8]>>(vars: &[(K, V)]) -> Environ {
        let usable = |k: &[u8], v: &[u8]| !k.contains(&0) && !v.contains(&0);
        let len = vars
            .iter()
            .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 2)
            .sum();
        let mut env = Environ {
            count: 0,
            bytes: Vec::with_capacity(len),
        };
        for (k, v) in vars {
            let (k, v) = (k.as_ref(), v.as_ref());
            if usable(k, v) {
                env.bytes.extend_from_slice(k);
                env.bytes.push(b'=');
                env.bytes.extend_from_slice(v);
                env.bytes.push(0);
                env.count += 1;
            }
        }
        env
    }
}

/// Whether `module` imports either of WASI's environment calls.
pub fn imported_by(module: &wasmtime::Module) -> bool {
    module
        .imports()
        .any(|i| i.module() == MODULE && matches!(i.name(), SIZES_GET | GET))
}

/// Replaces WASI's two environment calls in `linker` with ours.
pub fn add_to_linker(linker: &mut Linker<Host>) -> Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap(MODULE, SIZES_GET, environ_sizes_get)?;
    linker.func_wrap(MODULE, GET, environ_get)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Stores the number of variables at `count_ptr` and the buffer size
/// `environ_get` needs at `size_ptr`.
fn environ_sizes_get(mut caller: Caller<'_, Host>, count_ptr: i32, size_ptr: i32) -> Result<i32> {
    let memory = guest_memory(&mut caller)?;
    let (data, host) = memory.data_and_store_mut(&mut caller);
    let env = &host.environ;
    let (Ok(count), Ok(size)) = (u32::try_from(env.count), u32::try_from(env.bytes.len())) else {
        return Ok(OVERFLOW);
    };
    store_u32(data, count_ptr as u32, count)?;
    store_u32(data, size_ptr as u32, size)?;
    Ok(SUCCESS)
}

/// Copies the variables to `buf` and a pointer to each to `environ`.
fn environ_get(mut caller: Caller<'_, Host>, environ: i32, buf: i32) -> Result<i32> {
    let memory = guest_memory(&mut caller)?;
    let (data, host) = memory.data_and_store_mut(&mut caller);
    let bytes = &host.environ.bytes;
    if bytes.is_empty() {
        // Nothing to write, so no pointer is dereferenced (as in WASI's own).
        return Ok(SUCCESS);
    }
    let Ok(len) = u32::try_from(bytes.len()) else {
        return Ok(OVERFLOW);
    };
    let start = buf as u32;
    guest_slice(data, start, len)?.copy_from_slice(bytes);
    let (mut slot, mut at) = (environ as u32, start);
    for entry in bytes.split_inclusive(|&b| b == 0) {
        store_u32(data, slot, at)?;
        slot = slot.checked_add(4).ok_or_else(|| out_of_bounds(slot, 4))?;
        // Past the last entry this may reach 4 GiB, which is never stored.
        at = at.wrapping_add(entry.len() as u32);
    }
    Ok(SUCCESS)
}

/// The guest's exported memory, as WASI's own calls find it.
/// The guest's `memory` export, which WASI calls read and write.
pub(crate) fn guest_memory(caller: &mut Caller<'_, Host>) -> Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(wasmtime::Error::msg(
            "the guest exports no memory for WASI to use",
        )),
    }
}

/// `len` bytes of guest memory at `ptr`; a range outside memory traps, as
/// WASI requires of an out-of-bounds pointer.
fn guest_slice(data: &mut [u8], ptr: u32, len: u32) -> Result<&mut [u8]> {
    let start = ptr as usize;
    start
        .checked_add(len as usize)
        .and_then(|end| data.get_mut(start..end))
        .ok_or_else(|| out_of_bounds(ptr, len))
}

fn out_of_bounds(ptr: u32, len: u32) -> wasmtime::Error {
    wasmtime::Error::msg(format!(
        "environment pointer {ptr:#x}+{len} is out of bounds"
    ))
}

/// Stores a little-endian u32 at `ptr`, which must be 4-byte aligned (WASI
/// traps on a misaligned pointer).
fn store_u32(data: &mut [u8], ptr: u32, value: u32) -> Result<()> {
    if !ptr.is_multiple_of(4) {
        return Err(wasmtime::Error::msg(format!(
            "environment pointer {ptr:#x} is not aligned"
        )));
    }
    guest_slice(data, ptr, 4)?.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_laid_out_as_the_guest_receives_them() {
        let env = Environ::new(&[("A", "1"), ("B", "two=2"), ("C", "")]);
        assert_eq!(env.count, 3);
        assert_eq!(env.bytes, b"A=1\0B=two=2\0C=\0");
    }

    #[test]
    fn a_variable_with_a_nul_is_left_out() {
        let env = Environ::new(&[("A", "x\0y"), ("B", "2")]);
        assert_eq!(env.count, 1);
        assert_eq!(env.bytes, b"B=2\0");
    }

    #[test]
    fn pointers_out_of_bounds_or_misaligned_are_refused() {
        let mut mem = vec![0u8; 16];
        assert!(store_u32(&mut mem, 12, 7).is_ok());
        assert_eq!(&mem[12..], &7u32.to_le_bytes());
        assert!(store_u32(&mut mem, 16, 7).is_err());
        assert!(store_u32(&mut mem, 2, 7).is_err());
        assert!(store_u32(&mut mem, u32::MAX - 3, 7).is_err());
        assert!(guest_slice(&mut mem, u32::MAX, 2).is_err());
    }
}
