//! `mod_wasm-precompile` fills a cache from an Apache configuration, and a
//! server started on that cache, read-only as an image layer is, compiles
//! nothing; a stale entry there fails `configtest` naming the module.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::apache::{configtest, httpd_bin, scratch_dir, write_config, Apache, Options};
use e2e::http::get;
use e2e::root;

/// A hello command module and a wasi:http 0.3 component: the component
/// makes the server compile every module with the component model's
/// concurrency, so the command must decide it the same way to produce the
/// entries the server looks for.
fn site(hello: &Path) -> String {
    format!(
        "<Location /hello>\n  SetHandler wasm-handler\n  WasmModule {}\n</Location>\n\
         <Location /py3>\n  SetHandler wasm-handler\n  WasmModule @ROOT@/build/components/hello-py3.wasm\n</Location>\n",
        hello.display()
    )
}

fn precompile(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(root().join("build/mod_wasm-precompile"))
        .args(args)
        .output()
        .expect("build/mod_wasm-precompile: run `make all` first");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `dir` mounted read-only over itself, as an image layer or a read-only
/// export is; unmounted when dropped. Tests run as root, whom permissions
/// do not stop, so only a mount makes a directory really read-only.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn mount(dir: &Path) -> ReadOnly {
        let run = |args: &[&str]| {
            let st = Command::new("mount").args(args).arg(dir).arg(dir).status();
            assert!(
                st.is_ok_and(|s| s.success()),
                "cannot mount {} read-only (mount {args:?}): the test needs CAP_SYS_ADMIN",
                dir.display()
            );
        };
        run(&["--bind"]);
        let ro = ReadOnly(dir.to_path_buf());
        run(&["-o", "remount,bind,ro"]);
        assert!(fs::write(dir.join("probe"), b"").is_err(), "still writable");
        ro
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn precompile_fills_a_cache_a_read_only_server_starts_from_without_compiling() {
    let work = scratch_dir("precompile");
    let cache = work.join("cache");
    fs::create_dir_all(&cache).unwrap();
    let hello = work.join("hello.wasm");
    fs::copy(root().join("build/guests/hello.wasm"), &hello).unwrap();
    let opts = Options::new(&site(&hello)).cache_dir(&cache);
    let conf = write_config(&work, 1, &opts);
    let httpd = httpd_bin();
    let args = [
        "-f".as_ref(),
        conf.as_os_str(),
        "--httpd".as_ref(),
        httpd.as_os_str(),
    ];

    let (ok, out) = precompile(&args);
    assert!(ok, "{out}");
    assert!(
        out.contains("2 module(s): 0 already in the cache, 2 compiled, 0 failed"),
        "{out}"
    );
    assert!(
        out.contains("with the component model's concurrency"),
        "{out}"
    );
    assert!(out.contains(&format!("[1/2] {}", hello.display())), "{out}");
    let (ok, out) = precompile(&args);
    assert!(
        ok && out.contains("2 already in the cache, 0 compiled"),
        "{out}"
    );

    let ro = ReadOnly::mount(&cache);
    let (ok, out) = precompile(&[&args[..], &["--check".as_ref()]].concat());
    assert!(ok && out.contains("2 already in the cache"), "{out}");
    let mut s = Apache::start_with(opts.clone());
    assert_eq!(get(s.port, "/hello").body, b"Hello, World!");
    assert_eq!(get(s.port, "/py3").status, 200);
    let log = s.error_log();
    assert!(
        log.contains("2 of 2 modules loaded from the cache, 0 compiled"),
        "{log}"
    );
    assert!(!log.contains("compiled in"), "{log}");
    s.stop();

    // The module changed after the cache was built: its entry is stale.
    let mut wasm = fs::read(&hello).unwrap();
    wasm.extend_from_slice(&[0, 4, 3, b'n', b'e', b'w']); // a custom section
    fs::write(&hello, wasm).unwrap();
    let (ok, out) = configtest(&opts);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("WasmModule {}", hello.display()))
            && out.contains("has no entry for this module")
            && out.contains("cannot be written")
            && out.contains("mod_wasm-precompile"),
        "{out}"
    );
    let (ok, out) = precompile(&[&args[..], &["--check".as_ref()]].concat());
    assert!(
        !ok && out.contains("1 already in the cache, 0 compiled, 1 failed"),
        "{out}"
    );
    drop(ro);
    let _ = fs::remove_dir_all(&work);
}

#[test]
fn precompile_names_what_it_cannot_use() {
    let work = scratch_dir("precompile-bad");
    let (ok, out) = precompile(&[
        "--cache-dir".as_ref(),
        work.join("cache").as_os_str(),
        work.join("absent.wasm").as_os_str(),
    ]);
    assert!(
        !ok && out.contains("absent.wasm") && out.contains("1 failed"),
        "{out}"
    );
    // A configuration Apache refuses is refused with Apache's message.
    let bad = write_config(&work, 1, &Options::new("WasmModul /x.wasm\n"));
    let httpd = httpd_bin();
    let (ok, out) = precompile(&[
        "-f".as_ref(),
        bad.as_os_str(),
        "--httpd".as_ref(),
        httpd.as_os_str(),
    ]);
    assert!(!ok && out.contains("refused the configuration"), "{out}");
    assert!(
        out.contains("WasmModul") && out.contains("httpd.conf"),
        "{out}"
    );
    let (ok, out) = precompile(&["--what".as_ref()]);
    assert!(!ok && out.contains("unknown option --what"), "{out}");
    let _ = fs::remove_dir_all(&work);
}
