"""A TCP listener relaying to a port on loopback, in-process: what the relay
tests (test_pipe, test_splice) run their real sockets through."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from meshgate.dataplane.certs import TlsStore
from meshgate.dataplane.listener import Context, State
from meshgate.dataplane.tcp import TcpListener
from meshgate.obs.metrics import Metrics
from meshgate.routing.table import (
    EndpointAddr,
    ListenerKey,
    ListenerSpec,
    PoolSpec,
    Timeouts,
    UdpSpec,
)
from meshgate.upstream.pool import PoolRegistry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_spec(
    upstream_port: int,
    port: int | None = None,
    builtin: str | None = None,
    timeouts: Timeouts | None = None,
) -> ListenerSpec:
    pool = PoolSpec(
        "up",
        () if builtin else (EndpointAddr("127.0.0.1", upstream_port),),
        "round_robin",
        timeouts or Timeouts(connect=2.0, idle=30.0, half_closed=10.0),
        builtin,
    )
    key = ListenerKey("127.0.0.1", port or free_port(), "tcp")
    return ListenerSpec(key, "t", pool, UdpSpec(60.0, 100))


@contextlib.asynccontextmanager
async def listener_for(spec: ListenerSpec) -> AsyncIterator[TcpListener]:
    ctx = Context(metrics=Metrics(), pools=PoolRegistry(), tls=TlsStore())
    ctx.pools.reconcile([spec.l4_pool])
    listener = TcpListener(spec, ctx)
    await listener.start()
    assert listener.state is State.SERVING
    try:
        yield listener
    finally:
        await listener.drain(asyncio.get_running_loop().time() + 1)
