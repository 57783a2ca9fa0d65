"""`meshgate run --workers N`: several processes serve every listener, and
the supervisor's admin server speaks for all of them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.integration.harness import Meshgate, free_port, wait_for


def echo_once(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def listening_sockets(port: int) -> int:
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return len(out.splitlines())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start(args: list[str], tmp: Path) -> Meshgate:
    return Meshgate([*args, "--workers", "2"], tmp).wait_ready()


def test_workers_share_each_listener_and_their_figures_add_up(
    tmp_path: Path, socat_server: Callable[[str], int]
) -> None:
    echo = socat_server("PIPE")
    port = free_port()
    mg = start(["--ingress", f"tcp:{port}:127.0.0.1:{echo}"], tmp_path)
    try:
        workers = mg.json("/status")["workers"]
        assert [w["index"] for w in workers] == [0, 1]
        assert len({w["pid"] for w in workers}) == 2
        assert all(w["running"] and w["ready"] for w in workers)
        assert listening_sockets(port) == 2  # one SO_REUSEPORT socket per worker
        for i in range(40):
            assert echo_once(port, b"ping %d" % i) == b"ping %d" % i
        wait_for(lambda: mg.metric("meshgate_connections_total") == 40, "40 connections counted")
        wait_for(lambda: mg.json("/status")["listeners"][0]["total"] == 40, "40 in /status")
        assert mg.metric("meshgate_workers") == 2
        assert mg.json("/readyz")["ready"] is True
    finally:
        mg.stop()
    assert mg.proc.returncode == 0


def test_a_worker_that_dies_is_restarted_and_service_goes_on(
    tmp_path: Path, socat_server: Callable[[str], int]
) -> None:
    echo = socat_server("PIPE")
    port = free_port()
    mg = start(["--ingress", f"tcp:{port}:127.0.0.1:{echo}"], tmp_path)
    try:
        victim = mg.json("/status")["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        # The other worker keeps serving while this one comes back (what sat
        # in the dead worker's accept queue was lost with it: SO_REUSEPORT
        # does not move queued connections).
        wait_for(lambda: listening_sockets(port) == 1, "the dead worker's socket closed")
        assert echo_once(port, b"still here") == b"still here"

        def restarted() -> bool:
            first = mg.json("/status")["workers"][0]
            return bool(first["restarts"] == 1 and first["pid"] != victim and first["ready"])

        wait_for(restarted, "worker 0 restarted", timeout=30)
        assert mg.metric("meshgate_worker_restarts", worker="0") == 1
        wait_for(lambda: listening_sockets(port) == 2, "both workers listening again")
        assert echo_once(port, b"again") == b"again"
    finally:
        mg.stop()


def test_sigterm_stops_every_worker_and_exits_zero(
    tmp_path: Path, socat_server: Callable[[str], int]
) -> None:
    echo = socat_server("PIPE")
    port = free_port()
    mg = start(["--ingress", f"tcp:{port}:127.0.0.1:{echo}", "--drain-timeout", "2"], tmp_path)
    try:
        pids = [w["pid"] for w in mg.json("/status")["workers"]]
        mg.signal(signal.SIGTERM)
        assert mg.wait_exit(15) == 0
        wait_for(lambda: not any(alive(pid) for pid in pids), "workers gone")
        assert listening_sockets(port) == 0
    finally:
        mg.stop()


def test_sighup_reloads_every_worker(tmp_path: Path, socat_server: Callable[[str], int]) -> None:
    echo = socat_server("PIPE")
    first, second = free_port(), free_port()
    config = tmp_path / "meshgate.yaml"
    listener = "  - {{name: l{0}, address: 127.0.0.1, port: {0}, protocol: tcp, backend: echo}}\n"
    backends = f"backends:\n  - {{name: echo, endpoints: ['127.0.0.1:{echo}']}}\n"
    config.write_text("listeners:\n" + listener.format(first) + backends)
    mg = start(["-c", str(config)], tmp_path)
    try:
        config.write_text(
            "listeners:\n" + listener.format(first) + listener.format(second) + backends
        )
        mg.signal(signal.SIGHUP)

        def both_serve_it() -> bool:
            keys = {item["key"]: item["state"] for item in mg.json("/status")["listeners"]}
            return keys.get(f"tcp://127.0.0.1:{second}") == "serving"

        wait_for(both_serve_it, "the new listener serving in every worker")
        wait_for(lambda: listening_sockets(second) == 2, "two sockets on the new port")
        assert echo_once(second, b"new") == b"new"
    finally:
        mg.stop()


def test_a_port_in_use_fails_the_start_of_the_group(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        mg = Meshgate(["--ingress", f"tcp:{port}:127.0.0.1:9", "--workers", "2"], tmp_path)
        try:
            assert mg.wait_exit(30) == 1
            assert "worker failed to start" in mg.log()
        finally:
            mg.stop()
