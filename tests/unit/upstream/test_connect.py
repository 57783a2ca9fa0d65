"""connect(): failover order, timeout, and failure reasons, on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import pytest

from meshgate.obs.metrics import Metrics
from meshgate.routing.table import EndpointAddr, PoolSpec, Timeouts
from meshgate.upstream.connect import NoEndpointAvailable, connect, failure_reason
from meshgate.upstream.pool import Pool


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def listening() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@contextlib.contextmanager
def syn_black_hole() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops further SYNs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(("127.0.0.1", port))
            fillers.append(c)
        yield port
    finally:
        for c in fillers:
            c.close()
        server.close()


def pool(*eps: tuple[str, int], connect_timeout: float = 2.0) -> Pool:
    addrs = tuple(EndpointAddr(h, p) for h, p in eps)
    return Pool(PoolSpec("b", addrs, "round_robin", Timeouts(connect_timeout, 10.0, 10.0)))


async def test_fails_over_to_the_next_endpoint_and_counts_the_refusal() -> None:
    metrics = Metrics()
    dead = closed_port()
    with listening() as live:
        p = pool(("127.0.0.1", dead), ("127.0.0.1", live))
        transport, _, ep = await connect(p, asyncio.Protocol, metrics)
        transport.close()
    assert ep.addr.port == live
    assert ep.in_flight == 1
    assert p.endpoints[0].in_flight == 0
    refused = metrics.connect_failures.labels("b", f"127.0.0.1:{dead}", "refused")
    assert refused._value.get() == 1


async def test_all_failing_raises_with_every_attempt_named() -> None:
    a, b = closed_port(), closed_port()
    with pytest.raises(NoEndpointAvailable) as err:
        await connect(pool(("127.0.0.1", a), ("127.0.0.1", b)), asyncio.Protocol, Metrics())
    assert [x.reason for x in err.value.attempts] == ["refused", "refused"]
    assert f"127.0.0.1:{a} (refused)" in str(err.value)


async def test_unresolvable_name_is_a_dns_failure() -> None:
    with pytest.raises(NoEndpointAvailable) as err:
        await connect(pool(("no-such-host.invalid", 80)), asyncio.Protocol, Metrics())
    assert err.value.attempts[0].reason == "dns"


async def test_connect_timeout_moves_on() -> None:
    with syn_black_hole() as hole, listening() as live:
        metrics = Metrics()
        p = pool(("127.0.0.1", hole), ("127.0.0.1", live), connect_timeout=0.3)
        transport, _, ep = await connect(p, asyncio.Protocol, metrics)
        transport.close()
    assert ep.addr.port == live
    timeouts = metrics.connect_failures.labels("b", f"127.0.0.1:{hole}", "timeout")
    assert timeouts._value.get() == 1


def test_failure_reasons() -> None:
    assert failure_reason(TimeoutError()) == "timeout"
    assert failure_reason(ConnectionRefusedError()) == "refused"
    assert failure_reason(socket.gaierror()) == "dns"
    assert failure_reason(OSError(113, "No route to host")) == "unreachable"
    assert failure_reason(OSError(1, "x")) == "error"
