//! The configuration-time work done in forked, throw-away processes:
//! compiling into the cache, and building (then dropping) the runtime every
//! child will build.
//!
//! Apache's parent process must stay free of Wasmtime state: creating an
//! engine installs signal handlers once per process (Apache then replaces
//! them, and children would inherit handlers that kill them on every guest
//! trap), and parallel compilation leaves threads behind that a `fork` does
//! not carry over. So the parent forks, the child does the work and reports
//! back through a pipe, and exits.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cache::{precompile_with, Compiled, Entry, Options};
use crate::digest;
use crate::error::{Code, Error, Result};
use crate::runtime::{BuildError, ModuleSpec, Runtime, RuntimeOptions};

/// [`precompile_with`] run in a forked child process; then the entry is
/// opened here and checked against its digest (hashing only, no Wasmtime
/// state), so that the caller holds the very file that was checked and its
/// children can load it whatever later happens to the name.
///
/// When the entry changed or vanished between the two (another server
/// sharing the directory removed or replaced it), it is compiled once more.
///
/// # Errors
/// Whatever [`precompile_with`] returns; [`Code::Io`] when the entry changes
/// under us twice; [`Code::Internal`] when the child cannot be started or
/// dies without an answer.
pub fn precompile_forked(wasm_path: &Path, cache_dir: &Path, opts: &Options) -> Result<Compiled> {
    let mut last = None;
    for _attempt in 0..2 {
        let mut compiled = in_child(&format!("compiling {}", wasm_path.display()), || {
            compile_here(wasm_path, cache_dir, opts)
        })?;
        match digest::open_verified(&compiled.cwasm.path) {
            Ok(file) => {
                compiled.cwasm.file = Some(Arc::new(file));
                return Ok(compiled);
            }
            Err(damage) => last = Some(damage),
        }
    }
    Err(Error::new(
        Code::Io,
        format!(
            "the cache entry of {} changed right after it was compiled, twice ({}): is another \
             process writing to or cleaning {}?",
            wasm_path.display(),
            last.map(|d| d.to_string()).unwrap_or_default(),
            cache_dir.display()
        ),
    ))
}

/// [`Runtime::build`] run in a forked child process, the runtime then thrown
/// away: what every child would fail to build fails here, once, at
/// configuration time.
///
/// # Errors
/// The [`BuildError`]; a child that cannot be started or dies without an
/// answer is reported with no module at fault.
pub fn check_forked(
    specs: &[ModuleSpec],
    options: &RuntimeOptions,
) -> std::result::Result<(), BuildError> {
    let outcome = in_child("the runtime check", || {
        Ok(Checked(
            Runtime::build(specs, options)
                .map(drop)
                .map_err(|e| (e.module, e.error)),
        ))
    });
    match outcome {
        Ok(Checked(Ok(()))) => Ok(()),
        Ok(Checked(Err((module, error)))) => Err(BuildError { module, error }),
        Err(error) => Err(BuildError {
            module: None,
            error,
        }),
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

/// A value a child process sends back as text.
trait Reply: Sized {
    fn encode(&self) -> String;
    fn decode(s: &str) -> Option<Self>;
}

/// Runs `f` in a forked child process and returns its answer; `what` names
/// the work in messages.
fn in_child<T: Reply>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_error("pipe"));
    }
    // SAFETY: the child only does `f`'s work and then `_exit`s; Apache's
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
        let reply = catch_unwind(AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err(Error::new(Code::Panic, format!("{what} panicked"))));
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
            format!("the process for {what} ended without an answer ({status})"),
        )),
    }
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

/// The code on the first line, then the value or the message (which may
/// hold anything but is last, so it needs no escaping).
fn encode<T: Reply>(r: &Result<T>) -> String {
    match r {
        Ok(v) => format!("0\n{}", v.encode()),
        Err(e) => format!("{}\n{}", e.code as i32, e.message),
    }
}

fn decode<T: Reply>(s: &str) -> Option<Result<T>> {
    let (code, rest) = s.split_once('\n')?;
    let code = decode_code(code)?;
    Some(match code {
        Code::Ok => Ok(T::decode(rest)?),
        code => Err(Error::new(code, rest)),
    })
}

fn decode_code(s: &str) -> Option<Code> {
    let n: i32 = s.parse().ok()?;
    Code::ALL.into_iter().find(|c| *c as i32 == n)
}

/// One line per field: hit, millis, why an entry was replaced (newlines
/// made spaces; empty for none), then the path, which may hold anything.
/// The open file stays behind: the parent opens the entry itself.
impl Reply for Compiled {
    fn encode(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}",
            u8::from(self.hit),
            self.millis,
            self.replaced.as_deref().unwrap_or("").replace('\n', " "),
            self.cwasm.path.display()
        )
    }

    fn decode(s: &str) -> Option<Compiled> {
        let mut parts = s.splitn(4, '\n');
        let hit = parts.next()? == "1";
        let millis = parts.next()?.parse().ok()?;
        let replaced = Some(parts.next()?.to_owned()).filter(|r| !r.is_empty());
        Some(Compiled {
            cwasm: Entry::from(PathBuf::from(parts.next()?)),
            hit,
            millis,
            replaced,
        })
    }
}

/// The outcome of the runtime check: a failure is an answer here, not an
/// error of the child process, because it names the module at fault.
struct Checked(std::result::Result<(), (Option<usize>, Error)>);

/// `ok`, or the module index (`-` for none), the code and the message.
impl Reply for Checked {
    fn encode(&self) -> String {
        match &self.0 {
            Ok(()) => "ok".to_string(),
            Err((module, e)) => format!(
                "{}\n{}\n{}",
                module.map_or("-".to_string(), |m| m.to_string()),
                e.code as i32,
                e.message
            ),
        }
    }

    fn decode(s: &str) -> Option<Checked> {
        if s == "ok" {
            return Some(Checked(Ok(())));
        }
        let mut parts = s.splitn(3, '\n');
        let module = match parts.next()? {
            "-" => None,
            m => Some(m.parse().ok()?),
        };
        let code = decode_code(parts.next()?)?;
        Some(Checked(Err((module, Error::new(code, parts.next()?)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip() {
        let compiled = Compiled {
            cwasm: Entry::from(PathBuf::from("/c/a b\nc.cwasm")),
            hit: true,
            millis: 12,
            replaced: Some("it was\ndamaged".into()),
        };
        let back: Compiled = decode(&encode(&Ok(compiled.clone()))).unwrap().unwrap();
        assert_eq!(back.cwasm.path, compiled.cwasm.path);
        assert_eq!((back.hit, back.millis), (true, 12));
        assert_eq!(back.replaced.as_deref(), Some("it was damaged"));
        let none = Compiled {
            replaced: None,
            ..compiled
        };
        let back: Compiled = decode(&encode(&Ok(none))).unwrap().unwrap();
        assert_eq!(back.replaced, None);
        let err: Result<Compiled> = Err(Error::new(Code::Link, "missing:\n env::a"));
        let back = decode::<Compiled>(&encode(&err)).unwrap().unwrap_err();
        assert_eq!(back.code, Code::Link);
        assert_eq!(back.message, "missing:\n env::a");
        assert!(decode::<Compiled>("").is_none());

        for checked in [
            Checked(Ok(())),
            Checked(Err((Some(3), Error::new(Code::Link, "a\nb")))),
            Checked(Err((None, Error::new(Code::Internal, "pool")))),
        ] {
            let back: Checked = decode(&encode(&Ok(Checked(checked.0.clone()))))
                .unwrap()
                .unwrap();
            match (&checked.0, &back.0) {
                (Ok(()), Ok(())) => {}
                (Err((m, e)), Err((bm, be))) => {
                    assert_eq!((m, e.code, &e.message), (bm, be.code, &be.message));
                }
                _ => panic!("{:?} became {:?}", checked.0, back.0),
            }
        }
    }

    fn scratch(name: &str) -> crate::scratch::Scratch {
        crate::scratch::Scratch::new(&format!("forked-{name}"))
    }

    #[test]
    fn compiles_in_a_child_process_and_opens_the_checked_entry_here() {
        let d = scratch("compile");
        let m = d.join("m.wasm");
        std::fs::write(
            &m,
            wat::parse_str("(module (func (export \"_start\")))").unwrap(),
        )
        .unwrap();
        let c = precompile_forked(&m, &d.join("cache"), &Options::default()).unwrap();
        assert!(!c.hit && c.cwasm.path.is_file() && c.cwasm.file.is_some());
        assert!(
            precompile_forked(&m, &d.join("cache"), &Options::default())
                .unwrap()
                .hit
        );
        let e = precompile_forked(&d.join("none.wasm"), &d.join("cache"), &Options::default())
            .unwrap_err();
        assert_eq!(e.code, Code::Io);
    }

    #[test]
    fn the_check_in_a_child_process_names_the_module_or_the_pool() {
        let d = scratch("check");
        let ok = d.join("ok.wasm");
        std::fs::write(
            &ok,
            wat::parse_str("(module (func (export \"_start\")))").unwrap(),
        )
        .unwrap();
        let bad = d.join("bad.wasm");
        std::fs::write(
            &bad,
            wat::parse_str(
                r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32))))"#,
            )
            .unwrap(),
        )
        .unwrap();
        let spec = |wasm: &Path| ModuleSpec {
            cwasm: precompile_forked(wasm, &d.join("cache"), &Options::default())
                .unwrap()
                .cwasm,
            name: wasm.display().to_string(),
            trap_unknown_imports: false,
        };
        let specs = [spec(&ok), spec(&bad)];
        assert!(check_forked(&specs[..1], &RuntimeOptions::with_slots(4)).is_ok());
        let e = check_forked(&specs, &RuntimeOptions::with_slots(4)).unwrap_err();
        assert_eq!(e.module, Some(1), "{}", e.error.message);
        assert!(e.error.message.contains("bad.wasm"), "{}", e.error.message);
        // Far more than any address space holds; measured in a process of
        // its own, as the figure is the growth of the address space.
        let e = check_forked(
            &specs[..1],
            &RuntimeOptions {
                shards: Some(1),
                ..RuntimeOptions::with_slots(100_000)
            },
        )
        .unwrap_err();
        assert_eq!(e.module, None);
        assert!(
            e.error.message.contains("100000 slots needs about 39")
                && e.error
                    .message
                    .contains("TiB of address space (4.0 GiB per slot)"),
            "{}",
            e.error.message
        );
    }
}
