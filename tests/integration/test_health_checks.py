"""Active health checks against real servers on loopback: an endpoint failing
its check gets no traffic, comes back when it recovers, and /readyz, /status
and `meshgate status` say so; checks stop with the backend they belong to."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

from meshgate.config.files import parse_yaml
from meshgate.dataplane.dataplane import Dataplane
from meshgate.obs.metrics import Metrics
from meshgate.routing.compile import compile_table
from meshgate.routing.table import RouteTable
from tests.integration.harness import WAIT, Meshgate, free_port, running, wait_for
from tests.integration.http_backend import HttpBackend

# Checks four times a second: each test waits for a handful of them, not for
# minutes, and a loaded machine still answers on loopback within the timeout.
FAST = "interval: 250ms, timeout: 250ms"


def request(port: int) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


def served_by(port: int) -> str:
    """Which HttpBackend answered a request through meshgate."""
    status, body = request(port)
    assert status == 200, (status, body)
    return str(json.loads(body)["service"])


def endpoint(mg: Meshgate, backend: str, address: str) -> dict[str, Any]:
    [pool] = [b for b in mg.json("/status")["backends"] if b["name"] == backend]
    [ep] = [e for e in pool["endpoints"] if e["address"] == address]
    return dict(ep)


def check_is(mg: Meshgate, backend: str, address: str, status: str) -> Callable[[], bool]:
    return lambda: endpoint(mg, backend, address)["check"] == status


def write_web_config(path: Path, port: int, endpoints: list[str], backend_options: str) -> None:
    """An http listener on `port` whose one route goes to backend `app`
    (`endpoints`), with `backend_options` (YAML lines at the backend's
    indentation) added to the backend."""
    quoted = ", ".join(f'"{ep}"' for ep in endpoints)
    path.write_text(
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
    endpoints: [{quoted}]
{backend_options}"""
    )


def test_a_tcp_check_takes_a_closed_port_out_and_brings_it_back(tmp_path: Path) -> None:
    port, down = free_port(), free_port()  # nothing listens on `down` yet
    bad = f"127.0.0.1:{down}"
    with HttpBackend("good", "127.0.0.2") as good:
        config = tmp_path / "meshgate.yaml"
        write_web_config(
            config,
            port,
            [f"127.0.0.2:{good.port}", bad],
            # Outlier detection out of the way: only the active check may take it out.
            "    outlier: {consecutive_failures: 1000}\n"
            f"    health_check: {{type: tcp, {FAST}, unhealthy_threshold: 2,"
            " healthy_threshold: 2}\n",
        )
        with running(["-c", str(config)], tmp_path) as mg:
            wait_for(check_is(mg, "app", bad, "unhealthy"), "the closed port marked unhealthy")
            # Traffic goes around it: not even a failed connect to it.
            assert {served_by(port) for _ in range(8)} == {"good"}
            assert mg.metric("meshgate_connect_failures_total", endpoint=bad) == 0
            assert mg.metric("meshgate_endpoint_healthy", endpoint=bad) == 0
            assert mg.metric("meshgate_health_checks_total", endpoint=bad, result="failure") >= 2

            # Still ready (a backend down is no reason to leave the rotation),
            # and /readyz names what is wrong.
            status, body = mg.get("/readyz")
            assert status == 200
            ready = json.loads(body)
            assert ready["ready"] is True
            [app] = ready["degraded_backends"]
            assert app["name"] == "app"
            assert app["unhealthy"] == [{"address": bad, "reason": "refused"}]

            ep = endpoint(mg, "app", bad)
            assert (ep["state"], ep["check_reason"]) == ("healthy", "refused")
            assert ep["check_fails"] >= 2
            shown = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "meshgate",
                    "status",
                    "--admin",
                    f"127.0.0.1:{mg.admin_port}",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            [row] = [line for line in shown.splitlines() if bad in line]
            assert "unhealthy (refused)" in row
            # One log line for the change, not one per failed check.
            [event] = [e for e in mg.events("endpoint unhealthy") if e["endpoint"] == bad]
            assert (event["backend"], event["reason"]) == ("app", "refused")

            with HttpBackend("revived", "127.0.0.1", down):
                wait_for(check_is(mg, "app", bad, "healthy"), "the endpoint healthy again")
                assert {served_by(port) for _ in range(8)} == {"good", "revived"}
                assert "degraded_backends" not in mg.json("/readyz")
                assert mg.metric("meshgate_endpoint_healthy", endpoint=bad) == 1
                assert [e for e in mg.events("endpoint healthy again") if e["endpoint"] == bad]


class FlipServer:
    """An HTTP server answering every request with `status`, which a test
    changes; it keeps the request heads it saw."""

    def __init__(self, host: str) -> None:
        owner = self
        self.status = 500
        self.seen: list[dict[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner.seen.append(
                    {"path": self.path, **{k.lower(): v for k, v in self.headers.items()}}
                )
                body = b"flip"
                self.send_response(owner.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flip() -> Iterator[FlipServer]:
    server = FlipServer("127.0.0.3")
    yield server
    server.close()


def test_an_http_check_follows_the_status_it_expects(tmp_path: Path, flip: FlipServer) -> None:
    port = free_port()
    sick = f"127.0.0.3:{flip.port}"
    with HttpBackend("good", "127.0.0.2") as good:
        config = tmp_path / "meshgate.yaml"
        write_web_config(
            config,
            port,
            [f"127.0.0.2:{good.port}", sick],
            """\
    health_check:
      type: http
      path: /healthz
      host: status.example
      expect_status: [200, 204]
      interval: 250ms
      timeout: 250ms
      unhealthy_threshold: 1
      healthy_threshold: 2
""",
        )
        with running(["-c", str(config)], tmp_path) as mg:
            wait_for(check_is(mg, "app", sick, "unhealthy"), "the 500 endpoint marked unhealthy")
            assert endpoint(mg, "app", sick)["check_reason"] == "status 500"
            # No client sees the sick endpoint's 500s while its check fails.
            assert [request(port)[0] for _ in range(8)] == [200] * 8
            assert all(seen["path"] == "/healthz" for seen in flip.seen)
            probe = flip.seen[0]
            assert probe["host"] == "status.example"
            assert probe["user-agent"] == "meshgate-health-check"
            assert probe["connection"] == "close"

            flip.status = 200
            wait_for(check_is(mg, "app", sick, "healthy"), "the endpoint healthy again")
            bodies = {request(port)[1] for _ in range(8)}
            assert b"flip" in bodies  # traffic reaches it again
            assert any(seen["path"] == "/" for seen in flip.seen)


class TlsServer:
    """Completes TLS handshakes with a certificate for backend.example;
    answers one HTTP request per connection with 200 when one comes."""

    def __init__(self, cert: trustme.LeafCert) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.ctx)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed at the end of the test
            # A thread each: a slow connection must not hold up the next check.
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                head = tls.recv(65536)
                if head:
                    self.requests.append(head)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            conn.close()  # a refused certificate, or a check that hung up

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tls_server() -> Iterator[tuple[TlsServer, trustme.CA]]:
    ca = trustme.CA()
    server = TlsServer(ca.issue_cert("backend.example"))
    yield server, ca
    server.close()


def test_tls_checks_use_the_backends_tls_settings(
    tmp_path: Path, tls_server: tuple[TlsServer, trustme.CA]
) -> None:
    server, ca = tls_server
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    target = f"127.0.0.1:{server.port}"
    tls = f"tls: {{ca: {ca_file}, sni: backend.example}}"
    check = f"{FAST}, unhealthy_threshold: 1"
    backends = {
        # Verified against the CA, under the name the certificate has.
        "trusted": [tls, f"health_check: {{type: tls, {check}}}"],
        # The same server under another name: the check fails as traffic would.
        "wrongname": [
            f"tls: {{ca: {ca_file}, sni: other.example}}",
            f"health_check: {{type: tls, {check}}}",
        ],
        # No TLS settings: a completed handshake is enough.
        "handshake": [f"health_check: {{type: tls, {check}}}"],
        # http over TLS: the backend re-originates TLS, so the check does too.
        "https": [tls, f"health_check: {{type: http, path: /ready, {check}}}"],
    }
    lines = ["listeners:"]
    for name in backends:
        listen = free_port()
        lines.append(f"  - {{name: {name}, address: 127.0.0.1, port: {listen}, backend: {name}}}")
    lines.append("backends:")
    for name, settings in backends.items():
        lines += [f"  - name: {name}", f'    endpoints: ["{target}"]']
        lines += [f"    {line}" for line in settings]
    config = tmp_path / "meshgate.yaml"
    config.write_text("\n".join(lines) + "\n")
    with running(["-c", str(config)], tmp_path) as mg:
        wait_for(check_is(mg, "wrongname", target, "unhealthy"), "the wrong name refused")
        assert endpoint(mg, "wrongname", target)["check_reason"] == "tls_verify"
        for name in ("trusted", "handshake", "https"):
            wait_for(check_is(mg, name, target, "healthy"), f"{name} healthy")
        [degraded] = mg.json("/readyz")["degraded_backends"]
        assert degraded["name"] == "wrongname"
        wait_for(lambda: bool(server.requests), "an http check over TLS")
        assert server.requests[0].startswith(b"GET /ready HTTP/1.1\r\n")
        assert f"Host: {target}\r\n".encode() in server.requests[0]


# -- in-process: the check tasks follow the backends of the table in use ---------------


class CountingServer:
    """A TCP server that counts the connections it accepts (health checks)."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port


def table(version: int, listen: int, backend_port: int, *, checked: bool) -> RouteTable:
    backend = "app" if checked else "other"
    text = f"""
listeners:
  - {{name: web, address: 127.0.0.1, port: {listen}, backend: {backend}}}
backends:
  - name: app
    endpoints: ["127.0.0.1:{backend_port}"]
    health_check: {{type: tcp, interval: 50ms, timeout: 50ms}}
  - name: other
    endpoints: ["127.0.0.1:{backend_port}"]
"""
    return compile_table(parse_yaml(text, "test.yaml"), version=version)


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds; fail after WAIT seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.01)


async def test_checks_stop_when_a_reload_removes_their_backend() -> None:
    backend = CountingServer()
    backend_port, listen = await backend.start(), free_port()
    dataplane = Dataplane(Metrics(), drain_timeout=1.0)
    try:
        await dataplane.apply(table(1, listen, backend_port, checked=False))
        baseline = asyncio.all_tasks()
        assert backend.connections == 0  # a backend without a check is left alone

        await dataplane.apply(table(2, listen, backend_port, checked=True))
        await eventually(lambda: backend.connections >= 3, "checks of the new backend")
        assert asyncio.all_tasks() - baseline  # the check tasks

        # The reload removes the backend: its checks end, nothing is left behind.
        await dataplane.apply(table(3, listen, backend_port, checked=False))
        await eventually(lambda: asyncio.all_tasks() == baseline, "the check tasks ended")
        seen = backend.connections
        await asyncio.sleep(0.3)  # six intervals of the removed check
        assert backend.connections == seen

        # Shutdown ends the checks of the backends still there.
        await dataplane.apply(table(4, listen, backend_port, checked=True))
        await eventually(lambda: backend.connections > seen, "checks again")
    finally:
        await dataplane.shutdown()
        assert backend.server is not None
        backend.server.close()
        await backend.server.wait_closed()
    current = asyncio.current_task()
    assert {t for t in asyncio.all_tasks() if t is not current and not t.done()} <= baseline
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("check")]
