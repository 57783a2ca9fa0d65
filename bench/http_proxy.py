"""HTTP benchmark: meshgate's http listener against HAProxy and nginx, on loopback.

One backend, nginx with one worker answering every request with `return 200`
and a 100-byte body, and four ways for wrk to reach it:
  direct        wrk -> the backend (the ceiling)
  meshgate      wrk -> meshgate `protocol: http`, one route (any host, `/`) -> backend
  haproxy-http  wrk -> HAProxy `mode http`, `nbthread 1`, `http-reuse always` -> backend
  nginx-proxy   wrk -> a second nginx (1 worker), `proxy_pass` to an upstream
                with `keepalive 64` -> backend

Workloads, each a few seconds of wrk with one thread and keep-alive:
  c50    50 connections   (req/s, p50 and p99 from wrk --latency)
  c200   200 connections

Only the contender being measured runs (with the backend): it is started
before its run and stopped after it, so no idle proxy holds backend
connections or CPU during another's run. Runs are interleaved: repeat r
starts with contender r mod n. Only ratios within one run mean anything.

This file is named http.py, like the standard library's `http` package, and
Python puts the script's directory first on sys.path: see the import of l4
below. Process handling, port waiting and the wrk parsing come from l4.py.
Results are printed as a table and written to bench/results/http-<time>.json.
Standard library only; see bench/README.md for how to read the numbers.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from l4 import (
    _WRK_NON2XX,
    _WRK_RATE,
    _WRK_SOCKET,
    _WRK_TOTAL,
    BODY,
    LOOPBACK,
    MESHGATE_DRAIN,
    REPO,
    SETTLE,
    TOOL_PATH,
    VERSION,
    NotReady,
    Plan,
    Processes,
    Result,
    Server,
    _client,
    _free_port,
    _log_problems,
    _raise_interrupt,
    _ratio,
    _tail,
    check_http,
    finish_report,
    nginx_conf,
)

CONTENDERS = ("direct", "meshgate", "haproxy-http", "nginx-proxy")
ABOUT = {
    "direct": "wrk -> backend nginx (the ceiling)",
    "meshgate": "meshgate protocol: http, one route (any host, path /), access_log false",
    "haproxy-http": "HAProxy mode http, nbthread 1, http-reuse always",
    "nginx-proxy": "nginx, 1 worker, proxy_pass to an upstream with keepalive 64",
}
# The tools each contender needs besides wrk and the backend nginx.
NEEDS = {"direct": (), "meshgate": ("meshgate",), "haproxy-http": ("haproxy",), "nginx-proxy": ()}
# Once wrk has gone, every connection it opened must be closed by whatever it
# talked to within this long, or it is reported as left open.
CLOSE_GRACE = 2.0
# Where the backend reports its counters (nginx stub_status); wrk never asks for it.
STATUS_PATH = "/nginx_status"
# wrk's latency distribution and its average/max, and the total read.
_WRK_PERCENTILE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_WRK_LATENCY = re.compile(
    r"^\s+Latency\s+([\d.]+)(us|ms|s|m|h)\s+[\d.]+\w+\s+([\d.]+)(us|ms|s|m|h)", re.M
)
_WRK_BYTES = re.compile(r"^([\d.]+)([KMGTP]?)B$")
_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_STUB = re.compile(r"server accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)")


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    connections: int
    about: str


WORKLOADS = (
    Workload("c50", 50, "wrk -t1 -c50 --latency, keep-alive, 100-byte body"),
    Workload("c200", 200, "wrk -t1 -c200 --latency, keep-alive, 100-byte body"),
)


class MissingTool(Exception):
    pass


def find_tools(contenders: Sequence[str]) -> dict[str, str]:
    """Paths of wrk, nginx and what the chosen contenders need."""
    wanted = ["wrk", "nginx", *(t for c in contenders for t in NEEDS[c])]
    found = {name: shutil.which(name, path=TOOL_PATH) for name in dict.fromkeys(wanted)}
    if "meshgate" in found:
        venv = REPO / ".venv" / "bin" / "meshgate"
        found["meshgate"] = str(venv) if venv.exists() else found["meshgate"]
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        hint = (
            " (meshgate: run `make bench-http`, which creates .venv)"
            if "meshgate" in missing
            else ""
        )
        raise MissingTool(f"missing: {', '.join(missing)}{hint}")
    return {name: str(path) for name, path in found.items()}


# -- configs -----------------------------------------------------------------
def backend_conf(tmp: Path, port: int) -> Path:
    """l4.py's nginx (1 worker, `return 200` with BODY), plus its counters."""
    conf = nginx_conf(tmp, port)
    text = conf.read_text()
    marker = "        location / {"
    if marker not in text:
        raise NotReady(f"l4.nginx_conf changed: no {marker.strip()!r} to add stub_status next to")
    status = f"        location = {STATUS_PATH} {{ stub_status; }}\n"
    conf.write_text(text.replace(marker, status + marker, 1))
    return conf


def meshgate_conf(tmp: Path, port: int, backend: int) -> Path:
    conf = tmp / f"meshgate-{port}.yaml"
    conf.write_text(
        f"""listeners:
  - name: web
    address: {LOOPBACK}
    port: {port}
    protocol: http
    http:
      access_log: false
      routes:
        - {{path: /, backend: origin}}
backends:
  - {{name: origin, endpoints: ["{LOOPBACK}:{backend}"]}}
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
    mode http
    timeout connect 30s
    timeout client 30s
    timeout server 30s
frontend fe
    bind {LOOPBACK}:{port}
    default_backend be
backend be
    http-reuse always
    server s1 {LOOPBACK}:{backend}
"""
    )
    return conf


def nginx_proxy_conf(tmp: Path, port: int, backend: int) -> Path:
    # Its own directory: pid file and temp paths apart from the backend's.
    home = tmp / "nginx-proxy"
    home.mkdir(exist_ok=True)
    conf = home / f"nginx-{port}.conf"
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {home}/nginx.pid;
error_log stderr;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {home}/body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
    # As the backend: wrk's connections are not recycled every 1000 requests.
    keepalive_requests 1000000;
    upstream origin {{
        server {LOOPBACK}:{backend};
        keepalive 64;
        # Nor are the upstream ones (nginx's default here is also 1000).
        keepalive_requests 1000000;
    }}
    server {{
        listen {LOOPBACK}:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    )
    return conf


def contender_argv(
    tools: dict[str, str], name: str, tmp: Path, port: int, backend: int
) -> list[str]:
    if name == "meshgate":
        # Log level warning: at info meshgate logs every closed connection.
        return [
            tools["meshgate"],
            "run",
            "-c",
            str(meshgate_conf(tmp, port, backend)),
            "--admin",
            "off",
            "--log-level",
            "warning",
            "--drain-timeout",
            MESHGATE_DRAIN,
        ]
    if name == "haproxy-http":
        return [tools["haproxy"], "-db", "-f", str(haproxy_conf(tmp, port, backend))]
    if name == "nginx-proxy":
        conf = nginx_proxy_conf(tmp, port, backend)
        return [tools["nginx"], "-p", str(conf.parent), "-e", "stderr", "-c", str(conf)]
    raise ValueError(f"unknown contender {name!r}")


# -- measurements ------------------------------------------------------------
def _ms(number: str, unit: str) -> float:
    return float(number) * _MS[unit]


def _bytes(text: str) -> float | None:
    match = _WRK_BYTES.match(text)
    if match is None:
        return None
    return float(match[1]) * (1 << 10 * " KMGTP".index(match[2] or " "))


def measure_wrk(wrk: str, port: int, connections: int, plan: Plan) -> Result:
    """wrk, one thread, keep-alive: req/s, latency percentiles, errors."""
    argv = [wrk, "-t1", f"-c{connections}", f"-d{plan.duration}s", "--latency"]
    argv.append(f"http://{LOOPBACK}:{port}/")
    done = _client(argv, plan)
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
    # wrk prints these lines only when the counts are not zero.
    if sock := _WRK_SOCKET.search(done.stdout):
        result.detail["socket_errors"] = sock[1]
        result.problems.append(f"wrk socket errors: {sock[1]}")
    if non2xx := _WRK_NON2XX.search(done.stdout):
        result.detail["non_2xx"] = int(non2xx[1])
        result.problems.append(f"wrk non-2xx/3xx responses: {non2xx[1]}")
    return result


def backend_counters(port: int) -> tuple[int, int] | None:
    """The backend's accepted connections and requests so far (stub_status).

    Each reading is one connection and one request of its own, which the
    caller subtracts. A plain socket: this script cannot use http.client
    itself without naming the package it shadows.
    """
    request = f"GET {STATUS_PATH} HTTP/1.0\r\nHost: {LOOPBACK}\r\n\r\n".encode()
    data = b""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
            sock.sendall(request)
            while chunk := sock.recv(4096):
                data += chunk
    except OSError:
        return None
    match = _STUB.search(data.decode(errors="replace"))
    return None if match is None else (int(match[1]), int(match[3]))


def _open_connections(port: int) -> int:
    """Accepted connections on `port` not yet closed by the server (Linux /proc)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        # 0A LISTEN is the socket itself; 06 TIME_WAIT is closed on both sides.
        if int(local.split(":")[1], 16) == port and state not in ("0A", "06"):
            count += 1
    return count


def connections_left(port: int) -> int:
    deadline = time.monotonic() + CLOSE_GRACE
    while (left := _open_connections(port)) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


# -- the run -----------------------------------------------------------------
@dataclass(slots=True)
class Sample:
    """One wrk run through one contender."""

    workload: str
    contender: str
    repeat: int
    rps: float | None  # None: the run failed (see problems)
    p50_ms: float | None
    p99_ms: float | None
    problems: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Outcome:
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # make the numbers suspect
    logs: dict[str, list[str]] = field(default_factory=dict)  # contender -> what it printed
    configs: dict[str, str] = field(default_factory=dict)  # contender -> its config text


class Bench:
    """The backend, and a way to start one contender in front of it."""

    def __init__(self, procs: Processes, tools: dict[str, str], tmp: Path, plan: Plan) -> None:
        self.procs, self.tools, self.tmp, self.plan = procs, tools, tmp, plan
        port = _free_port()
        argv = [tools["nginx"], "-p", str(tmp), "-e", "stderr", "-c", str(backend_conf(tmp, port))]
        self.backend = procs.start("backend", argv, port)

    def start(self, contender: str, label: str) -> tuple[int, Server | None]:
        """The port wrk connects to, and the server started there (None: direct)."""
        if contender == "direct":
            return self.backend.port, None
        port = _free_port()
        argv = contender_argv(self.tools, contender, self.tmp, port, self.backend.port)
        return port, self.procs.start(f"{contender}-{label}", argv, port)

    def config_text(self, server: Server) -> str:
        """The config file a contender was started with (for the JSON)."""
        argv = [str(a) for a in server.proc.args] if isinstance(server.proc.args, list) else []
        paths = [Path(a) for a in argv if a.startswith(str(self.tmp))]
        return paths[-1].read_text() if paths else ""


def smoke(bench: Bench, contenders: Sequence[str], outcome: Outcome) -> None:
    """One GET through each contender: 200 and the exact 100-byte body."""
    for name in contenders:
        port, server = bench.start(name, "smoke")
        if problem := check_http(port):
            outcome.problems.append(f"{name}: {problem}")
            print(f"  WARNING {name}: {problem}", flush=True)
        else:
            print(f"  smoke {name:<12} 200, {len(BODY)}-byte body", flush=True)
        if server is not None:
            outcome.configs[name] = bench.config_text(server)
            _keep_logs(outcome, name, server)
            bench.procs.stop(server)


def _keep_logs(outcome: Outcome, contender: str, server: Server) -> None:
    # Read before stopping, so shutdown messages do not count.
    if lines := _log_problems(server):
        outcome.logs.setdefault(contender, []).extend(lines)


def run_once(bench: Bench, workload: Workload, name: str, repeat: int, outcome: Outcome) -> Sample:
    port, server = bench.start(name, f"{workload.name}-{repeat + 1}")
    time.sleep(SETTLE)
    before = backend_counters(bench.backend.port)
    result = measure_wrk(bench.tools["wrk"], port, workload.connections, bench.plan)
    after = backend_counters(bench.backend.port)
    if before is not None and after is not None:
        conns, served = after[0] - before[0] - 1, after[1] - before[1] - 1
        result.detail |= {"backend_connections": conns, "backend_requests": served}
        completed = result.detail.get("requests", 0)
        if served < completed:
            result.problems.append(
                f"wrk counted {completed} responses, the backend served {served} requests"
            )
    else:
        result.problems.append("could not read the backend's counters (stub_status)")
    if (left := connections_left(port)) > 0:
        result.problems.append(
            f"{left} of wrk's connections still open {CLOSE_GRACE:.0f}s after it exited"
        )
    for proc in (bench.backend, server):
        if proc is not None and proc.proc.poll() is not None:
            result.problems.append(
                f"{proc.name} exited with code {proc.proc.returncode}:\n{_tail(proc.log)}"
            )
    if server is not None:
        _keep_logs(outcome, name, server)
        bench.procs.stop(server)
    latency = result.detail.get("latency_ms", {})
    return Sample(
        workload.name,
        name,
        repeat,
        result.value,
        latency.get("50"),
        latency.get("99"),
        result.problems,
        result.detail,
    )


def run_workload(
    bench: Bench, workload: Workload, contenders: Sequence[str], outcome: Outcome
) -> None:
    n = len(contenders)
    for r in range(bench.plan.repeats):
        # Interleave: repeat r starts with contender r mod n.
        order = [*contenders[r % n :], *contenders[: r % n]]
        for name in order:
            sample = run_once(bench, workload, name, r, outcome)
            outcome.samples.append(sample)
            shown = (
                "FAILED"
                if sample.rps is None
                else f"{sample.rps:>10,.0f} req/s  p50 {_num(sample.p50_ms, 2)} ms"
                f"  p99 {_num(sample.p99_ms, 2)} ms"
                f"  backend conns {sample.detail.get('backend_connections', '?')}"
            )
            print(
                f"  [{workload.name} {r + 1}/{bench.plan.repeats}] {name:<12} {shown}", flush=True
            )
            for problem in sample.problems:
                print(f"  WARNING {workload.name}/{name}: {problem}", flush=True)


def collect(
    tools: dict[str, str],
    workloads: Sequence[Workload],
    contenders: Sequence[str],
    plan: Plan,
    tmp: Path,
) -> Outcome:
    outcome = Outcome()
    procs = Processes(tmp)
    try:
        bench = Bench(procs, tools, tmp, plan)
        smoke(bench, contenders, outcome)
        for workload in workloads:
            print(f"{workload.name}: {workload.about}", flush=True)
            run_workload(bench, workload, contenders, outcome)
        if lines := _log_problems(bench.backend):
            outcome.logs.setdefault("backend", []).extend(lines)
    finally:
        procs.stop_all()
    outcome.problems += [
        f"{s.workload}/{s.contender} repeat {s.repeat + 1}: {p}"
        for s in outcome.samples
        for p in s.problems
    ]
    return outcome


# -- reporting ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Summary:
    workload: str
    contender: str
    runs: int  # with a number
    rps: float | None  # medians over the repeats
    rps_min: float | None
    rps_max: float | None
    p50_ms: float | None
    p99_ms: float | None
    backend_connections: float | None  # connections the backend accepted per run
    vs_direct: float | None  # req/s ratio
    meshgate_vs: float | None  # meshgate's req/s / this one's (above 1: meshgate faster)
    meshgate_p99_vs: float | None  # meshgate's p99 / this one's (above 1: meshgate slower)


def _median(values: Sequence[float | int | None]) -> float | None:
    known = [float(v) for v in values if v is not None]
    return statistics.median(known) if known else None


def summarize(
    workload: Workload, contenders: Sequence[str], samples: list[Sample]
) -> list[Summary]:
    mine = [s for s in samples if s.workload == workload.name]
    rps: dict[str, list[float]] = {
        c: [s.rps for s in mine if s.contender == c and s.rps is not None] for c in contenders
    }
    med = {c: _median(rps[c]) for c in contenders}
    p99 = {c: _median([s.p99_ms for s in mine if s.contender == c]) for c in contenders}
    out = []
    for c in contenders:
        runs = [s for s in mine if s.contender == c]
        out.append(
            Summary(
                workload.name,
                c,
                len(rps[c]),
                med[c],
                min(rps[c]) if rps[c] else None,
                max(rps[c]) if rps[c] else None,
                _median([s.p50_ms for s in runs]),
                p99[c],
                _median([s.detail.get("backend_connections") for s in runs]),
                _ratio(med[c], med.get("direct")),
                None if c == "meshgate" else _ratio(med.get("meshgate"), med[c]),
                None if c == "meshgate" else _ratio(p99.get("meshgate"), p99[c]),
            )
        )
    return out


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_table(summaries: list[Summary], repeats: int) -> None:
    print(f"\nmedian of {repeats} interleaved repeats; ratios are ratios of medians")
    print(
        f"{'load':<5} {'contender':<12} {'req/s':>9} {'min .. max':>19} {'p50 ms':>7}"
        f" {'p99 ms':>7} {'/direct':>7} {'mg/this':>7} {'mg p99/this':>11} {'backend conns':>13}"
    )
    for s in summaries:
        span = "-" if s.rps_min is None else f"{_num(s.rps_min, 0)} .. {_num(s.rps_max, 0)}"
        print(
            f"{s.workload:<5} {s.contender:<12} {_num(s.rps, 0):>9} {span:>19}"
            f" {_num(s.p50_ms, 2):>7} {_num(s.p99_ms, 2):>7} {_num(s.vs_direct, 2):>7}"
            f" {_num(s.meshgate_vs, 2):>7} {_num(s.meshgate_p99_vs, 2):>11}"
            f" {_num(s.backend_connections, 0):>13}"
        )


def tool_versions(tools: dict[str, str]) -> dict[str, str]:
    flags = {"wrk": "--version", "nginx": "-v", "haproxy": "-v", "meshgate": "version"}
    versions: dict[str, str] = {}
    for name, path in tools.items():
        argv = [path, flags[name]]
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
        lines = [line for line in (done.stdout + done.stderr).splitlines() if VERSION.search(line)]
        versions[name] = lines[0].strip() if lines else "?"
    return versions


def _contender_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"choose from {', '.join(CONTENDERS)} (comma-separated); got {text!r}"
        )
    return [c for c in CONTENDERS if c in names]  # the usual order, once each


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="HTTP benchmark: direct, meshgate, HAProxy and nginx as reverse proxies "
        "in front of one nginx, on loopback, interleaved."
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender (default 3)")
    parser.add_argument(
        "--duration", type=int, default=3, help="seconds per run, whole seconds (default 3)"
    )
    parser.add_argument(
        "--only", choices=[w.name for w in WORKLOADS], help="run this one workload only"
    )
    parser.add_argument(
        "--contenders",
        type=_contender_list,
        default=list(CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)} (default: all)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.duration < 1:
        parser.error("--repeats and --duration must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0: done, no warnings; 1: done, with warnings; 2: could not run; 130: interrupted."""
    args = parse_args(argv)
    contenders: list[str] = args.contenders
    try:
        tools = find_tools(contenders)
    except MissingTool as exc:
        print(f"http_proxy.py: cannot run, {exc}", file=sys.stderr)
        return 2
    if not Path("/proc/net/tcp").exists():
        print("http_proxy.py: cannot run: needs Linux (/proc/net/tcp)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    plan = Plan(args.repeats, args.duration)
    workloads = [w for w in WORKLOADS if args.only in (None, w.name)]
    started = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix="meshgate-bench-http-") as tmpdir:
            outcome = collect(tools, workloads, contenders, plan, Path(tmpdir))
    except NotReady as exc:
        print(f"http_proxy.py: a server did not start: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("http_proxy.py: interrupted; every process started was stopped", file=sys.stderr)
        return 130

    summaries = [s for w in workloads for s in summarize(w, contenders, outcome.samples)]
    print_table(summaries, plan.repeats)
    logs = []
    for name, lines in outcome.logs.items():
        unique = list(dict.fromkeys(lines))
        shown = "\n".join(f"    {line}" for line in unique[:5])
        logs.append(f"{name} logged {len(lines)} line(s), {len(unique)} distinct:\n{shown}")
    return finish_report(
        "http",
        started,
        args=args,
        tools=tool_versions(tools),
        problems=outcome.problems,
        logs=logs,
        fields={
            "workloads": [asdict(w) for w in workloads],
            "contenders": {c: ABOUT[c] for c in contenders},
            "configs": outcome.configs,
            "summaries": [asdict(s) for s in summaries],
            "samples": [asdict(s) for s in outcome.samples],
            "server_logs_by_server": outcome.logs,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
