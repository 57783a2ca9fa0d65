"""Reload (SIGHUP) and drain (SIGTERM) of a running `meshgate run`."""

from __future__ import annotations

import resource
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.integration.harness import Meshgate, free_port, port_open, running, wait_for


def _config(path: Path, listeners: dict[str, int]) -> None:
    lines = ["listeners:"]
    for name, port in listeners.items():
        lines.append(f"  - {{name: {name}, address: 127.0.0.1, port: {port}, backend: echo}}")
    lines += ["backends:", "  - {name: echo, builtin: echo}"]
    path.write_text("\n".join(lines) + "\n")


def _echo(s: socket.socket, payload: bytes) -> bytes:
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_sighup_removing_listener_keeps_established_connection(tmp_path: Path) -> None:
    keep, drop = free_port(), free_port()
    config = tmp_path / "mg.yaml"
    _config(config, {"keep": keep, "drop": drop})
    with running(["-c", str(config)], tmp_path) as mg:
        old = socket.create_connection(("127.0.0.1", drop), timeout=5)
        assert _echo(old, b"before") == b"before"

        _config(config, {"keep": keep})
        mg.signal(signal.SIGHUP)
        wait_for(lambda: mg.json("/config")["version"] == 2, "table version 2")

        # The removed listener no longer accepts; the kept one does.
        assert not port_open(drop)
        assert port_open(keep)
        # The connection accepted before the reload still works...
        assert _echo(old, b"after reload") == b"after reload"
        draining = [ls for ls in mg.json("/status")["listeners"] if ls["name"] == "drop"]
        assert draining[0]["state"] == "draining"
        old.close()
        # ...and once it closes, the old listener is gone.
        wait_for(
            lambda: all(ls["name"] != "drop" for ls in mg.json("/status")["listeners"]),
            "drained listener removed",
        )


def test_sighup_adds_listener_and_rejects_bad_file(tmp_path: Path) -> None:
    first, second = free_port(), free_port()
    config = tmp_path / "mg.yaml"
    _config(config, {"first": first})
    with running(["-c", str(config)], tmp_path) as mg:
        _config(config, {"first": first, "second": second})
        mg.signal(signal.SIGHUP)
        wait_for(lambda: port_open(second), "new listener")

        config.write_text("listeners:\n  - {name: x, port: 99999, backend: echo}\n")
        mg.signal(signal.SIGHUP)
        wait_for(lambda: mg.json("/status")["last_reload"]["result"] == "rejected", "rejection")
        status = mg.json("/status")
        assert "listeners[0].port" in status["last_reload"]["error"]
        assert status["version"] == 2
        assert port_open(first)
        assert port_open(second)
        assert mg.metric("meshgate_reloads_total", result="rejected") == 1
        # Still ready (version 2 serves), and /readyz says what was rejected.
        ready = mg.json("/readyz")
        assert ready["ready"] is True
        assert ready["last_reload"]["result"] == "rejected"
        assert "listeners[0].port" in ready["last_reload"]["error"]


def test_sigterm_drains_established_connections_then_exits_0(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "mg.yaml"
    _config(config, {"echo": port})
    mg = Meshgate(["-c", str(config), "--drain-timeout", "20"], tmp_path).wait_ready()
    try:
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert _echo(conn, b"hi") == b"hi"
        mg.signal(signal.SIGTERM)
        wait_for(lambda: not port_open(port), "listener stops accepting")
        # Established connection keeps working during the drain.
        assert _echo(conn, b"still here") == b"still here"
        assert mg.proc.poll() is None
        conn.close()
        assert mg.wait_exit() == 0
    finally:
        mg.stop()


def test_sigterm_drain_deadline_closes_the_rest(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "mg.yaml"
    _config(config, {"echo": port})
    mg = Meshgate(["-c", str(config), "--drain-timeout", "0.5"], tmp_path).wait_ready()
    try:
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert _echo(conn, b"hi") == b"hi"
        started = time.monotonic()
        mg.signal(signal.SIGTERM)
        assert mg.wait_exit() == 0
        assert conn.recv(10) == b""  # closed by meshgate at the deadline
        assert time.monotonic() - started < 10
        conn.close()
    finally:
        mg.stop()


def test_status_and_metrics_show_what_a_leak_would_show(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "mg.yaml"
    _config(config, {"echo": port})
    with running(["-c", str(config)], tmp_path) as mg:
        before = mg.json("/status")["process"]
        assert before["pid"] == mg.proc.pid
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
        for s in held:
            assert _echo(s, b"x") == b"x"
        during = mg.json("/status")["process"]
        # Each held connection is a descriptor of meshgate's (builtin echo: one each).
        assert during["open_fds"] >= before["open_fds"] + 20
        assert mg.metric("meshgate_open_fds") >= before["open_fds"] + 20
        for s in held:
            s.close()
        wait_for(
            lambda: mg.json("/status")["process"]["open_fds"] <= before["open_fds"],
            "descriptors back to where they were",
        )
        assert mg.metric("meshgate_asyncio_tasks") == mg.json("/status")["process"]["tasks"]
        assert before["rss"] > 10 << 20


def test_descriptor_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    """A soft limit of 1,024 (the usual default) would cap meshgate at a few
    hundred proxied connections; it raises it to the hard limit at start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 1024:
        pytest.skip(f"the hard descriptor limit ({hard}) leaves nothing to raise")
    port = free_port()
    config = tmp_path / "mg.yaml"
    _config(config, {"echo": port})
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        mg = Meshgate(["-c", str(config)], tmp_path)  # inherits the low soft limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        mg.wait_ready()
        status = mg.json("/status")
        assert status["process"]["fd_limit"] == hard
        # The connection cap follows from it: two descriptors per proxied connection.
        assert status["overload"]["max_connections"] == (hard - 256) // 2
        assert mg.events("descriptor limit raised")[0]["to"] == hard
    finally:
        mg.stop()
