"""HTTP reliability limits end to end: the request body, header and send
timeouts, the per-client request rate, the overload stages and the
per-connection buffer limit, against clients that misbehave on purpose
(including slowhttptest's three slow modes).

A module meshgate (a real `meshgate run`) serves, all to the JSON backend of
http_backend.py:
- `web`: header, body and send timeouts of 1 s;
- `rated`: 1 request per second per client, a burst of 2;
- `rated-pp`: the same rate behind a PROXY header from loopback, so the
  client is the announced one.
The overload stage is set by a sampler these tests do not drive, so the
stage tests run an HttpListener in-process (on a loop in a thread) and set
the stage themselves. The buffer-limit test runs meshgates of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop

from meshgate.config.files import parse_yaml
from meshgate.dataplane.certs import TlsStore
from meshgate.dataplane.http_listener import HttpListener
from meshgate.dataplane.listener import Context, State
from meshgate.dataplane.overload import Stage
from meshgate.obs.metrics import Metrics
from meshgate.routing.compile import compile_table
from meshgate.upstream.pool import PoolRegistry
from tests.integration.harness import Meshgate, free_port, require, running, wait_for
from tests.integration.http_backend import HttpBackend
from tests.integration.test_http_proxy import Client, Truncated, request

MB = 1 << 20


class SourcedClient(Client):
    """A Client connecting from a chosen loopback address (another "client IP")."""

    def __init__(self, port: int, source: str, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        self.file = self.sock.makefile("rb")


def trickle(sock: socket.socket, piece: bytes, every: float, stop: threading.Event) -> None:
    """Send `piece` every `every` seconds until `stop` (or the socket fails)."""
    while not stop.wait(every):
        try:
            sock.sendall(piece)
        except OSError:
            return


@contextlib.contextmanager
def trickling(sock: socket.socket, piece: bytes, every: float) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=trickle, args=(sock, piece, every, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def drain(sock: socket.socket, timeout: float = 10.0) -> int:
    """Read `sock` until it ends (EOF or reset); the bytes read."""
    sock.settimeout(timeout)
    total = 0
    with contextlib.suppress(ConnectionResetError):
        while piece := sock.recv(MB):
            total += len(piece)
    return total


# --- the shared meshgate --------------------------------------------------------------


@dataclass
class Limited:
    mg: Meshgate
    web: int
    rated: int
    rated_pp: int
    backend: HttpBackend

    def rejected(self, reason: str) -> float:
        return self.mg.metric("meshgate_http_rejected_total", reason=reason)

    def errors(self, reason: str) -> float:
        return self.mg.metric("meshgate_connection_errors_total", reason=reason)

    def active(self) -> float:
        return self.mg.metric("meshgate_connections_active", listener="web")


def limits_config(web: int, rated: int, rated_pp: int, backend: int) -> str:
    return f"""
listeners:
  - name: web
    address: 127.0.0.1
    port: {web}
    protocol: http
    http:
      default_backend: a
      header_timeout: 1
      body_timeout: 1
      send_timeout: 1
      keepalive_timeout: 5
  - name: rated
    address: 127.0.0.1
    port: {rated}
    protocol: http
    http: {{default_backend: a}}
    limits: {{per_client: {{request_rate: 1, burst: 2}}}}
  - name: rated-pp
    address: 127.0.0.1
    port: {rated_pp}
    protocol: http
    proxy_protocol: {{trusted: [127.0.0.0/8]}}
    http: {{default_backend: a}}
    limits: {{per_client: {{request_rate: 1, burst: 2}}}}
backends:
  - {{name: a, endpoints: ["127.0.0.2:{backend}"]}}
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Limited]:
    tmp = tmp_path_factory.mktemp("http-limits")
    with HttpBackend("a", "127.0.0.2") as backend:
        web, rated, rated_pp = free_port(), free_port(), free_port()
        config = tmp / "limits.yaml"
        config.write_text(limits_config(web, rated, rated_pp, backend.port))
        with running(["-c", str(config)], tmp) as mg:
            yield Limited(mg, web, rated, rated_pp, backend)


# --- request body timeout ---------------------------------------------------------------


def test_stalled_request_body_gets_408_after_body_timeout(limited: Limited) -> None:
    before = limited.rejected("body_timeout")
    with Client(limited.web) as c:
        c.send(request("/upload", method="POST", headers=("Content-Length: 100",)) + b"x" * 10)
        started = time.monotonic()
        reply = c.reply()
        elapsed = time.monotonic() - started
        assert reply.status == 408
        assert reply.header("connection") == "close"
        assert c.closed()
    assert 0.8 < elapsed < 2.5
    wait_for(lambda: limited.rejected("body_timeout") == before + 1, "the body_timeout count")


def test_body_timeout_after_100_continue_counts_from_the_continue(limited: Limited) -> None:
    # A client that asked `Expect: 100-continue` owes its body only once told.
    with Client(limited.web) as c:
        c.send(
            request(
                "/upload",
                method="POST",
                headers=("Expect: 100-continue", "Content-Length: 100"),
            )
        )
        assert c.reply().status == 100
        started = time.monotonic()
        reply = c.reply()
        elapsed = time.monotonic() - started
    assert reply.status == 408
    assert 0.8 < elapsed < 2.5


def test_a_body_that_keeps_coming_is_not_cut(limited: Limited) -> None:
    # The timeout is between reads, not for the whole body: 2.4 s of upload
    # in pieces 0.4 s apart passes a 1 s body_timeout.
    with Client(limited.web) as c:
        c.send(request("/upload", method="POST", headers=("Transfer-Encoding: chunked",)))
        for _ in range(6):
            time.sleep(0.4)  # the pace of the upload under test
            c.send(b"400\r\n" + b"u" * 1024 + b"\r\n")
        c.send(b"0\r\n\r\n")
        reply = c.reply()
    assert reply.status == 200
    assert reply.json()["body_length"] == 6 * 1024


# --- header timeout (slowloris) -----------------------------------------------------------


@pytest.mark.parametrize("first", [True, False], ids=["first-request", "keep-alive-request"])
def test_header_lines_trickled_in_do_not_extend_header_timeout(
    limited: Limited, first: bool
) -> None:
    # One header line every 0.2 s: each is progress, but the head as a
    # whole has 1 s from its first byte.
    with Client(limited.web) as c:
        if not first:
            assert c.request("/").status == 200
        c.send(b"GET / HTTP/1.1\r\nHost: a.example\r\n")
        started = time.monotonic()
        with trickling(c.sock, b"X-Slow: loris\r\n", 0.2):
            reply = c.reply()
        elapsed = time.monotonic() - started
        assert reply.status == 408
        assert c.closed()
    assert 0.8 < elapsed < 1.8


# --- send timeout (slow readers) ----------------------------------------------------------


def test_slow_reader_is_aborted_after_send_timeout_while_others_are_served(
    limited: Limited,
) -> None:
    before = limited.errors("send_timeout")
    size = 256 * MB
    with socket.socket() as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window
        slow.connect(("127.0.0.1", limited.web))
        slow.sendall(request(f"/bytes/{size}"))
        started = time.monotonic()
        # The slow reader holds nothing up for anybody else.
        with Client(limited.web) as c:
            assert c.request("/").status == 200
        wait_for(lambda: limited.errors("send_timeout") == before + 1, "the slow reader cut")
        elapsed = time.monotonic() - started
        assert drain(slow) < size  # its response ends early
    assert 1.0 <= elapsed < 4.0


def test_lingering_close_ends_for_a_client_that_never_reads(limited: Limited) -> None:
    # After an error answer meshgate reads and drops what the client still
    # sends, for LINGER (2 s); a client that keeps sending and never reads
    # must not hold the socket past it. Its sends fail once meshgate closed.
    ended = threading.Event()
    with Client(limited.web) as c:

        def flood() -> None:
            try:
                while True:
                    c.sock.sendall(b"y" * 65536)
                    time.sleep(0.01)
            except OSError:
                ended.set()

        c.send(b"GET / HTTP/1.1\r\nHost: a.example\r\nContent-Length: x\r\n\r\n")
        started = time.monotonic()
        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        assert ended.wait(8), "the connection outlived the lingering close"
        elapsed = time.monotonic() - started
        thread.join()
    assert 1.5 < elapsed < 5


# --- per-client request rate -------------------------------------------------------------


def test_request_rate_is_429_with_retry_after_then_allowed_again(limited: Limited) -> None:
    before = limited.rejected("rate_limited")
    with Client(limited.rated) as c:
        assert [c.request("/").status for _ in range(2)] == [200, 200]  # the burst
        refused = c.request("/")
        assert refused.status == 429
        retry = int(refused.header("retry-after") or "0")
        assert retry >= 1
        assert refused.header("connection") != "close"  # may retry on this connection
        # Another client address has a bucket of its own.
        with SourcedClient(limited.rated, "127.0.0.7") as other:
            assert other.request("/").status == 200
        time.sleep(retry)  # what the client was told to wait
        assert c.request("/").status == 200
    assert limited.rejected("rate_limited") == before + 1


def test_request_rate_is_per_client_a_proxy_header_announced(limited: Limited) -> None:
    def announcing(ip: str) -> Client:
        client = Client(limited.rated_pp)
        client.send(f"PROXY TCP4 {ip} 10.0.0.1 40000 80\r\n".encode())
        return client

    with announcing("10.1.1.1") as c:
        assert [c.request("/").status for _ in range(3)] == [200, 200, 429]
    # The socket's address is the same for every client here: the limit
    # follows the announced one.
    with announcing("10.1.1.2") as c:
        assert c.request("/").status == 200
    with announcing("10.1.1.1") as c:
        assert c.request("/").status == 429


# --- per-connection buffer limit ---------------------------------------------------------


class StuffingBackend:
    """Answers one request with a 1 GiB body, written as fast as the
    connection takes it; `sent` is what it managed to write before its send
    stayed blocked for a second (meshgate stopped reading it)."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.port: int = self.sock.getsockname()[1]
        self.sent: Future[int] = Future()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn, conn.makefile("rb") as f:
            while f.readline() not in (b"\r\n", b""):
                pass
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 30))
            conn.setblocking(False)
            block, sent, moved = b"x" * 65536, 0, time.monotonic()
            while time.monotonic() - moved < 1.0:
                try:
                    sent += conn.send(block)
                    moved = time.monotonic()
                except BlockingIOError:
                    time.sleep(0.01)
            self.sent.set_result(sent)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def stuffing(tmp: Path, limit: int) -> Iterator[tuple[socket.socket, StuffingBackend]]:
    """meshgate (with `limit` as its connection_buffer) between a backend that
    pushes bytes for as long as anything takes them and a client that has
    sent its request and reads nothing."""
    backend = StuffingBackend("127.0.0.9")
    port = free_port()
    config = tmp / f"buffer-{limit}.yaml"
    config.write_text(
        f"""
listeners:
  - {{name: web, address: 127.0.0.1, port: {port}, protocol: http,
     http: {{default_backend: b, send_timeout: 60}}}}
backends:
  - {{name: b, endpoints: ["127.0.0.9:{backend.port}"]}}
limits: {{connection_buffer: {limit}}}
"""
    )
    try:
        with running(["-c", str(config)], tmp), socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(("127.0.0.1", port))
            client.sendall(request("/"))
            yield client, backend
    finally:
        backend.close()


def stuffed(tmp: Path, limit: int) -> int:
    """Bytes the backend could push through meshgate to the client that reads nothing."""
    with stuffing(tmp, limit) as (_, backend):
        return backend.sent.result(30)


def test_a_client_that_stops_reading_stops_the_upstream_within_the_buffer_limit(
    tmp_path: Path,
) -> None:
    # What the backend gets out is the kernel's socket buffers (several MB
    # on loopback, which vary) plus what meshgate holds: about the limit.
    small = stuffed(tmp_path, 64 << 10)
    large = stuffed(tmp_path, 16 << 20)
    assert small < 16 * MB, f"{small / MB:.1f} MB went out: meshgate kept reading"
    assert large - small > 8 * MB, f"{small / MB:.1f} vs {large / MB:.1f} MB"


# --- slowhttptest --------------------------------------------------------------------------

SLOW_CONNECTIONS = 10
SLOW_MODES = {
    # mode: (arguments, URL path, what counts each cut connection, its deadline)
    "slowloris": (["-H", "-i", "2"], "/", ("rejected", "header_timeout")),
    "slow-body": (["-B", "-i", "3", "-s", "8192"], "/upload", ("rejected", "body_timeout")),
    "slow-read": (
        ["-X", "-k", "2", "-n", "3", "-w", "512", "-y", "1024", "-z", "32"],
        f"/bytes/{8 * MB}",
        ("errors", "send_timeout"),
    ),
}


class Probe:
    """A well-behaved client asking `GET /` every 0.1 s, in a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.statuses: list[int] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                with Client(self.port, timeout=2) as c:
                    self.statuses.append(c.request("/").status)
            except (OSError, Truncated) as exc:
                self.failures.append(repr(exc))

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("mode", SLOW_MODES.keys())
def test_slowhttptest_connections_are_cut_at_their_deadline(limited: Limited, mode: str) -> None:
    tool = require("slowhttptest")
    args, path, (kind, reason) = SLOW_MODES[mode]
    count = limited.rejected if kind == "rejected" else limited.errors
    before = count(reason)
    argv = [
        tool,
        *args,
        "-c",
        str(SLOW_CONNECTIONS),
        "-r",
        str(SLOW_CONNECTIONS),  # all of them in the first second
        "-l",
        "8",
        "-p",
        "2",
        "-u",
        f"http://127.0.0.1:{limited.web}{path}",
    ]
    with Probe(limited.web) as probe:
        started = time.monotonic()
        tool_proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # Every slow connection is open within a second and has a 1 s
            # timeout (plus, for slow reads, a quarter of it between checks).
            wait_for(
                lambda: count(reason) >= before + SLOW_CONNECTIONS,
                f"{SLOW_CONNECTIONS} {mode} connections cut",
                timeout=6,
            )
            cut_after = time.monotonic() - started
            wait_for(lambda: limited.active() <= 2, "only the probe connected")
        finally:
            tool_proc.terminate()
            tool_proc.wait(10)
    assert cut_after < 4.0
    assert probe.failures == []
    assert len(probe.statuses) >= 10
    assert set(probe.statuses) == {200}


# --- overload stages (in-process) ----------------------------------------------------------


@dataclass
class InProcess:
    """An http listener run in-process on a loop in a thread."""

    loop: asyncio.AbstractEventLoop
    listener: HttpListener
    backend: HttpBackend

    @property
    def port(self) -> int:
        return self.listener.spec.key.port

    def set_stage(self, stage: Stage) -> None:
        async def move() -> None:
            self.listener.ctx.overload.stage = stage

        asyncio.run_coroutine_threadsafe(move(), self.loop).result(5)

    def rejected(self, reason: str) -> float:
        value = self.listener.ctx.metrics.registry.get_sample_value(
            "meshgate_http_rejected_total", {"listener": "edge", "reason": reason}
        )
        return value or 0.0


@pytest.fixture
def inproc() -> Iterator[InProcess]:
    with HttpBackend("b", "127.0.0.2") as backend:
        config = parse_yaml(
            f"""
listeners:
  - {{name: edge, address: 127.0.0.1, port: {free_port()}, protocol: http,
     http: {{default_backend: b}}}}
backends:
  - {{name: b, endpoints: ["127.0.0.2:{backend.port}"]}}
""",
            "test",
        )
        spec = compile_table(config, version=1).listeners[0]
        loop = uvloop.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        ctx = Context(metrics=Metrics(), pools=PoolRegistry(), tls=TlsStore())

        async def start() -> HttpListener:
            ctx.pools.reconcile(spec.pools)
            listener = HttpListener(spec, ctx)
            await listener.start()
            assert listener.state is State.SERVING
            return listener

        async def stop(listener: HttpListener) -> None:
            await listener.drain(loop.time() + 1)
            ctx.keepalive.close_all()
            await ctx.pools.close()

        listener = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        try:
            yield InProcess(loop, listener, backend)
        finally:
            asyncio.run_coroutine_threadsafe(stop(listener), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


def test_stage_1_answers_with_connection_close(inproc: InProcess) -> None:
    with Client(inproc.port) as c:
        reply = c.request("/")
        assert reply.status == 200
        assert reply.header("connection") is None  # keep-alive (HTTP/1.1's default)
        inproc.set_stage(Stage.NO_KEEPALIVE)
        reply = c.request("/")
        assert reply.status == 200
        assert reply.header("connection") == "close"
        assert c.closed()
    inproc.set_stage(Stage.NORMAL)
    with Client(inproc.port) as c:
        assert c.request("/").header("connection") is None


def test_stage_2_refuses_new_requests_with_503_before_the_backend(inproc: InProcess) -> None:
    with Client(inproc.port) as c:
        assert c.request("/").status == 200  # an established connection...
        seen = len(inproc.backend.requests)
        inproc.set_stage(Stage.REJECT_REQUESTS)
        reply = c.request("/")  # ...whose next request is refused too
        assert reply.status == 503
        assert reply.header("retry-after") == "1"
        assert reply.header("connection") == "close"
        assert c.closed()
    with Client(inproc.port) as c:
        assert c.request("/", method="POST", body=b"data").status == 503
    assert len(inproc.backend.requests) == seen
    assert inproc.rejected("overloaded") == 2
    inproc.set_stage(Stage.NORMAL)
    with Client(inproc.port) as c:
        assert c.request("/").status == 200


def test_a_slow_reader_parks_little_in_the_kernel(tmp_path: Path) -> None:
    """The socket to a client that reads nothing takes no more than about
    settings.NOTSENT_LOWAT (TCP_NOTSENT_LOWAT): without it the kernel's
    autotuned send buffer would park up to 4 MiB per slow reader."""
    require("ss")
    with stuffing(tmp_path, 64 << 10) as (client, _):
        time.sleep(1.5)  # the backend pushes as long as anything takes its bytes
        port = client.getpeername()[1]
        shown = subprocess.run(
            ["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        queued = int(shown[1])  # Send-Q of meshgate's socket to the client
        assert 0 < queued < 512 << 10, f"{queued} bytes queued for a client reading nothing"
