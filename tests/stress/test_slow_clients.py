"""Slow clients: slowhttptest in its slowloris (-H), slow body (-B) and slow
read (-X) modes with 1,000 connections, and the `slowloris` tool (PyPI),
against an http listener whose header, body and send timeouts are 5 s.

While each runs, a probe makes one request a second on a new connection:
every one must succeed, p99 under 200 ms. The slow connections must be
closed by their deadline: none stays established on meshgate's side (`ss`
snapshots twice a second) longer than the deadline and a little slack, and
meshgate counts each close under its reason
(meshgate_http_rejected_total{reason="header_timeout"|"body_timeout"},
meshgate_connection_errors_total{reason="send_timeout"}). meshgate's
resident memory (VmRSS) stays under 256 MiB throughout.

The backend (tests/stress/servers.py http) reads whole request bodies and
writes large responses with backpressure, so what is tested is meshgate's
handling of the slow side, not the backend's.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import free_port, require
from tests.stress.conftest import Procs
from tests.stress.kit import (
    MIB,
    ConnectionAges,
    Figures,
    Gate,
    Probe,
    percentile,
    rss_kib,
    sampling,
    start_gate,
    start_server,
)

pytestmark = [pytest.mark.stress, pytest.mark.timeout(240)]

DEADLINE = 5.0  # header_timeout, body_timeout and send_timeout
CONNECTIONS = 1000
RATE = 200  # new slow connections a second
# slowhttptest's own limit (-l). -H and -B end before it, once meshgate has
# closed everything; -X reads too slowly to notice closes and runs it out.
TEST_LENGTH = 16
SLACK = 3.0  # seconds a slow connection may outlive its deadline (timer granularity, load)
RSS_LIMIT_MIB = 256
PROBE_P99_MS = 200.0
RESPONSE = 1 * MIB  # what the slow reader asks for: far more than socket buffers hold
PYPI_SOCKETS = 500
PYPI_SECONDS = 15


@dataclass(frozen=True)
class Attack:
    flag: str  # slowhttptest mode, "" for the PyPI slowloris
    path: str
    metric: str
    reason: str
    extra: tuple[str, ...] = ()
    # Deadlines a connection may pass in turn. Slow body: the head has
    # header_timeout from the connection, then the body has body_timeout from
    # the head (slowhttptest sends some heads seconds after connecting when it
    # opens hundreds of sockets a second; meshgate's log shows those 408s come
    # body_timeout after the head, as they should).
    phases: int = 1


# By test id: slowhttptest's slowloris, slow body and slow read modes, and
# the PyPI slowloris.
ATTACKS = {
    "slowhttptest-H": Attack(
        "-H", "/", "meshgate_http_rejected_total", "header_timeout", ("-i", "10")
    ),
    "slowhttptest-B": Attack(
        "-B",
        "/upload",
        "meshgate_http_rejected_total",
        "body_timeout",
        ("-t", "POST", "-s", "8192", "-i", "10", "-x", "10"),
        phases=2,
    ),
    "slowhttptest-X": Attack(
        "-X",
        f"/bytes/{RESPONSE}",
        "meshgate_connection_errors_total",
        "send_timeout",
        ("-w", "512", "-y", "1024", "-n", "10", "-z", "32", "-k", "2"),
    ),
    "slowloris-pypi": Attack("", "/", "meshgate_http_rejected_total", "header_timeout"),
}


def config(port: int, backend: int) -> dict[str, Any]:
    deadline = f"{DEADLINE:g}s"
    return {
        "listeners": [
            {
                "name": "web",
                "port": port,
                "protocol": "http",
                "http": {
                    "default_backend": "app",
                    "header_timeout": deadline,
                    "body_timeout": deadline,
                    "send_timeout": deadline,
                    "access_log": False,
                },
            }
        ],
        "backends": [{"name": "app", "endpoints": [f"127.0.0.1:{backend}"]}],
    }


def slowhttptest_timeline(csv_path: Path) -> list[dict[str, int]]:
    """slowhttptest's per-second CSV: seconds, closed, pending, connected."""
    with csv_path.open() as f:
        return [
            {
                "second": int(row["Seconds"]),
                "closed": int(row["Closed"]),
                "pending": int(row["Pending"]),
                "connected": int(row["Connected"]),
            }
            for row in csv.DictReader(f)
        ]


def run_slowhttptest(attack: Attack, port: int, tmp: Path) -> dict[str, Any]:
    tool = require("slowhttptest")
    prefix = tmp / "slowhttptest"
    argv = [
        tool,
        attack.flag,
        "-c",
        str(CONNECTIONS),
        "-r",
        str(RATE),
        "-l",
        str(TEST_LENGTH),
        "-p",
        "3",
        *attack.extra,
        "-u",
        f"http://127.0.0.1:{port}{attack.path}",
        "-g",
        "-o",
        str(prefix),
    ]
    started = time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=TEST_LENGTH + 60, check=False
    )
    seconds = time.monotonic() - started
    timeline = slowhttptest_timeline(prefix.with_suffix(".csv"))
    status = [line for line in _plain(done.stdout).splitlines() if "Exit status:" in line]
    return {
        "seconds": round(seconds, 1),
        # "No open connections left", or "Hit test time limit" when it read too
        # slowly to see the closes (-X)
        "exit_status": status[-1].split(":", 1)[1].strip() if status else done.returncode,
        "peak_connected": max((row["connected"] for row in timeline), default=0),
    }


def _plain(text: str) -> str:
    """slowhttptest's output without its terminal colour codes."""
    out = []
    skip = False
    for ch in text:
        if ch == "\x1b":
            skip = True
        elif skip and ch.isalpha():
            skip = False
        elif not skip:
            out.append(ch)
    return "".join(out)


def run_pypi_slowloris(port: int) -> dict[str, Any]:
    tool = Path(sys.executable).with_name("slowloris")
    if not tool.exists():
        pytest.skip("slowloris is not installed: pip install -e '.[stress]' (make stress does)")
    started = time.monotonic()
    done = subprocess.run(
        [
            require("timeout"),
            str(PYPI_SECONDS),
            str(tool),
            "127.0.0.1",
            "-p",
            str(port),
            "-s",
            str(PYPI_SOCKETS),
            "--sleeptime",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=PYPI_SECONDS + 30,
        check=False,
    )
    # `timeout` ends it: exit 124. Anything else means it stopped by itself.
    return {
        "seconds": round(time.monotonic() - started, 1),
        "exit": done.returncode,
        "output_tail": done.stderr.strip().splitlines()[-2:],
    }


@pytest.mark.parametrize("name", list(ATTACKS))
def test_slow_clients_are_cut_off_and_others_served(
    name: str, tmp_path: Path, procs: Procs, figures: Figures
) -> None:
    attack = ATTACKS[name]
    backend, backend_port = start_server("http")
    procs.add(backend)
    port = free_port()
    gate: Gate = procs.add(
        start_gate(tmp_path / "meshgate.yaml", config(port, backend_port), tmp_path)
    )
    pid = gate.proc.pid
    before = gate.metric(attack.metric, reason=attack.reason)
    figures.update(tool=name, deadline_seconds=DEADLINE)

    probe = procs.add(Probe("http", port, rate=1))
    ages = ConnectionAges(port)
    with sampling(lambda: rss_kib(pid), 0.5) as rss, sampling(ages.sample, 0.5):
        if attack.flag:
            figures.update(connections=CONNECTIONS, rate=RATE)
            run = run_slowhttptest(attack, port, tmp_path)
        else:
            figures.update(sockets=PYPI_SOCKETS)
            run = run_pypi_slowloris(port)
        time.sleep(1)
        probed = probe.finish()
    closed = gate.metric(attack.metric, reason=attack.reason) - before
    peak_rss = max(rss.values, default=0) / 1024
    lifetimes = ages.lifetimes()
    longest = max(lifetimes, default=0.0)
    allowed = DEADLINE * attack.phases + SLACK
    figures.update(
        run=run,
        connections_seen=len(lifetimes),
        lifetime_seconds={
            "p50": round(percentile(lifetimes, 50), 2),
            "p90": round(percentile(lifetimes, 90), 2),
            "max": round(longest, 2),
        },
        over_deadline=sum(1 for t in lifetimes if t > allowed),
        open_at_end=ages.open_now,
        counted_as_closed_by_deadline=int(closed),
        probe=probed.summary(),
        rss_peak_mib=round(peak_rss, 1),
    )
    assert gate.proc.poll() is None, (
        f"meshgate exited {gate.proc.returncode}:\n{gate.log()[-3000:]}"
    )

    assert probed.ok == probed.count > 0, (
        f"probe requests failed while slow clients were connected: {probed.errors} "
        f"(first: {probed.first_failures[:3]})"
    )
    assert probed.p99_ms < PROBE_P99_MS, (
        f"probe p99 {probed.p99_ms:.0f} ms while slow clients were connected "
        f"(limit {PROBE_P99_MS:.0f} ms)"
    )
    assert peak_rss < RSS_LIMIT_MIB, f"meshgate RSS reached {peak_rss:.0f} MiB"
    assert longest <= allowed, (
        f"slow connections were not closed by their {DEADLINE:g} s {attack.reason}: the "
        f"longest stayed open {longest:.1f} s (allowed {allowed:g} s)"
    )
    assert ages.open_now == 0, f"{ages.open_now} slow connections were still open at the end"
    expected = CONNECTIONS if attack.flag else PYPI_SOCKETS
    assert closed >= expected * 0.95, (
        f"meshgate counted {closed:.0f} connections closed for {attack.reason} "
        f"({attack.metric}), expected about {expected}"
    )
    assert not gate.tracebacks(), gate.tracebacks()[:3]
