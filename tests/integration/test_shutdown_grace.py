"""SIGTERM with --shutdown-grace: /readyz fails first while traffic is still
served, then the drain runs; a second signal ends the grace early."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.harness import Meshgate, free_port, wait_for


def echo_once(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return s.recv(4096)


def test_not_ready_but_serving_during_the_grace(
    tmp_path: Path, socat_server: Callable[[str], int]
) -> None:
    echo = socat_server("PIPE")
    port = free_port()
    args = ["--ingress", f"tcp:{port}:127.0.0.1:{echo}", "--shutdown-grace", "3"]
    mg = Meshgate(args, tmp_path).wait_ready()
    try:
        signalled = time.monotonic()
        mg.signal(signal.SIGTERM)
        wait_for(lambda: mg.get("/readyz")[0] == 503, "/readyz failing", timeout=2)
        assert json.loads(mg.get("/readyz")[1])["reason"] == "shutting down"
        # New clients are still served while load balancers catch up.
        assert echo_once(port, b"during grace") == b"during grace"
        assert mg.wait_exit(15) == 0
        assert time.monotonic() - signalled >= 2.5  # the grace was kept
    finally:
        mg.stop()


def test_a_second_signal_ends_the_grace(tmp_path: Path, socat_server: Callable[[str], int]) -> None:
    echo = socat_server("PIPE")
    args = ["--ingress", f"tcp:{free_port()}:127.0.0.1:{echo}", "--shutdown-grace", "60"]
    mg = Meshgate(args, tmp_path).wait_ready()
    try:
        mg.signal(signal.SIGTERM)
        wait_for(lambda: mg.get("/readyz")[0] == 503, "/readyz failing", timeout=2)
        mg.signal(signal.SIGTERM)
        assert mg.wait_exit(10) == 0
    finally:
        mg.stop()
