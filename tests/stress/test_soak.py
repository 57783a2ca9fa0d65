"""A soak: STRESS_SOAK_SECONDS (default 600) of mixed traffic with a reload
a minute, then nothing.

Traffic, all at once: wrk keep-alive HTTP through an http listener to nginx
(20 connections, about 400 requests a second), new HTTP connections (10 a
second), new TCP relay connections to an echo server (20 a second), TLS
handshakes on a terminating listener (5 a second), and 200 long-lived
tunnels pinged at every reload. Each reload changes a route and another
backend's endpoints.

Measured on meshgate's process: resident memory (VmRSS) after the warm-up
(the first fifth, at least 30 s) and at the end must differ by less than
10%; once the traffic has stopped, its open descriptors (/proc/PID/fd), its
asyncio tasks (/status `process.tasks`) and meshgate_connections_active
return to what they were before it started.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import free_port, wait_for
from tests.stress.conftest import Procs
from tests.stress.kit import (
    CertFiles,
    Figures,
    Gate,
    Holder,
    Pki,
    Probe,
    Wrk,
    changing_web,
    fd_count,
    rss_kib,
    sampling,
    start_gate,
    start_nginx,
    start_server,
    terminating_listener,
)

SOAK = int(os.environ.get("STRESS_SOAK_SECONDS", "600"))
pytestmark = [pytest.mark.stress, pytest.mark.timeout(SOAK + 300)]

RELOAD_EVERY = 60.0 if SOAK >= 240 else max(SOAK / 4, 5.0)
WARMUP = max(30.0, SOAK / 5)
SAMPLE_EVERY = 5.0
RSS_DRIFT = 0.10
TUNNELS = 200
WRK_CONNECTIONS = 20
WRK_DELAY_MS = 50  # per connection between requests: ~400 requests a second in all
SETTLE = 60.0  # seconds after the traffic for descriptors to come back


def config(ports: dict[str, int], cert: CertFiles, reload: int = 0) -> dict[str, Any]:
    web, backends = changing_web(ports, reload, {"path": f"/added-{reload}", "backend": "app"})
    return {
        "listeners": [
            web,
            {"name": "relay", "port": ports["relay"], "protocol": "tcp", "backend": "echo"},
            terminating_listener("edge", ports["edge"], cert.cert, cert.key, "echo"),
        ],
        "backends": [*backends, {"name": "echo", "endpoints": [f"127.0.0.1:{ports['echo']}"]}],
    }


def tasks(gate: Gate) -> int:
    """meshgate's asyncio tasks alive now (/status `process.tasks`)."""
    process = gate.json("/status").get("process")
    assert process is not None, "/status has no `process` section (tasks, open_fds, rss)"
    return int(process["tasks"])


def test_soak_with_mixed_traffic_and_a_reload_a_minute(
    tmp_path: Path, procs: Procs, figures: Figures
) -> None:
    nginx, nginx_port = start_nginx(tmp_path / "nginx")
    procs.add(nginx)
    echo, echo_port = start_server("echo")
    procs.add(echo)
    ports = {name: free_port() for name in ("web", "relay", "edge", "spare", "spare2")}
    ports.update(nginx=nginx_port, echo=echo_port)
    cert = Pki(tmp_path / "pki").issue()
    gate: Gate = procs.add(start_gate(tmp_path / "meshgate.yaml", config(ports, cert), tmp_path))
    pid = gate.proc.pid
    time.sleep(1)  # the admin connections of the readiness check closed
    baseline_fds = fd_count(pid)
    baseline_tasks = tasks(gate)
    figures.update(
        soak_seconds=SOAK,
        reload_every_seconds=RELOAD_EVERY,
        baseline_fds=baseline_fds,
        baseline_tasks=baseline_tasks,
    )

    started = time.monotonic()
    wrk = procs.add(
        Wrk(
            f"http://127.0.0.1:{ports['web']}/",
            tmp_path,
            connections=WRK_CONNECTIONS,
            seconds=SOAK,
            delay_ms=WRK_DELAY_MS,
        )
    )
    probes = {
        "http": procs.add(Probe("http", ports["web"], rate=10, seconds=SOAK)),
        "tcp": procs.add(Probe("tcp", ports["relay"], rate=20, seconds=SOAK)),
        "tls": procs.add(Probe("tls", ports["edge"], rate=5, seconds=SOAK)),
    }
    tunnels = procs.add(Holder("tcp", ports["relay"], TUNNELS))
    assert tunnels.answer()["open"] == TUNNELS

    def sample() -> tuple[float, int, int, int]:
        return time.monotonic() - started, rss_kib(pid), fd_count(pid), tasks(gate)

    reloads = 0
    tunnel_failures: list[dict[str, Any]] = []
    with sampling(sample, SAMPLE_EVERY) as samples:
        next_reload = started + RELOAD_EVERY
        while time.monotonic() - started < SOAK - 1:
            if time.monotonic() >= next_reload:
                reloads += 1
                gate.reload(config(ports, cert, reloads))
                answer = tunnels.command("ping")
                if answer["round"] != {"ok": TUNNELS}:
                    tunnel_failures.append({"reload": reloads, **answer})
                next_reload += RELOAD_EVERY
            time.sleep(0.5)
            assert gate.proc.poll() is None, f"meshgate exited {gate.proc.returncode}"
        load = wrk.wait()
        probed = {name: probe.finish(timeout=60) for name, probe in probes.items()}
    tunnels.stop()
    ended = time.monotonic() - started

    values: list[tuple[float, int, int, int]] = samples.values
    warm = [rss for t, rss, _, _ in values if WARMUP - 3 * SAMPLE_EVERY <= t <= WARMUP]
    end = [rss for t, rss, _, _ in values if t >= ended - 3 * SAMPLE_EVERY]
    rss_warm = statistics.median(warm) / 1024 if warm else float("nan")
    rss_end = statistics.median(end) / 1024 if end else float("nan")
    drift = (rss_end - rss_warm) / rss_warm
    figures.update(
        reloads=reloads,
        wrk=load.summary(),
        probes={name: result.summary() for name, result in probed.items()},
        tunnel_failures=tunnel_failures[:3],
        rss_mib_after_warmup=round(rss_warm, 1),
        rss_mib_at_end=round(rss_end, 1),
        rss_mib_peak=round(max(rss for _, rss, _, _ in values) / 1024, 1),
        rss_drift=round(drift, 4),
        fds_peak=max(fds for _, _, fds, _ in values),
        tasks_peak=max(n for _, _, _, n in values),
    )

    # Everything stopped: descriptors, tasks and connections back to the
    # baseline. (Descriptors are read before each admin request: that
    # request's own connection is not the traffic's.)
    after: dict[str, float] = {}

    def settled() -> bool:
        after["fds"] = fd_count(pid)
        after["tasks"] = tasks(gate)
        after["active"] = gate.metric("meshgate_connections_active")
        return (
            after["fds"] <= baseline_fds
            and after["tasks"] <= baseline_tasks
            and after["active"] == 0
        )

    settle_started = time.monotonic()
    with contextlib.suppress(AssertionError):  # the figures below say how far it got
        wait_for(settled, "descriptors and connections back to the baseline", timeout=SETTLE)
    figures.update(
        fds_after=after["fds"],
        tasks_after=after["tasks"],
        connections_active_after=after["active"],
        settle_seconds=round(time.monotonic() - settle_started, 1),
    )

    assert not any(load.socket_errors.values()), f"wrk socket errors: {load.summary()}"
    assert load.non_2xx == 0, f"wrk got error statuses: {load.summary()}"
    for name, result in probed.items():
        assert result.ok == result.count > 0, (
            f"{name} probe failures during the soak: {result.errors} "
            f"(first: {result.first_failures[:3]})"
        )
    assert not tunnel_failures, f"long-lived tunnels failed a ping: {tunnel_failures[:3]}"
    assert abs(drift) < RSS_DRIFT, (
        f"meshgate's memory moved {drift:+.1%} from {rss_warm:.1f} MiB after the warm-up to "
        f"{rss_end:.1f} MiB at the end of the soak (limit {RSS_DRIFT:.0%})"
    )
    assert figures["fds_after"] <= baseline_fds, (
        f"meshgate holds {figures['fds_after']} descriptors {SETTLE:g} s after the traffic "
        f"stopped, {baseline_fds} before it started"
    )
    assert figures["tasks_after"] <= baseline_tasks, (
        f"meshgate runs {figures['tasks_after']:.0f} asyncio tasks {SETTLE:g} s after the "
        f"traffic stopped, {baseline_tasks} before it started"
    )
    assert figures["connections_active_after"] == 0, "connections still counted as active"
    assert not gate.tracebacks(), gate.tracebacks()[:3]
