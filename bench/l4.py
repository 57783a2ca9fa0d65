"""L4 benchmark: meshgate against no proxy, socat and HAProxy, on loopback.

One run measures every contender on every workload, interleaved: repeat r
starts with contender r mod n, so slow drift of the machine (other load,
thermal state, page cache) spreads over all contenders instead of landing on
whichever ran last. Only ratios measured within one run mean anything; the
absolute numbers move by several times between runs on a shared 2-core box.

Workloads, each a few seconds long:
  bulk       one iperf3 stream through the contender to `iperf3 -s` (bit/s)
  keepalive  wrk, 1 thread, 50 keep-alive connections, 100-byte body (req/s)
  newconn    the same with `Connection: close`: one connection per request

Boundaries: loopback only; every server started here runs in its own
process group and is stopped (SIGTERM, then SIGKILL) in a `finally`, and a
load generator that hangs is killed at a deadline; configs and logs live in a
temporary directory removed at the end. Results are printed as a table and
written to bench/results/l4-<time>.json. Standard library only; see
bench/README.md for how to read the numbers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
LOOPBACK = "127.0.0.1"

# Tools are looked up on PATH plus the sbin directories, where Debian puts
# nginx and haproxy but which a non-root PATH often lacks.
TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
TOOLS = ("iperf3", "wrk", "nginx", "haproxy", "socat")
CONTENDERS = ("direct", "socat", "haproxy", "meshgate")

# A server that does not listen this long after start is broken, not slow.
READY_TIMEOUT = 10.0
# SIGTERM grace before SIGKILL; meshgate drains (see below), others exit at once.
STOP_GRACE = 3.0
# meshgate's drain deadline on SIGTERM: the benchmark's clients are gone by
# then, so a long drain would only slow the cleanup down.
MESHGATE_DRAIN = "1"
# A client that outlives its duration by this much is counted as a hang.
RUN_SLACK = 15.0
# Pause between runs: lets the previous contender's closing connections and
# the backend settle so they do not bill the next contender.
SETTLE = 0.5
# Once its clients are gone a proxy should hold no connection: its open file
# descriptors fall back to what it had when idle. It gets this long to close
# them before the difference is reported as leaked connections.
CLOSE_GRACE = 2.0
# Proxies whose connections are descriptors of the process we started (socat
# serves each connection in a forked child, so it cannot be checked this way).
LEAK_CHECKED = ("haproxy", "meshgate")
# wrk's load: one thread and 50 connections leave the second core to the
# proxy and the backend.
WRK_THREADS = 1
WRK_CONNECTIONS = 50
# The response body nginx serves: small, so the request rate is what counts.
BODY = "0123456789" * 10
# How a tool's version line is recognised in its --version output.
VERSION = re.compile(r"\d+\.\d+")
# Log lines that are startup chatter, not a sign of trouble.
NOISE = re.compile(r"\[NOTICE\]|Server listening|^-+$|^\s*$")


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    backend: str  # "iperf3" or "nginx": what the contenders forward to
    unit: str  # how the table prints the value
    scale: float  # raw value / scale = printed value
    about: str


WORKLOADS = (
    Workload("bulk", "iperf3", "Gbit/s", 1e9, "iperf3 -t S -J, one stream, sum_received"),
    Workload("keepalive", "nginx", "req/s", 1.0, "wrk -t1 -c50, keep-alive, 100-byte body"),
    Workload("newconn", "nginx", "conn/s", 1.0, "wrk -t1 -c50 -H 'Connection: close'"),
)


@dataclass(slots=True)
class Sample:
    """One measurement of one contender on one workload."""

    workload: str
    contender: str
    repeat: int
    value: float | None  # None: the run failed (see problems)
    problems: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


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
    port: int
    idle_fds: int  # open descriptors once listening, before any client came


def _open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return 0  # exited; reported separately


class Processes:
    """Every long-running process the benchmark starts, so all get stopped.

    Each runs in a new session (its own process group), so that stopping it
    also stops its children: socat's forks, nginx's worker.
    """

    def __init__(self, logdir: Path) -> None:
        self._logdir = logdir
        self._servers: list[Server] = []

    def start(self, name: str, argv: Sequence[str], port: int) -> Server:
        log = self._logdir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._servers.append(Server(name, proc, log, port, 0))
        _wait_listening(name, proc, log, port)
        server = Server(name, proc, log, port, _open_fds(proc.pid))
        self._servers[-1] = server
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
        print(f"l4.py: process {proc.pid} survived SIGKILL", file=sys.stderr)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(proc.pid, sig)


def _listening_ports() -> set[int]:
    """IPv4 ports in LISTEN state on 127.0.0.1 or any address (Linux /proc).

    Read instead of connecting, because a probe connection through a proxy
    would reach the backend and iperf3 counts every connection as a test.
    """
    ports: set[int] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, port = local.split(":")
        if state == "0A" and addr in ("0100007F", "00000000"):
            ports.add(int(port, 16))
    return ports


def _wait_listening(name: str, proc: subprocess.Popen[bytes], log: Path, port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NotReady(f"{name} exited with code {proc.returncode}:\n{_tail(log)}")
        if port in _listening_ports():
            return
        time.sleep(0.05)
    raise NotReady(f"{name} not listening on port {port} after {READY_TIMEOUT}s")


def _leftover_fds(server: Server) -> int:
    """Descriptors the server still holds beyond its idle count, after a grace."""
    deadline = time.monotonic() + CLOSE_GRACE
    while True:
        extra = _open_fds(server.proc.pid) - server.idle_fds
        if extra <= 0 or time.monotonic() >= deadline:
            return extra
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(log: Path, lines: int = 5) -> str:
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join(f"    {line}" for line in text[-lines:])


def _log_problems(server: Server) -> list[str]:
    """What a server printed that is not startup chatter: errors, warnings."""
    lines = server.log.read_text(errors="replace").splitlines() if server.log.exists() else []
    if server.name.startswith("iperf3"):
        # iperf3 -s prints a report per test; only its errors matter.
        lines = [line for line in lines if "error" in line.lower()]
    return [line for line in lines if not NOISE.search(line)]


# -- tools and configs -------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Tools:
    iperf3: str
    wrk: str
    nginx: str
    haproxy: str
    socat: str
    meshgate: str


def find_tools() -> Tools:
    found = {name: shutil.which(name, path=TOOL_PATH) for name in TOOLS}
    venv = REPO / ".venv" / "bin" / "meshgate"
    found["meshgate"] = str(venv) if venv.exists() else shutil.which("meshgate")
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        hint = " (meshgate: run `make bench`, which creates .venv)" if "meshgate" in missing else ""
        raise MissingTool(f"missing: {', '.join(missing)}{hint}")
    return Tools(**{name: str(path) for name, path in found.items()})


def nginx_conf(tmp: Path, port: int) -> Path:
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    # Keep-alive connections are never recycled during a run (default: 1000
    # requests), so the keepalive workload measures requests, not reconnects.
    keepalive_requests 1000000;
    server {{
        listen {LOOPBACK}:{port};
        location / {{ return 200 "{BODY}"; }}
    }}
}}
"""
    )
    return conf


def haproxy_conf(tmp: Path, port: int, backend: int) -> Path:
    conf = tmp / f"haproxy-{port}.cfg"
    conf.write_text(
        f"""global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind {LOOPBACK}:{port}
    default_backend be
backend be
    server s1 {LOOPBACK}:{backend}
"""
    )
    return conf


def contender_argv(tools: Tools, name: str, tmp: Path, port: int, backend: int) -> list[str]:
    if name == "socat":
        return [
            tools.socat,
            f"TCP-LISTEN:{port},fork,reuseaddr,bind={LOOPBACK}",
            f"TCP:{LOOPBACK}:{backend}",
        ]
    if name == "haproxy":
        return [tools.haproxy, "-db", "-f", str(haproxy_conf(tmp, port, backend))]
    if name == "meshgate":
        # Log level warning: meshgate logs every closed connection at info,
        # and none of the peers logs per connection here.
        return [
            tools.meshgate,
            "run",
            "--ingress",
            f"tcp:{port}:{LOOPBACK}:{backend}",
            "--bind",
            LOOPBACK,
            "--admin",
            "off",
            "--log-level",
            "warning",
            "--drain-timeout",
            MESHGATE_DRAIN,
        ]
    raise ValueError(f"unknown contender {name!r}")


# -- measurements ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Plan:
    """How much to measure: the command line's choices."""

    repeats: int
    duration: int  # seconds per run; iperf3 takes whole seconds only


@dataclass(slots=True)
class Result:
    value: float | None  # None: no number (see problems)
    problems: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


def _client(argv: list[str], plan: Plan) -> subprocess.CompletedProcess[str] | Result:
    """Run a load generator; a hang becomes a failed Result, not a stuck benchmark."""
    try:
        return subprocess.run(
            argv, check=False, capture_output=True, text=True, timeout=plan.duration + RUN_SLACK
        )
    except subprocess.TimeoutExpired:
        return Result(
            None, [f"{Path(argv[0]).name} hung: no result after {plan.duration + RUN_SLACK:.0f}s"]
        )


def measure_bulk(tools: Tools, port: int, plan: Plan) -> Result:
    argv = [tools.iperf3, "-c", LOOPBACK, "-p", str(port), "-t", str(plan.duration), "-J"]
    done = _client(argv, plan)
    if isinstance(done, Result):
        return done
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        return Result(
            None, [f"iperf3 exit {done.returncode}, no JSON: {done.stderr.strip()[:200]}"]
        )
    if "error" in report:
        return Result(None, [f"iperf3: {report['error']}"])
    received = report["end"]["sum_received"]
    sent = report["end"]["sum_sent"]
    detail = {
        "bytes_received": int(received["bytes"]),
        "bytes_sent": int(sent["bytes"]),
        "retransmits": int(sent.get("retransmits", 0)),
    }
    return Result(float(received["bits_per_second"]), [], detail)


_WRK_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+\w+), ([\d.]+\w+) read", re.M)
_WRK_SOCKET = re.compile(r"Socket errors: (connect \d+, read \d+, write \d+, timeout \d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def measure_wrk(tools: Tools, port: int, plan: Plan, close: bool) -> Result:
    argv = [tools.wrk, f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{plan.duration}s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{LOOPBACK}:{port}/")
    done = _client(argv, plan)
    if isinstance(done, Result):
        return done
    rate = _WRK_RATE.search(done.stdout)
    if done.returncode != 0 or rate is None:
        text = (done.stderr or done.stdout).strip()[:200]
        return Result(None, [f"wrk exit {done.returncode}: {text}"])
    result = Result(float(rate[1]))
    if total := _WRK_TOTAL.search(done.stdout):
        result.detail |= {"requests": int(total[1]), "elapsed": total[2], "read": total[3]}
        if int(total[1]) == 0:
            result.problems.append("wrk completed no request")
    # wrk prints these lines only when the counts are not zero.
    if sock := _WRK_SOCKET.search(done.stdout):
        result.detail["socket_errors"] = sock[1]
        result.problems.append(f"wrk socket errors: {sock[1]}")
    if non2xx := _WRK_NON2XX.search(done.stdout):
        result.detail["non_2xx"] = int(non2xx[1])
        result.problems.append(f"wrk non-2xx/3xx responses: {non2xx[1]}")
    return result


def measure(workload: Workload, tools: Tools, port: int, plan: Plan) -> Result:
    if workload.name == "bulk":
        return measure_bulk(tools, port, plan)
    return measure_wrk(tools, port, plan, close=workload.name == "newconn")


def check_http(port: int) -> str | None:
    """One request through a contender: the body must arrive whole and intact."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
    except OSError as exc:
        return f"smoke request failed: {exc!r}"
    finally:
        conn.close()
    if response.status != 200 or body != BODY:
        return f"smoke request: status {response.status}, body {body[:40]!r}"
    return None


# -- the run -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Setup:
    """One backend and the contenders in front of it."""

    ports: dict[str, int]  # contender -> the port its clients connect to
    servers: dict[str, Server]  # contender -> what listens there ("direct": the backend)


@contextmanager
def backend_and_contenders(
    procs: Processes, tools: Tools, tmp: Path, backend: str
) -> Iterator[Setup]:
    """Start `backend` and one instance of each proxy in front of it."""
    port = _free_port()
    if backend == "iperf3":
        argv = [tools.iperf3, "-s", "-B", LOOPBACK, "-p", str(port)]
    else:
        argv = [tools.nginx, "-p", str(tmp), "-e", "stderr", "-c", str(nginx_conf(tmp, port))]
    servers = {"direct": procs.start(backend, argv, port)}
    for name in CONTENDERS[1:]:
        listen = _free_port()
        argv = contender_argv(tools, name, tmp, listen, port)
        servers[name] = procs.start(f"{name}-{backend}", argv, listen)
    try:
        yield Setup({name: server.port for name, server in servers.items()}, servers)
    finally:
        for server in reversed(servers.values()):
            procs.stop(server)


def check_after(setup: Setup, contender: str) -> list[str]:
    """After a run: is every server still up, and did the contender close its connections?"""
    problems = [
        f"{server.name} exited with code {server.proc.returncode}:\n{_tail(server.log)}"
        for server in setup.servers.values()
        if server.proc.poll() is not None
    ]
    if contender in LEAK_CHECKED and (extra := _leftover_fds(setup.servers[contender])) > 0:
        problems.append(
            f"{contender} still holds {extra} more descriptors than when idle, "
            f"{CLOSE_GRACE:.0f}s after its clients left (leaked connections?)"
        )
    return problems


def run_workload(workload: Workload, tools: Tools, setup: Setup, plan: Plan) -> list[Sample]:
    samples: list[Sample] = []
    n = len(CONTENDERS)
    for r in range(plan.repeats):
        # Interleave: repeat r starts with contender r mod n.
        order = CONTENDERS[r % n :] + CONTENDERS[: r % n]
        for name in order:
            time.sleep(SETTLE)
            result = measure(workload, tools, setup.ports[name], plan)
            result.problems += check_after(setup, name)
            samples.append(
                Sample(workload.name, name, r, result.value, result.problems, result.detail)
            )
            value = result.value
            shown = "FAILED" if value is None else f"{value / workload.scale:,.2f} {workload.unit}"
            print(f"  [{workload.name} {r + 1}/{plan.repeats}] {name:<9} {shown}", flush=True)
            for problem in result.problems:
                print(f"  WARNING {workload.name}/{name}: {problem}", flush=True)
    return samples


@dataclass(frozen=True, slots=True)
class Summary:
    workload: str
    unit: str
    medians: dict[str, float | None]
    spread: dict[str, tuple[float, float] | None]
    vs_direct: dict[str, float | None]
    meshgate_vs: dict[str, float | None]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def summarize(workload: Workload, samples: list[Sample]) -> Summary:
    medians: dict[str, float | None] = {}
    spread: dict[str, tuple[float, float] | None] = {}
    for name in CONTENDERS:
        values = [s.value for s in samples if s.contender == name and s.value is not None]
        medians[name] = statistics.median(values) if values else None
        spread[name] = (min(values), max(values)) if values else None
    return Summary(
        workload.name,
        workload.unit,
        medians,
        spread,
        {name: _ratio(medians[name], medians["direct"]) for name in CONTENDERS},
        {name: _ratio(medians["meshgate"], medians[name]) for name in CONTENDERS[:-1]},
    )


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_table(summaries: list[Summary], repeats: int) -> None:
    scale = {w.name: w.scale for w in WORKLOADS}
    print(f"\nmedian of {repeats} interleaved repeats; ratios are ratios of medians")
    print(
        f"{'workload':<10} {'contender':<9} {'median':>10} {'unit':<7} {'min .. max':>21}"
        f" {'vs direct':>9} {'meshgate/this':>13}"
    )
    for summary in summaries:
        k = scale[summary.workload]
        digits = 2 if k > 1 else 0  # Gbit/s with decimals, rates as integers
        for name in CONTENDERS:
            lo_hi = summary.spread[name]
            span = (
                "-"
                if lo_hi is None
                else f"{_num(lo_hi[0] / k, digits)} .. {_num(lo_hi[1] / k, digits)}"
            )
            median = summary.medians[name]
            shown = _num(None if median is None else median / k, digits)
            mine = "" if name == "meshgate" else _num(summary.meshgate_vs[name], 2)
            print(
                f"{summary.workload:<10} {name:<9} {shown:>10}"
                f" {summary.unit:<7} {span:>21} {_num(summary.vs_direct[name], 2):>9} {mine:>13}"
            )


def tool_versions(tools: Tools) -> dict[str, str]:
    commands = {
        "iperf3": [tools.iperf3, "--version"],
        "wrk": [tools.wrk, "--version"],
        "nginx": [tools.nginx, "-v"],
        "haproxy": [tools.haproxy, "-v"],
        "socat": [tools.socat, "-V"],
        "meshgate": [tools.meshgate, "version"],
    }
    versions: dict[str, str] = {}
    for name, argv in commands.items():
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
        # The first line with a version number (socat's first line is its authors).
        lines = [line for line in (done.stdout + done.stderr).splitlines() if VERSION.search(line)]
        versions[name] = lines[0].strip() if lines else "?"
    return versions


def meshgate_revision() -> str:
    """The commit measured, with "+dirty" when the work tree has changes."""
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
    except OSError:
        return "?"  # no git: a copy outside a checkout
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") or "?"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="L4 benchmark: direct, socat, haproxy and meshgate on loopback, interleaved."
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender (default 3)")
    parser.add_argument(
        "--duration", type=int, default=3, help="seconds per run, whole seconds (default 3)"
    )
    parser.add_argument(
        "--only", choices=[w.name for w in WORKLOADS], help="run this one workload only"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.duration < 1:
        parser.error("--repeats and --duration must be at least 1")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same path as Ctrl-C, so the `finally` clauses stop everything.
    raise KeyboardInterrupt


@dataclass(slots=True)
class Outcome:
    """Everything one run produced."""

    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # make the numbers suspect
    logs: list[str] = field(default_factory=list)  # what servers printed; for a human to judge


def collect(tools: Tools, workloads: list[Workload], plan: Plan, tmp: Path) -> Outcome:
    """Start each backend with its contenders, measure its workloads, stop them."""
    outcome = Outcome()
    procs = Processes(tmp)
    try:
        for backend in dict.fromkeys(w.backend for w in workloads):
            with backend_and_contenders(procs, tools, tmp, backend) as setup:
                if backend == "nginx":
                    for name, port in setup.ports.items():
                        if problem := check_http(port):
                            outcome.problems.append(f"{name}: {problem}")
                            print(f"  WARNING {name}: {problem}", flush=True)
                for workload in (w for w in workloads if w.backend == backend):
                    print(f"{workload.name}: {workload.about}", flush=True)
                    outcome.samples += run_workload(workload, tools, setup, plan)
                # Read before stopping, so shutdown messages do not count.
                for server in setup.servers.values():
                    if lines := _log_problems(server):
                        shown = "\n".join(f"    {line}" for line in lines[:5])
                        outcome.logs.append(f"{server.name} logged {len(lines)} line(s):\n{shown}")
    finally:
        procs.stop_all()
    outcome.problems += [
        f"{s.workload}/{s.contender} repeat {s.repeat + 1}: {p}"
        for s in outcome.samples
        for p in s.problems
    ]
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0: done, no errors; 1: done, but some run had errors; 2: could not run."""
    args = parse_args(argv)
    try:
        tools = find_tools()
    except MissingTool as exc:
        print(f"l4.py: cannot run, {exc}", file=sys.stderr)
        return 2
    if not Path("/proc/net/tcp").exists():
        print("l4.py: cannot run: needs Linux (/proc/net/tcp)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    plan = Plan(args.repeats, args.duration)
    workloads = [w for w in WORKLOADS if args.only in (None, w.name)]
    started = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix="meshgate-bench-") as tmpdir:
            outcome = collect(tools, workloads, plan, Path(tmpdir))
    except NotReady as exc:
        print(f"l4.py: a server did not start: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("l4.py: interrupted; every process started was stopped", file=sys.stderr)
        return 130

    summaries = [
        summarize(w, [s for s in outcome.samples if s.workload == w.name]) for w in workloads
    ]
    print_table(summaries, plan.repeats)
    return finish_report(
        "l4",
        started,
        args=args,
        tools=tool_versions(tools),
        problems=outcome.problems,
        logs=outcome.logs,
        fields={
            "workloads": [asdict(w) for w in workloads],
            "summaries": [asdict(s) for s in summaries],
            "samples": [asdict(s) for s in outcome.samples],
        },
    )


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
        "args": vars(args),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": sys.version},
        "tools": tools,
        "meshgate_revision": meshgate_revision(),
        **fields,
        "warnings": problems,
        "server_logs": logs,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(REPO)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
