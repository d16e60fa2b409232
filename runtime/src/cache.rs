//! The ahead-of-time cache: each distinct `.wasm` is compiled once into a
//! `.cwasm` file that every child process maps.
//!
//! An entry is named by the SHA-256 of the module's bytes and of the engine's
//! compatibility hash (Wasmtime version, features, code-generation settings),
//! so a changed module or a new build of mod_wasm gets a new entry and an
//! unchanged module is a cache hit across passes, restarts and locations.
//!
//! Entries are written to a temporary file and renamed into place: children
//! `mmap` them, and rewriting a mapped file in place would corrupt running code.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

use crate::engine::{compile_engine, Flavor};
use crate::error::{chain, Code, Error, Result};
use crate::host;
use crate::runtime::{ModuleSpec, Runtime};

/// Suffix of cache entries.
pub const EXTENSION: &str = "cwasm";
/// Marks temporary files: `<entry>.cwasm.tmp.<pid>`.
const TEMP_MARK: &str = ".tmp.";

/// What [`precompile`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The cache entry to hand to the children.
    pub cwasm: PathBuf,
    /// True when the entry already existed and nothing was compiled.
    pub hit: bool,
    /// Time spent, in milliseconds (reading, hashing and compiling).
    pub millis: u64,
}

/// Feeds a `Hash` value into SHA-256; `precompile_compatibility_hash` only
/// offers `impl Hash`.
struct ShaHasher<'a>(&'a mut Sha256);

impl Hasher for ShaHasher<'_> {
    fn finish(&self) -> u64 {
        unreachable!("only used to feed bytes into SHA-256")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The cache file name for `wasm` compiled by `engine`.
fn entry_name(engine: &Engine, wasm_path: &Path, wasm: &[u8]) -> String {
    let mut sha = Sha256::new();
    sha.update((wasm.len() as u64).to_le_bytes());
    sha.update(wasm);
    engine
        .precompile_compatibility_hash()
        .hash(&mut ShaHasher(&mut sha));
    let digest = sha.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    // The module's own name first, so an operator can tell entries apart.
    let stem: String = wasm_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    format!("{stem}-{hex}.{EXTENSION}")
}

/// Compiles `wasm_path` into `cache_dir` unless an up-to-date entry exists.
///
/// The module is validated and its imports are checked against what
/// mod_wasm provides, so a module that could never run fails here, at
/// configuration time.
///
/// This creates a Wasmtime engine, which installs signal handlers and may
/// start compilation threads: in Apache call it through
/// [`crate::isolate::precompile_isolated`], never in the parent itself.
///
/// # Errors
/// [`Code::Io`] if the module cannot be read or the cache cannot be written,
/// [`Code::Compile`] for invalid WebAssembly, [`Code::Link`] for imports
/// mod_wasm does not provide.
pub fn precompile(wasm_path: &Path, cache_dir: &Path) -> Result<Compiled> {
    precompile_with(wasm_path, cache_dir, &Options::default())
}

/// How a module is compiled and linked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Engine variant (benchmarks; production uses the default).
    pub flavor: Flavor,
    /// Link imports mod_wasm does not provide as functions that trap when
    /// called (`WasmTrapUnknownImports On`), instead of refusing the module.
    pub trap_unknown_imports: bool,
}

/// [`precompile`] with explicit options.
pub fn precompile_with(wasm_path: &Path, cache_dir: &Path, opts: &Options) -> Result<Compiled> {
    let started = Instant::now();
    let wasm = fs::read(wasm_path).map_err(|e| {
        Error::new(
            Code::Io,
            format!("cannot read {}: {e}", wasm_path.display()),
        )
    })?;
    let engine = compile_engine(opts.flavor)?;
    let cwasm = cache_dir.join(entry_name(&engine, wasm_path, &wasm));
    // A hit is loaded too: that checks the entry is intact and usable by
    // this engine, and its imports are checked like a fresh compile's (the
    // same module may be configured with different linking options).
    // SAFETY: see `runtime::load`; entries are only written by this module.
    let cached = cwasm
        .is_file()
        .then(|| unsafe { Module::deserialize_file(&engine, &cwasm) }.ok())
        .flatten();
    let hit = cached.is_some();
    let module = match cached {
        Some(module) => {
            // The modification time records the last use, for `prune`.
            let _ = fs::File::options()
                .append(true)
                .open(&cwasm)
                .and_then(|f| f.set_modified(SystemTime::now()));
            module
        }
        None => {
            let module = Module::new(&engine, &wasm).map_err(|e| {
                Error::new(
                    Code::Compile,
                    format!(
                        "{} is not a valid WebAssembly module: {}",
                        wasm_path.display(),
                        chain(&e)
                    ),
                )
            })?;
            let bytes = module
                .serialize()
                .map_err(|e| Error::new(Code::Internal, chain(&e)))?;
            write_atomically(cache_dir, &cwasm, &bytes)?;
            module
        }
    };
    if !opts.trap_unknown_imports {
        // All missing imports at once; the child's own linking below would
        // name only the first.
        host::check_imports(&engine, &host::linker(&engine)?, &module)?;
    }
    // What a child will do with it, with one slot: imports of the wrong type
    // and a module too big for the instance pool fail here, at configtest,
    // rather than in every child.
    let spec = ModuleSpec {
        cwasm: cwasm.clone(),
        name: wasm_path.display().to_string(),
        trap_unknown_imports: opts.trap_unknown_imports,
    };
    // The entry loaded with the compile engine above, so a load error here
    // is the pool's own validation of the module's needs.
    Runtime::new_flavored(&[spec], 1, opts.flavor).map_err(|e| match e.code {
        Code::Link => e,
        _ => Error::new(
            e.code,
            format!(
                "{} does not fit the instance pool: {}",
                wasm_path.display(),
                e.message
            ),
        ),
    })?;
    Ok(Compiled {
        cwasm,
        hit,
        millis: started.elapsed().as_millis() as u64,
    })
}

/// Writes `bytes` to `dest` through a temporary file and a rename, so that a
/// reader sees either no file or the whole file.
fn write_atomically(cache_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        Error::new(Code::Io, format!("cannot {what} {}: {e}", path.display()))
    };
    fs::create_dir_all(cache_dir).map_err(|e| io("create cache directory", cache_dir, e))?;
    let tmp = dest.with_extension(format!("{EXTENSION}{TEMP_MARK}{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(|e| io("create", &tmp, e))?;
        f.write_all(bytes).map_err(|e| io("write", &tmp, e))?;
        f.sync_all().map_err(|e| io("sync", &tmp, e))?;
        // The umask may have narrowed the mode; children run as another user.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))
            .map_err(|e| io("set permissions of", &tmp, e))?;
        fs::rename(&tmp, dest).map_err(|e| io("rename into place", dest, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Temporary files older than this are leftovers of an interrupted compile.
const TEMP_MAX_AGE: Duration = Duration::from_secs(3600);

/// Removes cache entries in `cache_dir` that are not in `keep` and were last
/// used (compiled or hit, see [`precompile`]) more than `max_age` ago, and
/// temporary files left by interrupted compilations. Returns how many files
/// were removed.
///
/// The age keeps servers that share a cache directory from removing each
/// other's entries between a compile and the children's load. Removal is
/// safe while children still run an old entry: a removed name does not unmap
/// a file.
///
/// # Errors
/// [`Code::Io`] when the directory cannot be read; files that cannot be
/// removed are skipped.
pub fn prune(cache_dir: &Path, keep: &[PathBuf], max_age: Duration) -> Result<usize> {
    let entries = match fs::read_dir(cache_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(Error::new(
                Code::Io,
                format!("cannot read cache directory {}: {e}", cache_dir.display()),
            ))
        }
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let limit = if name.ends_with(&format!(".{EXTENSION}")) && !keep.contains(&path) {
            max_age
        } else if name.contains(TEMP_MARK) {
            TEMP_MAX_AGE
        } else {
            continue;
        };
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        if age >= limit && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = r#"(module
        (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "_start")))"#;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wasm-rt-cache-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn wat(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, wat::parse_str(text).unwrap()).unwrap();
        p
    }

    #[test]
    fn second_compile_is_a_hit_and_a_change_is_a_miss() {
        let d = tmpdir("hit");
        let m = wat(&d, "hello.wasm", HELLO);
        let first = precompile(&m, &d.join("cache")).unwrap();
        assert!(!first.hit);
        assert!(first.cwasm.is_file());
        let second = precompile(&m, &d.join("cache")).unwrap();
        assert!(second.hit);
        assert_eq!(first.cwasm, second.cwasm);
        let changed = wat(&d, "hello.wasm", &HELLO.replace("1)", "2)"));
        let third = precompile(&changed, &d.join("cache")).unwrap();
        assert!(!third.hit);
        assert_ne!(third.cwasm, first.cwasm);
        let names: Vec<_> = fs::read_dir(d.join("cache")).unwrap().collect();
        assert_eq!(names.len(), 2, "no temporary files are left behind");
    }

    #[test]
    fn prune_keeps_only_what_is_in_use() {
        let d = tmpdir("prune");
        let cache = d.join("cache");
        let a = precompile(&wat(&d, "a.wasm", HELLO), &cache).unwrap().cwasm;
        let b = precompile(&wat(&d, "b.wasm", &HELLO.replace("1)", "3)")), &cache)
            .unwrap()
            .cwasm;
        let fresh_tmp = cache.join("x.cwasm.tmp.123");
        fs::write(&fresh_tmp, b"partial").unwrap();
        fs::write(cache.join("README"), b"not ours").unwrap();
        let keep = std::slice::from_ref(&a);
        // Recently used entries survive a long max age.
        assert_eq!(prune(&cache, keep, Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(prune(&cache, keep, Duration::ZERO).unwrap(), 1);
        assert!(a.is_file() && !b.exists());
        assert!(fresh_tmp.exists(), "a compile may still be writing it");
        assert!(cache.join("README").exists());
        assert_eq!(prune(&d.join("absent"), &[], Duration::ZERO).unwrap(), 0);
    }

    #[test]
    fn invalid_module_is_a_compile_error() {
        let d = tmpdir("invalid");
        let p = d.join("bad.wasm");
        fs::write(&p, b"\0asm\x01\0\0\0garbage").unwrap();
        let e = precompile(&p, &d.join("cache")).unwrap_err();
        assert_eq!(e.code, Code::Compile);
        assert!(e.message.contains("bad.wasm"), "{}", e.message);
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let d = tmpdir("missing");
        let e = precompile(&d.join("nope.wasm"), &d.join("cache")).unwrap_err();
        assert_eq!(e.code, Code::Io);
        assert!(e.message.contains("nope.wasm"));
    }

    #[test]
    fn unknown_imports_are_all_listed() {
        let d = tmpdir("imports");
        let m = wat(
            &d,
            "imp.wasm",
            r#"(module
                (import "env" "a" (func))
                (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                (import "env" "b" (func))
                (func (export "_start")))"#,
        );
        let e = precompile(&m, &d.join("cache")).unwrap_err();
        assert_eq!(e.code, Code::Link);
        assert!(
            e.message.contains("env::a") && e.message.contains("env::b"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("fd_write"), "{}", e.message);
    }

    #[test]
    fn an_import_of_the_wrong_type_is_a_link_error_naming_it() {
        let d = tmpdir("import-type");
        let m = wat(
            &d,
            "ty.wasm",
            r#"(module
                (import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32)))
                (func (export "_start")))"#,
        );
        for trap in [false, true] {
            let opts = Options {
                trap_unknown_imports: trap,
                ..Options::default()
            };
            let e = precompile_with(&m, &d.join("cache"), &opts).unwrap_err();
            assert_eq!(e.code, Code::Link, "{}", e.message);
            assert!(e.message.contains("fd_write"), "{}", e.message);
            assert!(!e.message.contains("does not fit"), "{}", e.message);
        }
    }

    #[test]
    fn an_unknown_import_that_is_not_a_function_cannot_trap_and_is_named() {
        let d = tmpdir("import-global");
        let m = wat(
            &d,
            "glob.wasm",
            r#"(module (import "env" "g" (global i32)) (func (export "_start")))"#,
        );
        let opts = Options {
            trap_unknown_imports: true,
            ..Options::default()
        };
        let e = precompile_with(&m, &d.join("cache"), &opts).unwrap_err();
        assert_eq!(e.code, Code::Link, "{}", e.message);
        assert!(
            e.message.contains("glob.wasm") && e.message.contains("env"),
            "{}",
            e.message
        );
    }
}
