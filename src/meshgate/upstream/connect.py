"""Connect to a backend: try its endpoints in the pool's order, each with the
backend's connect timeout, until one accepts.

Host names are resolved here, at connect time, on every attempt: a
Kubernetes Service name may point somewhere else tomorrow. Each failure is
classified into a short reason that becomes a metric label and a log field.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

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
    """Open a connection to the first endpoint of `pool` that accepts one.

    With `tls_for` answering a context, the connection is TLS and counts as
    made only once the handshake (and certificate check) succeeded.
    `candidates` (default: the pool's order now) and `connect_timeout` (default: the
    backend's connect timeout) let an HTTP route choose; HTTP also counts an
    endpoint's success at a valid response, not at connect
    (`success_is_connect=False`), so one that accepts and then answers garbage
    is ejected. The caller
    must decrement `in_flight` of the returned endpoint when the connection ends.
    """
    loop = asyncio.get_running_loop()
    spec = pool.spec
    timeout = connect_timeout or spec.timeouts.connect
    attempts: list[Attempt] = []
    for ep in candidates if candidates is not None else pool.candidates(loop.time()):
        ep.in_flight += 1
        tls = tls_for(spec, ep.addr)
        try:
            async with asyncio.timeout(timeout):
                if tls is None:
                    transport, protocol = await loop.create_connection(
                        factory, ep.addr.connect_host, ep.addr.port
                    )
                else:
                    transport, protocol = await loop.create_connection(
                        factory,
                        ep.addr.connect_host,
                        ep.addr.port,
                        ssl=tls[0],
                        server_hostname=tls[1] or "",
                        ssl_handshake_timeout=timeout,
                    )
        except (OSError, TimeoutError) as exc:
            ep.in_flight -= 1
            reason = failure_reason(exc)
            attempts.append(Attempt(str(ep.addr), reason))
            pool.record_failure(ep, loop.time())
            metrics.connect_failures.labels(spec.name, str(ep.addr), reason).inc()
            continue
        except BaseException:
            ep.in_flight -= 1
            raise
        if success_is_connect:
            pool.record_success(ep)
        return transport, protocol, ep
    raise NoEndpointAvailable(spec.name, tuple(attempts))
