"""TLS benchmark: handshake-to-first-byte latency through meshgate, on loopback.

One client, one connection at a time: open TCP, do a full TLS handshake (a
fresh session, never resumed) with SNI, send `GET / HTTP/1.1`, wait for the
first byte of the response. The time from the start of the connect to that
byte is one sample. Then the rest of the response is read to its end, untimed,
so the servers are idle before the next connection.

Contenders, all measured in one run:
  direct        client -> openssl s_server -www (the TLS origin)
  passthrough   client -> meshgate tls listener, SNI passthrough route -> the origin
  haproxy       client -> HAProxy mode tcp, req_ssl_sni routing -> the origin
  terminate     client -> meshgate terminating route -> nginx, plain HTTP
  direct-plain  client -> that nginx, terminating TLS itself on a second port

Interleaved per connection: round i makes one connection to each contender,
starting with contender i mod n, so drift of the machine touches all of them
alike. Only ratios within one run mean anything.

Boundaries: loopback only; every server runs in its own process group and is
stopped in a `finally` (see l4.py's `Processes`); each connection has a
timeout and the whole run a deadline; certificates, configs and logs live in
a temporary directory removed at the end. Results are printed as a table and
written to bench/results/tls-<time>.json. Standard library only.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import (
    BODY,
    LOOPBACK,
    MESHGATE_DRAIN,
    MissingTool,
    Pki,
    Processes,
    Server,
    find_tools,
    finish_report,
    free_port,
    in_tmpdir,
    left_open,
    log_problems,
    make_pki,
    nginx_http_head,
    nginx_main,
    num,
    ratio,
    tool_versions,
)

TOOLS = ("openssl", "nginx", "haproxy", "meshgate")
CONTENDERS = ("direct", "passthrough", "haproxy", "terminate", "direct-plain")
ABOUT = {
    "direct": "openssl s_server -www (the TLS origin)",
    "passthrough": "meshgate tls listener, passthrough route -> the origin",
    "haproxy": "HAProxy mode tcp, req_ssl_sni -> the origin",
    "terminate": "meshgate terminating route -> nginx plain HTTP",
    "direct-plain": "nginx terminating TLS itself (the terminate backend, TLS port)",
}
SNI = "bench.meshgate.test"
REQUEST = f"GET / HTTP/1.1\r\nHost: {SNI}\r\n\r\n".encode()
# Per connection: connect, handshake, first byte, and the untimed rest each.
CONNECTION_TIMEOUT = 5.0
# The rest of a response is read up to this many bytes (s_server -www sends a
# few KB listing its ciphers; nginx 100 bytes).
DRAIN_LIMIT = 1 << 20


# -- configs -----------------------------------------------------------------
def nginx_conf(tmp: Path, pki: Pki, plain: int, tls: int) -> Path:
    conf = tmp / "nginx.conf"
    conf.write_text(
        nginx_main(tmp, connections=1024)
        + "http {\n"
        + nginx_http_head(tmp)
        + f"""    # One response per connection, then close, as s_server -www does.
    keepalive_timeout 0;
    server {{
        listen {LOOPBACK}:{plain};
        location / {{ return 200 "{BODY}"; }}
    }}
    server {{
        listen {LOOPBACK}:{tls} ssl;
        server_name {SNI};
        ssl_certificate {pki.cert};
        ssl_certificate_key {pki.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ return 200 "{BODY}"; }}
    }}
}}
"""
    )
    return conf


def haproxy_conf(tmp: Path, port: int, origin: int) -> Path:
    conf = tmp / "haproxy.cfg"
    conf.write_text(
        f"""global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind {LOOPBACK}:{port}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    use_backend origin if {{ req_ssl_sni -i {SNI} }}
backend origin
    server s1 {LOOPBACK}:{origin}
"""
    )
    return conf


def meshgate_conf(tmp: Path, pki: Pki, passthrough: int, terminate: int, ports: Ports) -> Path:
    conf = tmp / "meshgate.yaml"
    conf.write_text(
        f"""listeners:
  - name: passthrough
    address: {LOOPBACK}
    port: {passthrough}
    protocol: tls
    routes:
      - {{sni: [{SNI}], backend: origin}}
  - name: terminate
    address: {LOOPBACK}
    port: {terminate}
    protocol: tls
    routes:
      - sni: [{SNI}]
        mode: terminate
        certificate: {{cert: {pki.cert}, key: {pki.key}}}
        backend: plain
backends:
  - {{name: origin, endpoints: ["{LOOPBACK}:{ports.origin}"]}}
  - {{name: plain, endpoints: ["{LOOPBACK}:{ports.plain}"]}}
"""
    )
    return conf


@dataclass(frozen=True, slots=True)
class Ports:
    origin: int  # s_server
    plain: int  # nginx, HTTP
    nginx_tls: int  # nginx, HTTPS
    passthrough: int
    terminate: int
    haproxy: int

    def of(self, contender: str) -> int:
        return {
            "direct": self.origin,
            "passthrough": self.passthrough,
            "haproxy": self.haproxy,
            "terminate": self.terminate,
            "direct-plain": self.nginx_tls,
        }[contender]


def start_all(
    procs: Processes, tools: dict[str, str], tmp: Path, pki: Pki
) -> tuple[Ports, dict[str, Server]]:
    ports = Ports(*(free_port() for _ in range(6)))
    servers: dict[str, Server] = {}
    s_server = [tools["openssl"], "s_server", "-quiet", "-www"]
    s_server += ["-accept", f"{LOOPBACK}:{ports.origin}", "-cert", str(pki.cert)]
    s_server += ["-key", str(pki.key)]
    servers["s_server"] = procs.start("s_server", s_server, [ports.origin])
    nginx = [tools["nginx"], "-p", str(tmp), "-e", "stderr"]
    nginx += ["-c", str(nginx_conf(tmp, pki, ports.plain, ports.nginx_tls))]
    servers["nginx"] = procs.start("nginx", nginx, [ports.plain, ports.nginx_tls])
    # Log level warning: at info meshgate logs every closed connection.
    conf = meshgate_conf(tmp, pki, ports.passthrough, ports.terminate, ports)
    meshgate = [tools["meshgate"], "run", "-c", str(conf), "--admin", "off"]
    meshgate += ["--log-level", "warning", "--drain-timeout", MESHGATE_DRAIN]
    servers["meshgate"] = procs.start("meshgate", meshgate, [ports.passthrough, ports.terminate])
    conf = haproxy_conf(tmp, ports.haproxy, ports.origin)
    servers["haproxy"] = procs.start(
        "haproxy", [tools["haproxy"], "-db", "-f", str(conf)], [ports.haproxy]
    )
    return ports, servers


# -- the client --------------------------------------------------------------
@dataclass(slots=True)
class Probe:
    """One connection: its latency, or why it has none."""

    seconds: float | None
    error: str | None = None
    version: str | None = None
    cipher: str | None = None
    resumed: bool = False
    status: str = ""  # the response's status line
    ending: str = ""  # how the rest of the response ended: close_notify, eof, reset, ...


def client_context(ca: Path) -> ssl.SSLContext:
    # The name and chain are verified, as a real client does. No session is
    # ever passed to wrap_socket, so every handshake is a full one.
    return ssl.create_default_context(cafile=str(ca))


def probe(ctx: ssl.SSLContext, port: int) -> Probe:
    start = time.perf_counter()
    try:
        with socket.create_connection((LOOPBACK, port), timeout=CONNECTION_TIMEOUT) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with ctx.wrap_socket(raw, server_hostname=SNI) as tls:
                tls.sendall(REQUEST)
                first = tls.recv(1)
                elapsed = time.perf_counter() - start
                if not first:
                    return Probe(None, "closed before the first response byte")
                result = Probe(elapsed, None, tls.version(), (tls.cipher() or ("?",))[0])
                result.resumed = bool(tls.session_reused)
                head, result.ending = _drain(tls, first)
                result.status = head.split(b"\r\n", 1)[0].decode(errors="replace")
                return result
    except (OSError, ssl.SSLError) as exc:
        return Probe(None, f"{type(exc).__name__}: {exc}")


def _drain(tls: ssl.SSLSocket, first: bytes) -> tuple[bytes, str]:
    """Read the response to its end (untimed); return its start and how it ended."""
    head, total = first, len(first)
    while total < DRAIN_LIMIT:
        try:
            chunk = tls.recv(65536)
        except ssl.SSLEOFError:
            return head, "eof without close_notify"
        except ConnectionResetError:
            return head, "reset"
        except TimeoutError:
            return head, "timeout"
        if not chunk:
            return head, "close_notify"
        if len(head) < 200:
            head += chunk
        total += len(chunk)
    return head, "too long"


# -- the run -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Plan:
    connections: int
    warmup: int
    deadline: float  # time.monotonic() after which no new round starts


@dataclass(slots=True)
class Outcome:
    probes: dict[str, list[Probe]] = field(default_factory=lambda: {c: [] for c in CONTENDERS})
    warmup_errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    rounds: int = 0


def smoke(ctx: ssl.SSLContext, ports: Ports) -> list[str]:
    """One request through each contender: a 200 from the right server."""
    problems = []
    for name in CONTENDERS:
        got = probe(ctx, ports.of(name))
        if got.error or " 200 " not in got.status + " ":
            problems.append(f"{name}: smoke request: {got.error or got.status!r}")
    return problems


def measure(ctx: ssl.SSLContext, ports: Ports, plan: Plan, outcome: Outcome) -> None:
    n = len(CONTENDERS)
    for _ in range(plan.warmup):
        for name in CONTENDERS:
            if (got := probe(ctx, ports.of(name))).error:
                outcome.warmup_errors.append(f"{name}: {got.error}")
    for i in range(plan.connections):
        if time.monotonic() > plan.deadline:
            outcome.problems.append(
                f"deadline reached after {i} of {plan.connections} rounds; numbers are partial"
            )
            break
        for name in CONTENDERS[i % n :] + CONTENDERS[: i % n]:
            outcome.probes[name].append(probe(ctx, ports.of(name)))
        outcome.rounds = i + 1
        if (i + 1) % 100 == 0:
            print(f"  {i + 1}/{plan.connections} rounds", flush=True)


def check_after(servers: dict[str, Server], idle: dict[str, int]) -> list[str]:
    """Every server still up, and meshgate and HAProxy back to their idle sockets."""
    problems = [text for s in servers.values() if (text := s.exited())]
    return problems + [
        f"{name} still holds {extra} more sockets than when idle "
        "after the client left (leaked connections?)"
        for name in ("meshgate", "haproxy")
        if (extra := left_open(servers[name].sockets, idle[name])) > 0
    ]


def server_logs(servers: dict[str, Server]) -> list[str]:
    out = []
    for server in servers.values():
        if lines := log_problems(server):
            shown = "\n".join(f"    {line}" for line in lines[:5])
            out.append(f"{server.name} logged {len(lines)} line(s):\n{shown}")
    return out


def check_probes(outcome: Outcome) -> None:
    """Failures, resumed sessions and unlike handshakes make numbers suspect."""
    handshakes: dict[str, set[tuple[str | None, str | None]]] = {}
    for name, probes in outcome.probes.items():
        failed = [p.error for p in probes if p.error]
        if failed:
            outcome.problems.append(f"{name}: {len(failed)} failed connection(s), e.g. {failed[0]}")
        if resumed := sum(p.resumed for p in probes):
            outcome.problems.append(f"{name}: {resumed} handshake(s) resumed a session")
        if bad := [p.status for p in probes if not p.error and " 200 " not in p.status + " "]:
            outcome.problems.append(f"{name}: {len(bad)} response(s) not 200, e.g. {bad[0]!r}")
        handshakes[name] = {(p.version, p.cipher) for p in probes if not p.error}
    if len({frozenset(h) for h in handshakes.values()}) > 1:
        outcome.problems.append(f"contenders negotiated different TLS: {handshakes}")


# -- reporting ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Summary:
    contender: str
    about: str
    n: int
    failed: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    vs_direct: float | None  # ratio of medians
    vs_direct_plain: float | None
    endings: dict[str, int]
    tls: list[str]


def summarize(outcome: Outcome) -> list[Summary]:
    cuts: dict[str, tuple[float, float, float] | None] = {}
    for name, probes in outcome.probes.items():
        ms = [p.seconds * 1000 for p in probes if p.seconds is not None]
        if len(ms) >= 2:
            q = statistics.quantiles(ms, n=100, method="inclusive")
            cuts[name] = (statistics.median(ms), q[89], q[98])
        else:
            cuts[name] = (ms[0], ms[0], ms[0]) if ms else None

    def p50(name: str) -> float | None:
        cut = cuts[name]
        return None if cut is None else cut[0]

    out = []
    for name, probes in outcome.probes.items():
        cut = cuts[name]
        endings: dict[str, int] = {}
        for p in probes:
            if not p.error:
                endings[p.ending] = endings.get(p.ending, 0) + 1
        out.append(
            Summary(
                name,
                ABOUT[name],
                len(probes),
                sum(1 for p in probes if p.error),
                None if cut is None else cut[0],
                None if cut is None else cut[1],
                None if cut is None else cut[2],
                ratio(p50(name), p50("direct")),
                ratio(p50(name), p50("direct-plain")),
                endings,
                sorted({f"{p.version} {p.cipher}" for p in probes if not p.error}),
            )
        )
    return out


def print_table(summaries: list[Summary], outcome: Outcome) -> None:
    print(
        f"\nconnect -> TLS handshake -> request -> first response byte, "
        f"{outcome.rounds} interleaved rounds; ratios are ratios of medians"
    )
    print(
        f"{'contender':<13} {'n':>5} {'fail':>4} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"
        f" {'/direct':>8} {'/direct-plain':>13}"
    )
    for s in summaries:
        print(
            f"{s.contender:<13} {s.n:>5} {s.failed:>4} {num(s.p50_ms):>8} {num(s.p90_ms):>8}"
            f" {num(s.p99_ms):>8} {num(s.vs_direct):>8} {num(s.vs_direct_plain):>13}"
        )
    # How the servers ended the connection after the response (untimed).
    for s in summaries:
        if set(s.endings) - {"close_notify"}:
            print(f"  {s.contender} ended connections: {s.endings}")
    tls = {s.contender: ", ".join(s.tls) for s in summaries}
    if len(set(tls.values())) == 1:
        print(f"every contender negotiated: {next(iter(tls.values()))}")
    else:
        for name, text in tls.items():
            print(f"  {name}: {text}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="TLS handshake-to-first-byte latency: direct, meshgate passthrough and "
        "terminate, HAProxy SNI passthrough, nginx; interleaved, on loopback."
    )
    parser.add_argument(
        "--connections", type=int, default=300, help="measured connections per contender (300)"
    )
    parser.add_argument(
        "--warmup", type=int, default=20, help="unmeasured connections per contender first (20)"
    )
    parser.add_argument(
        "--key", choices=["ec", "rsa"], default="ec", help="certificate key: P-256 or RSA 2048"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=300.0, help="stop measuring after this long (300)"
    )
    args = parser.parse_args(argv)
    if args.connections < 1 or args.warmup < 0 or args.max_seconds <= 0:
        parser.error("--connections must be at least 1, --warmup at least 0")
    return args


def collect(tools: dict[str, str], plan: Plan, key: str, tmp: Path) -> Outcome:
    outcome = Outcome()
    procs = Processes(tmp)
    try:
        pki = make_pki(tools["openssl"], tmp, key, SNI)
        ports, servers = start_all(procs, tools, tmp, pki)
        idle = {name: server.sockets() for name, server in servers.items()}
        ctx = client_context(pki.ca)
        for problem in smoke(ctx, ports):
            outcome.problems.append(problem)
            print(f"  WARNING {problem}", flush=True)
        print(
            f"{len(CONTENDERS)} contenders x {plan.connections} connections "
            f"(+{plan.warmup} warm-up each), interleaved",
            flush=True,
        )
        measure(ctx, ports, plan, outcome)
        outcome.problems += check_after(servers, idle)
        # Read before stopping, so shutdown messages do not count.
        outcome.logs = server_logs(servers)
    finally:
        procs.stop_all()
    check_probes(outcome)
    if outcome.warmup_errors:
        outcome.problems.append(
            f"{len(outcome.warmup_errors)} warm-up connection(s) failed, "
            f"e.g. {outcome.warmup_errors[0]}"
        )
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0: done, no errors; 1: done, but with warnings; 2: could not run."""
    args = parse_args(argv)
    try:
        tools = find_tools(TOOLS, make_target="bench-tls")
    except MissingTool as exc:
        print(f"tls.py: cannot run, {exc}", file=sys.stderr)
        return 2
    if not Path("/proc/net/tcp").exists():
        print("tls.py: cannot run: needs Linux (/proc/net/tcp)", file=sys.stderr)
        return 2
    started = time.time()
    plan = Plan(args.connections, args.warmup, time.monotonic() + args.max_seconds)
    outcome = in_tmpdir("tls.py", lambda tmp: collect(tools, plan, args.key, tmp))
    if isinstance(outcome, int):
        return outcome

    summaries = summarize(outcome)
    print_table(summaries, outcome)
    return finish_report(
        "tls",
        started,
        args=args,
        tools=tool_versions(tools),
        problems=outcome.problems,
        logs=outcome.logs,
        fields={
            "request": REQUEST.decode(),
            "rounds": outcome.rounds,
            "summaries": [asdict(s) for s in summaries],
            "samples_ms": {
                name: [None if p.seconds is None else round(p.seconds * 1000, 4) for p in probes]
                for name, probes in outcome.probes.items()
            },
            "errors": {
                name: [p.error for p in probes if p.error]
                for name, probes in outcome.probes.items()
            },
        },
    )


if __name__ == "__main__":
    sys.exit(main())
