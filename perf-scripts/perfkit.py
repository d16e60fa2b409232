"""Shared pieces of perf-scripts/compare and perf-scripts/capacity: building
the baselines, rendering and running Apache servers on loopback, running wrk,
and plotting with gnuplot. Standard library only."""

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

def _exit_on_signal(signum, _frame):
    # SIGTERM or SIGHUP (a closed terminal) becomes an exception, so the
    # scripts' `finally` blocks stop the servers they started; a second
    # signal must not cut that clean-up short.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def handle_signals():
    """Makes SIGTERM and SIGHUP end the calling script through its `finally`
    blocks, which stop the servers it started. Each script calls it from its
    main(), so that importing perfkit changes nothing."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        # Under nohup SIGHUP is ignored, and must stay so.
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _exit_on_signal)

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "perf"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def apxs(q):
    return subprocess.run(["apxs", "-q", q], capture_output=True, text=True, check=True).stdout.strip()


def ensure_packages(pkgs):
    """Installs missing Debian packages (only as root)."""
    missing = [p for p in pkgs if subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True).stdout.find("install ok installed") < 0]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing packages {missing}; run as root or: apt-get install {' '.join(missing)}")
    log(f"installing {' '.join(missing)}")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)


def build():
    """Builds mod_wasm and the guests (make all) and the native baselines."""
    log("building mod_wasm, guests and baselines")
    subprocess.run(["make", "-s", "-C", str(ROOT), "all"], check=True, stdout=subprocess.DEVNULL)
    BUILD.mkdir(parents=True, exist_ok=True)
    here = ROOT / "perf-scripts"
    # libtool writes its objects next to the source: compile a copy in the
    # build folder so the source tree stays clean.
    shutil.copy(here / "mod_hello_native.c", BUILD / "mod_hello_native.c")
    subprocess.run(["apxs", "-c", "-o", "mod_hello_native.so", "mod_hello_native.c"],
                   cwd=BUILD, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.copy(BUILD / ".libs" / "mod_hello_native.so", BUILD / "mod_hello_native.so")
    cgi = BUILD / "cgi-bin"
    cgi.mkdir(exist_ok=True)
    subprocess.run(["gcc", "-O2", "-o", str(cgi / "hello.cgi"), str(here / "hello_cgi.c")], check=True)
    php_cgi = cgi / "hello-php.cgi"
    php_cgi.write_text("#!/usr/bin/php-cgi\n" + (here / "hello.php").read_text())
    php_cgi.chmod(0o755)
    docs = BUILD / "htdocs"
    docs.mkdir(exist_ok=True)
    (docs / "static.txt").write_text("Hello, World!")
    shutil.copy(here / "hello.php", docs / "hello.php")
    shutil.copy(here / "hello.lua", BUILD / "hello.lua")
    for p in [BUILD, cgi, docs]:
        p.chmod(0o755)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MPM_TUNING = {
    "event": "StartServers 2\nServerLimit 16\nThreadsPerChild 25\nMaxRequestWorkers 400\n",
    "worker": "StartServers 2\nServerLimit 16\nThreadsPerChild 25\nMaxRequestWorkers 400\n",
    "prefork": "StartServers 32\nMinSpareServers 16\nMaxSpareServers 64\nServerLimit 300\nMaxRequestWorkers 300\n",
}


def render_conf(lines, words):
    """conf/server.conf.in (the skeleton the demo and the tests fill in too)
    with whole placeholder lines replaced from `lines`, then words from `words`."""
    out = []
    for line in (ROOT / "conf/server.conf.in").read_text().splitlines():
        out.append(lines.get(line, line))
    text = "\n".join(out) + "\n"
    for k, v in words.items():
        text = text.replace(k, v)
    return text


class Server:
    """An Apache on a free loopback port with its own directory under build/perf/run."""

    def __init__(self, name, mpm, modules, site, tuning=None):
        """`tuning`: the MPM's directives, instead of MPM_TUNING's."""
        self.name, self.mpm, self.tuning = name, mpm, tuning or MPM_TUNING[mpm]
        self.dir = BUILD / "run" / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.dir.chmod(0o755)
        self.port = free_port()
        libexec = apxs("LIBEXECDIR")
        loads = "\n".join(f"LoadModule {m}_module {p if '/' in p else libexec + '/' + p}" for m, p in modules)
        user = "User www-data\nGroup www-data" if os.geteuid() == 0 else ""
        extra_conf = os.environ.get("PERF_EXTRA_CONF", "").replace("\\n", "\n")
        tuning = f"""{self.tuning}KeepAlive On
{extra_conf}
MaxKeepAliveRequests 0
# Static rows are measured without mmap (noted in the results).
EnableMMAP Off
# As Debian's apache2.conf: no .htaccess lookups (six failed opens per
# request here) and no symlink checks (an lstat per directory from / down).
<Directory />
    Options FollowSymLinks
    AllowOverride None
</Directory>"""
        conf = render_conf({
            "@MODULES@": loads, "@USER@": user, "@TUNING@": tuning, "@SITE@": site,
        }, {
            "@DIR@": str(self.dir), "@PORT@": str(self.port), "@LOGLEVEL@": "warn",
            "@MPM@": mpm, "@LIBEXECDIR@": libexec, "@DOCROOT@": str(BUILD / "htdocs"),
            "@CACHE@": str(ROOT / "build/perf-cache"),
        })
        (self.dir / "httpd.conf").write_text(conf)
        self.proc = None

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self):
        httpd = Path(apxs("SBINDIR")) / apxs("TARGET")
        # As in production: no LD_LIBRARY_PATH, and no RUST_BACKTRACE, which
        # makes every wasmtime::Error (a guest's proc_exit included) capture
        # a backtrace. Developer machines often set it.
        drop = {"LD_LIBRARY_PATH", "RUST_BACKTRACE", "RUST_LIB_BACKTRACE"}
        env = {k: v for k, v in os.environ.items() if k not in drop}
        self.proc = subprocess.Popen([str(httpd), "-f", str(self.dir / "httpd.conf"), "-D", "FOREGROUND"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "stderr.log", "w"), env=env, start_new_session=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} did not start: {(self.dir / 'stderr.log').read_text()}"
                                   f"{(self.dir / 'error.log').read_text() if (self.dir / 'error.log').exists() else ''}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no answer on port {self.port}")

    def pids(self):
        """The parent and its children."""
        out = [self.proc.pid]
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    stat = (p / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                        out.append(int(p.name))
                except (OSError, IndexError, ValueError):
                    pass
        return out

    def cpu_seconds(self):
        """CPU time of the server so far: its processes, and the children
        that already exited (the MPM retires some under changing load; the
        parent's cutime/cstime hold what they used once reaped)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                f = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
                total += int(f[11]) + int(f[12])
                if pid == self.proc.pid:
                    total += int(f[13]) + int(f[14])
            except (OSError, IndexError):
                pass
        return total / tick

    def _children_kib(self, proc_file, pattern):
        """For each child, the sum of the KiB figures `pattern` matches in
        its /proc/PID/`proc_file`, by PID (children that exit are left out)."""
        out = {}
        for pid in self.pids()[1:]:
            try:
                text = (Path("/proc") / str(pid) / proc_file).read_text()
            except OSError:
                continue
            out[pid] = sum(int(m) for m in re.findall(pattern, text, re.M))
        return out

    def child_rss_by_pid(self):
        """RSS in KiB of each child process, by PID."""
        return self._children_kib("status", r"^VmRSS:\s+(\d+)")

    def child_rss_kib(self):
        return list(self.child_rss_by_pid().values())

    def child_rss_and_private_kib(self):
        """RSS and private memory in KiB of each child, read together from
        smaps_rollup. Private pages are what one more child costs; the rest
        of its RSS is shared with the parent and the other children (code,
        mapped .cwasm files)."""
        rss = self._children_kib("smaps_rollup", r"^Rss:\s+(\d+)")
        private = self._children_kib("smaps_rollup", r"^Private_(?:Clean|Dirty):\s+(\d+)")
        both = [p for p in rss if p in private]
        return [rss[p] for p in both], [private[p] for p in both]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def check(url, expect_len=None):
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url],
                         capture_output=True, text=True).stdout.split()
    ok = out and out[0] == "200" and (expect_len is None or int(out[1]) == expect_len)
    if not ok:
        raise RuntimeError(f"{url} answered {out}, expected 200" + (f" with {expect_len} bytes" if expect_len else ""))


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v = float(m.group(1))
    return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]


def wrk_output(url, seconds, connections=16, threads=2, script=None, timeout=10):
    """Runs wrk (keep-alive) and returns its report; `script` is a wrk Lua
    script (a POST's method, body and headers, say); a response slower than
    `timeout` seconds counts as an error."""
    return subprocess.run(["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s",
                           "--latency", "--timeout", f"{timeout}s", *(["-s", str(script)] if script else []), url],
                          capture_output=True, text=True, timeout=seconds + max(60, timeout + 50)).stdout


def wrk(url, seconds, connections=16, threads=2):
    """Runs wrk (keep-alive) and returns req/s, p50 and p99 in ms, and error count."""
    return parse_wrk(wrk_output(url, seconds, connections, threads))


def parse_wrk(out):
    """req/s, p50 and p99 in ms, and error count of a wrk --latency report."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors}


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def gnuplot(script, cwd):
    if shutil.which("gnuplot"):
        subprocess.run(["gnuplot"], input=script, text=True, cwd=cwd, check=True)
    else:
        log("gnuplot is missing: no plots")


def machine():
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 1024
    return f"{os.cpu_count()} CPUs ({cpu}), {mem} MiB RAM, {os.uname().sysname} {os.uname().release}"
