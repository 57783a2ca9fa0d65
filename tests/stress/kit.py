"""What the stress tests share: meshgate with its processes' figures, backends
and clients as processes, wrk, configs, certificates, and the figures report.

Every wait is bounded; every process started here is stopped by its owner
(the fixtures in conftest.py) even when a test fails.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
import yaml

from tests.integration.harness import Meshgate, Peer, free_port, require, wait_for

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SERVERS = HERE / "servers.py"
CLIENTS = HERE / "clients.py"
CORPUS = REPO / "tests" / "fuzz" / "corpus"

MIB = 1024 * 1024


def report_path() -> Path:
    """Where figures are appended as JSON lines: $STRESS_REPORT, else
    `.stress-report.jsonl` in the repository root (ignored by git)."""
    return Path(os.environ.get("STRESS_REPORT") or REPO / ".stress-report.jsonl")


# -- figures -------------------------------------------------------------------------


@dataclass
class Figures:
    """What one test measured, kept in the order it was recorded."""

    test: str
    values: dict[str, Any] = field(default_factory=dict)

    def __setitem__(self, name: str, value: Any) -> None:
        self.values[name] = value

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def update(self, **values: Any) -> None:
        self.values.update(values)

    def line(self, outcome: str) -> dict[str, Any]:
        return {
            "test": self.test,
            "outcome": outcome,
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "figures": self.values,
        }

    def text(self) -> str:
        return "\n".join(f"  {name}: {json.dumps(value)}" for name, value in self.values.items())


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 100 samples is the 99th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


# -- processes -----------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident memory (VmRSS) of a process, KiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    """Open file descriptors of a process (/proc/PID/fd)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def write_atomic(path: Path, data: bytes) -> None:
    """Replace a file in one step: meshgate polls certificate files and may
    read at any moment; it must never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_yaml(path: Path, doc: dict[str, Any]) -> None:
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False).encode())


def get_json(url: str, timeout: float = 5.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())


class Gate(Meshgate):
    """`meshgate run` (tests/integration/harness.py) plus what stress tests read
    of it: its processes (the supervisor and its workers with --workers),
    their memory and descriptors, and reloads that wait for every worker."""

    def __init__(self, config: Path, tmp: Path, extra: list[str] | None = None) -> None:
        self.config = config
        super().__init__(["-c", str(config), *(extra or [])], tmp)

    def workers(self) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = self.json("/status").get("workers", [])
        return workers

    def pids(self) -> list[int]:
        return [self.proc.pid, *(w["pid"] for w in self.workers() if w.get("pid"))]

    def rss_kib(self) -> int:
        return sum(rss_kib(pid) for pid in self.pids())

    def fds(self) -> int:
        return sum(fd_count(pid) for pid in self.pids())

    def versions(self) -> list[int]:
        """The table version each worker (or the one process) serves."""
        workers = self.workers()
        if not workers:
            return [int(self.json("/readyz").get("version", -1))]
        return [
            int(get_json(f"http://{w['admin']}/readyz").get("version", -1))
            if w.get("admin")
            else -1
            for w in workers
        ]

    def reload(self, doc: dict[str, Any]) -> float:
        """Write `doc` as the config, SIGHUP, and wait until every worker serves
        a newer table; return how long that took."""
        before = self.versions()
        write_yaml(self.config, doc)
        started = time.monotonic()
        self.signal(signal.SIGHUP)

        def applied() -> bool:
            now = self.versions()
            return len(now) == len(before) and all(a > b for a, b in zip(now, before, strict=True))

        wait_for(applied, "every worker to apply the new config", timeout=30)
        return time.monotonic() - started

    def tracebacks(self) -> list[str]:
        """Log lines that carry a Python traceback."""
        return [line for line in self.log().splitlines() if "Traceback" in line]


def changing_web(
    ports: dict[str, int], reload: int, added: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The http listener `web` (default backend `app`: nginx) and its
    backends, as reload number `reload` has them: route `added` on every
    other reload, a second endpoint for backend `other` on every other pair."""
    routes: list[dict[str, Any]] = [{"path": "/other", "backend": "other"}]
    if reload % 2:
        routes.append(added)
    other = [f"127.0.0.1:{ports['spare']}"]
    if reload % 4 >= 2:
        other.append(f"127.0.0.1:{ports['spare2']}")
    web = {
        "name": "web",
        "port": ports["web"],
        "protocol": "http",
        "http": {"routes": routes, "default_backend": "app", "access_log": False},
    }
    backends = [
        {"name": "app", "endpoints": [f"127.0.0.1:{ports['nginx']}"]},
        {"name": "other", "endpoints": other},
    ]
    return web, backends


def terminating_listener(
    name: str, port: int, cert: Path, key: Path, backend: str, *sni_routes: dict[str, Any]
) -> dict[str, Any]:
    """A tls listener whose default route terminates with `cert`/`key`
    (after any SNI routes given)."""
    certificate = {"cert": str(cert), "key": str(key)}
    default = {"default": True, "mode": "terminate", "certificate": certificate, "backend": backend}
    return {"name": name, "port": port, "protocol": "tls", "routes": [*sni_routes, default]}


def start_gate(config: Path, doc: dict[str, Any], tmp: Path, *extra: str) -> Gate:
    write_yaml(config, doc)
    gate = Gate(config, tmp, list(extra))
    try:
        gate.wait_ready()
    except BaseException:
        gate.stop()
        raise
    return gate


def start_server(kind: str) -> tuple[Peer, int]:
    """tests/stress/servers.py KIND on a free port."""
    port = free_port()
    return Peer([sys.executable, str(SERVERS), kind, str(port)], port), port


def stop_process(proc: subprocess.Popen[str]) -> None:
    """Kill `proc` if it still runs and close its output pipe."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout is not None and not proc.stdout.closed:
        proc.stdout.close()


# -- clients -------------------------------------------------------------------------


class Holder:
    """A `clients.py hold` process: COUNT connections held and commanded."""

    def __init__(self, kind: str, port: int, count: int) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, str(CLIENTS), "hold", kind, str(port), str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def answer(self, timeout: float = 120.0) -> dict[str, Any]:
        """The next JSON line it prints (bounded by `timeout`)."""
        assert self.proc.stdout is not None
        got: list[str] = []
        stdout = self.proc.stdout
        reader = threading.Thread(target=lambda: got.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not got or not got[0]:
            raise AssertionError(
                f"{self.kind} holder gave no answer within {timeout}s (exit {self.proc.poll()})"
            )
        doc: dict[str, Any] = json.loads(got[0])
        return doc

    def command(self, command: str, timeout: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.answer(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.write("close\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@dataclass
class ProbeResult:
    count: int
    ok: int
    errors: dict[str, int]
    first_failures: list[dict[str, Any]]
    latencies_ms: list[float]

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.count,
            "ok": self.ok,
            "errors": self.errors,
            "p50_ms": round(percentile(self.latencies_ms, 50), 2),
            "p99_ms": round(self.p99_ms, 2),
            "max_ms": round(max(self.latencies_ms, default=math.nan), 2),
        }


class Probe:
    """A `clients.py probe` process: RATE requests a second on new connections."""

    def __init__(self, kind: str, port: int, rate: float, seconds: float | None = None) -> None:
        argv = [sys.executable, str(CLIENTS), "probe", kind, str(port), str(rate)]
        if seconds is not None:
            argv.append(str(seconds))
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    def finish(self, timeout: float = 30.0) -> ProbeResult:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError("the probe did not stop") from None
        return ProbeResult(**json.loads(out.strip().splitlines()[-1]))

    def stop(self) -> None:
        """Kill it if it still runs (a test that failed before `finish`)."""
        stop_process(self.proc)


# -- wrk -----------------------------------------------------------------------------

# wrk's Lua hooks: an optional fixed delay before each request (wrk2 is not
# packaged; a delay per connection is how plain wrk holds a rate below its
# maximum) and the summary as one JSON line.
WRK_SCRIPT = """
local delay_ms = tonumber(os.getenv("STRESS_WRK_DELAY_MS") or "0")
if delay_ms > 0 then
  function delay() return delay_ms end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    socket_errors: dict[str, int]  # connect, read, write, timeout
    non_2xx: int  # responses with a status of 400 or more (what wrk counts)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "rps": round(self.rps),
            "socket_errors": self.socket_errors,
            "non_2xx": self.non_2xx,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
        }

    def brief(self) -> dict[str, Any]:
        return {
            "rps": round(self.rps),
            "p99_ms": self.p99_ms,
            "errors": sum(self.socket_errors.values()) + self.non_2xx,
        }


class Wrk:
    """wrk in the background: `wait()` returns its figures."""

    def __init__(
        self, url: str, tmp: Path, *, connections: int, seconds: int, delay_ms: int = 0
    ) -> None:
        script = tmp / "stress-wrk.lua"
        script.write_text(WRK_SCRIPT)
        argv = [
            require("wrk"),
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url,
        ]
        env = {**os.environ, "STRESS_WRK_DELAY_MS": str(delay_ms)}
        self.seconds = seconds
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )

    def wait(self) -> WrkResult:
        try:
            out, _ = self.proc.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise AssertionError(f"wrk did not finish:\n{out}") from None
        lines = [line for line in out.splitlines() if line.startswith('{"requests"')]
        assert lines, f"wrk printed no summary (exit {self.proc.returncode}):\n{out}"
        doc = json.loads(lines[-1])
        return WrkResult(
            requests=doc["requests"],
            seconds=doc["duration_us"] / 1e6,
            socket_errors={k: doc[k] for k in ("connect", "read", "write", "timeout")},
            non_2xx=doc["status"],
            p50_ms=doc["p50_us"] / 1000,
            p90_ms=doc["p90_us"] / 1000,
            p99_ms=doc["p99_us"] / 1000,
            max_ms=doc["max_us"] / 1000,
        )

    def stop(self) -> None:
        stop_process(self.proc)


def run_wrk(url: str, tmp: Path, *, connections: int, seconds: int, delay_ms: int = 0) -> WrkResult:
    return Wrk(url, tmp, connections=connections, seconds=seconds, delay_ms=delay_ms).wait()


# -- nginx ---------------------------------------------------------------------------

NGINX_CONF = """
daemon off;
{user}
worker_processes 1;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_timeout {keepalive}s;
    keepalive_requests 1000000;
    client_body_temp_path {home}/body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def start_nginx(home: Path, keepalive: int = 5) -> tuple[Peer, int]:
    """nginx answering `ok` to everything: a backend much faster than the proxy
    in front of it. Its idle keep-alive connections close after `keepalive`
    seconds, so the proxy's pooled upstream connections do not outlive a test."""
    nginx = require("nginx")
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # As root nginx would switch its worker to `nobody`, who cannot read a
    # pytest tmp directory.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = home / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, home=home, port=port, keepalive=keepalive))
    return Peer([nginx, "-p", str(home), "-c", str(conf)], port), port


# -- TLS -----------------------------------------------------------------------------


@dataclass
class CertFiles:
    cert: Path
    key: Path
    der: bytes  # the leaf, to recognise it in a handshake


class Pki:
    """A test CA issuing leaves for localhost into files."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.issued = 0

    def issue(self, cert: Path | None = None, key: Path | None = None) -> CertFiles:
        """A new leaf; written over `cert`/`key` when given (a rotation in
        place), else into new files."""
        self.issued += 1
        leaf = self.ca.issue_cert("localhost", "127.0.0.1")
        cert = cert or self.home / f"leaf-{self.issued}.crt"
        key = key or self.home / f"leaf-{self.issued}.key"
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        write_atomic(key, leaf.private_key_pem.bytes())
        write_atomic(cert, chain)
        der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
        return CertFiles(cert, key, der)


def echo_once(port: int, payload: bytes = b"ping\n", timeout: float = 5.0) -> bytes:
    """Connect, send `payload`, half-close, read until the peer closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def peer_certificate(port: int, timeout: float = 5.0) -> bytes:
    """The leaf certificate a TLS listener presents (DER), without checking it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


# -- connections seen by the kernel -----------------------------------------------


class ConnectionAges:
    """How long each client connection to a listening port stays ESTABLISHED on
    the server side, from `ss` snapshots (call `sample()` periodically): a
    connection the server closed leaves that state at once, whatever the
    client has not read yet. Connections are told apart by peer address and
    socket inode (clients reuse ports). Precision: the sampling interval."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._open: dict[str, float] = {}  # peer -> first seen, in the last snapshot
        self._last: float = 0.0
        self.done: list[float] = []  # lifetimes of connections gone since

    def sample(self) -> int:
        out = subprocess.run(
            [require("ss"), "-tnHe", "state", "established", f"sport = :{self.port}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        now = time.monotonic()
        # A connection: its peer address and socket inode (a reused client
        # port with the same inode number would be a coincidence twice over).
        peers = {
            " ".join(f for f in line.split()[3:] if f.startswith(("127.", "ino:")))
            for line in out.splitlines()
            if line.strip()
        }
        for peer in set(self._open) - peers:
            self.done.append(self._last - self._open.pop(peer))
        for peer in peers:
            self._open.setdefault(peer, now)
        self._last = now
        return len(peers)

    @property
    def open_now(self) -> int:
        return len(self._open)

    def lifetimes(self) -> list[float]:
        """Every connection seen, those still open counted up to now."""
        return [*self.done, *(self._last - first for first in self._open.values())]


# -- sampling ------------------------------------------------------------------------


class Sampler:
    """Calls `sample()` every `interval` seconds in a thread until stopped;
    keeps the values (and the errors, a sample that raised)."""

    def __init__(self, sample: Callable[[], Any], interval: float) -> None:
        self._sample = sample
        self._interval = interval
        self._stop = threading.Event()
        self.values: list[Any] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.values.append(self._sample())
            except Exception as exc:
                self.errors.append(repr(exc))
            self._stop.wait(self._interval)

    def stop(self) -> list[Any]:
        self._stop.set()
        self._thread.join(10)
        return self.values


@contextlib.contextmanager
def sampling(sample: Callable[[], Any], interval: float) -> Iterator[Sampler]:
    sampler = Sampler(sample, interval)
    try:
        yield sampler
    finally:
        sampler.stop()
