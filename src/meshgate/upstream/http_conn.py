"""Upstream HTTP/1.1 connections and the keep-alive connections kept for reuse.

An `UpstreamConn` is the protocol of one connection to a backend endpoint.
While an exchange owns it, parsed response events go to that exchange (its
`ResponseSink`); while idle nobody owns it, and any byte or close from the
backend retires it (a backend may close an idle connection at any time: the
next request must not find it).

`KeepAlive` keeps idle connections per endpoint, newest first (a warm
connection is the least likely to have been closed by the backend), bounded
per endpoint, and closes those idle longer than the idle timeout with one
sweep timer for all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Protocol, cast

from meshgate import settings
from meshgate.protocols.http1 import HttpError, Limits, ResponseEvent, ResponseParser
from meshgate.upstream.pool import EndpointState


class ResponseSink(Protocol):
    """The exchange using an upstream connection."""

    def response_events(self, events: list[ResponseEvent]) -> None: ...

    def response_error(self, error: HttpError) -> None: ...

    def upstream_lost(self, exc: Exception | None) -> None: ...

    def upstream_raw(self, data: bytes) -> None: ...

    def upstream_eof(self) -> None: ...

    def upstream_pause(self) -> None: ...

    def upstream_resume(self) -> None: ...


# Response bytes are read into one buffer shared by every upstream connection
# (the loop runs one read at a time, and each read is copied out before the
# next), at most the connection's buffer limit at a time. uvloop's own reads
# take up to 256 KiB: to a client that reads slowly, each of those would sit
# whole in meshgate's memory past the limit (1,000 slow readers: ~300 MiB).
_READ_BUFFER = memoryview(bytearray(settings.WRITE_HIGH_WATER))


class UpstreamConn(asyncio.BufferedProtocol):
    __slots__ = (
        "buffer_limit",
        "closed",
        "ep",
        "exchanges",
        "idle_since",
        "keepalive",
        "key",
        "parser",
        "raw",
        "read_size",
        "sink",
        "transport",
    )

    def __init__(
        self,
        ep: EndpointState | None,
        key: Hashable,
        keepalive: KeepAlive,
        *,
        buffer_limit: int = settings.WRITE_HIGH_WATER,
    ) -> None:
        self.ep = ep
        # Request bytes buffered for the backend before the client stops being
        # read: the listener's limit, of the listener that opened it (a reused
        # connection keeps it; listeners rarely differ).
        self.buffer_limit = buffer_limit
        self.read_size = max(1, min(buffer_limit, len(_READ_BUFFER)))
        self.key = key
        self.keepalive = keepalive
        self.parser = ResponseParser(Limits())
        self.sink: ResponseSink | None = None
        self.transport: asyncio.Transport | None = None
        self.raw = False  # upgraded: bytes relayed as they come
        self.closed = False
        self.idle_since = 0.0
        self.exchanges = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(self.buffer_limit, self.buffer_limit // 4)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_BUFFER[: self.read_size]

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_READ_BUFFER[:nbytes]))

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            # Bytes nobody asked for on an idle connection: it is unusable.
            self.close()
            return
        if self.raw:
            sink.upstream_raw(data)
            return
        try:
            events = self.parser.feed(data)
        except HttpError as exc:
            sink.response_error(exc)
            return
        if events:
            sink.response_events(events)

    def eof_received(self) -> bool:
        sink = self.sink
        if sink is None:
            return False
        if self.raw:
            sink.upstream_eof()
            return True  # the other direction may still flow
        try:
            events = self.parser.feed_eof()
        except HttpError as exc:
            sink.response_error(exc)
            return False
        if events:
            sink.response_events(events)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.upstream_lost(exc)
        else:
            self.keepalive.forget(self)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_pause()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_resume()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        self.sink = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
            self.keepalive.forget(self)

    def abort(self) -> None:
        self.sink = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
            self.keepalive.forget(self)


class KeepAlive:
    """Idle upstream connections by key (endpoint and TLS settings)."""

    def __init__(self, idle_timeout: float = 60.0, per_key: int = 512) -> None:
        self.idle_timeout = idle_timeout
        self.per_key = per_key
        self._idle: dict[Hashable, list[UpstreamConn]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def take(self, key: Hashable) -> UpstreamConn | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def give_back(self, conn: UpstreamConn) -> None:
        """Keep `conn` for the next request to its endpoint (or close it)."""
        conn.sink = None
        if conn.closed or not conn.parser.reusable or conn.raw:
            conn.close()
            return
        conns = self._idle.setdefault(conn.key, [])
        if len(conns) >= self.per_key:
            conn.close()
            return
        loop = self._loop
        if loop is None:  # looked up once: each lookup costs a getpid()
            loop = self._loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        if conn.transport is not None:
            # Its exchange may have paused it (a slow client); idle, it must be
            # read, or a close by the backend goes unseen.
            conn.transport.resume_reading()
        conns.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.idle_timeout / 2, self._sweep)

    def forget(self, conn: UpstreamConn) -> None:
        conns = self._idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._idle[conn.key]

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        oldest = loop.time() - self.idle_timeout
        for conns in list(self._idle.values()):
            for conn in [c for c in conns if c.idle_since <= oldest]:
                conn.close()
        if self._idle:
            self._sweeper = loop.call_later(self.idle_timeout / 2, self._sweep)

    def close_all(self) -> None:
        for conns in list(self._idle.values()):
            for conn in list(conns):
                conn.close()
        self._idle.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def __len__(self) -> int:
        return sum(len(c) for c in self._idle.values())
