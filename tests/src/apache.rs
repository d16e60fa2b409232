//! A real Apache httpd for one test.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::root;

/// Apache's multi-processing modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mpm {
    /// Threads, with an event loop for keep-alive (the main target).
    Event,
    /// Threads.
    Worker,
    /// Processes only.
    Prefork,
}

impl Mpm {
    fn name(self) -> &'static str {
        match self {
            Mpm::Event => "event",
            Mpm::Worker => "worker",
            Mpm::Prefork => "prefork",
        }
    }

    fn tuning(self) -> &'static str {
        match self {
            Mpm::Prefork => "StartServers 2\nMinSpareServers 1\nMaxSpareServers 4\nMaxRequestWorkers 8\n",
            _ => "StartServers 1\nServerLimit 4\nThreadsPerChild 8\nMaxRequestWorkers 16\nMinSpareThreads 8\nMaxSpareThreads 16\n",
        }
    }
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct Options {
    /// The MPM to load.
    pub mpm: Mpm,
    /// Site configuration; `@GUESTS@` becomes the guests' directory,
    /// `@DIR@` the server's own directory and `@ROOT@` the repository.
    pub site: String,
    /// `WasmCacheDir`; `None` shares `build/test-cache` between tests.
    pub cache_dir: Option<PathBuf>,
    /// `LogLevel`.
    pub log_level: String,
    /// The mod_wasm.so to load; `None` for `build/mod_wasm.so`.
    pub module: Option<PathBuf>,
    /// Environment variables for `httpd` (its children inherit them).
    pub env: Vec<(String, String)>,
}

impl Options {
    /// mpm_event with `site`.
    pub fn new(site: &str) -> Self {
        Options {
            mpm: Mpm::Event,
            site: site.into(),
            cache_dir: None,
            log_level: "info".into(),
            module: None,
            env: Vec::new(),
        }
    }

    /// Same, under `mpm`.
    pub fn mpm(mut self, mpm: Mpm) -> Self {
        self.mpm = mpm;
        self
    }

    /// Same, with `name=value` in the server's environment.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Same, with its own cache directory.
    pub fn cache_dir(mut self, dir: &Path) -> Self {
        self.cache_dir = Some(dir.to_path_buf());
        self
    }
}

fn apxs(q: &str) -> String {
    let out = Command::new("apxs")
        .args(["-q", q])
        .output()
        .expect("apxs (apache2-dev) is needed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The httpd binary (`apache2` on Debian).
pub fn httpd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("APACHE_BIN") {
        return p.into();
    }
    Path::new(&apxs("SBINDIR")).join(apxs("TARGET"))
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A fresh directory for one server, readable by Apache's children (which
/// run as another user when the tests run as root).
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "mod_wasm-e2e-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(d.join("htdocs")).unwrap();
    chmod_755(&d);
    d
}

fn chmod_755(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes the server configuration for `opts` into `dir`: the repository's
/// skeleton (`conf/server.conf.in`, shared with the demo and the
/// benchmarks) filled in.
pub fn write_config(dir: &Path, port: u16, opts: &Options) -> PathBuf {
    let libexec = apxs("LIBEXECDIR");
    let cache = opts
        .cache_dir
        .clone()
        .unwrap_or_else(|| root().join("build/test-cache"));
    let user = if is_root() {
        "User www-data\nGroup www-data"
    } else {
        ""
    };
    let module = opts
        .module
        .clone()
        .unwrap_or_else(|| root().join("build/mod_wasm.so"));
    let modules = format!(
        "LoadModule mime_module {libexec}/mod_mime.so\nTypesConfig /dev/null\n\
         LoadModule alias_module {libexec}/mod_alias.so\n\
         LoadModule wasm_module {}",
        module.display()
    );
    let tuning = format!("{}GracefulShutdownTimeout 5", opts.mpm.tuning());
    let skeleton = fs::read_to_string(root().join("conf/server.conf.in")).unwrap();
    let mut conf = String::new();
    for line in skeleton.lines() {
        conf += match line {
            "@MODULES@" => &modules,
            "@USER@" => user,
            "@TUNING@" => &tuning,
            "@SITE@" => &opts.site,
            _ => line,
        };
        conf.push('\n');
    }
    let dir_text = dir.display().to_string();
    let conf = conf
        .replace(
            "@GUESTS@",
            &root().join("build/guests").display().to_string(),
        )
        .replace("@DIR@", &dir_text)
        .replace("@ROOT@", &root().display().to_string())
        .replace("@PORT@", &port.to_string())
        .replace("@LOGLEVEL@", &opts.log_level)
        .replace("@MPM@", opts.mpm.name())
        .replace("@LIBEXECDIR@", &libexec)
        .replace("@DOCROOT@", &format!("{dir_text}/htdocs"))
        .replace("@CACHE@", &cache.display().to_string());
    let path = dir.join("httpd.conf");
    fs::write(&path, conf).unwrap();
    path
}

/// The longest a server may take to listen.
const READY_WITHIN: Duration = Duration::from_secs(180);

/// A running server, stopped when dropped.
pub struct Apache {
    child: Child,
    opts: Options,
    /// The loopback port it listens on.
    pub port: u16,
    /// Its directory (configuration, logs, document root).
    pub dir: PathBuf,
}

impl Apache {
    /// Starts a server with `site` under mpm_event.
    pub fn start(site: &str) -> Apache {
        Apache::start_with(Options::new(site))
    }

    /// Starts a server as `opts` says and waits until it accepts connections.
    pub fn start_with(opts: Options) -> Apache {
        let mut last = String::new();
        for _attempt in 0..3 {
            let dir = scratch_dir(opts.mpm.name());
            let port = free_port();
            let conf = write_config(&dir, port, &opts);
            let child = Command::new(httpd_bin())
                .arg("-f")
                .arg(&conf)
                .args(["-D", "FOREGROUND"])
                // httpd signals its whole process group on shutdown: give it
                // a group of its own, or it takes the test runner down too.
                .process_group(0)
                // `cargo test` points LD_LIBRARY_PATH at target/: the module
                // must find its runtime through its own rpath, as in production.
                .env_remove("LD_LIBRARY_PATH")
                .envs(opts.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(fs::File::create(dir.join("stdout.log")).unwrap())
                .stderr(fs::File::create(dir.join("stderr.log")).unwrap())
                .spawn()
                .expect("cannot run httpd");
            let mut server = Apache {
                child,
                opts: opts.clone(),
                port,
                dir,
            };
            match server.wait_ready() {
                Ok(()) => return server,
                Err(why) => last = why,
            }
            // Dropping `server` stops it; try another port if it was taken.
            if !last.contains("Address already in use") {
                break;
            }
        }
        panic!("Apache did not start: {last}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        // With a cold cache the parent compiles every module before it
        // listens: the interpreter components (18 MB of CPython, 13 MB of
        // SpiderMonkey) take more than 30 s on a busy 2-core machine. The
        // wait ends as soon as the parent exits.
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "httpd exited ({status}): {}\n{}",
                    self.stderr(),
                    self.error_log()
                ));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            sleep(Duration::from_millis(20));
        }
        Err(format!(
            "no answer on port {} within {READY_WITHIN:?}\n{}",
            self.port,
            self.error_log()
        ))
    }

    /// The PID of the parent process.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The PIDs of the parent's child processes right now.
    pub fn child_pids(&self) -> Vec<i32> {
        let pid = self.pid();
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .expect("the server's parent is running")
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// The error log so far.
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// What httpd printed on stderr.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    fn generations(&self) -> usize {
        self.error_log()
            .matches("resuming normal operations")
            .count()
    }

    /// `apachectl -k graceful`: SIGUSR1 to the parent; returns once the new
    /// generation is configured.
    pub fn graceful(&self) {
        self.signal_and_wait(libc::SIGUSR1);
    }

    /// Rewrites the configuration with `site` (same port, MPM and cache) and
    /// restarts gracefully.
    pub fn reconfigure(&mut self, site: &str) {
        self.opts.site = site.to_string();
        write_config(&self.dir, self.port, &self.opts);
        self.graceful();
    }

    /// `apachectl -k restart`: SIGHUP to the parent.
    pub fn restart(&self) {
        self.signal_and_wait(libc::SIGHUP);
    }

    fn signal_and_wait(&self, sig: i32) {
        let before = self.generations();
        // SAFETY: signalling the server this harness started.
        unsafe { libc::kill(self.pid(), sig) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.generations() == before {
            assert!(
                Instant::now() < deadline,
                "no restart within 30 s:\n{}",
                self.error_log()
            );
            sleep(Duration::from_millis(20));
        }
        // The listener is the same socket; wait until it answers again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "no answer after restart");
            sleep(Duration::from_millis(20));
        }
    }

    /// Lines of the error log that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.error_log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Lines of the error log that contain `needle`, once there are at
    /// least `n` of them or 5 s have passed: what a component's request
    /// logs after its response went out.
    pub fn wait_log_lines(&self, needle: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.log_lines(needle);
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server and waits for it (also done on drop).
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signalling the server this harness started.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("server files kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `httpd -t` on a configuration built from `opts`; returns whether it
/// passed and everything it printed.
pub fn configtest(opts: &Options) -> (bool, String) {
    configtest_with_env(opts, &[])
}

/// [`configtest`] with these extra environment variables for `httpd`.
pub fn configtest_with_env(opts: &Options, env: &[(&str, &Path)]) -> (bool, String) {
    configtest_command(opts, |cmd| {
        cmd.envs(env.iter().copied());
    })
}

/// [`configtest`] with `httpd`'s address space limited to `bytes`, as
/// `ulimit -v` would.
pub fn configtest_with_address_space(opts: &Options, bytes: u64) -> (bool, String) {
    configtest_command(opts, |cmd| {
        // SAFETY: setrlimit is async-signal-safe; the closure runs in the
        // forked child before exec and touches nothing else.
        unsafe {
            cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    })
}

fn configtest_command(opts: &Options, adjust: impl FnOnce(&mut Command)) -> (bool, String) {
    let dir = scratch_dir("configtest");
    let conf = write_config(&dir, free_port(), opts);
    let mut cmd = Command::new(httpd_bin());
    adjust(&mut cmd);
    let out = cmd
        .arg("-t")
        .arg("-f")
        .arg(&conf)
        .output()
        .expect("cannot run httpd");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = fs::remove_dir_all(&dir);
    (out.status.success(), text)
}
