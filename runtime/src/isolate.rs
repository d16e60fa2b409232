//! Compilation in a throw-away child process.
//!
//! Apache's parent process must stay free of Wasmtime state: creating an
//! engine installs signal handlers once per process (Apache then replaces
//! them, and children would inherit handlers that kill them on every guest
//! trap), and parallel compilation leaves threads behind that a `fork` does
//! not carry over. So the parent forks, the child compiles and reports back
//! through a pipe, and exits.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use crate::cache::{precompile_with, Compiled, Options};
use crate::error::{Code, Error, Result};

/// [`precompile_with`] run in a forked child process.
///
/// # Errors
/// Whatever [`precompile_with`] returns, and [`Code::Internal`] when the child
/// cannot be started or dies without an answer.
pub fn precompile_isolated(wasm_path: &Path, cache_dir: &Path, opts: &Options) -> Result<Compiled> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_error("pipe"));
    }
    // SAFETY: the child only runs the compiler and then `_exit`s; Apache's
    // parent is single-threaded while it reads its configuration.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = os_error("fork");
        // SAFETY: both descriptors are ours and open.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        return Err(e);
    }
    if pid == 0 {
        // SAFETY: we are the child; the write end is ours.
        unsafe { libc::close(fds[0]) };
        let mut out = unsafe { File::from_raw_fd(fds[1]) };
        let reply = catch_unwind(AssertUnwindSafe(|| {
            compile_here(wasm_path, cache_dir, opts)
        }))
        .unwrap_or_else(|_| Err(Error::new(Code::Panic, "the compiler panicked")));
        let _ = out.write_all(encode(&reply).as_bytes());
        drop(out);
        // SAFETY: leave without running the parent's atexit handlers or
        // flushing its stdio buffers a second time.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: we are the parent; the read end is ours.
    unsafe { libc::close(fds[1]) };
    let mut reply = String::new();
    let read = unsafe { File::from_raw_fd(fds[0]) }.read_to_string(&mut reply);
    let status = wait(pid);
    match (read, decode(&reply)) {
        (Ok(_), Some(result)) => result,
        _ => Err(Error::new(
            Code::Internal,
            format!(
                "the compiler process for {} ended without an answer ({status})",
                wasm_path.display()
            ),
        )),
    }
}

/// Compiles with a thread pool of our own: if the forking process had
/// already used rayon's global pool, that pool's threads did not survive the
/// fork, and compiling on it would wait for them forever.
fn compile_here(wasm_path: &Path, cache_dir: &Path, opts: &Options) -> Result<Compiled> {
    let pool = rayon::ThreadPoolBuilder::new().build().map_err(|e| {
        Error::new(
            Code::Internal,
            format!("cannot start compiler threads: {e}"),
        )
    })?;
    pool.install(|| precompile_with(wasm_path, cache_dir, opts))
}

fn os_error(what: &str) -> Error {
    Error::new(
        Code::Internal,
        format!("{what} failed: {}", std::io::Error::last_os_error()),
    )
}

/// Reaps `pid` and describes how it ended.
fn wait(pid: libc::pid_t) -> String {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            // ECHILD when SIGCHLD is ignored: the pipe is the only witness.
            return format!("not reaped: {err}");
        }
    }
    if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("exit status {}", libc::WEXITSTATUS(status))
    }
}

/// One line per field: code, hit, millis, then path or message (which may
/// hold anything but is last, so it needs no escaping).
fn encode(r: &Result<Compiled>) -> String {
    match r {
        Ok(c) => format!(
            "0\n{}\n{}\n{}",
            u8::from(c.hit),
            c.millis,
            c.cwasm.display()
        ),
        Err(e) => format!("{}\n0\n0\n{}", e.code as i32, e.message),
    }
}

fn decode(s: &str) -> Option<Result<Compiled>> {
    let mut parts = s.splitn(4, '\n');
    let code: i32 = parts.next()?.parse().ok()?;
    let hit = parts.next()? == "1";
    let millis = parts.next()?.parse().ok()?;
    let rest = parts.next()?.to_owned();
    if code == 0 {
        return Some(Ok(Compiled {
            cwasm: PathBuf::from(rest),
            hit,
            millis,
        }));
    }
    let code = Code::ALL.into_iter().find(|c| *c as i32 == code)?;
    Some(Err(Error::new(code, rest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_round_trips() {
        let compiled = Compiled {
            cwasm: PathBuf::from("/c/a b\nc.cwasm"),
            hit: true,
            millis: 12,
        };
        let back = decode(&encode(&Ok(compiled.clone()))).unwrap().unwrap();
        assert_eq!(back, compiled);
        let err: Result<Compiled> = Err(Error::new(Code::Link, "missing:\n env::a"));
        let back = decode(&encode(&err)).unwrap().unwrap_err();
        assert_eq!(back.code, Code::Link);
        assert_eq!(back.message, "missing:\n env::a");
        assert!(decode("").is_none());
    }

    #[test]
    fn compiles_in_a_child_process() {
        let d = std::env::temp_dir().join(format!("wasm-rt-isolate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let m = d.join("m.wasm");
        std::fs::write(
            &m,
            wat::parse_str("(module (func (export \"_start\")))").unwrap(),
        )
        .unwrap();
        let c = precompile_isolated(&m, &d.join("cache"), &Options::default()).unwrap();
        assert!(!c.hit && c.cwasm.is_file());
        assert!(
            precompile_isolated(&m, &d.join("cache"), &Options::default())
                .unwrap()
                .hit
        );
        let e = precompile_isolated(&d.join("none.wasm"), &d.join("cache"), &Options::default())
            .unwrap_err();
        assert_eq!(e.code, Code::Io);
    }
}
