"""Bulk flows through the relay switch to os.splice: byte-exact, half-close,
resets, backpressure, timeouts, teardown and no descriptor left behind.

Real sockets on loopback, in-process; the tests look inside the live Relay
only to know that splicing has started (or not).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from meshgate import aio, settings
from meshgate.dataplane import splice
from meshgate.dataplane.listener import Listener
from meshgate.dataplane.pipe import Relay
from meshgate.routing.table import Timeouts
from tests.unit.dataplane.flood import Flood
from tests.unit.dataplane.relay_env import listener_for, make_spec

pytestmark = pytest.mark.skipif(not splice.AVAILABLE, reason="os.splice is Linux only")

MB = 1024 * 1024
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def the_relay(listener: Listener) -> Relay:
    (relay,) = listener.live
    assert isinstance(relay, Relay)
    return relay


async def until(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


async def spliced(listener: Listener, from_client: bool) -> Relay:
    """The live relay, once the direction from the client (or upstream) is spliced."""
    await until(lambda: len(listener.live) == 1, "a live connection")
    relay = the_relay(listener)
    await until(lambda: relay._spliced(from_client), "the direction spliced")
    return relay


@contextlib.asynccontextmanager
async def upstream(handler: Handler) -> AsyncIterator[int]:
    """A server on loopback running `handler` per connection; at the end,
    handlers still running are cancelled and their connections closed."""
    running: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        running.add(task)
        try:
            await handler(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()  # not a close that waits to write its buffer
            raise
        finally:
            running.discard(task)
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(running):
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await server.wait_closed()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(MB):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await reader.read()
    writer.close()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def drain_all(reader: asyncio.StreamReader) -> tuple[int, str]:
    got, n = hashlib.sha256(), 0
    while data := await reader.read(MB):
        got.update(data)
        n += len(data)
    return n, got.hexdigest()


async def test_200_mb_both_ways_spliced_and_counted() -> None:
    total = 200 * MB
    async with upstream(echo) as port:
        spec = make_spec(port)
        async with listener_for(spec) as listener:
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
            rng = random.Random(7)
            sent = hashlib.sha256()
            seen: list[Relay] = []

            async def send() -> None:
                for _ in range(total // (256 * 1024)):
                    chunk = rng.randbytes(256 * 1024)
                    sent.update(chunk)
                    writer.write(chunk)
                    await writer.drain()
                seen.append(await spliced(listener, True))
                await spliced(listener, False)
                writer.write_eof()

            _, (n, received) = await asyncio.gather(send(), drain_all(reader))
            assert (n, received) == (total, sent.hexdigest())
            writer.close()
            await writer.wait_closed()
            await until(lambda: not listener.live, "the connection ended")
            (relay,) = seen
            assert (relay.traffic.bytes_in, relay.traffic.bytes_out) == (total, total)
            assert relay.reason == "eof"
            assert listener.counters() == (total, total)
            metrics = listener.ctx.metrics
            assert metrics.bytes_in.labels("t", "up")._value.get() == total
            assert metrics.bytes_out.labels("t", "up")._value.get() == total
            assert metrics.connections_active.labels("t", "up")._value.get() == 0


async def test_small_messages_never_splice() -> None:
    # A long keep-alive conversation of small messages stays in user space:
    # splice would only add latency to it.
    async with upstream(echo) as port:
        spec = make_spec(port)
        async with listener_for(spec) as listener:
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
            message = b"x" * 1000
            for _ in range(2000):  # 2 MB each way, far past SPLICE_AFTER
                writer.write(message)
                assert await reader.readexactly(len(message)) == message
            relay = the_relay(listener)
            assert relay._splice is None
            writer.close()
            await writer.wait_closed()


async def test_half_close_from_client_after_splice_started() -> None:
    # The upstream answers only after the client's FIN: the FIN must be passed
    # on by the splice, and the answer (bulk too) must still come back.
    answer = random.Random(3).randbytes(4 * MB)

    async def hasher(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        digest = hashlib.sha256(await reader.read()).digest()
        writer.write(digest + answer)
        await writer.drain()
        writer.close()

    data = random.Random(2).randbytes(8 * MB)
    async with upstream(hasher) as port:
        spec = make_spec(port)
        async with listener_for(spec) as listener:
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
            writer.write(data)
            await writer.drain()
            relay = await spliced(listener, True)
            writer.write_eof()
            reply = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            await writer.wait_closed()
            await until(lambda: not listener.live, "the connection ended")
    assert reply == hashlib.sha256(data).digest() + answer
    assert relay.reason == "eof"
    assert relay.traffic.bytes_in == len(data)
    assert relay.traffic.bytes_out == 32 + len(answer)


async def test_half_close_from_upstream_after_splice_started() -> None:
    # The upstream sends a bulk banner and shuts down its write side; the
    # client's direction keeps flowing (and is spliced too) until its own FIN.
    banner = random.Random(4).randbytes(4 * MB)
    received = bytearray()
    done = asyncio.Event()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(banner)
        await writer.drain()
        writer.write_eof()
        received.extend(await reader.read())
        done.set()
        writer.close()

    data = random.Random(5).randbytes(6 * MB)
    async with upstream(server) as port:
        spec = make_spec(port)
        async with listener_for(spec) as listener:
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
            assert await asyncio.wait_for(reader.read(), 10) == banner  # then EOF
            relay = the_relay(listener)
            assert relay._spliced(False)
            assert relay.upstream_eof
            writer.write(data)
            await writer.drain()
            writer.write_eof()
            await asyncio.wait_for(done.wait(), 10)
            await until(lambda: not listener.live, "the connection ended")
            writer.close()
            await writer.wait_closed()
    assert bytes(received) == data
    assert relay._spliced(True)  # the upstream's FIN does not keep the upload in user space
    assert relay.reason == "eof"


async def test_upstream_reset_mid_splice_is_counted_and_closes_both() -> None:
    go = asyncio.Event()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b"r" * (256 * 1024)
        while not go.is_set():
            writer.write(chunk)
            await writer.drain()
        reset(writer)

    async with upstream(server) as port:
        spec = make_spec(port)
        async with listener_for(spec) as listener:
            before = open_fds()
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
            read = aio.spawn(drain_all(reader), name="client reads")
            relay = await spliced(listener, False)
            go.set()
            with contextlib.suppress(ConnectionResetError):
                await asyncio.wait_for(read, 10)  # ends: meshgate closed the client
            await until(lambda: not listener.live, "the connection ended")
            errors = listener.ctx.metrics.connection_errors
            assert errors.labels("t", "upstream_reset")._value.get() == 1
            assert relay.reason == "upstream_reset"
            writer.close()
            await writer.wait_closed()
            await until(lambda: open_fds() <= before, "descriptors released")


async def test_close_with_data_for_a_client_that_reads_nothing_ends_at_the_idle_timeout() -> None:
    # close() passes on what the pipe holds, but this client never reads it:
    # the idle timeout then aborts, and the connection must still end.
    go = asyncio.Event()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"s" * (32 * MB))  # buffered in the transport: never blocks
        await go.wait()
        reset(writer)

    timeouts = Timeouts(connect=2.0, idle=0.5, half_closed=10.0)
    async with upstream(server) as port:
        spec = make_spec(port, timeouts=timeouts)
        async with listener_for(spec) as listener:
            before = open_fds()
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
            got = 0
            while got < 4 * MB:
                got += len(await reader.read(MB))
            relay = await spliced(listener, False)
            writer.transport.pause_reading()  # type: ignore[attr-defined]  # the pipe fills
            await asyncio.sleep(0.2)
            go.set()
            await asyncio.sleep(0.05)
            # The upstream is gone; writing to it fails: meshgate closes the
            # connection, and the pipe's data has nowhere to go.
            writer.write(b"hello?")
            await until(lambda: relay.closing, "the reset seen")
            assert relay.reason == "upstream_reset"
            await until(lambda: not listener.live, "the connection ended", seconds=5)
            assert relay._splice is not None
            assert not relay._splice.active
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            await until(lambda: open_fds() <= before, "descriptors released")


async def test_client_reset_mid_splice_is_counted_and_closes_upstream() -> None:
    upstream_done = asyncio.Event()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(MB):
                pass
        upstream_done.set()
        writer.close()

    async with upstream(server) as port:
        spec = make_spec(port)
        async with listener_for(spec) as listener:
            _, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
            for _ in range(16):
                writer.write(b"c" * (256 * 1024))
                await writer.drain()
            relay = await spliced(listener, True)
            reset(writer)
            await asyncio.wait_for(upstream_done.wait(), 10)  # meshgate closed the upstream
            await until(lambda: not listener.live, "the connection ended")
            errors = listener.ctx.metrics.connection_errors
            assert errors.labels("t", "client_reset")._value.get() == 1
            assert relay.reason == "client_reset"


async def test_slow_reader_while_spliced_the_pipe_is_the_only_buffer() -> None:
    async with Flood() as flood:
        spec = make_spec(flood.port)
        async with listener_for(spec) as listener:
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
            got = 0
            while got < 4 * MB:  # reading: the flow becomes bulk and is spliced
                got += len(await reader.read(MB))
            relay = await spliced(listener, False)
            await flood.wait_stalled()  # we stopped reading: the flood must stop too
            assert relay.client is not None
            assert relay.client.get_write_buffer_size() == 0  # nothing held in Python
            flood.stop.set()
            while data := await reader.read(MB):
                got += len(data)
            assert got == flood.sent
            assert relay.traffic.bytes_out == flood.sent
            writer.close()
            await writer.wait_closed()


async def test_abort_during_splice_releases_everything() -> None:
    async with Flood() as flood:
        spec = make_spec(flood.port)
        async with listener_for(spec) as listener:
            before = open_fds()
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
            got = 0
            while got < 4 * MB:
                got += len(await reader.read(MB))
            relay = await spliced(listener, False)
            await flood.wait_stalled()  # the pipe holds data now
            loop = asyncio.get_running_loop()
            await listener.drain(loop.time())  # deadline now: abort what is left
            await until(lambda: relay.finished, "the relay finished")
            assert relay.reason == "aborted"
            assert relay._splice is not None
            assert not relay._splice.active
            errors = listener.ctx.metrics.connection_errors
            assert errors.labels("t", "aborted")._value.get() == 1
            with contextlib.suppress(ConnectionResetError):
                while await reader.read(MB):
                    pass
            writer.close()
            await writer.wait_closed()
            flood.stop.set()
            await until(lambda: open_fds() <= before, "descriptors released")


async def test_no_descriptor_leak_after_many_spliced_connections() -> None:
    size = 2 * MB

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"d" * size)
        await writer.drain()
        writer.close()

    async def one(port: int, early_close: bool) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if early_close:
            await reader.readexactly(size // 2)
        else:
            assert len(await reader.read()) == size
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async with upstream(server) as port:
        spec = make_spec(port)
        async with listener_for(spec) as listener:
            await one(spec.key.port, False)  # warm up (lazy imports, the loop's own fds)
            await until(lambda: not listener.live, "warm-up ended")
            before = open_fds()
            for _ in range(4):
                await asyncio.gather(*(one(spec.key.port, i % 3 == 0) for i in range(25)))
            await until(lambda: not listener.live, "every connection ended")
            await until(lambda: open_fds() <= before, "descriptors released")
            assert listener.total == 101


async def test_idle_timer_is_touched_by_spliced_bytes() -> None:
    # Idle timeout 0.6 s; the upstream sends a bulk burst every 0.1 s for
    # 0.8 s, spliced from the second on: the connection lives on (1.4 s in
    # all), then dies of idleness once the bursts stop.
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(8):
            writer.write(b"i" * (512 * 1024))
            await writer.drain()
            await asyncio.sleep(0.1)
        await reader.read()
        writer.close()

    timeouts = Timeouts(connect=2.0, idle=0.6, half_closed=10.0)
    async with upstream(server) as port:
        spec = make_spec(port, timeouts=timeouts)
        async with listener_for(spec) as listener:
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
            await reader.readexactly(8 * 512 * 1024)
            relay = the_relay(listener)
            assert relay._spliced(False)
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 5) == b""  # closed when idle
            await until(lambda: not listener.live, "the connection ended")
            errors = listener.ctx.metrics.connection_errors
            assert errors.labels("t", "idle_timeout")._value.get() == 1
            writer.close()
            await writer.wait_closed()


async def test_half_closed_timeout_while_spliced() -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"h" * (4 * MB))
        await writer.drain()
        writer.write_eof()  # and never closes: meshgate does, at the half-closed timeout
        await reader.read()
        writer.close()

    timeouts = Timeouts(connect=2.0, idle=30.0, half_closed=0.3)
    async with upstream(server) as port:
        spec = make_spec(port, timeouts=timeouts)
        async with listener_for(spec) as listener:
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
            n, _ = await asyncio.wait_for(drain_all(reader), 10)
            assert n == 4 * MB
            await until(lambda: not listener.live, "the connection ended", seconds=5)
            errors = listener.ctx.metrics.connection_errors
            assert errors.labels("t", "half_closed_timeout")._value.get() == 1
            writer.close()
            await writer.wait_closed()


@pytest.mark.parametrize("how", ["setting", "unavailable", "no_pipe", "small_pipe"])
async def test_falls_back_to_user_space_silently(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "setting":
        monkeypatch.setattr(settings, "SPLICE", False)
    elif how == "unavailable":
        monkeypatch.setattr(splice, "AVAILABLE", False)
    elif how == "no_pipe":

        def no_pipe(flags: int) -> tuple[int, int]:
            raise OSError(24, "Too many open files")

        monkeypatch.setattr(os, "pipe2", no_pipe)
    else:
        # Over the per-user pipe quota: no resize, and 8 KiB pipes.
        real = fcntl.fcntl

        def quota(fd: int, cmd: int, arg: int = 0) -> int:
            if cmd == fcntl.F_SETPIPE_SZ:
                raise PermissionError(1, "Operation not permitted")
            if cmd == fcntl.F_GETPIPE_SZ:
                return 8192
            return real(fd, cmd, arg)

        monkeypatch.setattr(fcntl, "fcntl", quota)
    total = 16 * MB
    async with upstream(echo) as port:
        spec = make_spec(port)
        async with listener_for(spec) as listener:
            before = open_fds()
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.key.port)
            await until(lambda: len(listener.live) == 1, "a live connection")
            relay = the_relay(listener)
            payload = random.Random(9).randbytes(total)

            async def send() -> None:
                writer.write(payload)
                await writer.drain()
                writer.write_eof()

            _, (n, received) = await asyncio.gather(send(), drain_all(reader))
            assert (n, received) == (total, hashlib.sha256(payload).hexdigest())
            assert relay._splice is None
            writer.close()
            await writer.wait_closed()
            await until(lambda: not listener.live, "the connection ended")
            await until(lambda: open_fds() <= before, "descriptors released")
