//! `mod_wasm-precompile`: fills a `WasmCacheDir` ahead of time, on a build
//! machine or in an image build step, so that servers started on it compile
//! nothing. It compiles with the server's own code and settings (this
//! binary is built from the same runtime crate as `libwasm_runtime.so`), so
//! its entries are the server's, names and all.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use wasm_runtime::cache::{precompile_with, Options};
use wasm_runtime::engine::{describe, EngineOptions};
use wasm_runtime::listing::{self, Listed};

/// `println!` that does not panic when stdout is closed early
/// (`mod_wasm-precompile … | head`): the work goes on, its status decides.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

const USAGE: &str = "\
usage: mod_wasm-precompile -f HTTPD.CONF [--httpd COMMAND] [--cache-dir DIR] [--check] [-- APACHE-ARGS...]
       mod_wasm-precompile --cache-dir DIR [--trap-unknown-imports] [--check] MODULE.wasm...
       mod_wasm-precompile --engine

  -f HTTPD.CONF           compile every WasmModule of this configuration, as
                          `apachectl -t` reads it (Includes, <IfDefine>, the
                          configured WasmCacheDir); APACHE-ARGS (-d, -C, -D)
                          are passed to Apache
  --httpd COMMAND         how to run Apache (default: apache2ctl, apachectl,
                          apache2 or httpd, the first found)
  --cache-dir DIR         the cache to fill (default with -f: WasmCacheDir)
  --trap-unknown-imports  check MODULEs as WasmTrapUnknownImports On does
  --check                 compile nothing: exit 1 unless every entry is there
  --engine                print what this machine's entries depend on
                          (Wasmtime, settings, CPU features), for modules
                          without a wasi:http 0.3 component among them
                          (with one, every entry has concurrency=1)

Give a server's modules together: as the server does, a wasi:http 0.3
component among them makes every module compile for the component model's
concurrency.";

/// What the command line asks for.
struct Args {
    conf: Option<OsString>,
    httpd: Option<OsString>,
    cache_dir: Option<PathBuf>,
    trap_unknown_imports: bool,
    check: bool,
    engine: bool,
    modules: Vec<PathBuf>,
    apache_args: Vec<OsString>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        conf: None,
        httpd: None,
        cache_dir: None,
        trap_unknown_imports: false,
        check: false,
        engine: false,
        modules: Vec::new(),
        apache_args: Vec::new(),
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.to_str() {
            Some("-f") => args.conf = Some(value("-f")?),
            Some("--httpd") => args.httpd = Some(value("--httpd")?),
            Some("--cache-dir") => args.cache_dir = Some(value("--cache-dir")?.into()),
            Some("--trap-unknown-imports") => args.trap_unknown_imports = true,
            Some("--check") => args.check = true,
            Some("--engine") => args.engine = true,
            Some("-h" | "--help") => return Err(String::new()),
            Some("--") => {
                args.apache_args = it.by_ref().collect();
            }
            Some(s) if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ => args.modules.push(a.into()),
        }
    }
    match (&args.conf, args.modules.is_empty()) {
        _ if args.engine => {}
        (Some(_), false) => return Err("give -f or modules, not both".into()),
        (None, true) => return Err("nothing to compile: give -f HTTPD.CONF or modules".into()),
        (None, false) if args.cache_dir.is_none() => return Err("modules need --cache-dir".into()),
        _ => {}
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            say!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mod_wasm-precompile: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.engine {
        say!("{}", describe(EngineOptions::default()));
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("mod_wasm-precompile: {e}");
            ExitCode::from(2)
        }
    }
}

/// Compiles (or checks) every module; `Ok(false)` when one failed.
fn run(args: &Args) -> Result<bool, String> {
    let (cache_dir, mut modules) = match &args.conf {
        Some(conf) => {
            let httpd = match &args.httpd {
                Some(h) => h.clone(),
                None => listing::default_httpd()
                    .ok_or("no apache2ctl, apachectl, apache2 or httpd found: give --httpd")?,
            };
            let mut apache_args = vec![OsString::from("-f"), conf.clone()];
            apache_args.extend(args.apache_args.iter().cloned());
            let l = listing::read(&[httpd], &apache_args)?;
            (args.cache_dir.clone().unwrap_or(l.cache_dir), l.modules)
        }
        None => (
            args.cache_dir.clone().unwrap_or_default(),
            args.modules
                .iter()
                .map(|m| Listed {
                    path: m.clone(),
                    trap_unknown_imports: args.trap_unknown_imports,
                    defined_at: "the command line".into(),
                })
                .collect(),
        ),
    };
    // A module configured in several sections is one entry; it is checked
    // once per linking option.
    let mut seen = Vec::new();
    modules.retain(|m| {
        let key = (m.path.clone(), m.trap_unknown_imports);
        !seen.contains(&key) && {
            seen.push(key);
            true
        }
    });
    if modules.is_empty() {
        say!("no WasmModule is configured: nothing to compile");
        return Ok(true);
    }
    // As the server decides it (mod_wasm.c, wasm_check_config): from every
    // module, before any is compiled.
    let concurrency = modules
        .iter()
        .any(|m| std::fs::read(&m.path).is_ok_and(|w| wasm_runtime::http::needs_concurrency(&w)));
    let engine = EngineOptions {
        concurrency,
        ..EngineOptions::default()
    };
    say!(
        "{} {} module(s) in {}{}",
        if args.check { "checking" } else { "compiling" },
        modules.len(),
        cache_dir.display(),
        if concurrency {
            " (with the component model's concurrency, which a wasi:http 0.3 component needs)"
        } else {
            ""
        }
    );
    let started = Instant::now();
    let (mut hits, mut compiled, mut failed) = (0, 0, 0);
    let total = modules.len();
    for (i, m) in modules.iter().enumerate() {
        let size = std::fs::metadata(&m.path).map(|md| md.len()).unwrap_or(0);
        say!(
            "[{}/{total}] {} ({:.1} MB)",
            i + 1,
            m.path.display(),
            size as f64 / 1e6
        );
        let opts = Options {
            engine,
            trap_unknown_imports: m.trap_unknown_imports,
            check_only: args.check,
        };
        let ticker = Ticker::start(m.path.display().to_string());
        let result = precompile_with(&m.path, &cache_dir, &opts);
        drop(ticker);
        match result {
            Ok(c) if c.hit => {
                hits += 1;
                say!("  already in the cache: {}", c.cwasm.path.display());
            }
            Ok(c) => {
                compiled += 1;
                if let Some(why) = &c.replaced {
                    say!("  replaced an entry that could not be used ({why})");
                }
                say!(
                    "  compiled in {:.1} s into {}",
                    c.millis as f64 / 1000.0,
                    c.cwasm.path.display()
                );
            }
            Err(e) => {
                failed += 1;
                say!("  FAILED (WasmModule at {}): {}", m.defined_at, e.message);
            }
        }
    }
    say!(
        "{total} module(s): {hits} already in the cache, {compiled} compiled, {failed} failed \
         ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(failed == 0)
}

/// Says, every few seconds, that a long compilation is still running
/// (Wasmtime reports no progress of its own; an interpreter takes seconds).
struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Ticker {
    const EVERY: Duration = Duration::from_secs(5);

    fn start(what: String) -> Ticker {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            let started = Instant::now();
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(Self::EVERY) {
                eprintln!(
                    "  ... still compiling {what} ({} s)",
                    started.elapsed().as_secs()
                );
            }
        });
        Ticker {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
