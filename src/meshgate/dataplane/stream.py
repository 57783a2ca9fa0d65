"""What tcp, tls, http and https listeners share: the listening TCP socket,
the caps on open connections, client admission, and an optional PROXY header
read before the listener's own protocol takes the connection.

Pausing. The listener binds and holds the listening socket itself; the event
loop serves a duplicate descriptor of it. To stop accepting, the loop's
server is closed: only the duplicate goes, the socket keeps listening and
the kernel backlog holds new connections (as HAProxy does at `maxconn`). To
resume, a new server is made from a new duplicate (`create_server(sock=)`
never waits: it is run in place, no Task). The pause is made right after the
accept that fills the last slot (a `call_soon`: closing the server inside its
own accept callback would close the socket being accepted too); uvloop 0.23
accepts one connection per loop iteration, so the next queued one waits in
the kernel. Should a loop accept several at once, those past the cap are
closed at once and counted (`Refused`). While paused and a slot frees,
queued connections are taken by hand (`accept()` on the held socket), one per
free slot, and the server comes back only once the queue is empty: a queue
longer than the free slots stays in the kernel, in order.

Counting. A socket counts from the accept callback (`_accept`, the
protocol factory) until the last of its protocols lets go of it
(`untrack`, or `socket_closed` for one refused at once); connections still
in the PROXY-header or ClientHello phase count too: they hold a descriptor.
The accept callback costs two additions and two comparisons, and no Task
or timer: new connections per second stay what they were.

Descriptor exhaustion. When accept() fails with EMFILE/ENFILE, libuv (under
uvloop) closes its reserve descriptor, accepts and at once closes every
queued connection, and reopens the reserve: the listener neither crashes
nor spins, but those connections are dropped where Python cannot see them,
so they cannot be counted. The global cap's default (half the descriptor
limit less a reserve) keeps the accept path from getting there; what meshgate
itself sees (a duplicate or a hand accept failing) is counted as
`fd_exhausted` and retried at the next release or overload sample, and the
overload sampler logs "out of file descriptors" when it cannot open /proc.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from abc import abstractmethod
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

from meshgate import settings
from meshgate.dataplane.admission import (
    CLIENT_GONE,
    FD_EXHAUSTED,
    NO_CAP,
    Slots,
    cap_of,
    counts_clients,
    over_cap,
    pause_reason,
)
from meshgate.dataplane.listener import (
    NO_TRAFFIC,
    Context,
    Listener,
    State,
    Tracked,
    listening_socket,
)
from meshgate.dataplane.proxy_accept import Peer, ProxyHeaderReader
from meshgate.routing.table import ListenerSpec

log = logging.getLogger("meshgate.listener")

T = TypeVar("T")

# accept() errors that say the process or the system is out of descriptors
# (or of the memory a socket needs): wait for connections to end, then retry.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class StreamListener(Listener):
    def __init__(self, spec: ListenerSpec, ctx: Context) -> None:
        super().__init__(spec, ctx)
        self.slots = Slots(cap_of(spec.max_connections))  # this listener's sockets
        self._total = ctx.admission.total  # all listeners' sockets (looked up once)
        self._gated = bool(spec.allow) or counts_clients(spec.per_client)
        self._sock: socket.socket | None = None  # the listening socket, held while serving
        self._server: asyncio.AbstractServer | None = None  # None: not accepting
        self.paused: str | None = None  # why not accepting while serving
        self.pauses = 0  # times it paused
        self._reported: str | None = None  # the pause reason logged, until resumed
        self._reported_pauses = 0  # `pauses` when the report was made
        self._sampled_pauses = 0  # `pauses` at the previous `report_resumed`
        self._failing = False  # an accept failure logged during this pause

    # -- binding and the accept callback --------------------------------------
    async def _bind(self) -> None:
        sock = listening_socket(self.spec)
        try:
            self._server = self._serve_from(sock)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        admission = self.ctx.admission
        admission.listeners[self] = None
        admission.schedule()  # paused at once if a cap is already reached

    def _serve_from(self, sock: socket.socket) -> asyncio.AbstractServer:
        """A loop server accepting on a duplicate of the listening socket."""
        assert self.loop is not None
        dup = sock.dup()
        try:
            return _run_now(
                self.loop.create_server(self._accept, sock=dup, backlog=settings.LISTEN_BACKLOG)
            )
        except BaseException:
            dup.close()  # a no-op if the server had taken it over
            raise

    def _accept(self) -> asyncio.Protocol:
        own, total = self.slots, self._total
        own.open += 1
        total.open += 1
        if own.open >= own.cap or total.open >= total.cap:
            reason = over_cap(own, total)
            if reason is not None:
                return Refused(self, reason)
            # This one fills the last slot: pause right after it (not inside
            # this callback, which would close the socket being accepted).
            self.ctx.admission.schedule()
        # The spec is read once, at accept: a reload affects later connections only.
        spec = self.spec
        if spec.proxy_accept is not None:
            return ProxyHeaderReader(
                self, spec.proxy_accept, lambda peer: self._serve(spec, peer), spec
            )
        if self._gated:
            return Gate(self, spec)
        return self._serve(spec, None)

    @abstractmethod
    def _serve(self, spec: ListenerSpec, peer: Peer | None) -> asyncio.Protocol:
        """The protocol that serves a new connection (`peer`: from a PROXY header)."""

    def swap(self, spec: ListenerSpec) -> None:
        super().swap(spec)
        self.slots.cap = cap_of(spec.max_connections)
        self._gated = bool(spec.allow) or counts_clients(spec.per_client)
        if self.state is State.SERVING:
            self.ctx.admission.schedule()  # the cap may have moved either way

    # -- counting ------------------------------------------------------------------
    def _released(self, conn: Tracked) -> None:
        if self._client_of:  # per-client counts (skipped in the common case: a call less)
            super()._released(conn)
        self.socket_closed()

    def socket_closed(self) -> None:
        """One client socket fewer (a connection ended or was refused)."""
        self.slots.open -= 1
        admission = self.ctx.admission
        admission.total.open -= 1
        if admission.paused:
            admission.schedule()  # a slot freed: maybe resume

    # -- pausing and resuming -----------------------------------------------------
    def reconcile(self) -> None:
        if self.state is not State.SERVING or self._sock is None:
            return
        reason = pause_reason(self.slots, self._total, self.ctx.overload.stage)
        if reason is not None:
            self._pause(reason)
        elif self._server is None:
            self._refill()

    def _pause(self, reason: str) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()  # the duplicate only: the socket keeps listening
        if self.paused is None:
            self.pauses += 1
            self.ctx.admission.paused += 1
            self.ctx.metrics.listener_accepting.labels(self.spec.name).set(0)
            if self._reported is None:
                self._reported = reason
                self._reported_pauses = self.pauses
                self._report("listener paused", reason)
        self.paused = reason

    def _refill(self) -> None:
        """Take queued connections into free slots by hand; accept through the
        loop again once the queue is empty."""
        sock = self._sock
        assert sock is not None
        while pause_reason(self.slots, self._total, self.ctx.overload.stage) is None:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:  # nothing queued
                self._resume()
                return
            except (InterruptedError, ConnectionAbortedError):
                continue  # gone before it was taken: the next one
            except OSError as exc:
                self._accept_failed(exc)
                return
            if _client_gone(conn):
                # Queued while paused and left since (a flood that stopped):
                # closed here, before any upstream work, so the queue drains
                # at once and the next live client is not kept waiting.
                conn.close()
                self.refuse(CLIENT_GONE)
                continue
            self._adopt(conn)

    def _adopt(self, conn: socket.socket) -> None:
        """Serve a socket accepted by hand, exactly as if the loop had."""
        assert self.loop is not None
        conn.setblocking(False)
        coro = self.loop.connect_accepted_socket(self._accept, conn)
        try:
            waited = coro.send(None)  # makes the transport; the factory has run
        except StopIteration:
            return
        except Exception:
            conn.close()
            self.socket_closed()  # counted by the factory, never served
            log.debug("accepted socket not served", exc_info=True)
            return
        _finish_later(coro, waited)

    def _resume(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            self._server = self._serve_from(sock)
        except OSError as exc:
            self._accept_failed(exc)
            return
        if self.paused is not None:
            self.paused = None
            self._failing = False
            self.ctx.admission.paused -= 1
            self.ctx.metrics.listener_accepting.labels(self.spec.name).set(1)

    def _accept_failed(self, exc: OSError) -> None:
        """Out of descriptors (or another accept error): stay paused; the next
        release or overload sample retries."""
        exhausted = exc.errno in _EXHAUSTED
        if exhausted:
            self.refuse(FD_EXHAUSTED)  # one per failed attempt: connections wait queued
        if not self._failing:
            self._failing = True
            log.warning(
                "listener cannot accept",
                extra={
                    "fields": {
                        "listener": self.spec.name,
                        "key": str(self.spec.key),
                        "error": exc.strerror or str(exc),
                    }
                },
            )
        self._pause(FD_EXHAUSTED if exhausted else "accept_error")

    def report_resumed(self) -> None:
        """Log the end of a pause once the listener has accepted for a whole
        sample interval (called by the overload sampler): a listener at its
        cap pauses and resumes with every connection, which is one line
        when it begins and one when it is over, not two per connection."""
        before, self._sampled_pauses = self._sampled_pauses, self.pauses
        if self._reported is None or self.paused is not None or self.pauses != before:
            return
        reason = self._reported
        self._reported = None
        self._report("listener resumed", reason, self.pauses - self._reported_pauses + 1)

    def _report(self, event: str, reason: str, pauses: int | None = None) -> None:
        fields: dict[str, Any] = {
            "listener": self.spec.name,
            "key": str(self.spec.key),
            "reason": reason,
            "connections": self.slots.open,
            "max_connections": self.max_connections,
            "all_connections": self._total.open,
            "global_max_connections": None if self._total.cap == NO_CAP else self._total.cap,
        }
        if pauses is not None:
            fields["pauses"] = pauses
        log.warning(event, extra={"fields": fields})

    def _stop_accepting(self) -> None:
        self.ctx.admission.listeners.pop(self, None)
        self._reported = None  # draining is logged as such, not as a resume
        if self.paused is not None:
            self.paused = None
            self.ctx.admission.paused -= 1
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._sock is not None:
            self._sock.close()  # the port is free now; queued connections are reset
            self._sock = None
        self.ctx.metrics.listener_accepting.labels(self.spec.name).set(0)

    # -- status ---------------------------------------------------------------------
    @property
    def accepting(self) -> bool:
        return self.state is State.SERVING and self._server is not None

    @property
    def max_connections(self) -> int | None:
        cap = min(self.slots.cap, self._total.cap)
        return None if cap == NO_CAP else cap

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "connections": self.slots.open, "paused": self.paused}


class Refused(asyncio.Protocol):
    """A connection accepted past a cap, in the burst of accepts that reached
    it (before the listener could pause): closed at once, and counted."""

    __slots__ = ("listener", "reason")

    def __init__(self, listener: StreamListener, reason: str) -> None:
        self.listener = listener
        self.reason = reason

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.listener.refuse(self.reason)
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.socket_closed()


class Gate(asyncio.Protocol):
    """The first protocol of a connection when the listener has client rules
    (allow-list, per-client limits) and no PROXY header to wait for: checks
    the socket's peer, then hands the connection on, or closes it before any
    upstream work."""

    __slots__ = ("listener", "spec")

    traffic = NO_TRAFFIC
    backend = ""

    def __init__(self, listener: StreamListener, spec: ListenerSpec) -> None:
        self.listener = listener
        self.spec = spec

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self.listener
        peer = transport.get_extra_info("peername")
        if not listener.admit_client(self, peer[0] if peer else None, self.spec):
            transport.close()
            return
        # Every protocol a listener serves with tracks itself (Tracked).
        nxt = listener._serve(self.spec, None)
        listener.pass_on(self, cast(Tracked, nxt))
        transport.set_protocol(nxt)
        nxt.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.socket_closed()  # reached only when refused

    def abort(self) -> None:
        """Never tracked: it hands on or closes within `connection_made`."""


def _run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run to its end, here, a coroutine that waits on nothing.

    uvloop's `create_server(sock=...)` is a coroutine by signature only: it
    never suspends (asyncio's yields once, bare). Run in place, it lets a
    listener resume accepting from a plain callback, without a Task and
    without a moment where it is neither paused nor serving.
    """
    try:
        while True:
            if coro.send(None) is not None:
                coro.close()
                raise RuntimeError("the coroutine waited on a future")
    except StopIteration as done:
        return cast(T, done.value)


def _finish_later(coro: Coroutine[Any, Any, object], waited: object) -> None:
    """Step `coro` on each time the future it waits on is done (no Task).

    `connect_accepted_socket` waits for the protocol's `connection_made`;
    dropped before its end it would close the connection it made.
    """

    def step(_: object) -> None:
        try:
            nxt = coro.send(None)
        except StopIteration:
            return
        except Exception:  # the connection failed before it was made: already closed
            log.debug("accepted socket not served", exc_info=True)
            return
        _finish_later(coro, nxt)

    if isinstance(waited, asyncio.Future):
        waited.add_done_callback(step)
    else:  # a bare yield
        asyncio.get_running_loop().call_soon(step, None)


def _client_gone(conn: socket.socket) -> bool:
    """Whether the client of a just-accepted socket has already closed or
    reset it (a peek: nothing it sent is consumed)."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False  # alive, nothing sent yet
    except OSError:
        return True  # reset
