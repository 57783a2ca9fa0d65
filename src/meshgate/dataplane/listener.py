"""What every listener kind shares: its lifecycle and its connections.

Lifecycle (a transition table a test walks): binding -> serving -> draining
-> closed, or binding -> failed when the bind is refused. `drain()` is the one
shutdown path, used alike by SIGTERM, a listener removed by a reload and (with
the mesh issue) a mesh address change: stop accepting, let established
connections finish until the deadline, then abort what is left.

Each listener keeps the `ListenerSpec` that new connections use; `swap()`
replaces it. Connections take the spec at accept time and keep it, so a
reload never changes an established connection.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from meshgate import settings
from meshgate.aio import Deadlines
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


@dataclass(frozen=True, slots=True)
class Context:
    """What the data plane lends every listener."""

    metrics: Metrics
    pools: PoolRegistry
    tls: TlsStore
    keepalive: KeepAlive = field(default_factory=KeepAlive)  # idle upstream HTTP connections
    overload: OverloadState = field(default_factory=OverloadState)  # read on the hot path


def client_text(transport: asyncio.BaseTransport, announced: tuple[str, int] | None = None) -> str:
    """The client as "host:port" for logs: the address a PROXY header
    announced, else the socket's peer; "-" when neither is known."""
    peer = announced or transport.get_extra_info("peername")
    return hostport(peer[0], peer[1]) if peer else "-"


async def open_tcp_server(
    spec: ListenerSpec, factory: Callable[[], asyncio.Protocol]
) -> asyncio.AbstractServer:
    """The listening TCP socket of a tcp or tls listener."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        factory,
        spec.key.address,
        spec.key.port,
        backlog=settings.LISTEN_BACKLOG,
        reuse_address=True,
        reuse_port=settings.REUSE_PORT or None,
    )


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
        self.ctx.metrics.listener_up.labels(spec.name).set(0)

    # -- lifecycle ---------------------------------------------------------
    def _move(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise BadTransition(f"{self.spec.key}: {self.state.value} -> {new.value}")
        self.state = new
        self.ctx.metrics.listener_up.labels(self.spec.name).set(1 if new is State.SERVING else 0)

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
        if not self.live:
            self._idle.set()

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
        }
