"""The HTTP reverse proxy end to end: `meshgate run` with an http listener,
real backends on loopback, and clients that write raw bytes (so a test
controls exactly what goes on the wire), curl and a WebSocket client.

Most tests share one meshgate (module fixture) with one route per kind of
backend, chosen by Host:
- default (any host): `a`, the JSON backend of http_backend.py;
- `ka.example`: `ka`, a JSON backend only the keep-alive test uses (it counts
  connections);
- `idle.example`: `idle`, a JSON backend that closes a connection idle 0.3 s;
- `raw.example`: a scripted backend that misbehaves on purpose;
- `slow.example`: `a` with a 1 s read timeout; `small.example`: `a` with a
  1000-byte body limit; `redirect.example`: a 308 meshgate answers itself;
- path `/ws`: a `websockets` echo server.
The listener's header and keep-alive timeouts are 1 s. The drain tests run
their own meshgate. Each client is a fresh connection, so a test that fails
leaves nothing behind for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.sync.client import connect as ws_connect

from tests.integration.harness import Meshgate, free_port, require, running, wait_for
from tests.integration.http_backend import HttpBackend

MB = 1024 * 1024
BIG = 200 * MB
RSS_BUDGET = 64 * MB


# --- a raw HTTP/1.1 client --------------------------------------------------------


class Truncated(Exception):
    """The connection ended before the response did."""


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased
    body: bytes
    framing: str  # "length", "chunked", "close" (until EOF) or "none"

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name]
        return ", ".join(values) if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def read_reply(f: BinaryIO, method: str = "GET") -> Reply:
    """One response from `f`, framed as RFC 9112 §6.3 says."""
    line = f.readline()
    if not line:
        raise Truncated("closed before a status line")
    version, status_text = line.split(b" ", 2)[:2]
    assert version.startswith(b"HTTP/1."), line
    status = int(status_text)
    headers: list[tuple[str, str]] = []
    while True:
        field = f.readline()
        if not field:
            raise Truncated("closed inside the head")
        if field == b"\r\n":
            break
        name, _, value = field.decode("latin-1").partition(":")
        headers.append((name.lower(), value.strip()))
    reply = Reply(status, headers, b"", "none")
    if method == "HEAD" or status in (204, 304) or status < 200:
        return reply
    if (reply.header("transfer-encoding") or "").lower() == "chunked":
        parts = []
        while True:
            size_line = f.readline()
            if not size_line.endswith(b"\r\n"):
                raise Truncated("closed inside a chunked body")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while (trailer := f.readline()) != b"\r\n":
                    if not trailer:
                        raise Truncated("closed inside the trailers")
                break
            data = f.read(size)
            if len(data) < size or f.read(2) != b"\r\n":
                raise Truncated("closed inside a chunk")
            parts.append(data)
        reply.body, reply.framing = b"".join(parts), "chunked"
    elif (length := reply.header("content-length")) is not None:
        reply.body, reply.framing = f.read(int(length)), "length"
        if len(reply.body) < int(length):
            raise Truncated(f"{len(reply.body)} of {length} body bytes")
    else:
        reply.body, reply.framing = f.read(), "close"
    return reply


class Client:
    """One client connection to meshgate that writes raw bytes."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self, method: str = "GET") -> Reply:
        return read_reply(self.file, method)

    def request(
        self,
        path: str = "/",
        *,
        host: str = "a.example",
        method: str = "GET",
        headers: tuple[str, ...] = (),
        body: bytes = b"",
        version: str = "1.1",
    ) -> Reply:
        self.send(request(path, host=host, method=method, headers=headers, body=body, v=version))
        return self.reply(method)

    def closed(self, timeout: float = 5.0) -> bool:
        """Whether meshgate ends the connection (FIN or reset) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.file.read(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(
    path: str = "/",
    *,
    host: str = "a.example",
    method: str = "GET",
    headers: tuple[str, ...] = (),
    body: bytes = b"",
    v: str = "1.1",
) -> bytes:
    lines = [f"{method} {path} HTTP/{v}", f"Host: {host}", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --- backends ---------------------------------------------------------------------


class ScriptedBackend:
    """A backend that misbehaves on purpose, by request path (GETs only):

    - `/garbage`: an SSH banner instead of a status line (and stays open);
    - `/cut-length`, `/cut-chunked`: 64 KiB of a 1 MiB body, then close;
    - `/race`: answered when first on its connection; as a later request it
      is read and the connection closed without an answer (a backend closing
      its idle keep-alive connection just as the request arrives);
    - `/early`: reads no body; after 0.5 s answers 401 and closes;
    - `/s204`, `/s304`: correct 204 and 304 responses (the 304 with the
      Content-Length of the body a GET would have);
    - anything else: 200 "ok", keep-alive.
    """

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.port: int = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.connections = 0
        self.paths: list[str] = []
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> ScriptedBackend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        with self.lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn, conn.makefile("rb") as f:
            served = 0
            while line := f.readline():
                while f.readline() not in (b"\r\n", b""):
                    pass
                path = line.split()[1].decode()
                with self.lock:
                    self.paths.append(path)
                if path == "/garbage":
                    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                    time.sleep(5)
                    return
                if path == "/cut-length":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % MB)
                    conn.sendall(b"x" * 65536)
                    return
                if path == "/cut-chunked":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    conn.sendall(b"10000\r\n" + b"x" * 65536 + b"\r\n")
                    return
                if path == "/race" and served:
                    return
                if path == "/early":
                    time.sleep(0.5)  # the upload fills the buffers meanwhile
                    conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(MB):
                        pass
                    return
                if path == "/s204":
                    conn.sendall(b"HTTP/1.1 204 No Content\r\nX-Seen: 204\r\n\r\n")
                elif path == "/s304":
                    conn.sendall(
                        b"HTTP/1.1 304 Not Modified\r\nETag: x\r\nContent-Length: 1234\r\n\r\n"
                    )
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                served += 1


class WsEcho:
    """A `websockets` asyncio echo server, on its own event loop in a thread."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: Server | None = None

    async def _echo(self, ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def _start(self) -> int:
        self._server = await serve(self._echo, self.host, 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def __enter__(self) -> WsEcho:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def idle_closing(backend: HttpBackend, after: float) -> HttpBackend:
    """Make `backend` close a keep-alive connection idle for `after` seconds."""
    handler = cast(type[BaseHTTPRequestHandler], backend.server.RequestHandlerClass)
    # A socket timeout on an idle connection ends http.server's request loop.
    backend.server.RequestHandlerClass = type("IdleClosing", (handler,), {"timeout": after})
    return backend


# --- the shared meshgate ------------------------------------------------------------


@dataclass
class Proxy:
    mg: Meshgate
    port: int
    a: HttpBackend
    ka: HttpBackend
    idle: HttpBackend
    raw: ScriptedBackend
    ws: WsEcho

    def client(self) -> Client:
        return Client(self.port)

    def rejected(self, reason: str) -> float:
        return self.mg.metric("meshgate_http_rejected_total", reason=reason)

    def active(self) -> float:
        return self.mg.metric("meshgate_connections_active", listener="web")

    def upstream_connections(self, backend: str) -> float:
        return self.mg.metric("meshgate_http_upstream_connections_total", backend=backend)

    @property
    def pid(self) -> int:
        return self.mg.proc.pid


def proxy_config(port: int, *, a: int, ka: int, idle: int, raw: int, ws: int) -> str:
    return f"""
listeners:
  - name: web
    address: 127.0.0.1
    port: {port}
    protocol: http
    http:
      routes:
        - {{path: /ws, backend: ws}}
        - {{host: ka.example, backend: ka}}
        - {{host: idle.example, backend: idle}}
        - {{host: raw.example, backend: raw}}
        - {{host: slow.example, backend: a, read_timeout: 1}}
        - {{host: small.example, backend: a, max_body: 1000}}
        - {{host: redirect.example, ssl_redirect: true}}
      default_backend: a
      header_timeout: 1
      keepalive_timeout: 1
backends:
  - {{name: a, endpoints: ["127.0.0.2:{a}"]}}
  - {{name: ka, endpoints: ["127.0.0.3:{ka}"]}}
  - {{name: idle, endpoints: ["127.0.0.4:{idle}"]}}
  - {{name: raw, endpoints: ["127.0.0.5:{raw}"]}}
  - {{name: ws, endpoints: ["127.0.0.6:{ws}"]}}
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("http-proxy")
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(HttpBackend("a", "127.0.0.2"))
        ka = stack.enter_context(HttpBackend("ka", "127.0.0.3"))
        idle = stack.enter_context(idle_closing(HttpBackend("idle", "127.0.0.4"), 0.3))
        raw = stack.enter_context(ScriptedBackend("127.0.0.5"))
        ws = stack.enter_context(WsEcho("127.0.0.6"))
        port = free_port()
        config = tmp / "proxy.yaml"
        config.write_text(
            proxy_config(port, a=a.port, ka=ka.port, idle=idle.port, raw=raw.port, ws=ws.port)
        )
        mg = stack.enter_context(running(["-c", str(config)], tmp))
        yield Proxy(mg, port, a, ka, idle, raw, ws)


# --- 1. request smuggling -----------------------------------------------------------

POST = b"POST /smuggle HTTP/1.1\r\nHost: a.example\r\n"
SMUGGLING = {
    "cl_and_te": (
        POST + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        "smuggling_cl_te",
    ),
    "two_content_lengths": (
        POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "duplicate_content_length",
    ),
    "content_length_list": (POST + b"Content-Length: 5, 5\r\n\r\nhello", "bad_content_length"),
    "content_length_plus": (POST + b"Content-Length: +5\r\n\r\nhello", "bad_content_length"),
    "content_length_suffix": (POST + b"Content-Length: 5x\r\n\r\nhello", "bad_content_length"),
    "te_chunked_identity": (
        POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "bad_transfer_encoding",
    ),
    "te_xchunked": (
        POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "bad_transfer_encoding",
    ),
    "te_obs_fold": (
        POST + b"Transfer-Encoding: identity\r\n chunked\r\n\r\n0\r\n\r\n",
        "obs_fold",
    ),
    "te_space_before_colon": (
        POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "bad_header_name",
    ),
    "nul_in_value": (POST + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n", "bad_header_value"),
    "bare_cr_in_value": (POST + b"X-A: a\rb\r\nContent-Length: 0\r\n\r\n", "bad_header_value"),
    "bare_lf_in_value": (
        POST + b"X-A: a\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "bad_header_value",
    ),
    "non_token_name": (POST + b"X[A]: b\r\nContent-Length: 0\r\n\r\n", "bad_header_name"),
    "missing_host": (b"GET /smuggle HTTP/1.1\r\nX-A: b\r\n\r\n", "missing_host"),
    "two_hosts": (
        b"GET /smuggle HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        "duplicate_host",
    ),
}


def assert_rejected(proxy: Proxy, raw: bytes, reason: str, status: int = 400) -> None:
    """`raw` is answered `status` and the connection closed; the backend saw nothing."""
    before, seen = proxy.rejected(reason), len(proxy.a.requests)
    with proxy.client() as c:
        c.send(raw)
        reply = c.reply()
        assert reply.status == status, reply
        assert reply.header("connection") == "close"
        assert c.closed()
    assert proxy.rejected(reason) == before + 1
    assert len(proxy.a.requests) == seen


@pytest.mark.parametrize(("raw", "reason"), SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_shape_is_refused_before_the_backend(
    proxy: Proxy, raw: bytes, reason: str
) -> None:
    assert_rejected(proxy, raw, reason)


def test_obs_fold_after_an_empty_value_is_counted_as_obs_fold(proxy: Proxy) -> None:
    assert_rejected(proxy, POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", "obs_fold")


def test_smuggling_behind_a_request_in_flight(proxy: Proxy) -> None:
    # The bad request arrives while the first is still at the backend: the
    # first is answered, then the second refused, and only one reached the backend.
    before, seen = proxy.rejected("smuggling_cl_te"), len(proxy.a.requests)
    with proxy.client() as c:
        c.send(request("/sleep/0.3"))
        wait_for(lambda: len(proxy.a.requests) == seen + 1, "the first request at the backend")
        c.send(SMUGGLING["cl_and_te"][0])
        first = c.reply()
        assert first.status == 200
        assert first.json()["path"] == "/sleep/0.3"
        second = c.reply()
        assert second.status == 400
        assert c.closed()
    assert proxy.rejected("smuggling_cl_te") == before + 1
    assert len(proxy.a.requests) == seen + 1


def test_smuggling_pipelined_in_one_write_never_reaches_the_backend(proxy: Proxy) -> None:
    seen = len(proxy.a.requests)
    with proxy.client() as c:
        c.send(request("/first") + SMUGGLING["cl_and_te"][0])
        statuses = []
        with contextlib.suppress(Truncated):
            while True:
                statuses.append(c.reply().status)
        assert statuses[-1] == 400
    assert "/smuggle" not in [r["path"] for r in proxy.a.requests[seen:]]


def test_smuggling_pipelined_behind_a_valid_request(proxy: Proxy) -> None:
    seen = len(proxy.a.requests)
    with proxy.client() as c:
        c.send(request("/first") + SMUGGLING["cl_and_te"][0])
        first = c.reply()
        assert first.status == 200
        assert c.reply().status == 400
        assert c.closed()
    assert [r["path"] for r in proxy.a.requests[seen:]] == ["/first"]


def test_bad_chunk_inside_a_streaming_body_is_400(proxy: Proxy) -> None:
    # The request is already streaming to the backend when the bad chunk comes.
    before = proxy.rejected("bad_chunk")
    used = proxy.upstream_connections("a")
    with proxy.client() as c:
        c.send(request("/upload", method="POST", headers=("Transfer-Encoding: chunked",)))
        c.send(b"5\r\nhello\r\n")
        wait_for(lambda: proxy.upstream_connections("a") > used, "the upstream request")
        c.send(b"zz\r\nhello\r\n0\r\n\r\n")
        reply = c.reply()
        assert reply.status == 400
        assert c.closed()
    assert proxy.rejected("bad_chunk") == before + 1


# --- 2. limits and timers -----------------------------------------------------------


def test_request_line_over_8_kib_is_414(proxy: Proxy) -> None:
    assert_rejected(proxy, request("/" + "a" * 9000), "uri_too_long", 414)


def test_header_block_over_32_kib_is_431(proxy: Proxy) -> None:
    fields = tuple(f"X-Big-{i}: {'v' * 1000}" for i in range(40))
    assert_rejected(proxy, request("/", headers=fields), "header_too_large", 431)


def test_more_than_100_headers_is_431(proxy: Proxy) -> None:
    fields = tuple(f"X-H-{i}: v" for i in range(101))
    assert_rejected(proxy, request("/", headers=fields), "header_too_large", 431)


def test_half_a_head_gets_408_after_header_timeout(proxy: Proxy) -> None:
    before = proxy.rejected("header_timeout")
    with proxy.client() as silent, proxy.client() as c:
        c.send(b"GET / HTTP/1.1\r\nHost: a.example\r\n")
        started = time.monotonic()
        reply = c.reply()
        elapsed = time.monotonic() - started
        assert reply.status == 408
        assert c.closed()
        # A client that never said anything is closed without an answer.
        assert silent.file.read() == b""
    assert 0.8 < elapsed < 3
    assert proxy.rejected("header_timeout") == before + 2


def test_idle_keepalive_connection_closed_after_keepalive_timeout(proxy: Proxy) -> None:
    with proxy.client() as c:
        assert c.request("/").status == 200
        started = time.monotonic()
        assert c.closed(timeout=5)
        assert 0.8 < time.monotonic() - started < 3


# --- 3. streaming with bounded memory ----------------------------------------------


def rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


@contextlib.contextmanager
def rss_growth(pid: int) -> Iterator[list[int]]:
    """Yields a list that holds, after the block, meshgate's peak RSS growth."""
    base, hwm = rss(pid), rss(pid, "VmHWM")
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, rss(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    growth: list[int] = []
    try:
        yield growth
    finally:
        done.set()
        sampler.join()
    if (new_hwm := rss(pid, "VmHWM")) > hwm:
        peak = max(peak, new_hwm)  # the exact peak, when the transfer set a new one
    growth.append(peak - base)


def upload(port: int, size: int, *, chunked: bool) -> tuple[str, Reply]:
    """POST `size` distinct-block bytes; returns their sha256 and the reply."""
    digest = hashlib.sha256()
    block = os.urandom(MB)
    headers = ("Transfer-Encoding: chunked",) if chunked else (f"Content-Length: {size}",)
    with Client(port, timeout=60) as c:
        c.send(request("/upload", method="POST", headers=headers))
        for i in range(size // MB):
            piece = i.to_bytes(8, "big") + block[8:]
            digest.update(piece)
            c.send(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            c.send(b"0\r\n\r\n")
        return digest.hexdigest(), c.reply()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_upload_200_mb_streams_in_bounded_memory(proxy: Proxy, chunked: bool) -> None:
    with rss_growth(proxy.pid) as growth:
        sent, reply = upload(proxy.port, BIG, chunked=chunked)
    assert reply.status == 200
    seen = reply.json()
    assert seen["body_length"] == BIG
    assert seen["body_sha256"] == sent
    assert seen["headers"].get("transfer-encoding", "") == ("chunked" if chunked else "")
    assert growth[0] < RSS_BUDGET, f"meshgate grew {growth[0] / MB:.1f} MB"


@pytest.mark.parametrize("kind", ["bytes", "chunked"])
def test_download_200_mb_streams_in_bounded_memory(proxy: Proxy, kind: str) -> None:
    # curl writes to a pipe this test reads; the test stops reading for a
    # second, so the backend (which writes far faster) must be held back by
    # meshgate, not buffered in it.
    curl = require("curl")
    url = f"http://127.0.0.1:{proxy.port}/{kind}/{BIG}"
    got, expected, size = hashlib.sha256(), hashlib.sha256(), 0
    block = b"x" * MB
    with rss_growth(proxy.pid) as growth:
        proc = subprocess.Popen([curl, "-sS", "--fail", "-o", "-", url], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        with proc.stdout as out:
            piece = out.read(MB)
            time.sleep(1.0)  # a stalled reader
            while piece:
                size += len(piece)
                got.update(piece)
                expected.update(block[: len(piece)])
                piece = out.read(MB)
        assert proc.wait(60) == 0
    assert size == BIG
    assert got.hexdigest() == expected.hexdigest()
    assert growth[0] < RSS_BUDGET, f"meshgate grew {growth[0] / MB:.1f} MB"


# --- 4. Expect: 100-continue ----------------------------------------------------------


def test_expect_100_continue_then_final_response(proxy: Proxy) -> None:
    body = b"y" * 500
    with proxy.client() as c:
        c.send(
            request(
                "/continue",
                method="POST",
                headers=("Expect: 100-continue", f"Content-Length: {len(body)}"),
            )
        )
        interim = c.reply()
        assert interim.status == 100
        c.send(body)
        final = c.reply()
    assert final.status == 200
    seen = final.json()
    assert seen["body_length"] == len(body)
    assert "expect" not in seen["headers"]


def test_expect_100_continue_over_max_body_is_413_without_continue(proxy: Proxy) -> None:
    seen = len(proxy.a.requests)
    with proxy.client() as c:
        c.send(
            request(
                "/limited",
                host="small.example",
                method="POST",
                headers=("Expect: 100-continue", "Content-Length: 5000"),
            )
        )
        reply = c.reply()  # the first response: no 100 before it
        assert reply.status == 413
        with contextlib.suppress(OSError):
            c.send(b"z" * 5000)  # a client that sends anyway: dropped
        assert c.closed()
    assert len(proxy.a.requests) == seen


# --- 5. keep-alive upstream connections -----------------------------------------------


def test_upstream_keepalive_reuse_and_close(proxy: Proxy) -> None:
    ka = proxy.ka
    with proxy.client() as c:
        for i in range(5):
            reply = c.request(f"/n/{i}", host="ka.example")
            assert reply.status == 200
            assert reply.json()["connection"] == 1
        assert ka.connections == 1
        # A response with Connection: close ends that upstream connection.
        closing = c.request("/close", host="ka.example")
        assert closing.status == 200
        assert closing.json()["connection"] == 1
        after = c.request("/after-close", host="ka.example")
        assert after.status == 200
        assert after.json()["connection"] == 2
    assert ka.connections == 2


def test_backend_closing_an_idle_connection_is_invisible(proxy: Proxy) -> None:
    idle = proxy.idle
    with proxy.client() as c:
        assert c.request("/one", host="idle.example").status == 200
        wait_for(lambda: idle.connections == 1, "the first upstream connection")
        time.sleep(0.5)  # the backend closes its side after 0.3 s
        reply = c.request("/two", host="idle.example")
        assert reply.status == 200
        assert reply.json()["connection"] == 2


def test_request_retried_when_reused_connection_closes_unanswered(proxy: Proxy) -> None:
    raw = proxy.raw
    before = raw.connections
    with proxy.client() as c:
        assert c.request("/race", host="raw.example").body == b"ok"
        # The reused connection reads this request and closes: sent again, once.
        reply = c.request("/race", host="raw.example")
        assert reply.status == 200
        assert reply.body == b"ok"
    assert raw.connections == before + 2


def test_early_answer_during_an_upload_keeps_the_connection_usable(proxy: Proxy) -> None:
    # The backend stops reading the body (meshgate stops reading the client),
    # answers 401 and closes: the client gets the 401, the rest of its body is
    # read and dropped, and the connection carries the next request.
    size = 32 * MB
    errors: list[OSError] = []

    def send_body(c: Client) -> None:
        try:
            c.send(b"b" * size)
        except OSError as exc:
            errors.append(exc)

    with proxy.client() as c:
        headers = (f"Content-Length: {size}",)
        c.send(request("/early", host="raw.example", method="POST", headers=headers))
        sender = threading.Thread(target=send_body, args=(c,))
        sender.start()
        assert c.reply().status == 401
        sender.join(10)
        assert not sender.is_alive()
        assert errors == []
        assert c.request("/after-early", host="raw.example").body == b"ok"


# --- 6. pipelining ------------------------------------------------------------------


def test_three_pipelined_requests_answered_in_order(proxy: Proxy) -> None:
    with proxy.client() as c:
        c.send(request("/sleep/0.2") + request("/p/2") + request("/p/3"))
        paths = [c.reply().json()["path"] for _ in range(3)]
        assert paths == ["/sleep/0.2", "/p/2", "/p/3"]
        assert c.request("/p/4").status == 200


# --- 7. bodiless responses and framing ------------------------------------------------


def test_head_204_304_forward_no_body_and_keep_the_connection(proxy: Proxy) -> None:
    with proxy.client() as c:
        head = c.request("/h", method="HEAD")
        assert head.status == 200
        assert int(head.header("content-length") or 0) > 0
        no_content = c.request("/s204", host="raw.example")
        assert no_content.status == 204
        assert no_content.header("x-seen") == "204"
        not_modified = c.request("/s304", host="raw.example")
        assert not_modified.status == 304
        assert not_modified.header("content-length") == "1234"
        # Nothing was sent after those heads: the next response is parsed clean.
        assert c.request("/after", host="raw.example").body == b"ok"
        assert c.request("/after-head").json()["path"] == "/after-head"


def test_chunked_response_relayed(proxy: Proxy) -> None:
    with proxy.client() as c:
        reply = c.request("/chunked/300000")
        assert reply.framing == "chunked"
        assert reply.body == b"x" * 300000
        assert c.request("/again").status == 200


def test_body_until_close_reaches_http11_chunked_and_http10_until_close(proxy: Proxy) -> None:
    with proxy.client() as c:
        reply = c.request("/close")
        assert reply.framing == "chunked"
        assert reply.json()["path"] == "/close"
        assert c.request("/still-open").status == 200
    with proxy.client() as c:
        reply = c.request("/close", version="1.0")
        assert reply.framing == "close"
        assert reply.header("transfer-encoding") is None
        assert reply.json()["path"] == "/close"


def test_http10_keepalive_client_gets_a_chunked_body_close_delimited(proxy: Proxy) -> None:
    # HTTP/1.0 has no chunked coding: the body ends with the connection, so
    # meshgate must say so and close at once (not wait for the idle timeout).
    with proxy.client() as c:
        started = time.monotonic()
        reply = c.request("/chunked/1000", version="1.0", headers=("Connection: keep-alive",))
        assert reply.framing == "close"
        assert reply.header("connection") == "close"
        assert reply.body == b"x" * 1000
        assert time.monotonic() - started < 0.8


def test_http10_keepalive_client_is_told_the_connection_stays(proxy: Proxy) -> None:
    # HTTP/1.0 closes unless the response says keep-alive: without the header
    # such a client reconnects for every request.
    with proxy.client() as c:
        first = c.request("/one", version="1.0", headers=("Connection: keep-alive",))
        assert first.header("connection") == "keep-alive"
        second = c.request("/two", version="1.0", headers=("Connection: keep-alive",))
        assert second.status == 200
        assert second.json()["path"] == "/two"


def test_backend_gets_the_host_the_route_was_chosen_by(proxy: Proxy) -> None:
    with proxy.client() as c:
        # Absolute form: the target's authority wins over the Host header
        # (RFC 9112 §3.2.2), for routing and for the backend alike.
        reply = c.request("http://ka.example/abs", host="other.example")
        assert reply.json()["service"] == "ka"
        assert reply.json()["headers"]["host"] == "ka.example"
        assert reply.json()["path"] == "/abs"
    with proxy.client() as c:
        c.send(b"GET /no-host HTTP/1.0\r\n\r\n")  # HTTP/1.0 may omit Host
        seen = c.reply().json()
        assert seen["headers"]["host"] == ""  # RFC 9112 §3.2: empty, never missing


# --- 8. WebSocket ---------------------------------------------------------------------


def test_websocket_echo_through_the_proxy(proxy: Proxy) -> None:
    with ws_connect(f"ws://127.0.0.1:{proxy.port}/ws", open_timeout=5) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01binary\xff")
        assert ws.recv(timeout=5) == b"\x00\x01binary\xff"
        big = os.urandom(300_000)
        ws.send(big)
        assert ws.recv(timeout=5) == big
        ws.close()
    assert ws.close_code == 1000
    # Both sides sent FIN through the tunnel: meshgate lets the connection go.
    wait_for(lambda: proxy.active() == 0, "the tunnel to close", timeout=5)


UPGRADE = ("Connection: Upgrade", "Upgrade: websocket")


def test_declined_upgrade_is_answered_then_the_connection_closes(proxy: Proxy) -> None:
    # A backend that does not speak WebSocket answers 200. The bytes after an
    # upgrade request belong to the new protocol, so they are not read as a
    # next request: the client gets the answer and the connection ends.
    seen = len(proxy.a.requests)
    with proxy.client() as c:
        c.send(request("/not-ws", headers=UPGRADE) + request("/next"))
        reply = c.reply()
        assert reply.status == 200
        assert reply.header("connection") == "close"
        assert c.closed()
    assert [r["path"] for r in proxy.a.requests[seen:]] == ["/not-ws"]


def test_upgrade_request_answered_by_meshgate_closes_the_connection(proxy: Proxy) -> None:
    with proxy.client() as c:
        c.send(request("/ws", host="redirect.example", headers=UPGRADE))
        reply = c.reply()
        assert reply.status == 308
        assert reply.header("connection") == "close"
        c.send(request("/next"))
        assert c.closed()


# --- 9. upstream misbehaviour -----------------------------------------------------


def test_garbage_status_line_is_502(proxy: Proxy) -> None:
    with proxy.client() as c:
        reply = c.request("/garbage", host="raw.example")
    assert reply.status == 502
    assert proxy.mg.metric("meshgate_http_upstream_errors_total", backend="raw") >= 1


@pytest.mark.parametrize("path", ["/cut-length", "/cut-chunked"])
def test_backend_closing_mid_body_cuts_the_client(proxy: Proxy, path: str) -> None:
    with proxy.client() as c, pytest.raises((Truncated, ConnectionResetError)):
        c.request(path, host="raw.example")


def test_slow_backend_over_read_timeout_is_504(proxy: Proxy) -> None:
    with proxy.client() as c:
        started = time.monotonic()
        reply = c.request("/sleep/2", host="slow.example")
        assert reply.status == 504
        assert 0.8 < time.monotonic() - started < 1.9


def test_slow_upload_longer_than_read_timeout_is_not_504(proxy: Proxy) -> None:
    # The read timeout is for the backend's answer: 2 s of upload on a route
    # with a 1 s read timeout is fine while the body keeps coming.
    with proxy.client() as c:
        c.send(
            request(
                "/slow-upload",
                host="slow.example",
                method="POST",
                headers=("Transfer-Encoding: chunked",),
            )
        )
        for _ in range(8):
            c.send(b"400\r\n" + b"u" * 1024 + b"\r\n")
            time.sleep(0.25)
        c.send(b"0\r\n\r\n")
        reply = c.reply()
    assert reply.status == 200
    assert reply.json()["body_length"] == 8 * 1024


# --- 10. drain --------------------------------------------------------------------


def test_sigterm_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    with HttpBackend("slow", "127.0.0.2") as slow:
        port = free_port()
        config = tmp_path / "drain.yaml"
        config.write_text(
            f"""
listeners:
  - {{name: web, address: 127.0.0.1, port: {port}, protocol: http,
     http: {{default_backend: slow}}}}
backends:
  - {{name: slow, endpoints: ["127.0.0.2:{slow.port}"]}}
"""
        )
        with running(["-c", str(config)], tmp_path) as mg, Client(port) as c:
            c.send(request("/sleep/1"))
            wait_for(lambda: len(slow.requests) == 1, "the request at the backend")
            mg.signal(signal.SIGTERM)
            reply = c.reply()
            assert reply.status == 200
            assert reply.json()["path"] == "/sleep/1"
            assert reply.header("connection") == "close"
            assert c.closed()
            assert mg.wait_exit() == 0


def test_sigterm_does_not_wait_for_idle_keepalive_connections(tmp_path: Path) -> None:
    with HttpBackend("b", "127.0.0.2") as b:
        port = free_port()
        config = tmp_path / "idle.yaml"
        config.write_text(
            f"""
listeners:
  - {{name: web, address: 127.0.0.1, port: {port}, protocol: http,
     http: {{default_backend: b}}}}
backends:
  - {{name: b, endpoints: ["127.0.0.2:{b.port}"]}}
"""
        )
        with (
            running(["-c", str(config), "--drain-timeout", "2"], tmp_path) as mg,
            Client(port) as c,
        ):
            assert c.request("/").status == 200  # then idle, kept alive for 75 s
            started = time.monotonic()
            mg.signal(signal.SIGTERM)
            assert mg.wait_exit() == 0
            assert c.closed()
            assert time.monotonic() - started < 1.5
