"""Built-in backends answered in-process, so a config runs with no other server.

- `hello`: an HTTP/1.1 responder (parsed with httptools) that answers every
  request with a short fixed text naming the listener; keep-alive and
  pipelining work, a malformed request gets a 400 and a close.
- `echo`: writes back whatever it receives (handy to try a TCP rule with nc).

Both honour backpressure and the backend's idle timeout, and are tracked like
relayed connections, so drain and metrics treat them the same.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

import httptools

from meshgate.dataplane.listener import Traffic, client_text
from meshgate.dataplane.pipe import IdleTimer, connection_ended, connection_opened
from meshgate.routing.table import ListenerSpec, PoolSpec

if TYPE_CHECKING:
    from meshgate.dataplane.listener import Listener

log = logging.getLogger("meshgate.builtin")

# A request head this large without completing is not a client of a hello
# endpoint; cap it so a slow sender cannot grow memory without limit.
MAX_PENDING_REQUEST = 64 * 1024


class _Builtin(asyncio.Protocol):
    """Shared plumbing: tracking, counters, idle timeout, backpressure."""

    def __init__(self, listener: Listener, spec: ListenerSpec, pool: PoolSpec) -> None:
        self.listener = listener
        self.spec = spec
        self.pool = pool
        self.backend = pool.name
        self.traffic = Traffic()
        self.transport: asyncio.Transport | None = None
        self.idle: IdleTimer | None = None
        self.reason = "eof"
        self.client = "-"
        self._loop = asyncio.get_running_loop()
        self.started = self._loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = tr = cast(asyncio.Transport, transport)
        tr.set_write_buffer_limits(self.spec.buffer_limit, self.spec.buffer_limit // 4)
        self.client = client_text(tr)
        connection_opened(self.listener, self)
        self.idle = IdleTimer(self._loop, self.pool.timeouts.idle, self._idle, self.listener.timers)

    def _idle(self) -> None:
        self.reason = "idle_timeout"
        self.abort()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.traffic.bytes_out += len(data)
        self.transport.write(data)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if exc is not None and self.reason == "eof":
            self.reason = "client_reset"
        connection_ended(self.listener, self, self.client, self.started, self.reason)


class EchoBackend(_Builtin):
    def data_received(self, data: bytes) -> None:
        self.traffic.bytes_in += len(data)
        if self.idle is not None:
            self.idle.last = self._loop.time()
        self.send(data)

    def eof_received(self) -> bool:
        return False  # close once what was echoed is written


class HelloBackend(_Builtin):
    """Answers each HTTP request with `hello from meshgate (<listener>)`."""

    def __init__(self, listener: Listener, spec: ListenerSpec, pool: PoolSpec) -> None:
        super().__init__(listener, spec, pool)
        self._parser = httptools.HttpRequestParser(self)
        self._pending = 0  # bytes of the request not yet answered
        body = f"hello from meshgate ({spec.name})\n".encode()
        self._response = (
            b"HTTP/1.1 200 OK\r\nServer: meshgate\r\nContent-Type: text/plain; charset=utf-8\r\n"
            + f"Content-Length: {len(body)}\r\n".encode()
        )
        self._body = body

    def data_received(self, data: bytes) -> None:
        self.traffic.bytes_in += len(data)
        if self.idle is not None:
            self.idle.last = self._loop.time()
        self._pending += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(b"501 Not Implemented", "upgrade")
        except httptools.HttpParserError:
            self._reject(b"400 Bad Request", "bad_request")
        else:
            if self._pending > MAX_PENDING_REQUEST:
                self._reject(b"431 Request Header Fields Too Large", "request_too_large")

    # httptools callback: a whole request has arrived.
    def on_message_complete(self) -> None:
        self._pending = 0
        keep_alive = self._parser.should_keep_alive()  # only right inside a callback
        connection = b"keep-alive" if keep_alive else b"close"
        self.send(self._response + b"Connection: " + connection + b"\r\n\r\n" + self._body)
        if not keep_alive and self.transport is not None:
            self.transport.close()

    def _reject(self, status: bytes, reason: str) -> None:
        self.reason = reason
        self.send(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        if self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool:
        return False
