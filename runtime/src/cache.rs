//! The ahead-of-time cache: each distinct `.wasm` is compiled once into a
//! `.cwasm` file that every child process maps.
//!
//! An entry is named by the SHA-256 of the module's bytes and of the engine's
//! compatibility hash (Wasmtime version, features, code-generation settings),
//! so a changed module or a new build of mod_wasm gets a new entry and an
//! unchanged module is a cache hit across passes, restarts and locations.
//!
//! A name says what an entry should hold, not what it holds: every entry has
//! a digest record (see [`crate::digest`]), and an entry whose contents do
//! not match it is compiled again, never mapped.
//!
//! Entries are written to a temporary file and renamed into place: children
//! `mmap` them, and rewriting a mapped file in place would corrupt running code.

use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use crate::cgi::host;
use crate::digest::{self, Damage, Origin, Record};
use crate::engine::{compile_engine, describe, difference, EngineOptions};
use crate::error::{chain, Code, Error, Result};

/// Suffix of cache entries.
pub const EXTENSION: &str = "cwasm";
/// Marks temporary files: `<entry>.cwasm.tmp.<pid>`.
const TEMP_MARK: &str = ".tmp.";

/// A cache entry as children load it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Where it is; also how log lines name it.
    pub path: PathBuf,
    /// The entry, opened and checked against its digest. When present it is
    /// what gets loaded (the name is not looked up again), so that a server
    /// sharing the directory can delete or replace the name without
    /// affecting whoever holds this file.
    pub file: Option<Arc<File>>,
}

impl From<PathBuf> for Entry {
    /// An entry to be opened by name when it is loaded.
    fn from(path: PathBuf) -> Entry {
        Entry { path, file: None }
    }
}

/// What [`precompile`] did.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The cache entry to hand to the children.
    pub cwasm: Entry,
    /// True when the entry already existed and nothing was compiled.
    pub hit: bool,
    /// Time spent, in milliseconds (reading, hashing and compiling).
    pub millis: u64,
    /// Why an entry that existed under this name was not used and was
    /// compiled again (damaged, or another module's); `None` for a hit and
    /// for a plain miss. Worth a warning: something changed the cache.
    pub replaced: Option<String>,
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

/// Compiles `wasm_path` into `cache_dir` unless an intact, up-to-date entry
/// exists, and returns the entry checked and open.
///
/// The module is validated and its imports are checked against what
/// mod_wasm provides, so a module that could never run fails here, at
/// configuration time. (Whether it fits the instance pool of a child, and
/// imports of the wrong type, are checked with the whole configuration by
/// [`crate::runtime::Runtime::build`].)
///
/// This creates a Wasmtime engine, which installs signal handlers and may
/// start compilation threads: in Apache call it through
/// [`crate::forked::precompile_forked`], never in the parent itself.
///
/// # Errors
/// [`Code::Io`] if the module cannot be read or the cache cannot be written
/// (also when a damaged entry cannot be replaced), [`Code::Compile`] for
/// invalid WebAssembly, [`Code::Link`] for imports mod_wasm does not provide.
pub fn precompile(wasm_path: &Path, cache_dir: &Path) -> Result<Compiled> {
    precompile_with(wasm_path, cache_dir, &Options::default())
}

/// How a module is compiled and linked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Engine variant (benchmarks; production uses the default).
    pub engine: EngineOptions,
    /// Link imports mod_wasm does not provide as functions that trap when
    /// called (`WasmTrapUnknownImports On`), instead of refusing the module.
    pub trap_unknown_imports: bool,
    /// Only check that the cache holds a usable entry: a miss is an error
    /// and nothing is written (`mod_wasm-precompile --check`).
    pub check_only: bool,
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
    // A 0.3 component compiles only with the component model's concurrency.
    let effective = EngineOptions {
        concurrency: opts.engine.concurrency || crate::http::needs_concurrency(&wasm),
        ..opts.engine
    };
    let engine = compile_engine(effective)?;
    let path = cache_dir.join(entry_name(&engine, wasm_path, &wasm));
    let origin = Origin {
        module: digest::sha256(&wasm),
        engine: describe(effective),
    };
    let (module, file, hit, replaced) = match load_cached(&engine, &path, is_component(&wasm)) {
        Ok((module, file)) => {
            if !opts.check_only {
                touch(&path);
            }
            (module, file, true, None)
        }
        Err(why) => {
            // Before compiling, which takes seconds for an interpreter: a
            // cache that cannot take the entry is refused now, by name.
            if opts.check_only {
                let what = why.as_deref().unwrap_or("it does not exist");
                return Err(Error::new(
                    Code::Io,
                    format!("cache entry {} cannot be used: {what}", path.display()),
                ));
            }
            if let Err(e) = writable(cache_dir) {
                return Err(unwritable(cache_dir, &path, &origin, why.as_deref(), &e));
            }
            let (module, file) = compile_into(&engine, wasm_path, &wasm, &path, &origin).map_err(
                |e| match &why {
                    Some(_) if e.code == Code::Io => {
                        unwritable(cache_dir, &path, &origin, why.as_deref(), &e.message)
                    }
                    _ => e,
                },
            )?;
            (module, file, false, why)
        }
    };
    // The entry's imports are checked on a hit too: the same module may be
    // configured with different linking options.
    match &module {
        Artifact::Module(m) if !opts.trap_unknown_imports => {
            // All missing imports at once; the child's own linking would
            // name only the first.
            host::check_imports(&engine, &host::linker(&engine)?, m)?;
        }
        Artifact::Module(_) => {}
        Artifact::Component(c) => {
            crate::http::check_component(&engine, c, &wasm_path.display().to_string())?
        }
    }
    Ok(Compiled {
        cwasm: Entry {
            path,
            file: Some(Arc::new(file)),
        },
        hit,
        millis: started.elapsed().as_millis() as u64,
        replaced,
    })
}

/// The entry at `path`, checked against its digest and loaded by `engine`
/// (which checks that it suits this engine) from the checked file.
///
/// # Errors
/// Why it cannot be used: `None` when there is no entry (a plain miss), or
/// what is wrong with the one there.
fn load_cached(
    engine: &Engine,
    path: &Path,
    component: bool,
) -> std::result::Result<(Artifact, File), Option<String>> {
    let file = digest::open_verified(path).map_err(|d| match d {
        Damage::Absent => None,
        d => Some(d.to_string()),
    })?;
    let copy = file
        .try_clone()
        .map_err(|e| Some(format!("it cannot be reopened: {e}")))?;
    // SAFETY: the contents are the ones recorded when this module wrote
    // them (see `digest`), and entries are never rewritten in place.
    let module = if component {
        // Components are mapped by path only; this is the compiler's own
        // process, which may read what it wrote.
        drop(copy);
        unsafe { Component::deserialize_file(engine, path) }.map(Artifact::Component)
    } else {
        unsafe { Module::deserialize_open_file(engine, copy) }.map(Artifact::Module)
    }
    .map_err(|e| Some(format!("Wasmtime refused it: {}", chain(&e))))?;
    Ok((module, file))
}

/// Compiles `wasm` and stores it as the entry `path` in `cache_dir`;
/// returns the module and the new entry, opened and checked.
fn compile_into(
    engine: &Engine,
    wasm_path: &Path,
    wasm: &[u8],
    path: &Path,
    origin: &Origin,
) -> Result<(Artifact, File)> {
    let cache_dir = path.parent().unwrap_or(Path::new("."));
    let invalid = |what: &str, e: wasmtime::Error| {
        Error::new(
            Code::Compile,
            format!(
                "{} is not a valid WebAssembly {what}: {}",
                wasm_path.display(),
                chain(&e)
            ),
        )
    };
    let module = if is_component(wasm) {
        Component::new(engine, wasm)
            .map(Artifact::Component)
            .map_err(|e| invalid("component", e))?
    } else {
        Module::new(engine, wasm)
            .map(Artifact::Module)
            .map_err(|e| invalid("module", e))?
    };
    let bytes = match &module {
        Artifact::Module(m) => m.serialize(),
        Artifact::Component(c) => c.serialize(),
    }
    .map_err(|e| Error::new(Code::Internal, chain(&e)))?;
    store(cache_dir, path, &bytes, origin)?;
    let file = digest::open_verified(path).map_err(|d| {
        Error::new(
            Code::Io,
            format!(
                "cache entry {} changed as soon as it was written ({d}): is another \
                 process writing to {}?",
                path.display(),
                cache_dir.display()
            ),
        )
    })?;
    Ok((module, file))
}

/// A compiled module or component.
enum Artifact {
    Module(Module),
    Component(Component),
}

/// Whether `wasm` is a component rather than a core module: the version
/// and layer fields after the magic number (the component model's binary
/// format).
fn is_component(wasm: &[u8]) -> bool {
    wasm.get(4..8) == Some(&[0x0d, 0x00, 0x01, 0x00])
}

/// Records a use of the entry in its modification time, for [`prune`].
/// Best effort: a read-only cache still serves its entries.
fn touch(path: &Path) {
    let _ = File::options()
        .append(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()));
}

/// Stores `bytes` as the entry `dest`: its digest record first, then the
/// entry, each written aside and renamed into place. A reader sees either no
/// entry or a whole one, and never an entry without its record (an
/// interruption between the two leaves a record alone, which [`prune`]
/// removes later).
fn store(cache_dir: &Path, dest: &Path, bytes: &[u8], origin: &Origin) -> Result<()> {
    fs::create_dir_all(cache_dir).map_err(|e| io("create cache directory", cache_dir, e))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let record = Record::of(&name, bytes)
        .with_origin(origin.clone())
        .to_text();
    write_atomically(&digest::record_path(dest), record.as_bytes())?;
    write_atomically(dest, bytes)
}

/// Whether an entry can be written into `cache_dir` (creating it if need
/// be): a read-only image layer or export, or a directory of another user,
/// cannot take one.
fn writable(cache_dir: &Path) -> std::result::Result<(), String> {
    fs::create_dir_all(cache_dir)
        .map_err(|e| format!("cannot create {}: {e}", cache_dir.display()))?;
    let probe = cache_dir.join(format!("probe{TEMP_MARK}{}", std::process::id()));
    // A leftover of this pid (another pid namespace, a crash) is ours to
    // replace; never follow a link someone planted under the name.
    let _ = fs::remove_file(&probe);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&probe)
        .map_err(|e| format!("cannot create {}: {e}", probe.display()))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// The error for an entry that is missing or unusable in a cache that
/// cannot be written; names what the cache holds for this module instead,
/// and why it is not this engine's, from the entries' records (nothing is
/// mapped).
fn unwritable(cache_dir: &Path, path: &Path, origin: &Origin, why: Option<&str>, e: &str) -> Error {
    let mut message = match why {
        Some(why) => format!(
            "cache entry {} cannot be used ({why}) and cannot be replaced: {e}",
            path.display()
        ),
        None => format!(
            "WasmCacheDir {} has no entry for this module as this server compiles it ({}), \
             and it cannot be written: {e}",
            cache_dir.display(),
            path.file_name().unwrap_or_default().to_string_lossy()
        ),
    };
    for (name, theirs) in same_module(cache_dir, path, &origin.module) {
        let differs = difference(&theirs, &origin.engine)
            .unwrap_or_else(|| "it was compiled by an engine with other settings".into());
        message.push_str(&format!(
            "; it holds {name} for this module, which is refused: {differs}"
        ));
    }
    message.push_str(
        "; fill the directory with mod_wasm-precompile on a machine with this server's CPU \
         and mod_wasm build",
    );
    Error::new(Code::Io, message)
}

/// The entries in `cache_dir`, other than `own`, whose records say they
/// were compiled from the module whose SHA-256 is `module`, with the engine
/// that compiled each (at most [`SAME_MODULE_MAX`], so a message stays
/// short). Only small regular files named like records of this module's
/// entries are read.
fn same_module(cache_dir: &Path, own: &Path, module: &[u8; 32]) -> Vec<(String, String)> {
    let Ok(dir) = fs::read_dir(cache_dir) else {
        return Vec::new();
    };
    let own = own.file_name().unwrap_or_default().to_string_lossy();
    let stem = own.rsplit_once('-').map_or("", |(stem, _)| stem);
    let record_suffix = format!(".{EXTENSION}{}", digest::SUFFIX);
    let mut found: Vec<(String, String)> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let entry = name.strip_suffix(digest::SUFFIX)?.to_owned();
            let small_file = e.metadata().is_ok_and(|m| m.is_file() && m.len() <= 4096);
            (name.ends_with(&record_suffix)
                && name.starts_with(&format!("{stem}-"))
                && entry != own
                && small_file)
                .then_some((entry, e.path()))
        })
        .filter_map(|(entry, path)| {
            let o = Record::parse(&fs::read_to_string(path).ok()?)?.origin?;
            let printable = o
                .engine
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "=.,_ -".contains(c));
            (o.module == *module && printable).then_some((entry, o.engine))
        })
        .collect();
    found.sort();
    found.truncate(SAME_MODULE_MAX);
    found
}

/// The most entries of other engines one refusal names.
const SAME_MODULE_MAX: usize = 3;

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(Code::Io, format!("cannot {what} {}: {e}", path.display()))
}

/// Writes `bytes` to `dest` through a temporary file and a rename, so that a
/// reader sees either no file or the whole file.
fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(format!("{TEMP_MARK}{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o644)
            .open(&tmp)
            .map_err(|e| io("create", &tmp, e))?;
        f.write_all(bytes).map_err(|e| io("write", &tmp, e))?;
        f.sync_all().map_err(|e| io("sync", &tmp, e))?;
        // The umask may have narrowed the mode; other tools (and servers
        // sharing the directory under another user) read entries.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))
            .map_err(|e| io("set permissions of", &tmp, e))?;
        fs::rename(&tmp, dest).map_err(|e| io("rename into place", dest, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Temporary files, and records without an entry, older than this are
/// leftovers of an interrupted compile; younger ones may be a compile in
/// progress (in this server or in another one sharing the directory).
const TEMP_MAX_AGE: Duration = Duration::from_secs(3600);

/// What [`prune`] does with one file of the cache directory.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// An entry this configuration does not use.
    Unused,
    /// A temporary file.
    Temp,
    /// A digest record whose entry is gone.
    Orphan,
    /// Anything else: an entry in use, a record with its entry, a file that
    /// is not ours.
    Keep,
}

fn kind(path: &Path, keep: &[PathBuf]) -> Kind {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let entry_suffix = format!(".{EXTENSION}");
    if name.contains(TEMP_MARK) {
        Kind::Temp
    } else if name.ends_with(&entry_suffix) {
        if keep.iter().any(|k| k == path) {
            Kind::Keep
        } else {
            Kind::Unused
        }
    } else if let Some(entry) = name.strip_suffix(digest::SUFFIX) {
        let entry = path.with_file_name(entry);
        if entry.to_string_lossy().ends_with(&entry_suffix) && !entry.exists() {
            Kind::Orphan
        } else {
            Kind::Keep
        }
    } else {
        Kind::Keep
    }
}

/// Removes cache entries in `cache_dir` that are not in `keep` and were last
/// used (compiled or hit, see [`precompile`]) more than `max_age` ago, with
/// their digest records, and temporary files and records left by
/// interrupted compilations. Returns how many entries were removed.
///
/// Removal is safe for every server whose children load from entries their
/// parent holds open (see [`Entry::file`]): a removed name neither unmaps
/// nor closes a file. The age only spares other servers a compile: an entry
/// another server uses would otherwise be compiled again at its next
/// restart.
///
/// # Errors
/// [`Code::Io`] when the directory cannot be read; files that cannot be
/// removed are skipped.
pub fn prune(cache_dir: &Path, keep: &[PathBuf], max_age: Duration) -> Result<usize> {
    let entries = match fs::read_dir(cache_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io("read cache directory", cache_dir, e)),
    };
    let now = SystemTime::now();
    let age = |path: &Path| {
        fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default()
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        match kind(&path, keep) {
            Kind::Unused if age(&path) >= max_age && fs::remove_file(&path).is_ok() => {
                let _ = fs::remove_file(digest::record_path(&path));
                removed += 1;
            }
            Kind::Temp | Kind::Orphan if age(&path) >= TEMP_MAX_AGE => {
                let _ = fs::remove_file(&path);
            }
            _ => {}
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{ModuleSpec, Runtime, RuntimeOptions};

    const HELLO: &str = r#"(module
        (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "_start")))"#;

    fn tmpdir(name: &str) -> crate::scratch::Scratch {
        crate::scratch::Scratch::new(&format!("cache-{name}"))
    }

    fn wat(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, wat::parse_str(text).unwrap()).unwrap();
        p
    }

    /// The file names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Whether a child could build its runtime from `compiled`, with one slot.
    fn child_of(compiled: &Compiled, trap: bool) -> std::result::Result<(), Error> {
        let spec = ModuleSpec {
            cwasm: compiled.cwasm.clone(),
            name: "m.wasm".into(),
            trap_unknown_imports: trap,
        };
        match Runtime::build(&[spec], &RuntimeOptions::with_slots(1)) {
            Ok(rt) => {
                assert_eq!(rt.module_count(), 1);
                Ok(())
            }
            Err(e) => {
                assert_eq!(e.module, Some(0), "{}", e.error.message);
                Err(e.error)
            }
        }
    }

    #[test]
    fn second_compile_is_a_hit_and_a_change_is_a_miss() {
        let d = tmpdir("hit");
        let m = wat(&d, "hello.wasm", HELLO);
        let first = precompile(&m, &d.join("cache")).unwrap();
        assert!(!first.hit && first.replaced.is_none());
        assert!(first.cwasm.path.is_file() && first.cwasm.file.is_some());
        let second = precompile(&m, &d.join("cache")).unwrap();
        assert!(second.hit && second.replaced.is_none());
        assert_eq!(first.cwasm.path, second.cwasm.path);
        let changed = wat(&d, "hello.wasm", &HELLO.replace("1)", "2)"));
        let third = precompile(&changed, &d.join("cache")).unwrap();
        assert!(!third.hit);
        assert_ne!(third.cwasm.path, first.cwasm.path);
        let names = names(&d.join("cache"));
        assert_eq!(names.len(), 4, "two entries and their records: {names:?}");
        assert_eq!(
            names.iter().filter(|n| n.ends_with(".cwasm.sum")).count(),
            2
        );
    }

    /// Compiles `HELLO` into a fresh cache, damages its entry with `damage`,
    /// and compiles again: the entry must be replaced, not used.
    fn replaced_after(tag: &str, damage: impl FnOnce(&Path)) -> String {
        let d = tmpdir(tag);
        let m = wat(&d, "hello.wasm", HELLO);
        let cache = d.join("cache");
        let entry = precompile(&m, &cache).unwrap().cwasm.path;
        damage(&entry);
        let again = precompile(&m, &cache).unwrap();
        assert!(!again.hit);
        assert_eq!(again.cwasm.path, entry);
        assert!(digest::open_verified(&entry).is_ok(), "not repaired");
        assert!(precompile(&m, &cache).unwrap().hit, "repaired for good");
        again.replaced.expect("the replacement is reported")
    }

    #[test]
    fn a_damaged_entry_is_compiled_again_and_the_reason_reported() {
        let why = replaced_after("flipped", |entry| {
            let mut bytes = fs::read(entry).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            fs::write(entry, bytes).unwrap();
        });
        assert!(why.contains("do not match the digest"), "{why}");
    }

    #[test]
    fn another_modules_entry_under_this_name_is_compiled_again() {
        let d = tmpdir("other");
        let other = precompile(&wat(&d, "o.wasm", &HELLO.replace("1)", "5)")), &d.join("c"))
            .unwrap()
            .cwasm
            .path;
        let why = replaced_after("copied", |entry| {
            fs::copy(&other, entry).unwrap();
            fs::copy(digest::record_path(&other), digest::record_path(entry)).unwrap();
        });
        assert!(why.contains("a copy of another entry"), "{why}");
        let why = replaced_after("copied-entry-only", |entry| {
            fs::copy(&other, entry).unwrap();
        });
        assert!(why.contains("do not match the digest"), "{why}");
    }

    #[test]
    fn an_entry_without_a_record_is_compiled_again() {
        let why = replaced_after("no-record", |entry| {
            fs::remove_file(digest::record_path(entry)).unwrap();
        });
        assert!(why.contains("no digest was recorded"), "{why}");
    }

    #[test]
    fn a_damaged_entry_that_cannot_be_replaced_is_refused_by_name() {
        let d = tmpdir("stuck");
        let m = wat(&d, "hello.wasm", HELLO);
        let cache = d.join("cache");
        let entry = precompile(&m, &cache).unwrap().cwasm.path;
        fs::write(&entry, b"garbage").unwrap();
        // Tests may run as root, for whom permissions do not make a
        // directory read-only: block the record's temporary file instead.
        let mut tmp = digest::record_path(&entry).into_os_string();
        tmp.push(format!("{TEMP_MARK}{}", std::process::id()));
        fs::create_dir(&tmp).unwrap();
        let e = precompile(&m, &cache).unwrap_err();
        assert_eq!(e.code, Code::Io);
        assert!(
            e.message.contains(&entry.display().to_string())
                && e.message.contains("cannot be used")
                && e.message.contains("cannot be replaced")
                // Its own record is not another engine's entry.
                && !e.message.contains("it holds"),
            "{}",
            e.message
        );
    }

    /// Makes `cache` refuse new files for this process, as a read-only
    /// mount would (tests may run as root, whom permissions do not stop).
    fn block_writes(cache: &Path) {
        fs::create_dir_all(cache.join(format!("probe{TEMP_MARK}{}", std::process::id()))).unwrap();
    }

    #[test]
    fn a_missing_entry_in_a_cache_that_cannot_be_written_is_refused_before_compiling() {
        let d = tmpdir("readonly");
        let cache = d.join("cache");
        let m = wat(&d, "hello.wasm", HELLO);
        let first = precompile(&m, &cache).unwrap();
        block_writes(&cache);
        // Everything present: a read-only cache serves it.
        assert!(precompile(&m, &cache).unwrap().hit);
        // The module changed since the cache was filled.
        let m = wat(
            &d,
            "hello.wasm",
            &HELLO.replace("memory\") 1", "memory\") 2"),
        );
        let e = precompile(&m, &cache).unwrap_err();
        assert_eq!(e.code, Code::Io);
        assert!(
            e.message.contains("has no entry for this module")
                && e.message.contains("cannot be written")
                && e.message.contains("mod_wasm-precompile")
                && !e.message.contains("it holds"),
            "{}",
            e.message
        );
        // Nothing was written, and what was there is intact.
        assert_eq!(
            names(&cache)
                .iter()
                .filter(|n| n.ends_with(".cwasm"))
                .count(),
            1
        );
        assert!(first.cwasm.path.exists());
    }

    #[test]
    fn an_entry_of_another_engine_is_refused_by_what_differs() {
        let d = tmpdir("foreign");
        let cache = d.join("cache");
        let m = wat(&d, "hello.wasm", HELLO);
        let entry = precompile(&m, &cache).unwrap().cwasm.path;
        // What an older build would have left: the same module under the
        // key of another Wasmtime.
        let record = fs::read_to_string(digest::record_path(&entry)).unwrap();
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        let old = "hello-00000000000000000000000000000000.cwasm";
        let ours = describe(EngineOptions::default());
        let theirs = ours.replace("wasmtime=48.", "wasmtime=47.");
        fs::write(
            cache.join(format!("{old}{}", digest::SUFFIX)),
            record.replace(&name, old).replace(&ours, &theirs),
        )
        .unwrap();
        fs::rename(&entry, cache.join(old)).unwrap();
        fs::remove_file(digest::record_path(&entry)).unwrap();
        block_writes(&cache);
        let e = precompile(&m, &cache).unwrap_err();
        assert!(
            e.message
                .contains(&format!("it holds {old} for this module, which is refused"))
                && e.message.contains("compiled by Wasmtime 47."),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_checked_entry_loads_after_its_name_is_deleted() {
        let d = tmpdir("deleted");
        let compiled = precompile(&wat(&d, "a.wasm", HELLO), &d.join("cache")).unwrap();
        fs::remove_file(&compiled.cwasm.path).unwrap();
        fs::remove_file(digest::record_path(&compiled.cwasm.path)).unwrap();
        child_of(&compiled, false).unwrap();
        // Without the open file, the name is all there is.
        let by_name = Compiled {
            cwasm: Entry::from(compiled.cwasm.path.clone()),
            ..compiled
        };
        let e = child_of(&by_name, false).unwrap_err();
        assert!(e.message.contains("cannot load"), "{}", e.message);
    }

    #[test]
    fn prune_keeps_only_what_is_in_use() {
        let d = tmpdir("prune");
        let cache = d.join("cache");
        let a = precompile(&wat(&d, "a.wasm", HELLO), &cache)
            .unwrap()
            .cwasm
            .path;
        let b = precompile(&wat(&d, "b.wasm", &HELLO.replace("1)", "3)")), &cache)
            .unwrap()
            .cwasm
            .path;
        let fresh_tmp = cache.join("x.cwasm.tmp.123");
        fs::write(&fresh_tmp, b"partial").unwrap();
        // A record whose entry is being written right now, and one whose
        // entry went long ago.
        let fresh_record = cache.join("y.cwasm.sum");
        fs::write(&fresh_record, b"record").unwrap();
        let old_record = cache.join("z.cwasm.sum");
        fs::write(&old_record, b"record").unwrap();
        let long_ago = SystemTime::now() - 2 * TEMP_MAX_AGE;
        File::options()
            .append(true)
            .open(&old_record)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        fs::write(cache.join("README"), b"not ours").unwrap();
        let keep = std::slice::from_ref(&a);
        // Recently used entries survive a long max age.
        assert_eq!(prune(&cache, keep, Duration::from_secs(3600)).unwrap(), 0);
        assert!(!old_record.exists(), "an orphan record is removed");
        assert!(
            fresh_record.exists(),
            "a compile may still be writing its entry"
        );
        assert_eq!(prune(&cache, keep, Duration::ZERO).unwrap(), 1);
        assert!(a.is_file() && digest::record_path(&a).is_file());
        assert!(!b.exists() && !digest::record_path(&b).exists());
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

    const UNKNOWN_IMPORTS: &str = r#"(module
        (import "env" "a" (func))
        (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
        (import "env" "b" (func))
        (func (export "_start")))"#;

    #[test]
    fn unknown_imports_are_all_listed() {
        let d = tmpdir("imports");
        let m = wat(&d, "imp.wasm", UNKNOWN_IMPORTS);
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
    fn a_refused_module_leaves_its_entry_for_the_opt_in() {
        let d = tmpdir("refused");
        let m = wat(&d, "imp.wasm", UNKNOWN_IMPORTS);
        let cache = d.join("cache");
        assert!(precompile(&m, &cache).is_err());
        // Compiled code depends on the bytes and the engine, not on how the
        // module is linked: the usual next step costs no compile.
        let opts = Options {
            trap_unknown_imports: true,
            ..Options::default()
        };
        let c = precompile_with(&m, &cache, &opts).unwrap();
        assert!(c.hit && c.replaced.is_none());
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
            // The name is provided, so the compile passes; linking fails.
            let compiled = precompile_with(&m, &d.join("cache"), &opts).unwrap();
            let e = child_of(&compiled, trap).unwrap_err();
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
        let compiled = precompile_with(&m, &d.join("cache"), &opts).unwrap();
        let e = child_of(&compiled, true).unwrap_err();
        assert_eq!(e.code, Code::Link, "{}", e.message);
        assert!(
            e.message.contains("m.wasm") && e.message.contains("env"),
            "{}",
            e.message
        );
    }
}
