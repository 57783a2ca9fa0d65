"""Connect to a backend: try its endpoints in the pool's order, each with the
backend's connect timeout, until one accepts.

Host names are resolved here, at connect time, on every attempt: a
Kubernetes Service name may point somewhere else tomorrow. Each failure is
classified into a short reason that becomes a metric label and a log field.

`Connecting` is the procedure. The L4 relay uses it as is, once per
accepted connection: it drives the loop's `create_connection` from future
callbacks, without a Task, an `asyncio.timeout` or a coroutine of its own
(about a tenth of the relay's CPU per new connection). `connect()` awaits
it, for callers that are coroutines anyway (the HTTP exchange).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from meshgate.aio import Deadline, Deadlines
from meshgate.obs.metrics import Metrics
from meshgate.routing.table import EndpointAddr, PoolSpec
from meshgate.upstream.pool import EndpointState, Pool

P = TypeVar("P", bound=asyncio.BaseProtocol)

_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}


def failure_reason(exc: BaseException) -> str:
    """A stable, low-cardinality label for why a connect failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls_verify"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return "unreachable"
    return "error"


@dataclass(frozen=True, slots=True)
class Attempt:
    endpoint: str
    reason: str


class NoEndpointAvailable(Exception):
    """Every endpoint of the backend was tried and none accepted."""

    def __init__(self, backend: str, attempts: tuple[Attempt, ...]) -> None:
        self.backend = backend
        self.attempts = attempts
        tried = ", ".join(f"{a.endpoint} ({a.reason})" for a in attempts) or "none configured"
        super().__init__(f"backend {backend}: no endpoint accepted the connection: {tried}")


# Given an endpoint, the TLS context and server name to connect with (None: plain TCP).
TlsFor = Callable[[PoolSpec, EndpointAddr], tuple[ssl.SSLContext, str | None] | None]


def _plain(pool: PoolSpec, addr: EndpointAddr) -> None:
    return None


def _failed(
    pool: Pool, ep: EndpointState, exc: BaseException, metrics: Metrics, now: float
) -> Attempt:
    """Bookkeeping for one failed attempt (the endpoint's in-flight count included)."""
    ep.in_flight -= 1
    reason = failure_reason(exc)
    pool.record_failure(ep, now)
    metrics.connect_failures.labels(pool.spec.name, str(ep.addr), reason).inc()
    return Attempt(str(ep.addr), reason)


async def connect(
    pool: Pool,
    factory: Callable[[], P],
    metrics: Metrics,
    tls_for: TlsFor = _plain,
    *,
    candidates: list[EndpointState] | None = None,
    connect_timeout: float | None = None,
    success_is_connect: bool = True,
) -> tuple[asyncio.Transport, P, EndpointState]:
    """`Connecting` as a coroutine: the connection to the first endpoint of
    `pool` that accepts one, or NoEndpointAvailable.

    With `tls_for` answering a context, the connection is TLS and counts as
    made only once the handshake (and certificate check) succeeded.
    `candidates` (default: the pool's order now) and `connect_timeout` (default: the
    backend's connect timeout) let an HTTP route choose; HTTP also counts an
    endpoint's success at a valid response, not at connect
    (`success_is_connect=False`), so one that accepts and then answers garbage
    is ejected. The caller
    must decrement `in_flight` of the returned endpoint when the connection ends.
    Cancelled, it closes the connection it was making.
    """
    loop = asyncio.get_running_loop()
    owner = _Awaited(loop.create_future())
    attempt = Connecting(
        loop,
        pool,
        factory,
        metrics,
        owner,
        tls_for=tls_for,
        candidates=candidates,
        connect_timeout=connect_timeout,
        success_is_connect=success_is_connect,
    )
    try:
        transport, ep = await owner.done
    except asyncio.CancelledError:
        attempt.cancel()
        raise
    return transport, cast(P, transport.get_protocol()), ep


class _Awaited:
    """A ConnectOwner that hands the outcome to a future."""

    __slots__ = ("done",)

    def __init__(self, done: asyncio.Future[tuple[asyncio.Transport, EndpointState]]) -> None:
        self.done = done

    def upstream_connected(self, transport: asyncio.Transport, endpoint: EndpointState) -> None:
        self.done.set_result((transport, endpoint))

    def upstream_failed(self, error: NoEndpointAvailable) -> None:
        self.done.set_exception(error)


class ConnectOwner(Protocol):
    """Who a `Connecting` reports to: exactly one of these is called, once
    (neither after `Connecting.cancel()`)."""

    def upstream_connected(self, transport: asyncio.Transport, endpoint: EndpointState) -> None:
        """Connected to `endpoint`; the caller must decrement its `in_flight`
        when the connection ends. The protocol's connection_made came first."""

    def upstream_failed(self, error: NoEndpointAvailable) -> None:
        """No endpoint accepted the connection."""


class Connecting:
    """Try the endpoints in order, each with the connect timeout, until one
    accepts; count failures (ejection, metrics) and report the outcome to
    `owner`, without a Task.

    Each attempt's `create_connection` coroutine is stepped by hand: sent
    into until it waits on a future, and stepped again from that future's
    done callback. The timeout cancels the future it waits on (uvloop then
    closes the half-made socket), as `asyncio.timeout` would via the Task.
    """

    __slots__ = (
        "_attempts",
        "_candidates",
        "_coro",
        "_count_success",
        "_ep",
        "_expired",
        "_factory",
        "_loop",
        "_metrics",
        "_owner",
        "_pool",
        "_timeout",
        "_timer",
        "_timers",
        "_tls_for",
        "_waiting",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pool: Pool,
        factory: Callable[[], asyncio.BaseProtocol],
        metrics: Metrics,
        owner: ConnectOwner,
        *,
        tls_for: TlsFor = _plain,
        timers: Deadlines | None = None,
        candidates: list[EndpointState] | None = None,
        connect_timeout: float | None = None,
        success_is_connect: bool = True,
    ) -> None:
        self._loop = loop
        self._timers = timers  # for the connect timeout; else a loop timer
        self._pool = pool
        self._factory = factory
        self._metrics = metrics
        self._owner = owner
        self._tls_for = tls_for
        order = candidates if candidates is not None else pool.candidates(loop.time())
        self._candidates: Iterator[EndpointState] = iter(order)
        self._timeout = connect_timeout or pool.spec.timeouts.connect
        self._count_success = success_is_connect
        self._attempts: list[Attempt] | None = None  # made at the first failure
        self._coro: Coroutine[Any, Any, tuple[asyncio.Transport, Any]] | None = None
        self._ep: EndpointState | None = None
        self._timer: asyncio.TimerHandle | Deadline | None = None
        self._waiting: asyncio.Future[Any] | None = None
        self._expired = False
        self._next()

    @property
    def pending(self) -> bool:
        """Whether an attempt is still under way (False once the owner was told)."""
        return self._coro is not None

    def _next(self) -> None:
        """Start the attempt at the next candidate, or report that none is left."""
        ep = next(self._candidates, None)
        if ep is None:
            self._coro = None
            spec = self._pool.spec
            self._owner.upstream_failed(NoEndpointAvailable(spec.name, tuple(self._attempts or ())))
            return
        ep.in_flight += 1
        self._ep = ep
        spec = self._pool.spec
        loop = self._loop
        addr = ep.addr
        tls = self._tls_for(spec, addr)
        timeout = self._timeout
        if tls is None:
            self._coro = loop.create_connection(self._factory, addr.connect_host, addr.port)
        else:
            self._coro = loop.create_connection(
                self._factory,
                addr.connect_host,
                addr.port,
                ssl=tls[0],
                server_hostname=tls[1] or "",
                ssl_handshake_timeout=timeout,
            )
        self._expired = False
        timers = self._timers
        if timers is not None:
            self._timer = timers.call_later(timeout, self._expire)
        else:
            self._timer = loop.call_later(timeout, self._expire)
        self._step()

    def _step(self, _: object = None) -> None:
        self._waiting = None
        coro = self._coro
        if coro is None:
            return  # cancelled
        try:
            waited = coro.send(None)
        except StopIteration as done:
            self._end_attempt()
            ep = self._ep
            assert ep is not None
            if self._count_success:
                self._pool.record_success(ep)
            transport: asyncio.Transport = done.value[0]
            self._owner.upstream_connected(transport, ep)
        except asyncio.CancelledError:
            # Only our timeout cancels what the attempt waits on.
            self._attempt_failed(TimeoutError())
        except Exception as exc:  # OSError and ssl.SSLError above all
            self._attempt_failed(exc)
        else:
            if isinstance(waited, asyncio.Future):
                self._waiting = waited
                waited.add_done_callback(self._step)
                if self._expired:  # the timer fired while no future was waited on
                    waited.cancel()
            else:  # a bare yield: just run again
                self._loop.call_soon(self._step)

    def _expire(self) -> None:
        self._timer = None
        self._expired = True
        if self._waiting is not None:
            self._waiting.cancel()

    def _end_attempt(self) -> None:
        self._coro = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _attempt_failed(self, exc: BaseException) -> None:
        self._end_attempt()
        ep = self._ep
        assert ep is not None
        self._ep = None
        if self._attempts is None:
            self._attempts = []
        self._attempts.append(_failed(self._pool, ep, exc, self._metrics, self._loop.time()))
        self._next()

    def cancel(self) -> None:
        """Give up (the client went away): the half-made connection is closed
        and the owner hears nothing more."""
        coro = self._coro
        if coro is None:
            return
        waiting = self._waiting
        if waiting is not None:
            waiting.remove_done_callback(self._step)
            self._waiting = None
            # Settled now, before uvloop reports the connect it aborts below
            # (ECANCELED) into it: an exception nobody awaits any more would
            # be logged as "Future exception was never retrieved".
            waiting.cancel()
        self._end_attempt()
        coro.close()  # uvloop closes the transport it was making
        if self._ep is not None:
            self._ep.in_flight -= 1
            self._ep = None
