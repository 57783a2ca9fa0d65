"""The TCP relay: one accepted client connection joined to one upstream.

Written on asyncio Protocols (not streams) because the relay's cost is system
calls, not Python: uvloop reads up to 256 KiB per call and the data goes
straight to the other transport's `write`. What the relay guarantees:

- backpressure both ways: when one transport's write buffer passes its
  high-water mark, the other side stops reading until it drains;
- half-close: a FIN from one side is passed on with `write_eof`, the other
  direction keeps flowing; the connection ends when both sides have sent FIN,
  or when the half-closed timeout runs out;
- idle timeout, and one log line with bytes and duration when it ends;
- an error in one connection closes that connection only.

TCP_NODELAY needs no code: uvloop sets it on every TCP transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from meshgate import aio, settings
from meshgate.dataplane.listener import Tracked, Traffic, client_text
from meshgate.protocols.proxy_protocol import encode_v1, encode_v2
from meshgate.routing.table import ListenerSpec, PoolSpec
from meshgate.upstream.connect import NoEndpointAvailable, connect
from meshgate.upstream.pool import EndpointState

if TYPE_CHECKING:
    from meshgate.dataplane.listener import Listener

log = logging.getLogger("meshgate.tcp")


def connection_opened(listener: Listener, conn: Tracked) -> None:
    """Bookkeeping for an accepted TCP connection (relayed or built-in)."""
    listener.track(conn)
    metrics = listener.ctx.metrics
    metrics.connections.labels(listener.spec.name, conn.backend).inc()
    metrics.connections_active.labels(listener.spec.name, conn.backend).inc()


def connection_ended(
    listener: Listener, conn: Tracked, client: str, started: float, reason: str
) -> None:
    """Bookkeeping and the one log line for a TCP connection that has ended.

    `reason` is "eof" for a normal close; anything else is also counted in
    meshgate_connection_errors_total (except no_upstream, counted when seen).
    """
    name = listener.spec.name
    metrics = listener.ctx.metrics
    metrics.connections_active.labels(name, conn.backend).dec()
    listener.untrack(conn)
    if reason not in ("eof", "no_upstream"):
        metrics.connection_errors.labels(name, reason).inc()
    if log.isEnabledFor(logging.INFO):
        log.info(
            "connection closed",
            extra={
                "fields": {
                    "listener": name,
                    "backend": conn.backend,
                    "client": client,
                    "bytes_in": conn.traffic.bytes_in,
                    "bytes_out": conn.traffic.bytes_out,
                    "duration": round(asyncio.get_running_loop().time() - started, 6),
                    "reason": reason,
                }
            },
        )


def proxy_header(
    version: str, client: asyncio.Transport, peer: tuple[str, int] | None, sni: str | None
) -> bytes:
    """The PROXY header telling the backend who the client really is.

    Source: the client's address; destination: the address the client
    connected to (meshgate's listener). v2 also carries the SNI as
    PP2_TYPE_AUTHORITY. Without addresses (a Unix socket?) v2 says LOCAL.
    """
    source = peer or client.get_extra_info("peername")
    destination = client.get_extra_info("sockname")
    src = (source[0], source[1]) if source else None
    dst = (destination[0], destination[1]) if destination else None
    if version == "v1" and src and dst:
        return encode_v1(src, dst)
    return encode_v2(src, dst, authority=sni)


class IdleTimer:
    """Fires `on_idle` once `timeout` seconds pass with no `touch()`.

    One timer per connection, re-armed only when it fires (not on every
    chunk): the hot path only stores a timestamp.
    """

    __slots__ = ("_handle", "_loop", "_on_idle", "_timeout", "last")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, timeout: float, on_idle: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._timeout = timeout
        self._on_idle = on_idle
        self.last = loop.time()
        self._handle = loop.call_later(timeout, self._check)

    def _check(self) -> None:
        remaining = self.last + self._timeout - self._loop.time()
        if remaining <= 0:
            self._on_idle()
        else:
            self._handle = self._loop.call_later(remaining, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


class Relay(asyncio.Protocol):
    """The client side of a proxied connection; owns the upstream side too."""

    __slots__ = (
        "_connecting",
        "_early",
        "_half_timer",
        "_loop",
        "backend",
        "client",
        "client_addr",
        "client_eof",
        "client_open",
        "closing",
        "endpoint",
        "finished",
        "idle",
        "listener",
        "peer",
        "pool",
        "reason",
        "sni",
        "spec",
        "started",
        "traffic",
        "upstream",
        "upstream_eof",
        "upstream_open",
    )

    def __init__(
        self,
        listener: Listener,
        spec: ListenerSpec,
        pool: PoolSpec,
        sni: str | None = None,
        peer: tuple[str, int] | None = None,
    ) -> None:
        self.listener = listener
        self.spec = spec  # the table this connection was accepted with, for its whole life
        self.pool = pool
        self.sni = sni  # the client's TLS server name, when the listener peeked one
        self.peer = peer  # the client as a PROXY header announced it
        self.backend = pool.name
        self.traffic = Traffic()
        self._loop = asyncio.get_running_loop()
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.endpoint: EndpointState | None = None
        self.client_addr = "-"
        self.client_eof = False
        self.upstream_eof = False
        self.closing = False
        self.finished = False
        self.client_open = False
        self.upstream_open = False
        self.reason = "eof"
        self.started = self._loop.time()
        self.idle: IdleTimer | None = None
        self._half_timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        # Data that arrived before the upstream connected: uvloop starts
        # reading right after connection_made, so pausing there is not enough.
        self._early: list[bytes] = []

    # -- client side (asyncio.Protocol) --------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.client = client = cast(asyncio.Transport, transport)
        self.client_open = True
        self.client_addr = client_text(client, self.peer)
        # Nothing is read until the upstream is there to take it.
        client.pause_reading()
        client.set_write_buffer_limits(settings.WRITE_HIGH_WATER, settings.WRITE_LOW_WATER)
        connection_opened(self.listener, self)
        self.idle = IdleTimer(self._loop, self.pool.timeouts.idle, self._on_idle)
        self._connecting = aio.spawn(self._connect(), name=f"connect {self.spec.name}")

    def data_received(self, data: bytes) -> None:
        self.traffic.bytes_in += len(data)
        self.idle.last = self._loop.time()  # type: ignore[union-attr]  # set in connection_made
        upstream = self.upstream
        if upstream is None:
            # Still connecting: keep this one read and stop reading until then.
            self._early.append(data)
            self.client.pause_reading()  # type: ignore[union-attr]
            return
        upstream.write(data)

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.upstream is not None and self.upstream.can_write_eof():
            self.upstream.write_eof()
        self._after_eof()
        return True  # keep the transport open: the other direction still flows

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and not self.upstream_eof:
            self.upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.closing:
            self.reason = "client_reset"
        self.client_open = False
        self._transport_lost()

    # -- upstream side (called by _UpstreamProtocol) -------------------------
    def upstream_made(self, transport: asyncio.Transport) -> None:
        if self.closing:
            # The client went away while we were connecting.
            transport.abort()
            return
        self.upstream = transport
        self.upstream_open = True
        transport.set_write_buffer_limits(settings.WRITE_HIGH_WATER, settings.WRITE_LOW_WATER)
        if self.pool.proxy_protocol is not None and self.client is not None:
            transport.write(
                proxy_header(self.pool.proxy_protocol, self.client, self.peer, self.sni)
            )
        for data in self._early:
            transport.write(data)
        self._early.clear()
        if self.client_eof and transport.can_write_eof():
            transport.write_eof()

    def upstream_data(self, data: bytes) -> None:
        self.traffic.bytes_out += len(data)
        self.idle.last = self._loop.time()  # type: ignore[union-attr]
        self.client.write(data)  # type: ignore[union-attr]

    def upstream_eof_received(self) -> bool:
        self.upstream_eof = True
        if self.client is not None and self.client.can_write_eof():
            self.client.write_eof()
        self._after_eof()
        return True

    def upstream_pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading()

    def upstream_resume_writing(self) -> None:
        if self.client is not None and not self.client_eof:
            self.client.resume_reading()

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.upstream is None or self.finished:
            return  # a transport aborted in upstream_made
        if exc is not None and not self.closing:
            self.reason = "upstream_reset"
        self.upstream_open = False
        self._transport_lost()

    # -- connect -------------------------------------------------------------
    async def _connect(self) -> None:
        ctx = self.listener.ctx
        pool = ctx.pools.get(self.pool)
        try:
            _, _, endpoint = await connect(
                pool, lambda: _UpstreamProtocol(self), ctx.metrics, ctx.tls.client_side
            )
        except NoEndpointAvailable as exc:
            ctx.metrics.connection_errors.labels(self.spec.name, "no_upstream").inc()
            log.warning(
                "no upstream",
                extra={
                    "fields": {
                        "listener": self.spec.name,
                        "client": self.client_addr,
                        "error": str(exc),
                    }
                },
            )
            self.reason = "no_upstream"
            self.close()
            return
        self.endpoint = endpoint
        if self.finished:
            endpoint.in_flight -= 1
            self.endpoint = None
        elif not self.closing and self.client is not None and not self.client_eof:
            self.client.resume_reading()

    # -- ending --------------------------------------------------------------
    def _after_eof(self) -> None:
        if self.client_eof and self.upstream_eof:
            self.close()
        elif self._half_timer is None:
            self._half_timer = self._loop.call_later(
                self.pool.timeouts.half_closed, self._on_half_closed_timeout
            )

    def _on_half_closed_timeout(self) -> None:
        self.reason = "half_closed_timeout"
        self.abort()

    def _on_idle(self) -> None:
        self.reason = "idle_timeout"
        self.abort()

    def close(self) -> None:
        """Close both sides after their buffered data is written."""
        self._begin_close()
        for transport in (self.client, self.upstream):
            if transport is not None:
                transport.close()

    def abort(self) -> None:
        """Close both sides now, dropping buffered data (deadline reached)."""
        if self.reason == "eof":
            self.reason = "aborted"
        self._begin_close()
        for transport in (self.client, self.upstream):
            if transport is not None:
                transport.abort()

    def _begin_close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            # The client transport is the only one; its loss ends the relay.

    def _transport_lost(self) -> None:
        if not self.closing:
            # One side is gone: flush what the other still has, then close it.
            self.close()
        if not (self.client_open or self.upstream_open):
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.idle is not None:
            self.idle.cancel()
        if self._half_timer is not None:
            self._half_timer.cancel()
        if self.endpoint is not None:
            self.endpoint.in_flight -= 1
            self.endpoint = None
        connection_ended(self.listener, self, self.client_addr, self.started, self.reason)


class _UpstreamProtocol(asyncio.Protocol):
    """The upstream side: forwards every event to its Relay."""

    __slots__ = ("relay",)

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.relay.upstream_made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.relay.upstream_data(data)

    def eof_received(self) -> bool:
        return self.relay.upstream_eof_received()

    def pause_writing(self) -> None:
        self.relay.upstream_pause_writing()

    def resume_writing(self) -> None:
        self.relay.upstream_resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.upstream_lost(exc)
