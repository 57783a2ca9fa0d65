"""`make bench`: meshgate against no proxy and its peers, side by side, on loopback.

Four groups of contenders, each with the workloads that fit it:

  l4        direct, socat, HAProxy mode tcp (plain and with forced splice),
            nginx stream, meshgate TCP rule: 64-byte ping-pong latency, iperf3
            bulk with 1 and 4 streams, wrk keep-alive at 50 and 200
            connections and with `Connection: close` against nginx, and
            memory (PSS) idle and holding 1,000 and 5,000 connections
  http      direct, HAProxy mode http, nginx proxy_pass (upstream keep-alive),
            meshgate `protocol: http` route: wrk c50, c200 and new connections
  tls-term  nginx serving HTTPS itself, nginx / HAProxy / meshgate terminating
            TLS in front of plain nginx: HTTPS keep-alive requests/s
  tls-pass  nginx serving HTTPS itself, HAProxy / nginx / meshgate passing TLS
            through by SNI: HTTPS requests/s with a new connection each

Within a group the repeats are interleaved: repeat r starts with contender r
mod n, and each contender is started right before its turn (all of the
group's workloads, one after the other) and stopped right after, so an idle
proxy never takes CPU or backend connections from another. Only ratios from
one run mean anything: absolute numbers on a shared 2-core machine move by
2x from hour to hour. The table gives medians over the repeats, min..max,
the ratio to `direct`, meshgate's ratio to each peer and a TARGETS table;
every sample goes to bench/results/suite-<time>.json, and
`--write-results FILE` writes the tables as Markdown (bench/RESULTS.md).

Boundaries: loopback only; every process runs in its own process group and
is stopped in a `finally` (see harness.Processes); every client has a
deadline; configs, certificates and logs live in a temporary directory
removed at the end. Standard library only. See bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness import (
    BODY,
    LOOPBACK,
    MESHGATE_DRAIN,
    READY_TIMEOUT,
    RUN_SLACK,
    STATUS_PATH,
    MissingTool,
    NotReady,
    Pki,
    Processes,
    Result,
    Server,
    backend_counters,
    check_http,
    connections_left,
    established,
    find_tools,
    finish_report,
    free_port,
    in_tmpdir,
    left_open,
    listeners,
    log_problems,
    machine,
    make_pki,
    median,
    meshgate_revision,
    nginx_http_head,
    nginx_main,
    nginx_stream_module,
    num,
    pin,
    raise_nofile,
    ratio,
    run_client,
    run_wrk,
    tls_parameters,
    tool_versions,
)

# Pause between two measurements: lets the previous one's closing
# connections settle so they do not bill the next.
SETTLE = 0.25
# The name wrk and the smoke check connect to over TLS: wrk sends the URL's
# host as SNI, and a name (not 127.0.0.1) is what SNI routes match. It must
# resolve to 127.0.0.1 (wrk drops addresses it cannot connect to).
TLS_NAME = "localhost"
# The ping-pong message, and round trips made before the clock starts.
PING = bytes(range(64))
PING_WARMUP = 200
PING_MAX = 2_000_000
# Memory: how long a proxy gets to connect every held connection upstream,
# and to settle before and after.
HOLD_TIMEOUT = 30.0
HOLD_SETTLE = 1.0
# socat forks a process per connection: holding more than this many would
# mean thousands of processes, so it is measured at this count only.
SOCAT_HOLD_MAX = 1000

Kind = Literal["pingpong", "iperf3", "wrk", "memory"]
Target = Literal["echo", "iperf3", "http", "https", "hold"]


# -- workloads and contenders ------------------------------------------------
@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    group: str
    kind: Kind
    target: Target  # the backend: what direct connects to, and the proxies forward to
    about: str
    load: int = 0  # iperf3 streams or wrk connections
    close: bool = False  # wrk with `Connection: close`: one connection per request

    @property
    def unit(self) -> str:
        units = {"pingpong": "us", "iperf3": "Gbit/s", "memory": "MiB"}
        return units.get(self.kind, "conn/s" if self.close else "req/s")


# fmt: off
WORKLOADS = (
    Workload("pingpong", "l4", "pingpong", "echo",
             "64 bytes out, the same 64 back over one connection (socat echo): p50/p99"),
    Workload("bulk1", "l4", "iperf3", "iperf3", "iperf3, 1 stream: sum_received", 1),
    Workload("bulk4", "l4", "iperf3", "iperf3", "iperf3 -P 4: sum_received", 4),
    Workload("l4-c50", "l4", "wrk", "http", "wrk -t1 -c50 keep-alive, 100-byte body", 50),
    Workload("l4-c200", "l4", "wrk", "http", "wrk -t1 -c200 keep-alive, 100-byte body", 200),
    Workload("l4-newconn", "l4", "wrk", "http", "wrk -t1 -c50 -H 'Connection: close'", 50,
             close=True),
    Workload("memory", "l4", "memory", "hold", "PSS idle and holding N idle connections"),
    Workload("http-c50", "http", "wrk", "http", "wrk -t1 -c50 keep-alive, 100-byte body", 50),
    Workload("http-c200", "http", "wrk", "http", "wrk -t1 -c200 keep-alive, 100-byte body", 200),
    Workload("http-newconn", "http", "wrk", "http", "wrk -t1 -c50 -H 'Connection: close'", 50,
             close=True),
    Workload("https-c50", "tls-term", "wrk", "https", "wrk -t1 -c50 https://, keep-alive", 50),
    Workload("https-newconn", "tls-term", "wrk", "https",
             "wrk -t1 -c50 https:// -H 'Connection: close': a handshake per request", 50,
             close=True),
    Workload("pass-newconn", "tls-pass", "wrk", "https",
             "wrk -t1 -c50 https:// -H 'Connection: close' through SNI passthrough", 50,
             close=True),
)
# fmt: on
GROUPS = ("l4", "http", "tls-term", "tls-pass")
ALIASES = {"tls": ("tls-term", "tls-pass")}


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    group: str
    about: str
    tools: tuple[str, ...] = ()
    workers: int = 0  # meshgate --workers (0: not given)

    @property
    def base(self) -> str:
        """The name without a worker-count suffix: what its config is made from."""
        return self.name.removesuffix(f"-w{self.workers}") if self.workers else self.name


# fmt: off
CONTENDERS = (
    Contender("direct", "l4", "no proxy: the client talks to the backend"),
    Contender("socat", "l4", "socat TCP-LISTEN:p,fork,backlog=511 TCP:backend", ("socat",)),
    Contender("haproxy-tcp", "l4", "HAProxy mode tcp, nbthread 1, no splice", ("haproxy",)),
    Contender("haproxy-splice", "l4",
              "HAProxy mode tcp, nbthread 1, option splice-request + splice-response",
              ("haproxy",)),
    Contender("nginx-stream", "l4", "nginx stream proxy_pass, 1 worker", ("nginx",)),
    Contender("meshgate-tcp", "l4", "meshgate run --ingress tcp:p:127.0.0.1:backend",
              ("meshgate",)),
    Contender("direct", "http", "no proxy: wrk talks to the nginx backend"),
    Contender("haproxy-http", "http", "HAProxy mode http, nbthread 1, http-reuse always",
              ("haproxy",)),
    Contender("nginx-proxy", "http", "nginx proxy_pass, upstream keepalive 64, 1 worker",
              ("nginx",)),
    Contender("meshgate-http", "http",
              "meshgate protocol: http listener, one route (path /), access_log false",
              ("meshgate",)),
    Contender("direct", "tls-term", "nginx answering HTTPS itself (no proxy)"),
    Contender("nginx-https", "tls-term",
              "nginx listen ssl, proxy_pass to plain nginx, upstream keepalive 64", ("nginx",)),
    Contender("haproxy-https", "tls-term",
              "HAProxy mode http, bind ssl crt, http-reuse always, to plain nginx",
              ("haproxy",)),
    Contender("meshgate-https", "tls-term",
              "meshgate protocol: https listener (certificate by SNI), one HTTP route",
              ("meshgate",)),
    Contender("meshgate-tls-term", "tls-term",
              "meshgate protocol: tls, SNI route mode: terminate, plain TCP to nginx",
              ("meshgate",)),
    Contender("direct", "tls-pass", "nginx answering HTTPS itself (no proxy)"),
    Contender("haproxy-sni", "tls-pass",
              "HAProxy mode tcp, inspect-delay, use_backend if req_ssl_sni", ("haproxy",)),
    Contender("nginx-stream-sni", "tls-pass",
              "nginx stream ssl_preread, map $ssl_preread_server_name", ("nginx",)),
    Contender("meshgate-passthrough", "tls-pass",
              "meshgate protocol: tls, SNI route (passthrough)", ("meshgate",)),
)
# fmt: on
# The meshgate contender each group's "mg/this" column is about.
PRIMARY = {
    "l4": "meshgate-tcp",
    "http": "meshgate-http",
    "tls-term": "meshgate-https",
    "tls-pass": "meshgate-passthrough",
}
# Contenders that get a multi-worker twin when meshgate has `run --workers`.
WORKER_TWINS = ("meshgate-tcp", "meshgate-http")


def with_worker_twins(workers: int) -> tuple[Contender, ...]:
    out: list[Contender] = []
    for c in CONTENDERS:
        out.append(c)
        if workers > 1 and c.name in WORKER_TWINS:
            about = f"{c.about}, --workers {workers}"
            out.append(Contender(f"{c.name}-w{workers}", c.group, about, c.tools, workers))
    return tuple(out)


def meshgate_has_workers(meshgate: str) -> bool:
    """Whether this meshgate's `run` takes --workers (SO_REUSEPORT processes)."""
    try:
        done = subprocess.run(
            [meshgate, "run", "--help"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            env={"COLUMNS": "200", "TERM": "dumb", "PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--workers" in done.stdout


# -- configs -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ctx:
    """What every contender's config is made from."""

    tools: dict[str, str]
    tmp: Path
    backends: dict[str, int]  # target -> the backend's port ("https": nginx's TLS port)
    pki: Pki | None
    nofile: int  # the descriptor limit every server inherits


@dataclass(slots=True)
class Launch:
    ports: dict[str, int]  # target -> where the client connects
    procs: list[tuple[list[str], list[int]]] = field(default_factory=list)  # argv, its ports
    configs: list[Path] = field(default_factory=list)


def upstream(ctx: Ctx, group: str, target: str) -> int:
    # Terminating proxies send plain HTTP to nginx; everything else forwards
    # to the backend of the workload's target.
    return ctx.backends["http" if group == "tls-term" else target]


def _pki(ctx: Ctx) -> Pki:
    if ctx.pki is None:
        raise NotReady("a TLS contender needs the certificate (openssl)")
    return ctx.pki


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def haproxy_conf(ctx: Ctx, c: Contender, listen: dict[str, int]) -> str:
    mode = "http" if c.base in ("haproxy-http", "haproxy-https") else "tcp"
    lines = [
        "global",
        "    nbthread 1",
        # About 2 descriptors per connection, plus splice pipes.
        f"    maxconn {max(1000, min(20000, ctx.nofile // 3))}",
        "defaults",
        f"    mode {mode}",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
    ]
    if c.base == "haproxy-splice":
        # Forced: `option splice-auto` alone never spliced in these loads.
        lines += ["    option splice-request", "    option splice-response"]
    for target, port in listen.items():
        bind = f"    bind {LOOPBACK}:{port}"
        if c.base == "haproxy-https":
            bind += f" ssl crt {_pki(ctx).combined}"
        lines += [f"frontend fe-{target}", bind]
        if c.base == "haproxy-sni":
            lines += [
                "    tcp-request inspect-delay 5s",
                "    tcp-request content accept if { req_ssl_hello_type 1 }",
                f"    use_backend be-{target} if {{ req_ssl_sni -i {_pki(ctx).name} }}",
            ]
        else:
            lines.append(f"    default_backend be-{target}")
        lines.append(f"backend be-{target}")
        if mode == "http":
            lines.append("    http-reuse always")
        lines.append(f"    server s1 {LOOPBACK}:{upstream(ctx, c.group, target)}")
    return "\n".join(lines) + "\n"


def nginx_stream_conf(ctx: Ctx, c: Contender, home: Path, listen: dict[str, int]) -> str:
    servers = []
    for target, port in listen.items():
        up = upstream(ctx, c.group, target)
        if c.base == "nginx-stream-sni":
            servers.append(
                f"""    upstream be_{target} {{ server {LOOPBACK}:{up}; }}
    map $ssl_preread_server_name $be_{target} {{ {_pki(ctx).name} be_{target}; }}
    server {{
        listen {LOOPBACK}:{port};
        ssl_preread on;
        proxy_pass $be_{target};
    }}
"""
            )
        else:
            servers.append(
                f"    server {{ listen {LOOPBACK}:{port}; proxy_pass {LOOPBACK}:{up}; }}\n"
            )
    return nginx_main(home, stream=True, connections=ctx.nofile - 1000) + (
        "stream {\n" + "".join(servers) + "}\n"
    )


def nginx_proxy_conf(ctx: Ctx, c: Contender, home: Path, listen: dict[str, int]) -> str:
    blocks = []
    for target, port in listen.items():
        tls = ""
        if c.base == "nginx-https":
            pki = _pki(ctx)
            tls = f""" ssl;
        ssl_certificate {pki.cert};
        ssl_certificate_key {pki.key};
        ssl_protocols TLSv1.2 TLSv1.3"""
        blocks.append(
            f"""    upstream be_{target} {{
        server {LOOPBACK}:{upstream(ctx, c.group, target)};
        keepalive 64;
        # nginx's default here is 1000 requests, then a reconnect.
        keepalive_requests 1000000;
    }}
    server {{
        listen {LOOPBACK}:{port}{tls};
        location / {{
            proxy_pass http://be_{target};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""
        )
    return (
        nginx_main(home, connections=ctx.nofile - 1000)
        + "http {\n"
        + nginx_http_head(home)
        + "".join(blocks)
        + "}\n"
    )


def meshgate_yaml(ctx: Ctx, c: Contender, listen: dict[str, int]) -> str:
    listeners, backends = [], []
    for target, port in listen.items():
        up = upstream(ctx, c.group, target)
        head = f"""  - name: {target}
    address: {LOOPBACK}
    port: {port}
"""
        if c.base == "meshgate-http":
            body = """    protocol: http
    http:
      access_log: false
"""
        elif c.base == "meshgate-https":
            pki = _pki(ctx)
            body = f"""    protocol: https
    tls:
      certificates:
        - hosts: [{pki.name}]
          certificate: {{cert: {pki.cert}, key: {pki.key}}}
    http:
      access_log: false
"""
        else:
            body = "    protocol: tls\n"
        if c.base in ("meshgate-http", "meshgate-https"):
            body += f"      routes:\n        - {{path: /, backend: be-{target}}}\n"
        elif c.base == "meshgate-tls-term":
            pki = _pki(ctx)
            body += f"""    routes:
      - sni: [{pki.name}]
        mode: terminate
        certificate: {{cert: {pki.cert}, key: {pki.key}}}
        backend: be-{target}
"""
        else:  # passthrough
            body += f"    routes:\n      - {{sni: [{_pki(ctx).name}], backend: be-{target}}}\n"
        listeners.append(head + body)
        backends.append(f'  - {{name: be-{target}, endpoints: ["{LOOPBACK}:{up}"]}}\n')
    return "listeners:\n" + "".join(listeners) + "backends:\n" + "".join(backends)


def meshgate_argv(ctx: Ctx, c: Contender) -> list[str]:
    # Log level warning: at info meshgate logs every closed connection, and
    # none of the peers logs per connection here.
    argv = [ctx.tools["meshgate"], "run", "--admin", "off", "--log-level", "warning"]
    argv += ["--drain-timeout", MESHGATE_DRAIN]
    if c.workers:
        argv += ["--workers", str(c.workers)]
    return argv


def plan_launch(ctx: Ctx, c: Contender, targets: Sequence[str], label: str) -> Launch:
    """The processes that make contender `c` listen for `targets`, and their ports."""
    if c.base == "direct":
        direct = {t: ctx.backends["https" if c.group.startswith("tls") else t] for t in targets}
        return Launch(direct)
    launch = Launch({t: free_port() for t in targets})
    home = ctx.tmp / f"{c.name}-{label}"
    home.mkdir()
    if c.base == "socat":
        for target, port in launch.ports.items():
            argv = [
                ctx.tools["socat"],
                f"TCP-LISTEN:{port},fork,reuseaddr,backlog=511,bind={LOOPBACK}",
            ]
            argv.append(f"TCP:{LOOPBACK}:{upstream(ctx, c.group, target)}")
            launch.procs.append((argv, [port]))
        return launch
    if c.base.startswith("haproxy"):
        conf = _write(home / "haproxy.cfg", haproxy_conf(ctx, c, launch.ports))
        argv = [ctx.tools["haproxy"], "-db", "-f", str(conf)]
    elif c.base.startswith("nginx"):
        make = nginx_stream_conf if c.base.startswith("nginx-stream") else nginx_proxy_conf
        conf = _write(home / "nginx.conf", make(ctx, c, home, launch.ports))
        argv = [ctx.tools["nginx"], "-p", str(home), "-e", "stderr", "-c", str(conf)]
    elif c.base.startswith("meshgate-tcp"):
        argv = [*meshgate_argv(ctx, c), "--bind", LOOPBACK]
        for target, port in launch.ports.items():
            argv += ["--ingress", f"tcp:{port}:{LOOPBACK}:{upstream(ctx, c.group, target)}"]
        launch.procs.append((argv, list(launch.ports.values())))
        return launch
    elif c.base.startswith("meshgate"):
        conf = _write(home / "meshgate.yaml", meshgate_yaml(ctx, c, launch.ports))
        argv = [*meshgate_argv(ctx, c), "-c", str(conf)]
    else:
        raise ValueError(f"unknown contender {c.name!r}")
    launch.procs.append((argv, list(launch.ports.values())))
    launch.configs.append(conf)
    return launch


# -- backends ----------------------------------------------------------------
def backend_nginx_conf(home: Path, http: int, https: int | None, pki: Pki | None) -> str:
    """One worker answering `return 200` with BODY on plain HTTP (and HTTPS),
    with its counters (stub_status), which no load ever asks for."""
    tls = ""
    if https is not None and pki is not None:
        tls = f"""    server {{
        listen {LOOPBACK}:{https} ssl;
        ssl_certificate {pki.cert};
        ssl_certificate_key {pki.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ return 200 "{BODY}"; }}
    }}
"""
    return (
        nginx_main(home)
        + "http {\n"
        + nginx_http_head(home)
        + f"""    server {{
        listen {LOOPBACK}:{http};
        location = {STATUS_PATH} {{ stub_status; }}
        location / {{ return 200 "{BODY}"; }}
    }}
"""
        + tls
        + "}\n"
    )


def start_backends(
    procs: Processes, tools: dict[str, str], tmp: Path, targets: set[Target], pki: Pki | None
) -> tuple[dict[str, int], dict[str, Server]]:
    ports: dict[str, int] = {}
    servers: dict[str, Server] = {}
    if "iperf3" in targets:
        ports["iperf3"] = port = free_port()
        argv = [tools["iperf3"], "-s", "-B", LOOPBACK, "-p", str(port)]
        servers["iperf3"] = procs.start("iperf3", argv, [port])
    if targets & {"http", "https"}:
        ports["http"] = free_port()
        listen = [ports["http"]]
        if "https" in targets:
            ports["https"] = free_port()
            listen.append(ports["https"])
        home = tmp / "backend"
        home.mkdir()
        conf = home / "nginx.conf"
        conf.write_text(backend_nginx_conf(home, ports["http"], ports.get("https"), pki))
        argv = [tools["nginx"], "-p", str(home), "-e", "stderr", "-c", str(conf)]
        servers["nginx"] = procs.start("nginx", argv, listen)
    if "echo" in targets:
        ports["echo"] = port = free_port()
        # PIPE: what arrives is written back. The same echo for every contender.
        argv = [tools["socat"], f"TCP-LISTEN:{port},fork,reuseaddr,bind={LOOPBACK}", "PIPE"]
        servers["echo"] = procs.start("echo", argv, [port])
    if "hold" in targets:
        ports["hold"] = port = free_port()
        argv = [sys.executable, str(Path(__file__).with_name("holder.py")), str(port)]
        servers["hold"] = procs.start("holder", argv, [port])
    return ports, servers


# -- measurements ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Plan:
    repeats: int
    duration: int  # seconds per measurement; iperf3 and wrk take whole seconds
    hold: tuple[int, ...]  # connection counts the memory workload holds


def measure_iperf3(iperf3: str, port: int, streams: int, duration: int) -> Result:
    argv = [iperf3, "-c", LOOPBACK, "-p", str(port), "-t", str(duration), "-P", str(streams)]
    done = run_client([*argv, "-J"], duration + RUN_SLACK)
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
    received, sent = report["end"]["sum_received"], report["end"]["sum_sent"]
    detail = {
        "bytes_received": int(received["bytes"]),
        "bytes_sent": int(sent["bytes"]),
        "retransmits": int(sent.get("retransmits", 0)),
    }
    return Result(float(received["bits_per_second"]), [], detail)


def measure_pingpong(port: int, duration: int) -> Result:
    """Round trips of PING over one connection for `duration` s: p50 (the value), p99, in us.

    Plain blocking sockets; the Python client's own cost is in every
    contender's number alike and cancels out of the added latency.
    """
    rtts: list[int] = []
    buf = bytearray(len(PING))
    view = memoryview(buf)
    bad = 0
    try:
        with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def round_trip() -> None:
                sock.sendall(PING)
                got = 0
                while got < len(PING):
                    n = sock.recv_into(view[got:])
                    if n == 0:
                        raise ConnectionError("closed by the peer")
                    got += n

            for _ in range(PING_WARMUP):
                round_trip()
            clock = time.perf_counter_ns
            end = clock() + duration * 1_000_000_000
            gc.disable()
            try:
                while len(rtts) < PING_MAX:
                    start = clock()
                    if start > end:
                        break
                    round_trip()
                    rtts.append(clock() - start)
                    if buf != PING:
                        bad += 1
            finally:
                gc.enable()
    except OSError as exc:
        return Result(None, [f"ping-pong failed after {len(rtts)} round trips: {exc!r}"])
    if len(rtts) < 100:
        return Result(None, [f"ping-pong: only {len(rtts)} round trips"])
    cuts = statistics.quantiles(rtts, n=100, method="inclusive")
    result = Result(
        statistics.median(rtts) / 1000,
        [],
        {"round_trips": len(rtts), "p90_us": cuts[89] / 1000, "p99_us": cuts[98] / 1000},
    )
    if bad:
        result.problems.append(f"ping-pong: {bad} replies differ from the message sent")
    return result


# -- the run -----------------------------------------------------------------
@dataclass(slots=True)
class Sample:
    workload: str
    contender: str
    repeat: int
    value: float | None  # bit/s, req/s, us (p50), MiB (idle PSS); None: failed
    problems: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Outcome:
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # make the numbers suspect
    logs: dict[str, list[str]] = field(default_factory=dict)  # server -> what it printed
    configs: dict[str, str] = field(default_factory=dict)  # contender -> its config
    tls: dict[str, str] = field(default_factory=dict)  # contender -> version and cipher

    def warn(self, text: str) -> None:
        self.problems.append(text)
        print(f"  WARNING {text}", flush=True)


@dataclass(slots=True)
class Instance:
    contender: Contender
    ports: dict[str, int]
    servers: list[Server]

    def sockets(self) -> int:
        return sum(s.sockets() for s in self.servers)

    def pids(self) -> list[int]:
        return [pid for s in self.servers for pid in s.pids()]

    def pss_kib(self) -> int:
        return sum(s.pss_kib() for s in self.servers)


class Bench:
    """The backends, and a way to start one contender in front of them."""

    def __init__(self, procs: Processes, ctx: Ctx, backends: dict[str, Server], plan: Plan) -> None:
        self.procs, self.ctx, self.backends, self.plan = procs, ctx, backends, plan

    def start(self, c: Contender, targets: Sequence[str], label: str, outcome: Outcome) -> Instance:
        launch = plan_launch(self.ctx, c, targets, label)
        inst = Instance(c, launch.ports, [])
        try:
            for i, (argv, ports) in enumerate(launch.procs):
                inst.servers.append(self.procs.start(f"{c.name}-{label}-{i}", argv, ports))
            steady(inst)
        except NotReady:
            for server in inst.servers:
                self.procs.stop(server)
            raise
        key = f"{c.group}/{c.name}"
        if key not in outcome.configs and (launch.configs or launch.procs):
            texts = [p.read_text() for p in launch.configs]
            texts += [" ".join(argv) for argv, _ in launch.procs]
            outcome.configs[key] = "\n".join(texts)
        return inst

    def stop(self, inst: Instance, outcome: Outcome) -> None:
        # Read before stopping, so shutdown messages do not count.
        for server in inst.servers:
            if lines := log_problems(server):
                outcome.logs.setdefault(inst.contender.name, []).extend(lines)
        for server in reversed(inst.servers):
            self.procs.stop(server)

    def exited(self, inst: Instance) -> list[str]:
        return [text for s in [*self.backends.values(), *inst.servers] if (text := s.exited())]


def steady(inst: Instance) -> None:
    """Until every worker listens and the contender's sockets stop changing.

    A port listens as soon as the first process does: a second meshgate
    worker, or nginx's worker, may still be starting, and would take CPU from
    the first measurement and count as sockets left open after it.
    """
    deadline = time.monotonic() + READY_TIMEOUT
    want = max(1, inst.contender.workers)
    while any(listeners(p) < want for p in inst.ports.values()):
        if time.monotonic() > deadline:
            raise NotReady(f"{inst.contender.name}: fewer than {want} listeners per port")
        time.sleep(0.05)
    last = inst.sockets()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if (now := inst.sockets()) == last:
            return
        last = now


def smoke(bench: Bench, inst: Instance, outcome: Outcome) -> None:
    """One GET through the contender: 200 and the exact body (and the TLS it speaks)."""
    c = inst.contender
    if "http" in inst.ports:
        problem = check_http(inst.ports["http"])
    elif "https" in inst.ports:
        pki = bench.ctx.pki
        assert pki is not None
        port = inst.ports["https"]
        problem = check_http(port, ca=pki.ca, server_name=pki.name)
        if (key := f"{c.group}/{c.name}") not in outcome.tls:
            outcome.tls[key] = tls_parameters(port, pki.ca, pki.name)
    else:
        return
    if problem:
        outcome.warn(f"{c.group}/{c.name}: {problem}")


def measure(bench: Bench, inst: Instance, w: Workload, plan: Plan) -> Result:
    port = inst.ports[w.target]
    tools = bench.ctx.tools
    if w.kind == "iperf3":
        return measure_iperf3(tools["iperf3"], port, w.load, plan.duration)
    if w.kind == "pingpong":
        # Client, proxy and echo server on one CPU: across this VM's cores,
        # every wake-up of an idle vCPU added tens of microseconds at random
        # (p50 20 vs 41 us and p99 40 us vs 2.6 ms, direct, pinned or not),
        # which drowned what the proxy adds.
        everyone = os.sched_getaffinity(0)
        pids = [os.getpid(), *bench.backends["echo"].pids(), *inst.pids()]
        pin(pids, {max(everyone)})
        try:
            return measure_pingpong(port, plan.duration)
        finally:
            pin([*pids, *bench.backends["echo"].pids(), *inst.pids()], everyone)
    scheme, host = ("https", TLS_NAME) if w.target == "https" else ("http", LOOPBACK)
    url = f"{scheme}://{host}:{port}/"
    counter_port = bench.ctx.backends["http"]
    before = backend_counters(counter_port)
    result = run_wrk(tools["wrk"], url, connections=w.load, duration=plan.duration, close=w.close)
    after = backend_counters(counter_port)
    if before is None or after is None:
        result.problems.append("could not read the backend's counters (stub_status)")
        return result
    conns, served = after[0] - before[0] - 1, after[1] - before[1] - 1
    result.detail |= {"backend_connections": conns, "backend_requests": served}
    if served < (completed := result.detail.get("requests", 0)):
        result.problems.append(
            f"wrk counted {completed} responses, the backend served {served} requests"
        )
    return result


def run_one(bench: Bench, inst: Instance, w: Workload, repeat: int) -> Sample:
    c = inst.contender
    time.sleep(SETTLE)
    sockets_before = inst.sockets()
    result = measure(bench, inst, w, bench.plan)
    if (left := connections_left(inst.ports[w.target])) > 0:
        result.problems.append(f"{left} client connection(s) still open after the client exited")
    # An L4 relay closes both sides once its client has gone (socat's forks
    # exit). HTTP proxies may keep upstream connections for reuse, so only
    # L4 contenders are held to this.
    if c.group == "l4" and (extra := left_open(inst.sockets, sockets_before)) > 0:
        result.problems.append(
            f"holds {extra} more sockets than before the run (connections not closed?)"
        )
    result.problems += bench.exited(inst)
    return Sample(w.name, c.name, repeat, result.value, result.problems, result.detail)


def measure_memory(bench: Bench, inst: Instance) -> Result:
    """PSS idle, then holding each of plan.hold idle connections through the contender."""
    c, port, backend = inst.contender, inst.ports["hold"], bench.ctx.backends["hold"]
    time.sleep(HOLD_SETTLE)
    idle = inst.pss_kib()
    sockets_before, base = inst.sockets(), established(backend)
    result = Result(idle / 1024, [], {"idle_pss_kib": idle, "held": {}})
    socks: list[socket.socket] = []
    try:
        for n in bench.plan.hold:
            if c.name == "socat" and n > SOCAT_HOLD_MAX:
                result.detail["skipped"] = f"{n}: socat forks a process per connection"
                break
            started = time.monotonic()
            try:
                while len(socks) < n:
                    socks.append(socket.create_connection((LOOPBACK, port), timeout=5))
            except OSError as exc:
                result.problems.append(f"connection {len(socks) + 1} of {n} failed: {exc!r}")
                break
            deadline = started + HOLD_TIMEOUT
            while (held := established(backend) - base) < n and time.monotonic() < deadline:
                time.sleep(0.1)
            seconds = time.monotonic() - started
            if held < n:
                result.problems.append(
                    f"only {held} of {n} connections reached the backend after {HOLD_TIMEOUT:.0f}s"
                )
                break
            time.sleep(HOLD_SETTLE)
            pss = inst.pss_kib()
            result.detail["held"][str(n)] = {
                "pss_kib": pss,
                "kib_per_connection": round((pss - idle) / n, 2),
                "seconds_to_connect": round(seconds, 2),
            }
    finally:
        for sock in socks:
            sock.close()
    if (extra := left_open(inst.sockets, sockets_before)) > 0:
        result.problems.append(f"holds {extra} more sockets after the clients closed")
    if (left := left_open(lambda: established(backend), base)) > 0:
        result.problems.append(f"{left} upstream connection(s) still open at the backend")
    result.problems += bench.exited(inst)
    return result


def _report(group: str, w: Workload, sample: Sample, plan: Plan) -> None:
    if sample.value is None:
        shown = "FAILED"
    elif w.kind == "iperf3":
        shown = f"{sample.value / 1e9:8.2f} Gbit/s"
    elif w.kind == "pingpong":
        shown = f"p50 {sample.value:7.1f} us  p99 {num(sample.detail.get('p99_us'), 1)} us"
    elif w.kind == "memory":
        held = sample.detail.get("held", {})
        shown = f"idle {sample.value:6.1f} MiB" + "".join(
            f"  {n}: {h['kib_per_connection']:.1f} KiB/conn ({h['seconds_to_connect']:.1f}s)"
            for n, h in held.items()
        )
    else:
        p99 = sample.detail.get("latency_ms", {}).get("99")
        shown = f"{sample.value:10,.0f} {w.unit}  p99 {num(p99)} ms"
    rep = f"{sample.repeat + 1}/{plan.repeats}" if w.kind != "memory" else "1/1"
    print(f"  [{group} {rep}] {w.name:<13} {sample.contender:<20} {shown}", flush=True)
    for problem in sample.problems:
        print(f"  WARNING {w.name}/{sample.contender}: {problem}", flush=True)


def session(
    bench: Bench, c: Contender, loads: Sequence[Workload], repeat: int, outcome: Outcome
) -> None:
    """Start `c`, measure each of `loads` through it, stop it."""
    targets = list(dict.fromkeys(w.target for w in loads))
    try:
        inst = bench.start(c, targets, f"{loads[0].name}-r{repeat + 1}", outcome)
    except NotReady as exc:
        outcome.warn(f"{c.group}/{c.name} did not start: {exc}")
        outcome.samples += [Sample(w.name, c.name, repeat, None, ["did not start"]) for w in loads]
        return
    try:
        if loads[0].kind != "memory":
            smoke(bench, inst, outcome)
        for w in loads:
            if w.kind == "memory":
                result = measure_memory(bench, inst)
                sample = Sample(
                    w.name, c.name, repeat, result.value, result.problems, result.detail
                )
            else:
                sample = run_one(bench, inst, w, repeat)
            outcome.samples.append(sample)
            _report(c.group, w, sample, bench.plan)
    finally:
        bench.stop(inst, outcome)


def run_group(
    bench: Bench, workloads: Sequence[Workload], contenders: Sequence[Contender], outcome: Outcome
) -> None:
    loads = [w for w in workloads if w.kind != "memory"]
    n = len(contenders)
    for r in range(bench.plan.repeats if loads else 0):
        # Interleave: repeat r starts with contender r mod n.
        for c in [*contenders[r % n :], *contenders[: r % n]]:
            session(bench, c, loads, r, outcome)
    for w in (w for w in workloads if w.kind == "memory"):
        # Once per proxy, each freshly started (a proxy that has carried load
        # has grown its heap); direct has no proxy to measure.
        for c in contenders:
            if c.name != "direct":
                session(bench, c, [w], 0, outcome)


# -- summaries ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Row:
    group: str
    workload: str
    contender: str
    runs: int  # with a number
    median: float | None  # in the workload's unit
    low: float | None
    high: float | None
    p99: float | None  # wrk: ms; ping-pong: us
    vs_direct: float | None
    mg_vs: float | None  # the group's meshgate over this (ping-pong: added latency)
    mg_p99_vs: float | None
    extra: dict[str, float | None]


SCALE = {"iperf3": 1e9, "wrk": 1.0, "pingpong": 1.0, "memory": 1.0}


def summarize(w: Workload, contenders: Sequence[Contender], samples: list[Sample]) -> list[Row]:
    mine = [s for s in samples if s.workload == w.name]
    # Every contender of the group, failed or not; for memory, the proxies.
    names = [
        c.name
        for c in contenders
        if c.group == w.group and (w.kind != "memory" or c.name != "direct")
    ]
    values: dict[str, list[float]] = {}
    med: dict[str, float | None] = {}
    p99: dict[str, float | None] = {}
    extra: dict[str, dict[str, float | None]] = {}
    for name in names:
        runs = [s for s in mine if s.contender == name]
        values[name] = [s.value / SCALE[w.kind] for s in runs if s.value is not None]
        med[name] = median(values[name])
        if w.kind == "pingpong":
            p99[name] = median(s.detail.get("p99_us") for s in runs)
        else:
            p99[name] = median(s.detail.get("latency_ms", {}).get("99") for s in runs)
        extra[name] = {}
        if w.kind == "wrk":
            extra[name]["backend_conns"] = median(s.detail.get("backend_connections") for s in runs)
        if w.kind == "memory":
            for n in sorted({n for s in runs for n in s.detail.get("held", {})}, key=int):
                held = [s.detail["held"][n] for s in runs if n in s.detail.get("held", {})]
                extra[name][f"pss_mib_{n}"] = median(h["pss_kib"] / 1024 for h in held)
                extra[name][f"kib_per_conn_{n}"] = median(h["kib_per_connection"] for h in held)
                extra[name][f"seconds_{n}"] = median(h["seconds_to_connect"] for h in held)
    if w.kind == "pingpong":
        for name in names:
            for key, d in (("added_p50", med), ("added_p99", p99)):
                mine_v, base = d[name], d.get("direct")
                extra[name][key] = None if mine_v is None or base is None else mine_v - base
    mg = PRIMARY[w.group]
    rows = []
    for name in names:
        if w.kind == "pingpong":
            mg_vs = _ratio_of(extra, mg, name, "added_p50")
            mg_p99_vs = _ratio_of(extra, mg, name, "added_p99")
        else:
            mg_vs = ratio(med.get(mg), med[name])
            mg_p99_vs = ratio(p99.get(mg), p99[name])
        rows.append(
            Row(
                w.group,
                w.name,
                name,
                len(values[name]),
                med[name],
                min(values[name]) if values[name] else None,
                max(values[name]) if values[name] else None,
                p99[name],
                ratio(med[name], med.get("direct")),
                None if name == mg else mg_vs,
                None if name == mg else mg_p99_vs,
                extra[name],
            )
        )
    return rows


def _ratio_of(extra: dict[str, dict[str, float | None]], a: str, b: str, key: str) -> float | None:
    """Added latency of `a` over `b`'s: none when `b` adds nothing measurable
    (at or below direct's: noise), 0 when `a` does not."""
    mine, theirs = extra.get(a, {}).get(key), extra.get(b, {}).get(key)
    if mine is None or theirs is None or theirs <= 0:
        return None
    return max(mine, 0.0) / theirs


# -- targets -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Goal:
    label: str
    workload: str
    metric: str  # "median", "p99", or a key of Row.extra
    peer: str | None  # None: the number itself is held to the limit
    at_most: bool  # measured <= limit (else >=)
    limit: float
    unit: str = "x"


def goals(hold: Sequence[int]) -> list[Goal]:
    out = [
        Goal("L4 bulk, 1 stream", "bulk1", "median", "haproxy-splice", False, 1.0),
        Goal("L4 bulk, 4 streams", "bulk4", "median", "haproxy-splice", False, 1.0),
        Goal("L4 keep-alive c50", "l4-c50", "median", "haproxy-tcp", False, 1.0),
        Goal("L4 keep-alive c200", "l4-c200", "median", "haproxy-tcp", False, 1.0),
        Goal("L4 new connections/s", "l4-newconn", "median", "haproxy-tcp", False, 1.0),
        Goal("L4 ping-pong added p50", "pingpong", "added_p50", "haproxy-tcp", True, 1.0),
        Goal("L4 ping-pong added p99", "pingpong", "added_p99", "haproxy-tcp", True, 1.2),
    ]
    out += [
        Goal(
            f"memory per held connection ({n:,})",
            "memory",
            f"kib_per_conn_{n}",
            None,
            True,
            8.0,
            " KiB",
        )
        for n in hold
    ]
    out += [
        Goal("memory idle", "memory", "median", None, True, 40.0, " MiB"),
        Goal("HTTP keep-alive c50 req/s", "http-c50", "median", "nginx-proxy", False, 1.0),
        Goal("HTTP keep-alive c50 p99", "http-c50", "p99", "nginx-proxy", True, 1.5),
        Goal("HTTP keep-alive c200 req/s", "http-c200", "median", "nginx-proxy", False, 1.0),
        Goal("HTTP keep-alive c200 p99", "http-c200", "p99", "nginx-proxy", True, 1.5),
        Goal("HTTP new connections/s", "http-newconn", "median", "nginx-proxy", False, 1.0),
        Goal("HTTPS terminating req/s", "https-c50", "median", "nginx-https", False, 0.8),
    ]
    return out


@dataclass(frozen=True, slots=True)
class Verdict:
    target: str
    meshgate: str
    peer: str | None
    measured: float | None
    goal: str
    met: bool | None  # None: not measured


def _metric(row: Row | None, metric: str) -> float | None:
    if row is None:
        return None
    if metric in ("median", "p99"):
        value: float | None = getattr(row, metric)
        return value
    return row.extra.get(metric)


def judge(rows: list[Row], hold: Sequence[int]) -> list[Verdict]:
    by = {(r.workload, r.contender): r for r in rows}
    out = []
    for g in goals(hold):
        meshgates = [
            r.contender
            for r in rows
            if r.workload == g.workload and r.contender.startswith("meshgate")
        ]
        for mg in meshgates:
            mine = _metric(by.get((g.workload, mg)), g.metric)
            measured = (
                mine
                if g.peer is None
                else ratio(mine, _metric(by.get((g.workload, g.peer)), g.metric))
            )
            met = (
                None
                if measured is None
                else (measured <= g.limit if g.at_most else measured >= g.limit)
            )
            goal = f"{'<=' if g.at_most else '>='} {g.limit:g}{g.unit}" + (
                f" {g.peer}" if g.peer else ""
            )
            out.append(Verdict(g.label, mg, g.peer, measured, goal, met))
    return out


# -- tables ------------------------------------------------------------------
def render(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    """A table: aligned text, or Markdown. The first two columns are names."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |"]
        lines.append(
            "|" + "|".join(" --- " if i < 2 else " ---: " for i in range(len(headers))) + "|"
        )
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def _span(row: Row, digits: int) -> str:
    if row.low is None or row.high is None:
        return "-"
    return f"{num(row.low, digits)} .. {num(row.high, digits)}"


Table = tuple[str, list[str], list[list[str]]]  # title, headers, rows


def rate_table(group: str, rows: list[Row], kinds: dict[str, Workload]) -> Table:
    headers = ["workload", "contender", "median", "unit", "min .. max", "/direct"]
    headers += ["mg/this", "p99 ms", "mg p99/this", "backend conns"]
    body = []
    for r in rows:
        w = kinds[r.workload]
        digits = 2 if w.kind == "iperf3" else 0
        body.append([
            r.workload, r.contender, num(r.median, digits), w.unit, _span(r, digits),
            num(r.vs_direct), num(r.mg_vs), num(r.p99), num(r.mg_p99_vs),
            num(r.extra.get("backend_conns"), 0),
        ])  # fmt: skip
    title = f"{group}: rates (mg = {PRIMARY[group]}; mg/this > 1: meshgate faster)"
    return title, headers, body


def latency_table(group: str, rows: list[Row]) -> Table:
    headers = ["workload", "contender", "p50 us", "p99 us", "p50 min .. max", "added p50"]
    headers += ["added p99", "p50/direct", "mg added p50/this", "mg added p99/this"]
    body = [[
        r.workload, r.contender, num(r.median, 1), num(r.p99, 1), _span(r, 1),
        num(r.extra.get("added_p50"), 1), num(r.extra.get("added_p99"), 1),
        num(r.vs_direct), num(r.mg_vs), num(r.mg_p99_vs),
    ] for r in rows]  # fmt: skip
    title = f"{group}: round trip (added: minus direct's; mg/this < 1: meshgate adds less)"
    return title, headers, body


def memory_table(group: str, rows: list[Row], hold: Sequence[int]) -> Table:
    headers = ["workload", "contender", "idle MiB"]
    for n in hold:
        headers += [f"{n:,} held MiB", f"KiB/conn at {n:,}", f"s to connect {n:,}"]
    body = []
    for r in rows:
        cells = [r.workload, r.contender, num(r.median, 1)]
        for n in hold:
            keys = (f"pss_mib_{n}", f"kib_per_conn_{n}", f"seconds_{n}")
            cells += [num(r.extra.get(key), 1) for key in keys]
        body.append(cells)
    return f"{group}: memory (PSS summed over the contender's processes)", headers, body


def tables(
    rows: list[Row], workloads: Sequence[Workload], hold: Sequence[int], markdown: bool
) -> list[tuple[str, str]]:
    """(title, table) per group and kind of workload."""
    kinds = {w.name: w for w in workloads}
    out: list[Table] = []
    for group in GROUPS:
        mine = [r for r in rows if r.group == group]
        rates = [r for r in mine if kinds[r.workload].kind in ("iperf3", "wrk")]
        ping = [r for r in mine if kinds[r.workload].kind == "pingpong"]
        memory = [r for r in mine if kinds[r.workload].kind == "memory"]
        out += [rate_table(group, rates, kinds)] if rates else []
        out += [latency_table(group, ping)] if ping else []
        out += [memory_table(group, memory, hold)] if memory else []
    return [(title, render(headers, body, markdown)) for title, headers, body in out]


def targets_table(verdicts: list[Verdict], markdown: bool) -> str:
    body = []
    for v in verdicts:
        unit = "x" if v.peer else ""
        measured = "-" if v.measured is None else f"{v.measured:.2f}{unit}"
        met = "-" if v.met is None else ("met" if v.met else "NOT met")
        body.append([v.target, v.meshgate, measured, v.goal, met])
    return render(["target", "meshgate", "measured", "goal", "met?"], body, markdown)


def results_markdown(
    report: dict[str, Any], *, rows: list[Row], verdicts: list[Verdict], plan: Plan,
    workloads: Sequence[Workload], contenders: Sequence[Contender], problems: list[str],
) -> str:  # fmt: skip
    m = report["machine"]
    tools = ", ".join(f"{name} `{version}`" for name, version in report["tools"].items())
    lines = [
        "# Benchmark results",
        "",
        f"Written by {report['command']} on {report['date']}, meshgate commit "
        f"`{report['revision']}`, in {report['minutes']:.1f} minutes: {plan.repeats} "
        f"interleaved repeat(s) of {plan.duration} s per contender and workload. See "
        "[README.md](README.md) for what each contender and workload is and how to read "
        "the tables.",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu']}), Linux {m['kernel']}, Python {m['python']};"
        " load generator, backend and proxy share the cores, on loopback. Load average "
        f"{report['load_before']} before the run, {m['load'][0]:.2f} after it (other work "
        f"on the machine). Tools: {tools}.",
        "",
        "**Only ratios within this one run compare.** Absolute numbers on this kind of "
        "shared machine move by 2x from hour to hour; look at min .. max before trusting "
        "a ratio near 1.",
        "",
        "## Targets",
        "",
        targets_table(verdicts, markdown=True),
        "",
    ]
    for title, table in tables(rows, workloads, plan.hold, markdown=True):
        lines += [f"## {title}", "", table, ""]
    lines += ["## Contenders", ""]
    lines += [f"- `{c.group}` **{c.name}**: {c.about}" for c in contenders]
    lines += ["", f"## Warnings ({len(problems)})", ""]
    lines += [f"- {p.splitlines()[0]}" for p in problems] or ["none"]
    return "\n".join(lines) + "\n"


# -- command line ------------------------------------------------------------
def _names(text: str, known: Sequence[str], aliases: dict[str, tuple[str, ...]]) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    expanded = [x for n in names for x in aliases.get(n, (n,))]
    unknown = sorted(set(expanded) - set(known))
    if unknown or not expanded:
        raise argparse.ArgumentTypeError(
            f"unknown {', '.join(unknown) or 'nothing'}; choose from {', '.join(known)}"
        )
    return expanded


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="meshgate against no proxy, socat, HAProxy and nginx: L4, HTTP and TLS "
        "workloads on loopback, interleaved; prints ratios and a TARGETS table."
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender (3)")
    parser.add_argument("--duration", type=int, default=2, help="seconds per run (2)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1 repeat of 1 s (overrides both)"
    )
    workload_names = [w.name for w in WORKLOADS]
    groups = {g: tuple(w.name for w in WORKLOADS if w.group == g) for g in GROUPS}
    for alias, members in ALIASES.items():
        groups[alias] = tuple(n for g in members for n in groups[g])
    parser.add_argument(
        "--only",
        type=lambda text: _names(text, workload_names, groups),
        default=workload_names,
        help=f"comma-separated workloads or groups ({', '.join(groups)}): "
        f"{', '.join(workload_names)}",
    )
    contender_names = list(dict.fromkeys(c.name for c in with_worker_twins(2)))
    parser.add_argument(
        "--contenders",
        type=lambda text: _names(text, contender_names, {}),
        default=None,
        help=f"comma-separated subset of {', '.join(contender_names)} (default: all)",
    )
    parser.add_argument(
        "--hold",
        type=lambda text: sorted({int(n) for n in text.split(",")}),
        default=[1000, 5000],
        help="connection counts the memory workload holds (1000,5000)",
    )
    parser.add_argument(
        "--meshgate-workers",
        type=int,
        default=2,
        help="add meshgate-tcp-wN and meshgate-http-wN with `run --workers N` when "
        "meshgate has that option (default 2; 0 or 1: no such contenders)",
    )
    parser.add_argument(
        "--key", choices=["ec", "rsa"], default="ec", help="TLS key: P-256 (default) or RSA 2048"
    )
    parser.add_argument(
        "--write-results", type=Path, metavar="FILE", help="also write the tables as Markdown"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.duration = 1, 1
    if args.repeats < 1 or args.duration < 1 or min(args.hold) < 1:
        parser.error("--repeats, --duration and --hold must be at least 1")
    return args


def needed_tools(workloads: Sequence[Workload], contenders: Sequence[Contender]) -> list[str]:
    kinds = {w.kind for w in workloads}
    targets = {w.target for w in workloads}
    tools = [t for c in contenders for t in c.tools]
    tools += ["wrk"] if "wrk" in kinds else []
    tools += ["iperf3"] if "iperf3" in kinds else []
    tools += ["socat"] if "echo" in targets else []
    tools += ["nginx"] if targets & {"http", "https"} else []
    tools += ["openssl"] if "https" in targets else []
    return list(dict.fromkeys(tools))


def collect(
    tools: dict[str, str],
    workloads: Sequence[Workload],
    contenders: Sequence[Contender],
    plan: Plan,
    *,
    tmp: Path,
    key_type: str,
) -> Outcome:
    outcome = Outcome()
    procs = Processes(tmp)
    try:
        targets = {w.target for w in workloads}
        pki = None
        if "https" in targets:
            pki_dir = tmp / "pki"
            pki_dir.mkdir()
            pki = make_pki(tools["openssl"], pki_dir, key_type, TLS_NAME)
        backends, servers = start_backends(procs, tools, tmp, targets, pki)
        if (conf := tmp / "backend" / "nginx.conf").exists():
            outcome.configs["backend/nginx"] = conf.read_text()
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        ctx = Ctx(tools, tmp, backends, pki, soft)
        bench = Bench(procs, ctx, servers, plan)
        for group in GROUPS:
            mine = [w for w in workloads if w.group == group]
            field_ = [c for c in contenders if c.group == group]
            if mine and field_:
                print(f"\n{group}: {', '.join(c.name for c in field_)}", flush=True)
                for w in mine:
                    print(f"  {w.name}: {w.about}", flush=True)
                run_group(bench, mine, field_, outcome)
        for server in servers.values():
            if lines := log_problems(server):
                outcome.logs.setdefault(server.name, []).extend(lines)
    finally:
        procs.stop_all()
    for group in GROUPS:
        seen = {k: v for k, v in outcome.tls.items() if k.startswith(f"{group}/")}
        if len(set(seen.values())) > 1:
            outcome.problems.append(f"{group}: contenders negotiated different TLS: {seen}")
    outcome.problems += [
        f"{s.workload}/{s.contender} repeat {s.repeat + 1}: {p}"
        for s in outcome.samples
        for p in s.problems
    ]
    return outcome


def preflight(workloads: Sequence[Workload], contenders: Sequence[Contender]) -> dict[str, str]:
    """The tools this run needs; MissingTool when something is not there."""
    tools = find_tools(needed_tools(workloads, contenders))
    if not Path("/proc/net/tcp").exists():
        raise MissingTool("needs Linux (/proc/net/tcp, /proc/PID/smaps_rollup)")
    streams = any(c.base.startswith("nginx-stream") for c in contenders)
    if streams and not nginx_has_stream(tools["nginx"]):
        raise MissingTool(
            "nginx has no stream module (Debian: apt-get install libnginx-mod-stream; "
            "`make bench` does)"
        )
    return tools


def log_summary(logs: dict[str, list[str]]) -> list[str]:
    out = []
    for name, lines in logs.items():
        unique = list(dict.fromkeys(lines))
        shown = "\n".join(f"    {line}" for line in unique[:5])
        out.append(f"{name} logged {len(lines)} line(s), {len(unique)} distinct:\n{shown}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0: done, no warnings; 1: done, with warnings; 2: could not run; 130: interrupted."""
    args = parse_args(argv)
    started = time.time()
    workloads = [w for w in WORKLOADS if w.name in args.only]
    groups = {w.group for w in workloads}
    try:
        meshgate: str | None = find_tools(["meshgate"])["meshgate"]
    except MissingTool:
        meshgate = None  # reported below if a meshgate contender is chosen
    workers = args.meshgate_workers if meshgate and meshgate_has_workers(meshgate) else 0
    contenders = [
        c
        for c in with_worker_twins(workers)
        if c.group in groups and (args.contenders is None or c.name in args.contenders)
    ]
    try:
        tools = preflight(workloads, contenders)
    except MissingTool as exc:
        print(f"suite.py: cannot run: {exc}", file=sys.stderr)
        return 2
    limit = raise_nofile()
    load = os.getloadavg()
    if load[0] > 0.5:
        print(
            f"note: load average {load[0]:.2f} before starting: other work on this machine "
            "shares the cores, so every number is noisier (ratios still compare)",
            flush=True,
        )
    plan = Plan(args.repeats, args.duration, tuple(args.hold))
    print(
        f"meshgate {meshgate_revision()}: {len(workloads)} workloads, {len(contenders)} "
        f"contenders, {plan.repeats} repeat(s) of {plan.duration} s; descriptor limit {limit}"
        + ("" if workers else "; meshgate has no `run --workers`: no -wN contenders"),
        flush=True,
    )
    outcome = in_tmpdir(
        "suite.py",
        lambda tmp: collect(tools, workloads, contenders, plan, tmp=tmp, key_type=args.key),
    )
    if isinstance(outcome, int):
        return outcome

    rows = [r for w in workloads for r in summarize(w, contenders, outcome.samples)]
    verdicts = judge(rows, plan.hold)
    print(f"\nmedians of {plan.repeats} interleaved repeat(s); ratios are ratios of medians")
    for title, table in tables(rows, workloads, plan.hold, markdown=False):
        print(f"\n{title}\n{table}")
    print(f"\nTARGETS (meshgate against its peers, this run)\n{targets_table(verdicts, False)}")
    elapsed = time.time() - started
    versions = tool_versions(tools)
    status = finish_report(
        "suite",
        started,
        args=args,
        tools=versions,
        problems=outcome.problems,
        logs=log_summary(outcome.logs),
        fields={
            "workloads": [asdict(w) for w in workloads],
            "contenders": [asdict(c) for c in contenders],
            "load_before": [round(x, 2) for x in load],
            "configs": outcome.configs,
            "tls": outcome.tls,
            "rows": [asdict(r) for r in rows],
            "targets": [asdict(v) for v in verdicts],
            "samples": [asdict(s) for s in outcome.samples],
            # Up to 200 distinct lines each, for the tracebacks "server logs" cuts short.
            "server_log_lines": {
                name: list(dict.fromkeys(lines))[:200] for name, lines in outcome.logs.items()
            },
        },
    )
    if args.write_results:
        report = {
            "machine": machine(),
            "tools": versions,
            "revision": meshgate_revision(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
            "minutes": elapsed / 60,
            "command": "`" + " ".join(["bench/suite.py", *(argv or sys.argv[1:])]) + "`",
            "load_before": f"{load[0]:.2f}",
        }
        args.write_results.write_text(
            results_markdown(
                report,
                rows=rows,
                verdicts=verdicts,
                plan=plan,
                workloads=workloads,
                contenders=contenders,
                problems=outcome.problems,
            )
        )
        print(f"wrote {args.write_results}")
    print(f"elapsed: {elapsed / 60:.1f} min")
    return status


def nginx_has_stream(nginx: str) -> bool:
    if nginx_stream_module() is not None:
        return True
    done = subprocess.run([nginx, "-V"], check=False, capture_output=True, text=True, timeout=10)
    return "--with-stream " in done.stderr + " "


if __name__ == "__main__":
    sys.exit(main())
