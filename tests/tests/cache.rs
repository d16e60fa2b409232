//! The compiled-module cache: damaged and mixed-up entries, servers sharing
//! a cache directory, and what `configtest` checks before children start.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use e2e::apache::{configtest, configtest_with_address_space, scratch_dir, Apache, Options};
use e2e::http::get;

fn location(path: &str, guest: &str) -> String {
    format!("<Location {path}>\n  SetHandler wasm-handler\n  WasmModule @GUESTS@/{guest}.wasm\n</Location>\n")
}

/// The `.cwasm` entry of guest `name` in `cache`.
fn entry_of(cache: &Path, name: &str) -> PathBuf {
    let found: Vec<PathBuf> = fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let file = p.file_name().unwrap().to_string_lossy();
            file.starts_with(&format!("{name}-")) && file.ends_with(".cwasm")
        })
        .collect();
    assert_eq!(found.len(), 1, "entries of {name} in {cache:?}: {found:?}");
    found.into_iter().next().unwrap()
}

/// `<entry>.sum`, the entry's digest record.
fn sidecar_of(entry: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sum", entry.display()))
}

/// Inverts `n` bytes in the middle of `path`, in place.
fn flip_middle(path: &Path, n: usize) {
    let mut bytes = fs::read(path).unwrap();
    let start = bytes.len() / 2 - n / 2;
    for b in &mut bytes[start..start + n] {
        *b ^= 0xff;
    }
    fs::write(path, bytes).unwrap();
}

/// No child died of a signal (a guest's code must never crash one).
fn assert_no_crash(s: &Apache) {
    let log = s.error_log();
    assert!(
        !log.contains("AH00052") && !log.contains("exit signal"),
        "{log}"
    );
}

#[test]
fn a_damaged_entry_is_compiled_again_instead_of_run() {
    let d = scratch_dir("damaged");
    let cache = d.join("cache");
    let opts = Options::new(&location("/hello", "hello")).cache_dir(&cache);
    {
        let s = Apache::start_with(opts.clone());
        assert_eq!(get(s.port, "/hello").body, b"Hello, World!");
    }
    let entry = entry_of(&cache, "hello");
    // The whole middle of a small module's entry is machine code: a cache
    // that trusted the name would map it and run garbage.
    flip_middle(&entry, 400);

    for round in 0..2 {
        let s = Apache::start_with(opts.clone());
        for _ in 0..3 {
            let r = get(s.port, "/hello");
            assert_eq!(r.status, 200, "{}", s.error_log());
            assert_eq!(r.body, b"Hello, World!");
        }
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        let warned = s.log_lines("compiled it again");
        match round {
            0 => assert!(
                warned.len() == 1
                    && warned[0].contains("hello.wasm")
                    && warned[0].contains(&name)
                    && warned[0].contains("digest"),
                "{}",
                s.error_log()
            ),
            // Repaired for good: the next start is a plain cache hit.
            _ => assert!(warned.is_empty(), "{}", s.error_log()),
        }
        assert_no_crash(&s);
    }
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn an_entry_copied_over_another_modules_name_is_not_served_for_it() {
    let d = scratch_dir("mixed-up");
    let cache = d.join("cache");
    let site = location("/hello", "hello") + &location("/respond", "respond");
    let opts = Options::new(&site).cache_dir(&cache);
    {
        let s = Apache::start_with(opts.clone());
        assert_eq!(get(s.port, "/respond").text(), "ok\n");
    }
    let (hello, respond) = (entry_of(&cache, "hello"), entry_of(&cache, "respond"));
    fs::copy(&hello, &respond).unwrap();
    // The digest record too, when there is one: both checks must hold.
    if sidecar_of(&hello).exists() {
        fs::copy(sidecar_of(&hello), sidecar_of(&respond)).unwrap();
    }

    let s = Apache::start_with(opts);
    assert_eq!(get(s.port, "/respond").text(), "ok\n", "{}", s.error_log());
    assert_eq!(get(s.port, "/hello").body, b"Hello, World!");
    let warned = s.log_lines("compiled it again");
    assert!(
        warned.len() == 1 && warned[0].contains("respond.wasm"),
        "{}",
        s.error_log()
    );
    assert_no_crash(&s);
    let _ = fs::remove_dir_all(&d);
}

/// Waits until `s` has a child that is not among `old`.
fn wait_for_new_child(s: &Apache, old: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.child_pids().iter().any(|p| !old.contains(p)) {
        assert!(
            Instant::now() < deadline,
            "no new child:\n{}",
            s.error_log()
        );
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn another_server_pruning_the_shared_cache_does_not_break_new_children() {
    let d = scratch_dir("shared");
    let cache = d.join("cache");
    let a = Apache::start_with(Options::new(&location("/hello", "hello")).cache_dir(&cache));
    assert_eq!(get(a.port, "/hello").body, b"Hello, World!");
    let entry = entry_of(&cache, "hello");

    // Server B uses another module and keeps nothing it does not use.
    let b = Apache::start_with(
        Options::new(&format!(
            "WasmCacheMaxAge 0\n{}",
            location("/respond", "respond")
        ))
        .cache_dir(&cache),
    );
    assert_eq!(get(b.port, "/respond").text(), "ok\n");
    assert!(!entry.exists(), "B did not prune A's entry");

    // A starts a new child, which loads the module B removed.
    let old = a.child_pids();
    for pid in &old {
        // SAFETY: signalling a child of the server this test started.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    wait_for_new_child(&a, &old);
    for _ in 0..4 {
        let r = get(a.port, "/hello");
        assert_eq!(r.status, 200, "{}", a.error_log());
        assert_eq!(r.body, b"Hello, World!");
    }
    assert!(a.log_lines("WASM00004").is_empty(), "{}", a.error_log());
    drop((a, b));
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn a_pool_no_child_could_reserve_fails_configtest_naming_wasm_pool_slots() {
    let hello = location("/hello", "hello");
    let (ok, out) = configtest(&Options::new(&format!("WasmPoolSlots 100000\n{hello}")));
    assert!(!ok, "configtest passed: {out}");
    assert!(
        out.contains("(WasmPoolSlots 100000)") && out.contains("TiB of address space"),
        "{out}"
    );

    // The same under `ulimit -v`, with the slots derived from the MPM (9 in
    // the test configuration: about 36 GiB of reservations).
    let limit = 16 << 30;
    let (ok, out) = configtest_with_address_space(&Options::new(&hello), limit);
    assert!(!ok, "configtest passed under ulimit -v: {out}");
    assert!(
        out.contains("WasmPoolSlots") && out.contains("ulimit -v"),
        "{out}"
    );
    // What fits passes.
    let fits = format!("WasmPoolSlots 2\nWasmPoolShards 1\n{hello}");
    let (ok, out) = configtest_with_address_space(&Options::new(&fits), limit);
    assert!(ok, "{out}");
}

#[test]
fn children_need_no_access_to_the_cache_directory() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can start children as another user");
        return;
    }
    let d = scratch_dir("private-cache");
    let cache = d.join("cache");
    fs::create_dir(&cache).unwrap();
    // Owned by root, closed to everyone else: the children run as www-data.
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o700)).unwrap();
    let s = Apache::start_with(Options::new(&location("/hello", "hello")).cache_dir(&cache));
    for _ in 0..3 {
        let r = get(s.port, "/hello");
        assert_eq!(r.status, 200, "{}", s.error_log());
        assert_eq!(r.body, b"Hello, World!");
    }
    assert!(s.log_lines("WASM00004").is_empty(), "{}", s.error_log());
    drop(s);
    let _ = fs::remove_dir_all(&d);
}
