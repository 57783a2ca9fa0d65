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

A direction that turns out to be a bulk flow (SPLICE_AFTER bytes in large
reads) moves to `splice.Splice`: zero-copy through a kernel pipe, with the
same guarantees; small-message traffic never does (splice costs latency).

The per-connection path is kept short because new connections per second
is where a Python relay is weakest: no Task (`Connecting` drives the
upstream connect from callbacks), metric children looked up once per label
set, the client's address formatted only when a log line needs it.

TCP_NODELAY needs no code: uvloop sets it on every TCP transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from meshgate import settings
from meshgate.aio import Deadline, Deadlines
from meshgate.dataplane import splice
from meshgate.dataplane.listener import Tracked, Traffic, client_text
from meshgate.protocols.proxy_protocol import encode_v1, encode_v2
from meshgate.routing.table import ListenerSpec, PoolSpec
from meshgate.upstream.connect import Connecting, NoEndpointAvailable
from meshgate.upstream.pool import EndpointState

if TYPE_CHECKING:
    from meshgate.dataplane.listener import Listener

log = logging.getLogger("meshgate.tcp")


def connection_opened(listener: Listener, conn: Tracked) -> None:
    """Bookkeeping for an accepted TCP connection (relayed or built-in)."""
    listener.track(conn)
    children = listener.ctx.metrics.conn_children(listener.spec.name, conn.backend)
    children.opened.inc()
    children.active.inc()


def connection_ended(
    listener: Listener, conn: Tracked, client: str, started: float, reason: str
) -> None:
    """Bookkeeping and the one log line for a TCP connection that has ended.

    `reason` is "eof" for a normal close; anything else is also counted in
    meshgate_connection_errors_total (except no_upstream, counted when seen).
    """
    name = listener.spec.name
    metrics = listener.ctx.metrics
    metrics.conn_children(name, conn.backend).active.dec()
    listener.untrack(conn)
    if reason not in ("eof", "no_upstream"):
        metrics.connection_error(name, reason)
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
    chunk): the hot path only stores a timestamp. On the listener's
    `Deadlines` when given (cheaper than a loop timer; at most 1/64 of the
    timeout late), else on the loop.
    """

    __slots__ = ("_handle", "_loop", "_on_idle", "_timeout", "_timers", "last")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        on_idle: Callable[[], None],
        timers: Deadlines | None = None,
    ) -> None:
        self._loop = loop
        self._timeout = timeout
        self._on_idle = on_idle
        self._timers = timers
        self.last = loop.time()
        self._handle = self._later(timeout)

    def _later(self, delay: float) -> asyncio.TimerHandle | Deadline:
        if self._timers is not None:
            return self._timers.call_later(delay, self._check)
        return self._loop.call_later(delay, self._check)

    def _check(self) -> None:
        remaining = self.last + self._timeout - self._loop.time()
        if remaining <= 0:
            self._on_idle()
        else:
            self._handle = self._later(remaining)

    def cancel(self) -> None:
        self._handle.cancel()
        self._on_idle = _nothing  # no cycle with its owner left for the collector


def _nothing() -> None:
    pass


# Bytes a client may send before its upstream is connected without being
# paused: more than any request head, less than one of uvloop's reads.
_EARLY_PAUSE = 64 * 1024

# A direction's `_bulk_*` counter, once it no longer counts: waiting for its
# destination's write buffer to empty before splicing, or decided for good
# (spliced, or never: TLS, splice off, the connection ending).
_ARMING = -2
_DECIDED = -1


def _spliceable(a: asyncio.Transport, b: asyncio.Transport) -> bool:
    """Both are plain TCP transports: bytes meshgate neither decrypts nor encrypts."""
    return (
        a.get_extra_info("ssl_object") is None
        and b.get_extra_info("ssl_object") is None
        and a.get_extra_info("socket") is not None
        and b.get_extra_info("socket") is not None
    )


class Relay(asyncio.Protocol):
    """The client side of a proxied connection; owns the upstream side too.

    Bulk directions move to `splice.Splice` (zero-copy) once they have moved
    SPLICE_AFTER bytes in large reads; see `_bulk_read`.
    """

    __slots__ = (
        "_bulk_in",
        "_bulk_out",
        "_connecting",
        "_early",
        "_half_timer",
        "_loop",
        "_splice",
        "backend",
        "client",
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
        self._loop = loop = listener.loop or asyncio.get_running_loop()
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.endpoint: EndpointState | None = None
        self.client_eof = False
        self.upstream_eof = False
        self.closing = False
        self.finished = False
        self.client_open = False
        self.upstream_open = False
        self.reason = "eof"
        self.started = loop.time()
        self.idle: IdleTimer | None = None
        self._half_timer: Deadline | None = None
        self._connecting: Connecting | None = None
        # Data that arrived before the upstream connected (reading pauses
        # past _EARLY_PAUSE bytes: one read more at most).
        self._early: list[bytes] | None = None
        # Bytes each direction moved in large reads (or _ARMING / _DECIDED).
        bulk = 0 if settings.SPLICE and splice.AVAILABLE else _DECIDED
        self._bulk_in = bulk
        self._bulk_out = bulk
        self._splice: splice.Splice | None = None

    @property
    def client_addr(self) -> str:
        """The client as "host:port" (made when asked: only logs need it)."""
        if self.client is None:
            return "-"
        try:
            return client_text(self.client, self.peer)
        except (AttributeError, OSError):
            # uvloop could not read the peer's address when the connection
            # came (reset at once), and has no socket to ask any more.
            return "-"

    # -- client side (asyncio.Protocol) --------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.client = client = cast(asyncio.Transport, transport)
        self.client_open = True
        # Reading waits for the upstream where the transport allows (a TLS
        # terminator's does); uvloop starts reading after connection_made
        # whatever is asked here, and data_received keeps what comes early.
        client.pause_reading()
        limit = self.spec.buffer_limit  # soft: one read (up to 256 KiB) may go past it
        client.set_write_buffer_limits(limit, limit // 4)
        listener = self.listener
        connection_opened(listener, self)
        timers = listener.timers
        self.idle = IdleTimer(self._loop, self.pool.timeouts.idle, self._on_idle, timers)
        ctx = listener.ctx
        connecting = Connecting(
            self._loop,
            ctx.pools.get(self.pool),
            self._upstream_protocol,
            ctx.metrics,
            self,
            tls_for=ctx.tls.client_side,
            timers=timers,
        )
        if connecting.pending:
            self._connecting = connecting

    def data_received(self, data: bytes) -> None:
        n = len(data)
        self.traffic.bytes_in += n
        self.idle.last = self._loop.time()  # type: ignore[union-attr]  # set in connection_made
        upstream = self.upstream
        if upstream is None:
            # Still connecting: keep what comes (a request, typically), and
            # stop reading once it is more than a request would be. Not
            # pausing at the first read saves stopping and restarting the
            # read (two epoll changes) for nearly every new connection.
            early = self._early
            if early is None:
                self._early = early = [data]
            else:
                early.append(data)
            if sum(map(len, early)) >= _EARLY_PAUSE:
                self.client.pause_reading()  # type: ignore[union-attr]
            return
        upstream.write(data)
        if n >= settings.SPLICE_MIN_READ:
            self._bulk_read(True, n)

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.upstream_eof:
            # Both sides are done: closing sends our FIN, no shutdown() needed first.
            self.close()
            return True
        if self.upstream is not None and self.upstream.can_write_eof():
            self.upstream.write_eof()
        self._after_eof()
        return True  # keep the transport open: the other direction still flows

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self._bulk_out == _ARMING:
            self._splice_direction(False)
        elif self.upstream is not None and not self.upstream_eof and not self._spliced(False):
            self.upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.closing:
            self.reason = "client_reset"
        self.client_open = False
        self._transport_lost()

    # -- upstream side (called by _UpstreamProtocol) -------------------------
    def _upstream_protocol(self) -> _UpstreamProtocol:
        return _UpstreamProtocol(self)

    def upstream_made(self, transport: asyncio.Transport) -> None:
        if self.closing:
            # The client went away while we were connecting.
            transport.abort()
            return
        self.upstream = transport
        self.upstream_open = True
        transport.set_write_buffer_limits(self.spec.buffer_limit, self.spec.buffer_limit // 4)
        if self.pool.proxy_protocol is not None and self.client is not None:
            transport.write(
                proxy_header(self.pool.proxy_protocol, self.client, self.peer, self.sni)
            )
        if self._early is not None:
            for data in self._early:
                transport.write(data)
            self._early = None
        if self.client_eof and transport.can_write_eof():
            transport.write_eof()

    def upstream_data(self, data: bytes) -> None:
        n = len(data)
        self.traffic.bytes_out += n
        self.idle.last = self._loop.time()  # type: ignore[union-attr]
        self.client.write(data)  # type: ignore[union-attr]
        if n >= settings.SPLICE_MIN_READ:
            self._bulk_read(False, n)

    def upstream_eof_received(self) -> bool:
        self.upstream_eof = True
        if self.client_eof:
            self.close()
            return True
        if self.client is not None and self.client.can_write_eof():
            self.client.write_eof()
        self._after_eof()
        return True

    def upstream_pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading()

    def upstream_resume_writing(self) -> None:
        if self._bulk_in == _ARMING:
            self._splice_direction(True)
        elif self.client is not None and not self.client_eof and not self._spliced(True):
            self.client.resume_reading()

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.upstream is None or self.finished:
            return  # a transport aborted in upstream_made
        if exc is not None and not self.closing:
            self.reason = "upstream_reset"
        self.upstream_open = False
        self._transport_lost()

    # -- connect (Connecting reports here) -----------------------------------
    def upstream_connected(self, transport: asyncio.Transport, endpoint: EndpointState) -> None:
        self._connecting = None
        self.endpoint = endpoint
        if self.finished:
            endpoint.in_flight -= 1
            self.endpoint = None
        elif not self.closing and self.client is not None and not self.client_eof:
            self.client.resume_reading()

    def upstream_failed(self, error: NoEndpointAvailable) -> None:
        self._connecting = None
        self.listener.ctx.metrics.connection_error(self.spec.name, "no_upstream")
        log.warning(
            "no upstream",
            extra={
                "fields": {
                    "listener": self.spec.name,
                    "client": self.client_addr,
                    "error": str(error),
                }
            },
        )
        self.reason = "no_upstream"
        self.close()

    # -- splicing bulk directions (splice.Splice reports here) ---------------
    def _bulk_read(self, from_client: bool, n: int) -> None:
        """A large read: the direction may be a bulk flow. Past SPLICE_AFTER
        bytes of large reads it stops here and moves to splice: its source
        stops being read in user space, and once its destination's write
        buffer is empty (resume_writing with limits 0), the kernel takes over."""
        bulk = self._bulk_in if from_client else self._bulk_out
        if bulk < 0:
            return
        bulk += n
        if bulk < settings.SPLICE_AFTER:
            if from_client:
                self._bulk_in = bulk
            else:
                self._bulk_out = bulk
            return
        client, upstream = self.client, self.upstream
        src, dst = (client, upstream) if from_client else (upstream, client)
        if src is None or dst is None or self.closing or not _spliceable(src, dst):
            if from_client:
                self._bulk_in = _DECIDED
            else:
                self._bulk_out = _DECIDED
            return
        src.pause_reading()
        if dst.get_write_buffer_size():
            if from_client:
                self._bulk_in = _ARMING
            else:
                self._bulk_out = _ARMING
            dst.set_write_buffer_limits(0, 0)  # resume_writing once it is empty
            return
        self._splice_direction(from_client)

    def _splice_direction(self, from_client: bool) -> None:
        if from_client:
            self._bulk_in = _DECIDED
        else:
            self._bulk_out = _DECIDED
        client, upstream = self.client, self.upstream
        assert client is not None
        assert upstream is not None
        try:
            sp = self._splice
            if sp is None:
                sp = splice.Splice(
                    self._loop,
                    self,
                    client.get_extra_info("socket"),
                    upstream.get_extra_info("socket"),
                )
                self._splice = sp
            sp.add(from_client)
        except OSError:
            # No descriptor or pipe to spare: this direction stays in user space.
            if self._splice is not None and not self._splice.flows:
                self._splice.abort()  # our descriptors of the sockets, unused
                self._splice = None
            src, dst = (client, upstream) if from_client else (upstream, client)
            dst.set_write_buffer_limits(self.spec.buffer_limit, self.spec.buffer_limit // 4)
            if not self.closing and not (self.client_eof if from_client else self.upstream_eof):
                src.resume_reading()

    def _spliced(self, from_client: bool) -> bool:
        """Whether that direction's source is read by splice, not by its transport."""
        return self._splice is not None and self._splice.has(from_client)

    def spliced(self, from_client: bool, n: int) -> None:
        if from_client:
            self.traffic.bytes_in += n
        else:
            self.traffic.bytes_out += n
        self.idle.last = self._loop.time()  # type: ignore[union-attr]

    def spliced_eof(self, from_client: bool) -> None:
        if from_client:
            self.client_eof = True
        else:
            self.upstream_eof = True
        self._after_eof()

    def spliced_error(self, client_side: bool) -> None:
        if not self.closing:
            self.reason = "client_reset" if client_side else "upstream_reset"
        self.close()

    def _splice_released(self) -> None:
        if not (self.client_open or self.upstream_open):
            self._finish()

    # -- ending --------------------------------------------------------------
    def _after_eof(self) -> None:
        if self.client_eof and self.upstream_eof:
            self.close()
        elif self._half_timer is None:
            self._half_timer = self.listener.timers.call_later(
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
        if self._splice is not None:
            self._splice.close(self._splice_released)  # the pipes' data is written first
        if self.client is not None:
            self.client.close()
        if self.upstream is not None:
            self.upstream.close()

    def abort(self) -> None:
        """Close both sides now, dropping buffered data (deadline reached)."""
        if self.reason == "eof":
            self.reason = "aborted"
        self._begin_close()
        if self._splice is not None:
            self._splice.abort()
        if self.client is not None:
            self.client.abort()
        if self.upstream is not None:
            self.upstream.abort()

    def _begin_close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self._bulk_in = self._bulk_out = _DECIDED
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
            # The client transport is the only one; its loss ends the relay.

    def _transport_lost(self) -> None:
        if not self.closing:
            # One side is gone: flush what the other still has, then close it.
            self.close()
        if not (self.client_open or self.upstream_open) and (
            self._splice is None or not self._splice.active
        ):
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self._splice is not None:
            self._splice.abort()  # released already, unless something went wrong
        if self.idle is not None:
            self.idle.cancel()
        if self._half_timer is not None:
            self._half_timer.cancel()
        if self.endpoint is not None:
            self.endpoint.in_flight -= 1
            self.endpoint = None
        listener = self.listener
        client = self.client_addr if log.isEnabledFor(logging.INFO) else "-"
        connection_ended(listener, self, client, self.started, self.reason)


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
