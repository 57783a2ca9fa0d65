"""SIGTERM under load, `--drain-timeout 10`: 100 requests in flight to a
backend that answers after 2 s, and 1,000 idle tunnels (open TCP relay
connections through a tcp listener to an echo server).

Every in-flight request completes with 200, and meshgate exits 0 within
10.5 s of the signal: the idle tunnels do not hold the exit past the drain
deadline.
"""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import free_port, wait_for
from tests.stress.conftest import Procs
from tests.stress.kit import Figures, Gate, Holder, start_gate, start_server

pytestmark = [pytest.mark.stress, pytest.mark.timeout(180)]

DRAIN = 10
EXIT_WITHIN = 10.5
IN_FLIGHT = 100
TUNNELS = 1000
BACKEND_DELAY = 2.0


def config(ports: dict[str, int]) -> dict[str, Any]:
    return {
        "listeners": [
            {
                "name": "web",
                "port": ports["web"],
                "protocol": "http",
                "http": {"default_backend": "slow", "access_log": False},
            },
            {"name": "tunnels", "port": ports["tunnels"], "protocol": "tcp", "backend": "echo"},
        ],
        "backends": [
            {"name": "slow", "endpoints": [f"127.0.0.1:{ports['http']}"]},
            {"name": "echo", "endpoints": [f"127.0.0.1:{ports['echo']}"]},
        ],
    }


def slow_request(port: int) -> tuple[int, float]:
    """GET /sleep/2 on a new connection: (status or -1, seconds)."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/sleep/{BACKEND_DELAY:g}")
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    except (OSError, http.client.HTTPException):
        return -1, time.monotonic() - started
    finally:
        conn.close()


def in_flight(gate: Gate) -> int:
    return sum(
        ep.get("in_flight", 0)
        for backend in gate.json("/status").get("backends", [])
        if backend.get("name") == "slow"
        for ep in backend.get("endpoints", [])
    )


def test_sigterm_with_requests_in_flight_and_idle_tunnels(
    tmp_path: Path, procs: Procs, figures: Figures
) -> None:
    backend, http_port = start_server("http")
    procs.add(backend)
    echo, echo_port = start_server("echo")
    procs.add(echo)
    ports = {"web": free_port(), "tunnels": free_port(), "http": http_port, "echo": echo_port}
    gate: Gate = procs.add(
        start_gate(
            tmp_path / "meshgate.yaml", config(ports), tmp_path, "--drain-timeout", str(DRAIN)
        )
    )
    tunnels = procs.add(Holder("tcp", ports["tunnels"], TUNNELS))
    ready = tunnels.answer()
    assert ready["open"] == TUNNELS, f"tunnels could not be opened: {ready}"

    pool = ThreadPoolExecutor(max_workers=IN_FLIGHT)
    try:
        requests: list[Future[tuple[int, float]]] = [
            pool.submit(slow_request, ports["web"]) for _ in range(IN_FLIGHT)
        ]
        # SIGTERM once every request is being answered by the backend.
        wait_for(lambda: in_flight(gate) >= IN_FLIGHT, f"{IN_FLIGHT} requests in flight")
        signalled = time.monotonic()
        gate.signal(signal.SIGTERM)
        try:
            code: int | None = gate.wait_exit(timeout=EXIT_WITHIN + 20)
        except subprocess.TimeoutExpired:
            code = None
        exited = time.monotonic() - signalled
        results = [f.result(timeout=30) for f in requests]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    after = tunnels.command("poll")
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    figures.update(
        drain_timeout=DRAIN,
        in_flight=IN_FLIGHT,
        idle_tunnels=ready["open"],
        exit_code=code,
        exit_seconds=round(exited, 2),
        request_statuses=statuses,
        slowest_request_seconds=round(max(t for _, t in results), 2),
        tunnels_after_exit={k: after[k] for k in ("open", "fin", "reset")},
    )
    assert code is not None, f"meshgate had not exited {EXIT_WITHIN + 20:g} s after SIGTERM"
    assert code == 0, f"meshgate exited {code} after SIGTERM:\n{gate.log()[-2000:]}"
    assert statuses == {"200": IN_FLIGHT}, f"in-flight requests did not all complete: {statuses}"
    assert exited <= EXIT_WITHIN, (
        f"meshgate took {exited:.2f} s to exit after SIGTERM with --drain-timeout {DRAIN} "
        f"(limit {EXIT_WITHIN} s)"
    )
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", ports["web"])) != 0, "the listener is still open"
