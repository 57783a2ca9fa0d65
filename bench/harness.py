"""What the benchmarks share: processes, ports, tools, configs, wrk, reports.

`suite.py` (what `make bench` runs) and `tls.py` import this module. It
starts nothing by itself. Every server a benchmark starts goes through
`Processes`: it runs in a session (process group) of its own, so stopping
it stops its children too (socat's forks, nginx's worker, meshgate's
workers), and `stop_all` in a `finally` leaves nothing behind. Standard
library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
LOOPBACK = "127.0.0.1"

# Tools are looked up on PATH plus the sbin directories, where Debian puts
# nginx and haproxy but which a non-root PATH often lacks.
TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
# Where Debian's libnginx-mod-stream puts nginx's stream module.
NGINX_MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules")

# A server that does not listen this long after start is broken, not slow.
READY_TIMEOUT = 10.0
# SIGTERM grace before SIGKILL; meshgate drains (see below), others exit at once.
STOP_GRACE = 3.0
# meshgate's drain deadline on SIGTERM: the benchmark's clients are gone by
# then, so a long drain would only slow the cleanup down.
MESHGATE_DRAIN = "1"
# A client that outlives its duration by this much is counted as a hang.
RUN_SLACK = 15.0
# Once its clients are gone a server should hold none of their connections;
# it gets this long to close them before they are reported as left open.
CLOSE_GRACE = 2.0
# The response body the nginx backend serves: small, so the request rate is
# what counts.
BODY = "0123456789" * 10
# How a tool's version line is recognised in its --version output.
VERSION = re.compile(r"\d+\.\d+")
# Log lines that are startup chatter, not a sign of trouble.
NOISE = re.compile(r"\[NOTICE\]|Server listening|^-+$|^\s*$|^ACCEPT$")
# File descriptors the benchmark and its servers may open, if allowed to
# raise the hard limit: 5,000 proxied connections are 10,000 descriptors in
# the proxy alone.
NOFILE = 65536


T = TypeVar("T")


class MissingTool(Exception):
    pass


class NotReady(Exception):
    pass


# -- processes ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ports: tuple[int, ...]  # where it listens (all of them were listening at start)

    @property
    def port(self) -> int:
        return self.ports[0]

    def pids(self) -> list[int]:
        """The leader and every process of its group (children, workers, forks)."""
        return group_pids(self.proc.pid)

    def sockets(self) -> int:
        """Open sockets over the whole group: connections (and listeners).

        Sockets only: HAProxy keeps a pool of splice pipes, and a pooled pipe
        is no leaked connection.
        """
        return sum(_open_sockets(pid) for pid in self.pids())

    def pss_kib(self) -> int:
        """Proportional set size summed over the group (/proc/PID/smaps_rollup)."""
        return sum(_pss_kib(pid) for pid in self.pids())

    def exited(self) -> str | None:
        if self.proc.poll() is None:
            return None
        return f"{self.name} exited with code {self.proc.returncode}:\n{tail(self.log)}"


def group_pids(leader: int) -> list[int]:
    """Processes whose process group is `leader` (Linux /proc)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # Fields after the command name, which may itself hold spaces and ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == leader:
            pids.append(int(entry.name))
    return pids


def _open_sockets(pid: int) -> int:
    count = 0
    try:
        for entry in os.scandir(f"/proc/{pid}/fd"):
            with suppress(OSError):  # closed meanwhile
                count += os.readlink(entry.path).startswith("socket:")
    except OSError:
        pass  # exited; reported separately
    return count


def pin(pids: Iterable[int], cpus: set[int]) -> None:
    """Run every thread of these processes on `cpus` only (children inherit it)."""
    for pid in pids:
        try:
            tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue  # exited
        for tid in tids:
            with suppress(OSError):
                os.sched_setaffinity(tid, cpus)


def _pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(match[1]) if match else 0


class Processes:
    """Every long-running process the benchmark starts, so all get stopped."""

    def __init__(self, logdir: Path) -> None:
        self._logdir = logdir
        self._servers: list[Server] = []

    def start(self, name: str, argv: Sequence[str], ports: Iterable[int]) -> Server:
        """Start `argv` and wait until every port in `ports` is listening."""
        log = self._logdir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(name, proc, log, tuple(ports))
        self._servers.append(server)
        try:
            wait_listening(server)
        except NotReady:
            self.stop(server)
            raise
        return server

    def stop(self, server: Server) -> None:
        _stop_group(server.proc)
        self._servers.remove(server)

    def stop_all(self) -> None:
        # A second Ctrl-C must not cut the cleanup short and leave servers behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            # Newest first: the proxies before the backends they forward to.
            for server in reversed(self._servers):
                _stop_group(server.proc)
            self._servers.clear()
        finally:
            signal.signal(signal.SIGINT, previous)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    _signal_group(proc, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE)
    # Then SIGKILL whatever is left: a leader that ignored SIGTERM, or
    # children that outlive it (socat's forks serving open connections).
    _signal_group(proc, signal.SIGKILL)
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        print(f"bench: process {proc.pid} survived SIGKILL", file=sys.stderr)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(proc.pid, sig)


def tcp_sockets() -> list[tuple[int, str]]:
    """(local port, state) of every IPv4 socket on loopback or any address.

    Read from /proc instead of probing, because a probe connection through a
    proxy would reach the backend (iperf3 counts every connection as a test).
    States: 01 ESTABLISHED, 06 TIME_WAIT, 0A LISTEN.
    """
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        addr, port = fields[1].split(":")
        if addr in ("0100007F", "00000000"):
            out.append((int(port, 16), fields[3]))
    return out


def wait_listening(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise NotReady(
                f"{server.name} exited with code {server.proc.returncode}:\n{tail(server.log)}"
            )
        listening = {port for port, state in tcp_sockets() if state == "0A"}
        if listening.issuperset(server.ports):
            return
        time.sleep(0.05)
    raise NotReady(f"{server.name} not listening on ports {server.ports} after {READY_TIMEOUT}s")


def listeners(port: int) -> int:
    """Listening sockets on `port`: one per process with SO_REUSEPORT workers."""
    return sum(1 for p, state in tcp_sockets() if p == port and state == "0A")


def open_connections(port: int) -> int:
    """Accepted connections on `port` not yet closed by the server."""
    # 0A LISTEN is the socket itself; 06 TIME_WAIT is closed on both sides.
    return sum(1 for p, state in tcp_sockets() if p == port and state not in ("0A", "06"))


def established(port: int) -> int:
    """Connections on the server side of `port` in ESTABLISHED state."""
    return sum(1 for p, state in tcp_sockets() if p == port and state == "01")


def connections_left(port: int) -> int:
    """What `open_connections` says once the server had CLOSE_GRACE to close them."""
    deadline = time.monotonic() + CLOSE_GRACE
    while (left := open_connections(port)) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def left_open(count: Callable[[], int], before: int) -> int:
    """How far `count()` stays above `before` after CLOSE_GRACE at most
    (`count`: a server's open sockets, a backend's connections)."""
    deadline = time.monotonic() + CLOSE_GRACE
    while (extra := count() - before) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return extra


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def tail(log: Path, lines: int = 5) -> str:
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join(f"    {line}" for line in text[-lines:])


def log_problems(server: Server) -> list[str]:
    """What a server printed that is not startup chatter: errors, warnings."""
    lines = server.log.read_text(errors="replace").splitlines() if server.log.exists() else []
    if server.name.startswith("iperf3"):
        # iperf3 -s prints a report per test; only its errors matter.
        lines = [line for line in lines if "error" in line.lower()]
    return [line for line in lines if not NOISE.search(line)]


def raise_nofile() -> int:
    """Raise this process's descriptor limit (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(hard, NOFILE) if hard != resource.RLIM_INFINITY else NOFILE
    for limit in ((want, want), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
            return limit[0]
        except (ValueError, OSError):
            continue  # not root: the hard limit is as far as it goes
    return soft


# -- tools -------------------------------------------------------------------
VERSION_FLAGS = {
    "iperf3": ["--version"],
    "wrk": ["--version"],
    "nginx": ["-v"],
    "haproxy": ["-v"],
    "socat": ["-V"],
    "openssl": ["version"],
    "meshgate": ["version"],
}


def find_tools(names: Iterable[str], make_target: str = "bench") -> dict[str, str]:
    """Paths of the named tools; meshgate from the repository's .venv first."""
    found = {name: shutil.which(name, path=TOOL_PATH) for name in dict.fromkeys(names)}
    if "meshgate" in found:
        venv = REPO / ".venv" / "bin" / "meshgate"
        found["meshgate"] = str(venv) if venv.exists() else found["meshgate"]
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        hint = f" (run `make {make_target}`: it installs the Debian packages and creates .venv)"
        raise MissingTool(f"missing: {', '.join(missing)}{hint}")
    return {name: str(path) for name, path in found.items()}


def tool_versions(tools: dict[str, str]) -> dict[str, str]:
    versions: dict[str, str] = {"python-ssl": ssl.OPENSSL_VERSION}
    for name, path in tools.items():
        argv = [path, *VERSION_FLAGS.get(name, ["--version"])]
        try:
            done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            versions[name] = "?"
            continue
        # The first line with a version number (socat's first line is its authors).
        lines = [line for line in (done.stdout + done.stderr).splitlines() if VERSION.search(line)]
        versions[name] = lines[0].strip() if lines else "?"
    return versions


def nginx_stream_module() -> str | None:
    """The stream module's file when nginx has it as a dynamic module (Debian)."""
    for folder in NGINX_MODULE_DIRS:
        path = Path(folder, "ngx_stream_module.so")
        if path.exists():
            return str(path)
    return None


# -- configs -----------------------------------------------------------------
def nginx_main(home: Path, *, stream: bool = False, connections: int = 4096) -> str:
    """The top of an nginx config: foreground, one worker, everything under `home`."""
    module = nginx_stream_module() if stream else None
    load = f"load_module {module};\n" if module else ""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return f"""{load}daemon off;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {home}/nginx.pid;
error_log stderr;
events {{ worker_connections {connections}; }}
"""


def nginx_http_head(home: Path) -> str:
    """The start of an `http` block: no access log, temp paths under `home`."""
    return f"""    access_log off;
    client_body_temp_path {home}/body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
    # Keep-alive connections are never recycled during a run (default: 1000
    # requests), so keep-alive workloads measure requests, not reconnects.
    keepalive_requests 1000000;
"""


STATUS_PATH = "/nginx_status"


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path
    cert: Path  # the leaf for `name`; no chain needed: the CA is trusted
    key: Path
    combined: Path  # cert then key, in one file (HAProxy's `crt`)
    name: str


def make_pki(openssl: str, tmp: Path, key_type: str, name: str) -> Pki:
    """A CA and a leaf for `name`, both made by the openssl CLI (no Python deps)."""
    newkey = ["-newkey", "rsa:2048"] if key_type == "rsa" else ["-newkey", "ec"]
    newkey += [] if key_type == "rsa" else ["-pkeyopt", "ec_paramgen_curve:prime256v1"]
    ca, ca_key = tmp / "ca.crt", tmp / "ca.key"
    cert, key, csr = tmp / "leaf.crt", tmp / "leaf.key", tmp / "leaf.csr"
    ext = tmp / "leaf.ext"
    usage = "digitalSignature,keyEncipherment" if key_type == "rsa" else "digitalSignature"
    ext.write_text(
        f"subjectAltName=DNS:{name}\nbasicConstraints=critical,CA:FALSE\n"
        f"keyUsage=critical,{usage}\nextendedKeyUsage=serverAuth\n"
    )
    ca_subject, leaf_subject = "/CN=meshgate bench CA", f"/CN={name}"
    steps = [
        [openssl, "req", "-x509", *newkey, "-nodes", "-keyout", str(ca_key), "-out", str(ca),
         "-days", "2", "-subj", ca_subject],
        [openssl, "req", *newkey, "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", leaf_subject],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert)],
    ]  # fmt: skip
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise NotReady(f"openssl {argv[1]} failed: {done.stderr.strip()[:300]}")
    combined = tmp / "leaf.pem"
    combined.write_text(cert.read_text() + key.read_text())
    return Pki(ca, cert, key, combined, name)


# -- load generators ---------------------------------------------------------
@dataclass(slots=True)
class Result:
    value: float | None  # None: no number (see problems)
    problems: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


def run_client(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str] | Result:
    """Run a load generator; a hang becomes a failed Result, not a stuck benchmark."""
    try:
        return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Result(None, [f"{Path(argv[0]).name} hung: no result after {timeout:.0f}s"])


_WRK_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+\w+), ([\d.]+\w+) read", re.M)
_WRK_SOCKET = re.compile(r"Socket errors: (connect \d+, read \d+, write \d+, timeout \d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_PERCENTILE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_WRK_LATENCY = re.compile(
    r"^\s+Latency\s+([\d.]+)(us|ms|s|m|h)\s+[\d.]+\w+\s+([\d.]+)(us|ms|s|m|h)", re.M
)
_WRK_BYTES = re.compile(r"^([\d.]+)([KMGTP]?)B$")
_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(number: str, unit: str) -> float:
    return float(number) * _MS[unit]


def _bytes(text: str) -> float | None:
    match = _WRK_BYTES.match(text)
    if match is None:
        return None
    return float(match[1]) * (1 << 10 * " KMGTP".index(match[2] or " "))


def run_wrk(wrk: str, url: str, *, connections: int, duration: int, close: bool = False) -> Result:
    """wrk, one thread: requests/s, latency percentiles (ms) and every error it reports.

    One thread leaves most of the second core to the proxy and the backend.
    """
    argv = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    done = run_client(argv, duration + RUN_SLACK)
    if isinstance(done, Result):
        return done
    rate = _WRK_RATE.search(done.stdout)
    if done.returncode != 0 or rate is None:
        text = (done.stderr or done.stdout).strip()[:200]
        return Result(None, [f"wrk exit {done.returncode}: {text}"])
    result = Result(float(rate[1]))
    percentiles = {m[1]: round(_ms(m[2], m[3]), 4) for m in _WRK_PERCENTILE.finditer(done.stdout)}
    result.detail["latency_ms"] = percentiles
    if "50" not in percentiles or "99" not in percentiles:
        result.problems.append("wrk printed no latency distribution")
    if latency := _WRK_LATENCY.search(done.stdout):
        result.detail["latency_avg_ms"] = round(_ms(latency[1], latency[2]), 4)
        result.detail["latency_max_ms"] = round(_ms(latency[3], latency[4]), 4)
    if total := _WRK_TOTAL.search(done.stdout):
        requests = int(total[1])
        result.detail |= {"requests": requests, "elapsed": total[2], "read": total[3]}
        if requests == 0:
            result.problems.append("wrk completed no request")
        elif (read := _bytes(total[3])) is not None:
            # Head and body per response, roughly (wrk rounds what it read).
            result.detail["bytes_per_response"] = round(read / requests)
    # wrk prints these lines only when the counts are not zero. A relay that
    # drops or cuts responses can post a higher rate than a correct one: this
    # is how that shows.
    if sock := _WRK_SOCKET.search(done.stdout):
        result.detail["socket_errors"] = sock[1]
        result.problems.append(f"wrk socket errors: {sock[1]}")
    if non2xx := _WRK_NON2XX.search(done.stdout):
        result.detail["non_2xx"] = int(non2xx[1])
        result.problems.append(f"wrk non-2xx/3xx responses: {non2xx[1]}")
    return result


_STUB = re.compile(r"server accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)")


def backend_counters(port: int) -> tuple[int, int] | None:
    """An nginx backend's accepted connections and requests so far (stub_status).

    Each reading is one connection and one request of its own, which the
    caller subtracts.
    """
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        conn.request("GET", STATUS_PATH)
        text = conn.getresponse().read().decode(errors="replace")
    except OSError:
        return None
    finally:
        conn.close()
    match = _STUB.search(text)
    return None if match is None else (int(match[1]), int(match[3]))


def check_http(port: int, *, ca: Path | None = None, server_name: str = LOOPBACK) -> str | None:
    """One GET through a contender: status 200 and the exact body, or what went wrong.

    With `ca`: over TLS, the certificate verified for `server_name`.
    """
    conn: http.client.HTTPConnection
    if ca is None:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    else:
        ctx = ssl.create_default_context(cafile=str(ca))
        conn = http.client.HTTPSConnection(server_name, port, timeout=5, context=ctx)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return f"smoke request failed: {exc!r}"
    finally:
        conn.close()
    if response.status != 200 or body != BODY:
        return f"smoke request: status {response.status}, body {body[:40]!r}"
    return None


def tls_parameters(port: int, ca: Path, server_name: str) -> str:
    """What a server negotiates with a client offering TLS 1.2 at most, as wrk
    (4.1, Debian) does: version, cipher, and whether it resumes the session
    on a second connection (wrk reconnects with the session it had)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    session: ssl.SSLSession | None = None
    found = ""
    try:
        for _ in range(2):
            with (
                socket.create_connection((LOOPBACK, port), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname=server_name, session=session) as tls,
            ):
                if session is None:
                    found = f"{tls.version()} {(tls.cipher() or ('?',))[0]}"
                    session = tls.session
                else:
                    found += ", resumed" if tls.session_reused else ", not resumed"
    except (OSError, ssl.SSLError) as exc:
        return f"handshake failed: {exc}"
    return found


# -- numbers -----------------------------------------------------------------
def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def median(values: Iterable[float | int | None]) -> float | None:
    known = [float(v) for v in values if v is not None]
    return statistics.median(known) if known else None


def num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


# -- the run -----------------------------------------------------------------
def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same path as Ctrl-C, so the `finally` clauses stop everything.
    raise KeyboardInterrupt


def in_tmpdir(script: str, collect: Callable[[Path], T]) -> T | int:
    """`collect(tmp)` in a temporary directory removed afterwards; or, when a
    server did not start or the run was interrupted, the exit status (2, 130)."""
    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix=f"meshgate-bench-{script}-") as tmpdir:
            return collect(Path(tmpdir))
    except NotReady as exc:
        print(f"{script}: a server did not start: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{script}: interrupted; every process started was stopped", file=sys.stderr)
        return 130


def meshgate_revision() -> str:
    """The commit measured, with "+dirty" when src/ has uncommitted changes."""
    git = ["git", "-C", str(REPO)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "src"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"  # no git: a copy outside a checkout
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") or "?"


def machine() -> dict[str, Any]:
    cpu = "?"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        # Other work on the machine shows here (1, 5 and 15 minute averages).
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def finish_report(
    name: str,
    started: float,
    *,
    args: argparse.Namespace,
    tools: dict[str, str],
    problems: list[str],
    logs: list[str],
    fields: dict[str, Any],
) -> int:
    """Print the warnings and server logs, write bench/results/<name>-<time>.json
    (what every benchmark records, plus its own `fields`); the exit status."""
    if problems:
        print("\nWARNINGS (numbers next to errors are suspect):")
        for line in problems:
            print(f"  {line}")
    if logs:
        print("\nserver logs (besides startup notices):")
        for line in logs:
            print(f"  {line}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    out = RESULTS_DIR / f"{name}-{stamp}.json"
    report = {
        "started": stamp,
        "seconds": round(time.time() - started, 1),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(),
        "tools": tools,
        "meshgate_revision": meshgate_revision(),
        **fields,
        "warnings": problems,
        "server_logs": logs,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(REPO)}")
    return 1 if problems else 0
