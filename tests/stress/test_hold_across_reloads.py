"""Reload never drops a connection, at scale: 5,000 proxied TCP connections
and 15,000 idle HTTP keep-alive connections held across 20 config changes.

The TCP connections go through a `tcp` listener to a real echo server (its
own process) and echo a ping after every change; the HTTP connections each
made one request first and then sit idle (keep-alive timeout far above the
test's length, so meshgate has no reason to close them at all); after every
change the test looks at them without sending, and at the end sends one more
request on each. The changes cycle through: a route and a listener added,
both removed, the endpoints of another route's backend changed, and the
certificate of a tls (terminating route) and an https listener rotated in
place (checked by a new handshake). Outcome: no reset, no FIN, no failed ping.

Descriptors: meshgate needs two per proxied TCP connection and one per idle
HTTP connection, 25,000 here, above the 20,000 one process may have. With
`--workers N` (SO_REUSEPORT; SIGHUP to the supervisor is forwarded to every
worker) the kernel spreads them: 3 workers, not 2, because the default
global connection cap (limits.max_connections: (descriptor limit -
fd_reserve) / 2 = 9,872 per process) would stop a worker near 10,000 client
connections, which 2 workers would reach; 3 keep each near 6,700 client
connections and 8,300 descriptors. The clients are spread over several
processes the same way (5,000 sockets each).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import free_port
from tests.stress.conftest import Procs
from tests.stress.kit import (
    CertFiles,
    Figures,
    Gate,
    Holder,
    Pki,
    echo_once,
    peer_certificate,
    start_gate,
    start_server,
    terminating_listener,
)

pytestmark = [pytest.mark.stress, pytest.mark.timeout(900)]

WORKERS = 3
TCP_CONNECTIONS = 5_000
HTTP_CONNECTIONS = 15_000
PER_PROCESS = 5_000  # client sockets per holder process
CHANGES = 20


def config(ports: dict[str, int], cert: CertFiles, change: int) -> dict[str, Any]:
    """The config after `change` changes (0: the one meshgate starts with).
    Changes 1, 2, 3, 4 (then again): a route and a listener added; both
    removed; another backend's endpoints changed; the certificate rotated
    (same files, done by the caller)."""
    kind = change % 4
    certificate = {"cert": str(cert.cert), "key": str(cert.key)}
    routes: list[dict[str, Any]] = [{"path": "/spare", "backend": "spare"}]
    listeners: list[dict[str, Any]] = [
        {"name": "relay", "port": ports["relay"], "protocol": "tcp", "backend": "echo"},
        {
            "name": "web",
            "port": ports["web"],
            "protocol": "http",
            "http": {
                "routes": routes,
                "default_backend": "hello",
                "keepalive_timeout": "2h",  # far above the test's length
                "access_log": False,
            },
        },
        terminating_listener("edge", ports["edge"], cert.cert, cert.key, "echo"),
        {
            "name": "secure",
            "port": ports["secure"],
            "protocol": "https",
            "tls": {"default_certificate": certificate},
            "http": {"default_backend": "hello", "access_log": False},
        },
    ]
    if kind == 1:  # added by this change; the next one removes them again
        routes.append({"path": f"/added-{change}", "backend": "hello"})
        listeners.append(
            {"name": "added", "port": ports["added"], "protocol": "tcp", "backend": "echo"}
        )
    # The endpoints of another route's backend: one set, then another, at
    # every change of kind 3.
    spare = [f"127.0.0.1:{ports['spare1']}"]
    if ((change + 1) // 4) % 2:
        spare.append(f"127.0.0.1:{ports['spare2']}")
    return {
        "listeners": listeners,
        "backends": [
            {"name": "echo", "endpoints": [f"127.0.0.1:{ports['echo']}"]},
            {"name": "hello", "builtin": "hello"},
            {"name": "spare", "endpoints": spare},
        ],
    }


def test_connections_survive_20_config_changes(
    tmp_path: Path, procs: Procs, figures: Figures
) -> None:
    echo, echo_port = start_server("echo")
    procs.add(echo)
    ports = {name: free_port() for name in ("relay", "web", "edge", "secure", "added")}
    ports.update(echo=echo_port, spare1=free_port(), spare2=free_port())
    pki = Pki(tmp_path / "pki")
    cert = pki.issue()
    gate: Gate = procs.add(
        start_gate(
            tmp_path / "meshgate.yaml",
            config(ports, cert, 0),
            tmp_path,
            "--workers",
            str(WORKERS),
        )
    )
    figures.update(workers=WORKERS, changes_planned=CHANGES)

    started = time.monotonic()
    tcp = [
        procs.add(Holder("tcp", ports["relay"], PER_PROCESS))
        for _ in range(TCP_CONNECTIONS // PER_PROCESS)
    ]
    http = [
        procs.add(Holder("http", ports["web"], PER_PROCESS))
        for _ in range(HTTP_CONNECTIONS // PER_PROCESS)
    ]
    ready = [h.answer(timeout=240) for h in [*tcp, *http]]
    tcp_open = sum(r["open"] for r in ready[: len(tcp)])
    http_open = sum(r["open"] for r in ready[len(tcp) :])
    setup_failures = [r["failed"] for r in ready if r["failed"]]
    figures.update(
        tcp_connections_held=tcp_open,
        http_connections_held=http_open,
        open_seconds=round(time.monotonic() - started, 1),
        meshgate_rss_mib=round(gate.rss_kib() / 1024, 1),
        meshgate_fds=gate.fds(),
    )
    assert not setup_failures, f"connections could not be set up: {setup_failures}"
    assert (tcp_open, http_open) == (TCP_CONNECTIONS, HTTP_CONNECTIONS)

    reload_seconds: list[float] = []
    ping_seconds: list[float] = []
    ping_failures: list[dict[str, Any]] = []
    http_closed: list[dict[str, Any]] = []
    rotations = 0
    for change in range(1, CHANGES + 1):
        if change % 4 == 0:  # rotate in place: same files, new certificate
            cert = pki.issue(cert.cert, cert.key)
            rotations += 1
        reload_seconds.append(round(gate.reload(config(ports, cert, change)), 3))
        if change % 4 == 1:
            assert echo_once(ports["added"]) == b"ping\n", "the listener added by a reload"
        if change % 4 == 0:
            for name in ("edge", "secure"):
                assert peer_certificate(ports[name]) == cert.der, (
                    f"change {change}: the {name} listener still presents the old certificate"
                )
        for holder in tcp:
            answer = holder.command("ping")
            ping_seconds.append(answer["seconds"])
            if answer["round"] != {"ok": answer["open"]} or answer["reset"] or answer["fin"]:
                ping_failures.append({"change": change, **answer})
        for holder in http:
            answer = holder.command("poll")
            if answer["closed"]:
                http_closed.append({"change": change, **answer})
    figures.update(
        changes=CHANGES,
        certificate_rotations=rotations,
        reload_seconds_max=max(reload_seconds),
        reload_seconds_median=sorted(reload_seconds)[len(reload_seconds) // 2],
        ping_round_seconds_max=max(ping_seconds),
        tcp_ping_failures=ping_failures[:5],
        http_closed_while_idle=http_closed[:5],
    )

    # One more request on every idle HTTP connection: each is still served.
    final = [h.command("ping") for h in http]
    tcp_final = [h.command("poll") for h in tcp]
    figures.update(
        http_final_round=[f["round"] for f in final],
        tcp_resets=sum(a["reset"] for a in tcp_final),
        tcp_fins=sum(a["fin"] for a in tcp_final),
        http_resets=sum(a["reset"] for a in final),
        http_fins=sum(a["fin"] for a in final),
        meshgate_rss_mib_end=round(gate.rss_kib() / 1024, 1),
        duration_seconds=round(time.monotonic() - started, 1),
    )
    assert not ping_failures, (
        f"TCP connections failed an echo after a config change: {ping_failures[:3]}"
    )
    assert not http_closed, (
        "idle HTTP keep-alive connections were closed by meshgate during config changes "
        f"(keep-alive timeout is 2h): {http_closed[:3]}"
    )
    for answer in final:
        assert answer["round"] == {"ok": answer["open"]}, (
            f"a request on a held keep-alive connection failed after the changes: {answer}"
        )
    assert figures["tcp_resets"] == figures["http_resets"] == 0
    assert sum(a["open"] for a in tcp_final) == TCP_CONNECTIONS
    assert sum(a["open"] for a in final) == HTTP_CONNECTIONS
    assert not gate.tracebacks(), gate.tracebacks()[:3]
