"""What every listener kind shares: its lifecycle and its connections.

Lifecycle (a transition table a test walks): binding -> serving -> draining
-> closed, or binding -> failed when the bind is refused. `drain()` is the one
shutdown path, used alike by SIGTERM, a listener removed by a reload and (with
the mesh issue) a mesh address change: stop accepting, let established
connections finish until the deadline, then abort what is left.

Each listener keeps the `ListenerSpec` that new connections use; `swap()`
replaces it. Connections take the spec at accept time and keep it, so a
reload never changes an established connection.

Admission (the decisions are in the sans-I/O `admission` module): every
listener checks new clients against its allow-list and per-client limits
(`admit_client`); TCP-based listeners also count their open sockets against
their own cap and the global one (`Admission`, shared through the Context)
and stop accepting at a cap or at overload stage 3 (see stream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from meshgate import settings
from meshgate.aio import Deadlines
from meshgate.dataplane.admission import (
    NOT_ALLOWED,
    ClientLimiter,
    Slots,
    allowed,
    client_ip,
)
from meshgate.dataplane.certs import TlsStore
from meshgate.dataplane.overload import OverloadState
from meshgate.obs.metrics import Metrics
from meshgate.routing.table import ListenerSpec, hostport
from meshgate.upstream.http_conn import KeepAlive
from meshgate.upstream.pool import PoolRegistry

log = logging.getLogger("meshgate.listener")


class State(Enum):
    BINDING = "binding"
    SERVING = "serving"
    DRAINING = "draining"
    CLOSED = "closed"
    FAILED = "failed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.BINDING: frozenset({State.SERVING, State.FAILED, State.CLOSED}),
    State.SERVING: frozenset({State.DRAINING, State.CLOSED}),
    State.DRAINING: frozenset({State.CLOSED}),
    State.FAILED: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


class BadTransition(RuntimeError):
    pass


class Pausable(Protocol):
    """A listener that can stop and resume accepting (a TCP-based one)."""

    def reconcile(self) -> None:
        """Pause or resume accepting, as the counts and the stage now say."""


class Admission:
    """What listeners share to admit connections: the count of client sockets
    open on all TCP-based listeners against the global cap, and the
    listeners to pause or resume when that count or the overload stage moves.

    `reconcile()` runs at most once per loop iteration however many
    connections end in it (`schedule`), and never inside a listener's
    accept callback, where closing its server would close the socket being
    accepted as well.
    """

    __slots__ = ("_scheduled", "_turn", "listeners", "paused", "total")

    def __init__(self) -> None:
        self.total = Slots()  # the cap is set by the data plane from the table
        self.paused = 0  # listeners not accepting now (at a cap or overloaded)
        self.listeners: dict[Pausable, None] = {}  # serving ones, in bind order
        self._scheduled = False
        self._turn = 0  # which listener goes first: slots freed under the global cap go round

    def schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.reconcile)

    def reconcile(self) -> None:
        self._scheduled = False
        order = list(self.listeners)
        if not order:
            return
        self._turn = first = (self._turn + 1) % len(order)
        for listener in order[first:] + order[:first]:
            try:
                listener.reconcile()
            except Exception:  # a bug must not leave the other listeners paused
                log.exception("listener admission failed")


@dataclass(frozen=True, slots=True)
class Context:
    """What the data plane lends every listener."""

    metrics: Metrics
    pools: PoolRegistry
    tls: TlsStore
    keepalive: KeepAlive = field(default_factory=KeepAlive)  # idle upstream HTTP connections
    overload: OverloadState = field(default_factory=OverloadState)  # read on the hot path
    admission: Admission = field(default_factory=Admission)


def client_text(transport: asyncio.BaseTransport, announced: tuple[str, int] | None = None) -> str:
    """The client as "host:port" for logs: the address a PROXY header
    announced, else the socket's peer; "-" when neither is known."""
    peer = announced or transport.get_extra_info("peername")
    return hostport(peer[0], peer[1]) if peer else "-"


# TCP_NOTSENT_LOWAT (Linux 3.12; the constant is missing from some Pythons).
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


def limit_unsent(sock: socket.socket) -> None:
    """Bound the bytes a client socket queues in the kernel before they can be
    sent: the send buffer autotunes to 4 MiB, and a client that advertises a
    tiny window (a slow-read attack) would park all of it, per connection,
    in kernel memory; 1,000 such clients put the whole machine under TCP
    memory pressure. With TCP_NOTSENT_LOWAT the socket stops taking writes
    once this much is unsent, so backpressure reaches meshgate (and its
    per-connection buffer limit) instead. Bytes in flight are not limited:
    throughput to distant clients keeps the autotuned window. Set on the
    listening socket: accepted sockets inherit it."""
    with contextlib.suppress(OSError):  # not Linux: the kernel's own limits apply
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, settings.NOTSENT_LOWAT)


def listening_socket(spec: ListenerSpec) -> socket.socket:
    """The listening TCP socket of a tcp, tls, http or https listener.

    Made here rather than by the loop's `create_server` so that the listener
    holds it: the loop serves a duplicate, which is closed to pause
    accepting while this one keeps the port and the kernel backlog.
    """
    address, port = spec.key.address, spec.key.port
    # The address is an IP literal (config checks it); its form gives the family.
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if settings.REUSE_PORT:  # only among meshgate's own workers
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # "::" means IPv6 only, as the loop's create_server would have it;
            # an IPv4 listener on the same port is a listener of its own.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        limit_unsent(sock)
        sock.bind((address, port))
        sock.listen(settings.LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Traffic:
    """Byte counts of one connection or flow.

    Counted as plain integers on the hot path; added to Prometheus counters
    (which take a lock per call) only when flushed: at close and at scrape.
    """

    __slots__ = ("_flushed_in", "_flushed_out", "bytes_in", "bytes_out")

    def __init__(self) -> None:
        self.bytes_in = 0  # from the client
        self.bytes_out = 0  # to the client
        self._flushed_in = 0
        self._flushed_out = 0

    def flush(self, metrics: Metrics, listener: str, backend: str) -> None:
        bytes_in, bytes_out = self.bytes_in, self.bytes_out
        if bytes_in != self._flushed_in or bytes_out != self._flushed_out:
            metrics.add_bytes(
                listener, backend, bytes_in - self._flushed_in, bytes_out - self._flushed_out
            )
            self._flushed_in = bytes_in
            self._flushed_out = bytes_out


class Tracked(Protocol):
    """A connection or flow the listener can wait for and, at the deadline, abort."""

    traffic: Traffic
    backend: str  # the backend name it was accepted for (the spec may change since)

    def abort(self) -> None: ...


# The byte counts of a connection still in its PROXY-header or ClientHello
# phase: always zero (the bytes are counted by the protocol that follows).
NO_TRAFFIC = Traffic()


@runtime_checkable
class Drainable(Protocol):
    """A connection that can end early when its listener drains (an idle
    HTTP keep-alive connection closes at once instead of holding the drain)."""

    def begin_drain(self) -> None: ...


class Listener(ABC):
    """Base class: state, the current spec, and the set of live connections."""

    def __init__(self, spec: ListenerSpec, ctx: Context) -> None:
        self.spec = spec
        self.ctx = ctx
        self.state = State.BINDING
        self.error: str | None = None
        self.live: set[Tracked] = set()
        self.total = 0
        self._done_in = 0  # bytes of connections that have ended
        self._done_out = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.timers = Deadlines()  # its connections' timeouts
        self.loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self.refused: dict[str, int] = {}  # connections refused at accept, by reason
        self.clients = ClientLimiter()
        # The client each connection counts against, when per-client
        # connections are limited (handed on with the connection).
        self._client_of: dict[Tracked, str] = {}
        self.ctx.metrics.listener_up.labels(spec.name).set(0)
        self.ctx.metrics.listener_accepting.labels(spec.name).set(0)

    # -- lifecycle ---------------------------------------------------------
    def _move(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise BadTransition(f"{self.spec.key}: {self.state.value} -> {new.value}")
        self.state = new
        serving = 1 if new is State.SERVING else 0
        self.ctx.metrics.listener_up.labels(self.spec.name).set(serving)
        self.ctx.metrics.listener_accepting.labels(self.spec.name).set(serving)

    async def start(self) -> None:
        """Bind and start serving; on failure the state is FAILED and `error` says why."""
        self.loop = asyncio.get_running_loop()
        try:
            await self._bind()
        except OSError as exc:
            self.error = f"cannot bind {self.spec.key}: {exc.strerror or exc}"
            self._move(State.FAILED)
            log.error(
                "listener bind failed",
                extra={
                    "fields": {
                        "listener": self.spec.name,
                        "key": str(self.spec.key),
                        "error": self.error,
                    }
                },
            )
            return
        self._move(State.SERVING)
        log.info(
            "listener serving",
            extra={
                "fields": {
                    "listener": self.spec.name,
                    "key": str(self.spec.key),
                    "backend": self.spec.backend_label,
                }
            },
        )

    def swap(self, spec: ListenerSpec) -> None:
        """Use `spec` for connections accepted from now on."""
        self.spec = spec

    def begin_drain(self) -> None:
        """Stop accepting now (frees a TCP port at once); `drain()` finishes."""
        if self.state is not State.SERVING:
            return
        self._move(State.DRAINING)
        self._stop_accepting()
        for conn in list(self.live):
            if isinstance(conn, Drainable):
                conn.begin_drain()
        log.info(
            "listener draining",
            extra={
                "fields": {
                    "listener": self.spec.name,
                    "key": str(self.spec.key),
                    "live": len(self.live),
                }
            },
        )

    async def drain(self, deadline: float) -> None:
        """Stop accepting, wait for live connections until `deadline` (loop
        time), abort the rest; always ends CLOSED."""
        if self.state is State.CLOSED:
            return
        self.begin_drain()
        if self.state is State.DRAINING:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._idle.wait()
            except TimeoutError:
                left = list(self.live)
                log.warning(
                    "drain deadline reached, closing connections",
                    extra={"fields": {"listener": self.spec.name, "closed": len(left)}},
                )
                for conn in left:
                    conn.abort()
        self._move(State.CLOSED)
        await self._closed()

    # -- connection bookkeeping ---------------------------------------------
    def track(self, conn: Tracked) -> None:
        self.live.add(conn)
        self.total += 1
        self._idle.clear()

    def untrack(self, conn: Tracked) -> None:
        if conn not in self.live:
            return
        self.live.discard(conn)
        traffic = conn.traffic
        traffic.flush(self.ctx.metrics, self.spec.name, conn.backend)
        self._done_in += traffic.bytes_in
        self._done_out += traffic.bytes_out
        self._released(conn)
        if not self.live:
            self._idle.set()

    def hold(self, conn: Tracked) -> None:
        """Track a connection still in its PROXY-header or ClientHello phase:
        a drain waits for it (or aborts it) like any other."""
        self.live.add(conn)
        self._idle.clear()

    def pass_on(self, old: Tracked, new: Tracked) -> None:
        """`old`'s socket now belongs to `new` (its next protocol): one
        connection still, for drain, caps and per-client counts. Called
        before `new.connection_made`, so the listener never looks idle."""
        self.live.discard(old)
        self.live.add(new)
        self._idle.clear()
        if self._client_of:
            client = self._client_of.pop(old, None)
            if client is not None:
                self._client_of[new] = client

    def _released(self, conn: Tracked) -> None:
        """A tracked connection has ended (not handed on)."""
        if self._client_of:
            client = self._client_of.pop(conn, None)
            if client is not None:
                self.clients.closed(client)

    # -- admission ---------------------------------------------------------
    def admit_client(self, conn: Tracked, host: str | None, spec: ListenerSpec) -> bool:
        """Whether the client at `host` (the socket peer, or what a PROXY
        header announced) may connect by `spec`'s allow-list and per-client
        limits; a refusal is counted, and the caller closes the connection."""
        ip = client_ip(host) if host else None
        if not allowed(ip, spec.allow):
            self.refuse(NOT_ALLOWED, host)
            return False
        limits = spec.per_client
        if limits is None or ip is None:
            return True
        if limits.max_connections is None and limits.connection_rate is None:
            return True  # request_rate only: the HTTP server's
        client = str(ip)
        loop = self.loop or asyncio.get_running_loop()
        reason = self.clients.check(client, limits, loop.time())
        if reason is not None:
            self.refuse(reason, host)
            return False
        if limits.max_connections is not None:
            self.clients.opened(client)
            self._client_of[conn] = client
        return True

    def refuse(self, reason: str, client: str | None = None) -> None:
        """Count a connection refused at accept. Logged at debug only: a
        flood of refusals must not become a flood of log lines (the
        metric and /status count them)."""
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self.ctx.metrics.connection_refused(self.spec.name, reason)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "connection refused",
                extra={"fields": {"listener": self.spec.name, "client": client, "reason": reason}},
            )

    def counters(self) -> tuple[int, int]:
        """(bytes in, bytes out) so far, including live connections."""
        return (
            self._done_in + sum(c.traffic.bytes_in for c in self.live),
            self._done_out + sum(c.traffic.bytes_out for c in self.live),
        )

    def flush(self) -> None:
        """Add live connections' byte counts to the metrics (called at scrape)."""
        for conn in self.live:
            conn.traffic.flush(self.ctx.metrics, self.spec.name, conn.backend)

    # -- per kind ----------------------------------------------------------
    @abstractmethod
    async def _bind(self) -> None: ...

    @abstractmethod
    def _stop_accepting(self) -> None: ...

    async def _closed(self) -> None:
        """Release what is left once CLOSED (the kind's sockets)."""
        self._stop_accepting()

    @property
    def accepting(self) -> bool:
        """Whether new connections (flows) are taken now."""
        return self.state is State.SERVING

    @property
    def max_connections(self) -> int | None:
        """The cap in force on this listener's connections (None: none)."""
        return None

    def to_json(self) -> dict[str, Any]:
        bytes_in, bytes_out = self.counters()
        return {
            "name": self.spec.name,
            "key": str(self.spec.key),
            "address": self.spec.key.address,
            "port": self.spec.key.port,
            "protocol": self.spec.key.protocol,
            "state": self.state.value,
            "error": self.error,
            "backend": self.spec.backend_label,
            "active": len(self.live),
            "total": self.total,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "udp_flows": len(self.live) if self.spec.key.protocol == "udp" else 0,
            "accepting": self.accepting,
            "max_connections": self.max_connections,
            "refused": dict(self.refused),
        }
