"""Passive ejection for HTTP backends: an endpoint that keeps answering
garbage is taken out of rotation, and /metrics and /status say so."""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import free_port, running
from tests.integration.http_backend import HttpBackend


class GarbageServer:
    """Accepts connections and answers every request with bytes that are not HTTP."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.recv(65536)
                conn.sendall(b"this is not a status line\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def garbage() -> Iterator[GarbageServer]:
    server = GarbageServer()
    yield server
    server.close()


def get(port: int) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_an_endpoint_answering_garbage_is_ejected(tmp_path: Path, garbage: GarbageServer) -> None:
    port = free_port()
    with HttpBackend("good", "127.0.0.2") as good:
        config = tmp_path / "meshgate.yaml"
        config.write_text(
            f"""
listeners:
  - name: web
    address: 127.0.0.1
    port: {port}
    protocol: http
    http:
      routes: [{{path: /, backend: app}}]
backends:
  - name: app
    endpoints: ["127.0.0.2:{good.port}", "127.0.0.1:{garbage.port}"]
"""
        )
        with running(["-c", str(config)], tmp_path) as mg:
            statuses = [get(port) for _ in range(12)]
            # Round robin: the bad endpoint answers every other request until
            # its third failure ejects it; then only the good one serves.
            assert statuses.count(502) == 3
            assert statuses[-6:] == [200] * 6
            assert garbage.accepted == 3
            bad = f"127.0.0.1:{garbage.port}"
            assert mg.metric("meshgate_endpoint_healthy", endpoint=bad) == 0
            assert mg.metric("meshgate_endpoint_healthy", endpoint=f"127.0.0.2:{good.port}") == 1
            assert mg.metric("meshgate_http_upstream_errors_total", backend="app") == 3
            [pool] = [b for b in mg.json("/status")["backends"] if b["name"] == "app"]
            states = {ep["address"]: ep["state"] for ep in pool["endpoints"]}
            assert states[bad] == "ejected"
