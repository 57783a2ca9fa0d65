"""The UDP listener, on real loopback sockets: flows, balancing, idle expiry,
bounds, ICMP errors and the drain path.

Upstreams are small asyncio echo servers that prefix each reply with a tag,
so a test can tell which endpoint a flow went to. Waits poll a condition
against a bounded deadline; nothing asserts after a fixed sleep.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest

from meshgate import settings
from meshgate.dataplane.certs import TlsStore
from meshgate.dataplane.listener import Context, State
from meshgate.dataplane.udp import UdpListener
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

LOOPBACK = "127.0.0.1"
WAIT = 3.0  # upper bound of every wait; loopback answers in well under 1 ms


# -- helpers -------------------------------------------------------------------
def free_udp_port(host: str = LOOPBACK) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Poll `check` until it holds; fail after WAIT seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.01)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


class _Endpoint(asyncio.DatagramProtocol):
    """Common to both test peers: the transport and a future for its release."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's UDPTransport is not a subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


class Echo(_Endpoint):
    """A UDP server answering every datagram with `<tag>:<datagram>`."""

    def __init__(self, tag: bytes) -> None:
        super().__init__()
        self.tag = tag
        self.peers: list[Any] = []

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.peers.append(addr)
        assert self.transport is not None
        self.transport.sendto(self.tag + b":" + data, addr)


class Client(_Endpoint):
    """A UDP client connected to the listener; collects what comes back."""

    def __init__(self) -> None:
        super().__init__()
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.replies.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def recv(self) -> bytes:
        async with asyncio.timeout(WAIT):
            return await self.replies.get()

    async def ask(self, data: bytes) -> bytes:
        self.send(data)
        return await self.recv()


class Net:
    """Opens test peers and listeners, and closes all of them at the end."""

    def __init__(self) -> None:
        self.ctx = Context(metrics=Metrics(), pools=PoolRegistry(), tls=TlsStore())
        self._peers: list[_Endpoint] = []
        self._listeners: list[UdpListener] = []

    async def echo(self, tag: str, host: str = LOOPBACK) -> EndpointAddr:
        loop = asyncio.get_running_loop()
        _, server = await loop.create_datagram_endpoint(
            lambda: Echo(tag.encode()), local_addr=(host, 0)
        )
        self._peers.append(server)
        assert server.transport is not None
        port: int = server.transport.get_extra_info("sockname")[1]
        return EndpointAddr(host, port)

    async def client(self, listener: UdpListener) -> Client:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_datagram_endpoint(
            Client, remote_addr=(listener.spec.key.address, listener.spec.key.port)
        )
        self._peers.append(client)
        return client

    def spec(
        self,
        endpoints: list[EndpointAddr],
        *,
        name: str = "dns",
        backend: str = "upstream",
        address: str = LOOPBACK,
        port: int | None = None,
        idle: float = 60.0,
        max_flows: int = 100,
    ) -> ListenerSpec:
        pool = PoolSpec(
            name=backend,
            endpoints=tuple(endpoints),
            balance="round_robin",
            timeouts=Timeouts(connect=2.0, idle=3600.0, half_closed=60.0),
        )
        return ListenerSpec(
            key=ListenerKey(address, port or free_udp_port(address), "udp"),
            name=name,
            pool=pool,
            udp=UdpSpec(flow_idle_timeout=idle, max_flows=max_flows),
        )

    async def listener(self, spec: ListenerSpec, *, start: bool = True) -> UdpListener:
        self.ctx.pools.reconcile([spec.l4_pool])
        listener = UdpListener(spec, self.ctx)
        self._listeners.append(listener)
        if start:
            await listener.start()
        return listener

    def metric(self, name: str, **labels: str) -> float:
        return sample(self.ctx.metrics, name, **labels)

    def dropped(self, reason: str) -> float:
        """Datagrams the listener named "dns" dropped for `reason`."""
        return self.metric("meshgate_udp_datagrams_dropped_total", listener="dns", reason=reason)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            await listener.drain(loop.time())
        for peer in self._peers:
            if peer.transport is not None:
                peer.transport.close()
        if self._peers:
            await asyncio.wait([peer.lost for peer in self._peers], timeout=WAIT)


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    net = Net()
    try:
        yield net
    finally:
        await net.close()


# -- relaying --------------------------------------------------------------------
async def test_round_trip(net: Net) -> None:
    spec = net.spec([await net.echo("A")])
    listener = await net.listener(spec)
    client = await net.client(listener)

    assert await client.ask(b"ping") == b"A:ping"
    assert await client.ask(b"again") == b"A:again"

    assert len(listener.live) == 1
    assert listener.counters() == (len(b"pingagain"), len(b"A:pingA:again"))
    assert listener.to_json()["udp_flows"] == 1
    labels = {"listener": "dns", "backend": "upstream"}
    assert net.metric("meshgate_udp_flows_total", **labels) == 1
    assert net.metric("meshgate_udp_flows_active", **labels) == 1


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
async def test_socat_client(net: Net) -> None:
    listener = await net.listener(net.spec([await net.echo("A")]))
    proc = await asyncio.create_subprocess_exec(
        "socat",
        "-T2",
        "-",
        f"UDP:{LOOPBACK}:{listener.spec.key.port}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        proc.stdin.write(b"hello\n")
        await proc.stdin.drain()
        async with asyncio.timeout(WAIT):
            line = await proc.stdout.readline()
        async with asyncio.timeout(WAIT * 2):
            await proc.communicate()  # closes stdin; socat then exits
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert line == b"A:hello\n"
    assert proc.returncode == 0


async def test_two_clients_get_their_own_replies(net: Net) -> None:
    listener = await net.listener(net.spec([await net.echo("A")]))
    one, two = await net.client(listener), await net.client(listener)

    one.send(b"one")
    two.send(b"two")

    assert await one.recv() == b"A:one"
    assert await two.recv() == b"A:two"
    assert len(listener.live) == 2
    assert one.replies.empty()
    assert two.replies.empty()


async def test_round_robin_across_flows_and_sticky_within_one(net: Net) -> None:
    listener = await net.listener(net.spec([await net.echo("A"), await net.echo("B")]))
    one, two = await net.client(listener), await net.client(listener)

    first = await one.ask(b"x")
    second = await two.ask(b"x")

    assert {first, second} == {b"A:x", b"B:x"}
    # A flow stays with the endpoint it was given.
    assert await one.ask(b"x") == first
    assert await two.ask(b"x") == second


async def test_burst_during_setup_is_queued_in_order(net: Net) -> None:
    listener = await net.listener(net.spec([await net.echo("A")]))
    client = await net.client(listener)

    burst = [f"{i}".encode() for i in range(10)]
    for data in burst:  # all sent before the flow's upstream socket exists
        client.send(data)

    assert [await client.recv() for _ in burst] == [b"A:" + d for d in burst]


async def test_pending_queue_is_bounded(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "UDP_PENDING_DATAGRAMS", 1)
    listener = await net.listener(net.spec([await net.echo("A")]))
    client = await net.client(listener)

    for i in range(20):
        client.send(f"{i}".encode())

    # Every datagram is either relayed or dropped as pending_full, and the
    # queue of one cannot have held the whole burst.
    await eventually(
        lambda: client.replies.qsize() + net.dropped("pending_full") == 20, "20 accounted for"
    )
    assert net.dropped("pending_full") >= 1
    assert (await client.recv()) == b"A:0"  # the first one opened the flow and was kept


async def test_localhost_upstream_is_resolved(net: Net) -> None:
    # Bind the echo server where "localhost" resolves first, as the proxy will.
    infos = socket.getaddrinfo("localhost", None, type=socket.SOCK_DGRAM)
    echo = await net.echo("L", host=str(infos[0][4][0]))
    listener = await net.listener(net.spec([EndpointAddr("localhost", echo.port)]))
    client = await net.client(listener)

    assert await client.ask(b"hi") == b"L:hi"


async def test_ipv6_listener(net: Net) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        free_udp_port("::1")
    except OSError:
        pytest.skip("::1 is not configured")
    listener = await net.listener(net.spec([await net.echo("A")], address="::1"))
    assert listener.state is State.SERVING
    client = await net.client(listener)

    assert await client.ask(b"six") == b"A:six"


# -- flow lifetime and bounds ------------------------------------------------------
async def test_idle_flow_expires_and_logs_its_end(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshgate.udp")
    listener = await net.listener(net.spec([await net.echo("A")], idle=0.2))
    client = await net.client(listener)
    assert await client.ask(b"x") == b"A:x"

    await eventually(lambda: not listener.live, "the idle flow to end")

    assert net.metric("meshgate_udp_flows_active", listener="dns", backend="upstream") == 0
    [record] = [r for r in caplog.records if r.getMessage() == "flow closed"]
    fields = record.__dict__["fields"]
    assert fields["reason"] == "idle"
    assert fields["listener"] == "dns"
    assert (fields["bytes_in"], fields["bytes_out"]) == (1, 3)
    assert fields["duration"] >= 0.2
    # The same client coming back gets a new flow.
    assert await client.ask(b"y") == b"A:y"
    assert listener.total == 2


async def test_active_flow_does_not_expire(net: Net) -> None:
    listener = await net.listener(net.spec([await net.echo("A")], idle=0.5))
    client = await net.client(listener)
    loop = asyncio.get_running_loop()
    until = loop.time() + 1.2
    while loop.time() < until:  # a datagram every 0.1 s for over two idle timeouts
        assert await client.ask(b"x") == b"A:x"
        await asyncio.sleep(0.1)
    assert listener.total == 1
    assert len(listener.live) == 1


async def test_max_flows_drops_new_clients(net: Net) -> None:
    listener = await net.listener(net.spec([await net.echo("A")], max_flows=1))
    one, two = await net.client(listener), await net.client(listener)
    assert await one.ask(b"x") == b"A:x"

    two.send(b"x")

    await eventually(lambda: net.dropped("max_flows") == 1, "the datagram to be dropped")
    assert len(listener.live) == 1
    assert await one.ask(b"y") == b"A:y"
    assert two.replies.empty()


# -- failures ------------------------------------------------------------------------
async def test_refused_upstream_is_counted_and_listener_keeps_serving(net: Net) -> None:
    closed = EndpointAddr(LOOPBACK, free_udp_port())
    listener = await net.listener(net.spec([closed, await net.echo("A")]))
    dead, alive = await net.client(listener), await net.client(listener)

    dead.send(b"x")  # round robin: the first flow gets the closed port
    await eventually(
        lambda: (
            net.metric(
                "meshgate_connection_errors_total", listener="dns", reason="upstream_refused"
            )
            >= 1
        ),
        "the ICMP port unreachable to be counted",
    )

    assert len(listener.live) == 1  # the flow is kept: UDP servers restart
    assert await alive.ask(b"y") == b"A:y"
    dead.send(b"x")  # and sending on the refused flow is still harmless
    assert await alive.ask(b"z") == b"A:z"
    assert listener.state is State.SERVING
    pool = net.ctx.pools.get(listener.spec.l4_pool)
    assert pool.endpoints[0].failures >= 1


async def test_failed_setup_fails_over_to_next_endpoint(net: Net) -> None:
    # A connected UDP socket to the broadcast address is refused at once
    # (EACCES without SO_BROADCAST): a setup failure without any DNS.
    broadcast = EndpointAddr("255.255.255.255", 9)
    listener = await net.listener(net.spec([broadcast, await net.echo("A")]))
    client = await net.client(listener)

    assert await client.ask(b"x") == b"A:x"
    assert (
        net.metric(
            "meshgate_connect_failures_total",
            backend="upstream",
            endpoint="255.255.255.255:9",
            reason="error",
        )
        == 1
    )


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("255.255.255.255", "error"),  # EACCES at connect
        ("bad..name", "error"),  # UnicodeError from the IDNA codec, before any lookup
    ],
)
async def test_no_working_endpoint_ends_the_flow(net: Net, host: str, reason: str) -> None:
    listener = await net.listener(net.spec([EndpointAddr(host, 9)]))
    client = await net.client(listener)

    client.send(b"x")

    await eventually(lambda: net.dropped("no_upstream") == 1, "the queued datagram dropped")
    assert not listener.live
    assert net.metric("meshgate_udp_flows_active", listener="dns", backend="upstream") == 0
    assert (
        net.metric(
            "meshgate_connect_failures_total",
            backend="upstream",
            endpoint=f"{host}:9",
            reason=reason,
        )
        == 1
    )
    # The listener is unharmed: the next datagram tries again with a new flow.
    client.send(b"x")
    await eventually(lambda: listener.total == 2, "a second flow")
    assert listener.state is State.SERVING


async def test_flow_keeps_its_spec_across_swap(net: Net) -> None:
    old = net.spec([await net.echo("A")])
    listener = await net.listener(old)
    one = await net.client(listener)
    assert await one.ask(b"x") == b"A:x"

    new = net.spec([await net.echo("B")], backend="other", port=old.key.port)
    net.ctx.pools.reconcile([old.l4_pool, new.l4_pool])
    listener.swap(new)
    two = await net.client(listener)

    assert await two.ask(b"x") == b"B:x"
    assert await one.ask(b"x") == b"A:x"


# -- lifecycle ------------------------------------------------------------------------
async def test_states_from_binding_to_closed(net: Net) -> None:
    listener = await net.listener(net.spec([await net.echo("A")]), start=False)
    loop = asyncio.get_running_loop()
    seen = [listener.state]
    await listener.start()
    seen.append(listener.state)
    up = net.metric("meshgate_listener_up", listener="dns")
    await listener.drain(loop.time() + 1)
    seen.append(listener.state)
    await listener.drain(loop.time() + 1)  # a second drain is a no-op
    seen.append(listener.state)

    assert seen == [State.BINDING, State.SERVING, State.CLOSED, State.CLOSED]
    assert up == 1
    assert net.metric("meshgate_listener_up", listener="dns") == 0


async def test_bind_conflict_fails_then_closes(net: Net) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((LOOPBACK, 0))
        port = taken.getsockname()[1]
        listener = await net.listener(net.spec([await net.echo("A")], port=port))
        seen = [listener.state]
        await listener.drain(asyncio.get_running_loop().time())
        seen.append(listener.state)

    assert seen == [State.FAILED, State.CLOSED]
    assert listener.error is not None
    assert f":{port}" in listener.error


async def test_draining_serves_existing_flows_and_drops_new_clients(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshgate.udp")
    listener = await net.listener(net.spec([await net.echo("A")], idle=0.5))
    old, new = await net.client(listener), await net.client(listener)
    assert await old.ask(b"x") == b"A:x"
    loop = asyncio.get_running_loop()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(listener.drain(loop.time() + WAIT))
        await eventually(lambda: listener.state is State.DRAINING, "draining")

        assert await old.ask(b"y") == b"A:y"  # the listening socket still works
        new.send(b"y")
        await eventually(lambda: net.dropped("draining") == 1, "the new client turned away")

    # The drain ended because the old flow went idle, not at the deadline.
    ends = [
        r.__dict__["fields"]["reason"] for r in caplog.records if r.getMessage() == "flow closed"
    ]
    assert ends == ["idle"]
    assert listener.state is State.CLOSED
    assert not listener.live
    assert new.replies.empty()


async def test_drain_deadline_aborts_flows_and_releases_the_port(net: Net) -> None:
    listener = await net.listener(net.spec([await net.echo("A")], idle=60.0))
    client = await net.client(listener)
    assert await client.ask(b"x") == b"A:x"
    loop = asyncio.get_running_loop()

    await listener.drain(loop.time() + 0.1)

    assert listener.state is State.CLOSED
    assert not listener.live
    assert not listener.upstream_sockets
    assert net.metric("meshgate_udp_flows_active", listener="dns", backend="upstream") == 0
    pool = net.ctx.pools.get(listener.spec.l4_pool)
    assert [ep.in_flight for ep in pool.endpoints] == [0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind((LOOPBACK, listener.spec.key.port))  # the port is free again
