"""TCP forwarding through `meshgate run` with real peers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import random
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from meshgate import aio
from tests.integration.harness import free_port, running, wait_for

MB = 1024 * 1024


async def _send_and_receive(port: int, total: int, seed: int) -> tuple[str, str, int]:
    """Send `total` pseudo-random bytes, half-close, read everything back.

    Returns (sha256 sent, sha256 received, bytes received).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rng = random.Random(seed)
    sent = hashlib.sha256()

    async def send() -> None:
        left = total
        while left:
            chunk = rng.randbytes(min(left, 256 * 1024))
            sent.update(chunk)
            writer.write(chunk)
            await writer.drain()
            left -= len(chunk)
        writer.write_eof()

    async def receive() -> tuple[str, int]:
        got = hashlib.sha256()
        n = 0
        while data := await reader.read(1024 * 1024):
            got.update(data)
            n += len(data)
        return got.hexdigest(), n

    _, (received, n) = await asyncio.gather(send(), receive())
    writer.close()
    await writer.wait_closed()
    return sent.hexdigest(), received, n


def _descriptors(pid: int) -> tuple[int, int]:
    """(open descriptors, of which pipes) of process `pid`."""
    fds, pipes = 0, 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            fds += 1
            pipes += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
    return fds, pipes


@contextlib.asynccontextmanager
async def _most_pipes(pid: int) -> AsyncIterator[list[int]]:
    """Samples the process's pipe descriptors while the block runs: [most
    seen beyond those it had before (the event loop's own)]."""
    before = _descriptors(pid)[1]
    most = [0]

    async def sample() -> None:
        while True:
            most[0] = max(most[0], _descriptors(pid)[1] - before)
            await asyncio.sleep(0.01)

    sampler = aio.spawn(sample(), name="pipe sampler")
    try:
        yield most
    finally:
        await aio.cancel_and_wait([sampler])


async def test_100_mb_byte_exact_both_ways(
    socat_server: Callable[[str], int], tmp_path: Path
) -> None:
    echo = socat_server("EXEC:cat")
    port = free_port()
    with running(["--ingress", f"tcp:{port}:127.0.0.1:{echo}"], tmp_path) as mg:
        idle = _descriptors(mg.proc.pid)
        async with _most_pipes(mg.proc.pid) as most:
            sent, received, n = await _send_and_receive(port, 100 * MB, seed=1)
        assert n == 100 * MB
        assert received == sent
        wait_for(lambda: mg.metric("meshgate_bytes_in_total") >= 100 * MB, "bytes_in metric")
        assert mg.metric("meshgate_bytes_out_total") >= 100 * MB
        # A bulk flow both ways: both directions went through splice, a pipe
        # (two descriptors) each; once closed, every descriptor is released.
        assert most[0] == 4
        wait_for(lambda: _descriptors(mg.proc.pid) == idle, "descriptors released")


async def test_splice_can_be_switched_off(
    socat_server: Callable[[str], int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHGATE_SPLICE", "0")
    echo = socat_server("EXEC:cat")
    port = free_port()
    with running(["--ingress", f"tcp:{port}:127.0.0.1:{echo}"], tmp_path) as mg:
        async with _most_pipes(mg.proc.pid) as most:
            sent, received, n = await _send_and_receive(port, 20 * MB, seed=6)
        assert (n, received) == (20 * MB, sent)
        assert most[0] == 0


async def test_half_close_client_still_receives_reply(
    socat_server: Callable[[str], int], tmp_path: Path
) -> None:
    # sha256sum answers only after it reads EOF: the proxy must pass on the
    # client's FIN and keep the reply direction open.
    hasher = socat_server("SYSTEM:sha256sum")
    port = free_port()
    data = random.Random(2).randbytes(3 * MB)
    with running(["--ingress", f"tcp:{port}:127.0.0.1:{hasher}"], tmp_path):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        reply = await asyncio.wait_for(reader.read(), 15)
        writer.close()
        await writer.wait_closed()
    assert reply.split()[0].decode() == hashlib.sha256(data).hexdigest()


async def test_half_close_from_upstream_side_keeps_client_direction(tmp_path: Path) -> None:
    # The server says hello and shuts down its write side at once; the client
    # still sends afterwards and the server must receive all of it.
    received = bytearray()
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner\n")
        writer.write_eof()
        received.extend(await reader.read())
        done.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    upstream = server.sockets[0].getsockname()[1]
    port = free_port()
    with running(["--ingress", f"tcp:{port}:127.0.0.1:{upstream}"], tmp_path):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 10) == b"banner\n"  # EOF from upstream
        writer.write(b"x" * 500_000)
        writer.write_eof()
        await asyncio.wait_for(done.wait(), 10)
        writer.close()
        await writer.wait_closed()
    server.close()
    await server.wait_closed()
    assert len(received) == 500_000


def _ask(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while data := s.recv(4096):
            chunks.append(data)
        return b"".join(chunks)


def test_failover_when_first_endpoint_refuses(
    socat_server: Callable[[str], int], tmp_path: Path
) -> None:
    live = socat_server("SYSTEM:'echo live'")
    dead = free_port()  # nothing listens here: connects are refused
    port = free_port()
    args = [
        "--ingress",
        f"tcp:{port}:127.0.0.1:{dead}",
        "--ingress",
        f"tcp:{port}:127.0.0.1:{live}",
    ]
    with running(args, tmp_path) as mg:
        answers = [_ask(port) for _ in range(6)]
        assert answers == [b"live\n"] * 6
        assert mg.metric("meshgate_connect_failures_total", reason="refused") >= 1
        status = mg.json("/status")
        states = {ep["address"]: ep["state"] for ep in status["backends"][0]["endpoints"]}
        assert states[f"127.0.0.1:{live}"] == "healthy"
        assert states[f"127.0.0.1:{dead}"] in ("suspect", "ejected")


def test_round_robin_over_two_endpoints(socat_server: Callable[[str], int], tmp_path: Path) -> None:
    a = socat_server("SYSTEM:'echo A'")
    b = socat_server("SYSTEM:'echo B'")
    port = free_port()
    args = ["--ingress", f"tcp:{port}:127.0.0.1:{a}", "--ingress", f"tcp:{port}:127.0.0.1:{b}"]
    with running(args, tmp_path):
        answers = [_ask(port).strip() for _ in range(10)]
    assert sorted(answers) == [b"A"] * 5 + [b"B"] * 5
    assert all(x != y for x, y in itertools.pairwise(answers))


def test_upstream_hostname_resolved_at_connect(
    socat_server: Callable[[str], int], tmp_path: Path
) -> None:
    live = socat_server("SYSTEM:'echo named'")
    port = free_port()
    with running(["--ingress", f"tcp:{port}:localhost:{live}"], tmp_path):
        assert _ask(port) == b"named\n"


def test_no_endpoint_closes_client_and_counts(tmp_path: Path) -> None:
    port = free_port()
    with running(["--ingress", f"tcp:{port}:127.0.0.1:{free_port()}"], tmp_path) as mg:
        assert _ask(port) == b""
        wait_for(
            lambda: mg.metric("meshgate_connection_errors_total", reason="no_upstream") == 1,
            "no_upstream counted",
        )
        # The listener survives and keeps accepting.
        assert _ask(port) == b""
        assert mg.get("/readyz")[0] == 200


def test_idle_timeout_closes_silent_connection(
    socat_server: Callable[[str], int], tmp_path: Path
) -> None:
    echo = socat_server("EXEC:cat")
    port = free_port()
    config = tmp_path / "idle.yaml"
    config.write_text(
        f"""
listeners:
  - {{name: idle, address: 127.0.0.1, port: {port}, backend: echo}}
backends:
  - name: echo
    endpoints: ["127.0.0.1:{echo}"]
    timeouts: {{idle: 300ms}}
"""
    )
    with running(["-c", str(config)], tmp_path) as mg:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"ping")
            assert s.recv(10) == b"ping"
            assert s.recv(10) == b""  # closed by meshgate once idle
        wait_for(
            lambda: mg.metric("meshgate_connection_errors_total", reason="idle_timeout") == 1,
            "idle_timeout counted",
        )
        closed = mg.events("connection closed")
        assert closed[-1]["reason"] == "idle_timeout"
        assert closed[-1]["bytes_in"] == 4
