"""The TCP relay in-process: backpressure, half-close, lifecycle of a listener.

Real sockets on loopback; the test looks inside the live Relay objects only to
check the bounds a user would feel as memory (buffered bytes per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from meshgate import settings
from meshgate.dataplane.certs import TlsStore
from meshgate.dataplane.listener import BadTransition, Context, State
from meshgate.dataplane.pipe import Relay
from meshgate.dataplane.tcp import TcpListener
from meshgate.obs.metrics import Metrics
from meshgate.upstream.pool import PoolRegistry
from tests.unit.dataplane.flood import Flood
from tests.unit.dataplane.relay_env import listener_for, make_spec


def state_of(listener: TcpListener) -> State:
    return listener.state  # a call, so the type checker does not keep an earlier narrowing


async def test_slow_client_pauses_upstream_reading() -> None:
    # The upstream sends as fast as it can; the client reads nothing.
    # meshgate must stop reading the upstream instead of buffering it all.
    async with Flood() as flood:
        spec = make_spec(flood.port)
        async with listener_for(spec) as listener:
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
            await flood.wait_stalled()
            (relay,) = listener.live
            assert isinstance(relay, Relay)
            assert relay.client is not None
            # What meshgate holds is bounded by the high-water mark plus one read.
            assert relay.client.get_write_buffer_size() <= settings.WRITE_HIGH_WATER + 512 * 1024
            # Reading resumes the flow: everything sent arrives.
            flood.stop.set()
            got = 0
            while data := await reader.read(1 << 20):
                got += len(data)
            assert got == flood.sent
            writer.close()
            await writer.wait_closed()


async def test_slow_upstream_pauses_client_reading() -> None:
    # The upstream reads nothing for a while; the client's writes must block
    # (its socket buffer fills) rather than pile up inside meshgate.
    release = asyncio.Event()
    received = 0

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await release.wait()
        while data := await reader.read(1 << 20):
            received += len(data)
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    spec = make_spec(server.sockets[0].getsockname()[1])
    async with listener_for(spec) as listener:
        _, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
        total = 0
        chunk = b"y" * 65536
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while total < 256 * 1024 * 1024:
                    writer.write(chunk)
                    total += len(chunk)
                    await writer.drain()
        assert total < 256 * 1024 * 1024, "client writes never blocked"
        (relay,) = listener.live
        assert isinstance(relay, Relay)
        assert relay.upstream is not None
        assert relay.upstream.get_write_buffer_size() <= settings.WRITE_HIGH_WATER + 512 * 1024
        release.set()
        writer.write_eof()
        await writer.drain()
        for _ in range(500):
            if received == total:
                break
            await asyncio.sleep(0.01)
        assert received == total
        writer.close()
        await writer.wait_closed()
    server.close()
    await server.wait_closed()


async def test_listener_lifecycle_and_bad_transition() -> None:
    spec = make_spec(1, builtin="echo")
    async with listener_for(spec) as listener:
        with pytest.raises(BadTransition):
            listener._move(State.BINDING)
        reader, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
        writer.write(b"abc")
        assert await reader.readexactly(3) == b"abc"
        writer.close()
        await writer.wait_closed()
    assert listener.state is State.CLOSED
    # The port is free again.
    with socket.socket() as s:
        s.bind(("127.0.0.1", spec.key.port))


async def test_bind_failure_is_reported_not_raised() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        spec = make_spec(1, port=taken.getsockname()[1], builtin="echo")
        ctx = Context(metrics=Metrics(), pools=PoolRegistry(), tls=TlsStore())
        listener = TcpListener(spec, ctx)
        await listener.start()
        assert listener.state is State.FAILED
        assert listener.error is not None
        assert "in use" in listener.error
        await listener.drain(0)
        assert state_of(listener) is State.CLOSED


async def test_hello_backend_keep_alive_and_bad_request() -> None:
    spec = make_spec(1, builtin="hello")
    async with listener_for(spec) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert b"Connection: keep-alive" in head
            assert await reader.readexactly(len(b"hello from meshgate (t)\n")) == (
                b"hello from meshgate (t)\n"
            )
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        rest = await reader.read()
        assert rest.startswith(b"HTTP/1.1 400")
        writer.close()
        await writer.wait_closed()
        for _ in range(100):
            if not listener.live:
                break
            await asyncio.sleep(0.01)
        assert listener.ctx.metrics.connection_errors.labels("t", "bad_request")._value.get() == 1


async def test_data_sent_while_connecting_is_bounded() -> None:
    # The upstream never answers the SYN (its accept queue is full): a client
    # that sends meanwhile is paused once it has sent more than a request,
    # instead of having everything held in meshgate.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(hole.getsockname())
        fillers.append(filler)
    try:
        spec = make_spec(hole.getsockname()[1])
        async with listener_for(spec) as listener:
            _, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
            sent = 0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    while sent < 64 * 1024 * 1024:
                        writer.write(b"e" * 65536)
                        sent += 65536
                        await writer.drain()
            assert sent < 64 * 1024 * 1024, "client writes never blocked"
            (relay,) = listener.live
            assert isinstance(relay, Relay)
            assert relay.upstream is None
            held = sum(map(len, relay._early or ()))
            assert 0 < held <= 64 * 1024 + 256 * 1024  # the limit, and one read more at most
            writer.close()
    finally:
        for filler in fillers:
            filler.close()
        hole.close()
