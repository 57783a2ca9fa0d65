"""connect() and Connecting: failover order, timeout, and failure reasons, on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import pytest

from meshgate.aio import Deadlines
from meshgate.obs.metrics import Metrics
from meshgate.routing.table import EndpointAddr, PoolSpec, Timeouts
from meshgate.upstream.connect import Connecting, NoEndpointAvailable, connect, failure_reason
from meshgate.upstream.pool import EndpointState, Pool


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


# -- Connecting: the same procedure without a Task (the L4 relay's) -----------
class Owner:
    """Records what a Connecting reports; `done` is set at the first report."""

    def __init__(self) -> None:
        self.connected: list[tuple[asyncio.Transport, EndpointState]] = []
        self.failed: list[NoEndpointAvailable] = []
        self.done = asyncio.Event()

    def upstream_connected(self, transport: asyncio.Transport, endpoint: EndpointState) -> None:
        self.connected.append((transport, endpoint))
        self.done.set()

    def upstream_failed(self, error: NoEndpointAvailable) -> None:
        self.failed.append(error)
        self.done.set()


@pytest.mark.parametrize("timers", [False, True], ids=["loop-timer", "deadlines"])
async def test_connecting_fails_over_times_out_and_counts(timers: bool) -> None:
    metrics = Metrics()
    dead = closed_port()
    made: list[asyncio.Protocol] = []

    def factory() -> asyncio.Protocol:
        made.append(asyncio.Protocol())
        return made[-1]

    with syn_black_hole() as hole, listening() as live:
        p = pool(("127.0.0.1", dead), ("127.0.0.1", hole), ("127.0.0.1", live), connect_timeout=0.3)
        owner = Owner()
        loop = asyncio.get_running_loop()
        connecting = Connecting(
            loop, p, factory, metrics, owner, timers=Deadlines() if timers else None
        )
        assert connecting.pending
        await asyncio.wait_for(owner.done.wait(), 5)
        assert not connecting.pending
        ((transport, ep),) = owner.connected
        transport.close()
    assert owner.failed == []
    assert ep.addr.port == live
    assert [e.in_flight for e in p.endpoints] == [0, 0, 1]
    assert [e.failures for e in p.endpoints] == [1, 1, 0]
    reasons = {
        port: metrics.connect_failures.labels("b", f"127.0.0.1:{port}", reason)._value.get()
        for port, reason in ((dead, "refused"), (hole, "timeout"))
    }
    assert reasons == {dead: 1, hole: 1}


async def test_connecting_reports_every_attempt_when_none_accepts() -> None:
    a, b = closed_port(), closed_port()
    owner = Owner()
    loop = asyncio.get_running_loop()
    p = pool(("127.0.0.1", a), ("127.0.0.1", b))
    Connecting(loop, p, asyncio.Protocol, Metrics(), owner)
    await asyncio.wait_for(owner.done.wait(), 5)
    (error,) = owner.failed
    assert [x.reason for x in error.attempts] == ["refused", "refused"]
    assert owner.connected == []
    assert [e.in_flight for e in p.endpoints] == [0, 0]


async def test_connecting_without_endpoints_fails_at_once() -> None:
    owner = Owner()
    connecting = Connecting(asyncio.get_running_loop(), pool(), asyncio.Protocol, Metrics(), owner)
    assert not connecting.pending
    (error,) = owner.failed
    assert error.attempts == ()


async def test_connecting_cancelled_closes_the_attempt_and_reports_nothing() -> None:
    with syn_black_hole() as hole:
        p = pool(("127.0.0.1", hole), connect_timeout=0.2)
        owner = Owner()
        timers = Deadlines()
        connecting = Connecting(
            asyncio.get_running_loop(), p, asyncio.Protocol, Metrics(), owner, timers=timers
        )
        await asyncio.sleep(0.05)
        connecting.cancel()
        assert not connecting.pending
        assert p.endpoints[0].in_flight == 0
        assert len(timers) == 0  # the connect timeout went with it
        await asyncio.sleep(0.4)  # past the timeout: nothing more happens
    assert not owner.done.is_set()
    assert p.endpoints[0].failures == 0


async def test_connecting_a_name() -> None:
    with listening() as live:
        owner = Owner()
        p = pool(("localhost", live))
        Connecting(asyncio.get_running_loop(), p, asyncio.Protocol, Metrics(), owner)
        await asyncio.wait_for(owner.done.wait(), 5)
        ((transport, ep),) = owner.connected
        transport.close()
    assert ep.addr.host == "localhost"


@pytest.mark.parametrize("wait", [0.0, 0.05])
async def test_connecting_cancelled_leaves_no_unretrieved_exception(wait: float) -> None:
    """A client that goes away while its upstream connect is under way (at
    once, or while the SYN waits) must not leave an error for the loop."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    with listening() as live, syn_black_hole() as hole:
        # Waiting, only the black hole is still connecting (the live port has
        # answered and the connection is the owner's).
        for port in (hole,) if wait else (live, hole):
            for _ in range(20):
                p = pool(("127.0.0.1", port), connect_timeout=1.0)
                connecting = Connecting(loop, p, asyncio.Protocol, Metrics(), Owner())
                if wait:
                    await asyncio.sleep(wait)
                connecting.cancel()
                assert p.endpoints[0].in_flight == 0
        await asyncio.sleep(0.1)
        import gc

        gc.collect()  # "never retrieved" is reported when the future is freed
        await asyncio.sleep(0)
    assert errors == []
