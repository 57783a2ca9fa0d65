"""TLS termination in-process: plaintext both ways, backpressure through TLS,
half-close as close_notify. Real sockets and a real TLS client (Python ssl)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import trustme

from meshgate import settings
from meshgate.dataplane.certs import TlsStore
from meshgate.dataplane.listener import Context, State
from meshgate.dataplane.pipe import Relay
from meshgate.dataplane.tls_listener import TlsListener
from meshgate.obs.metrics import Metrics
from meshgate.routing.table import (
    CertRef,
    EndpointAddr,
    ListenerKey,
    ListenerSpec,
    PoolSpec,
    RouteTable,
    SniRoutes,
    Timeouts,
    TlsRouteSpec,
    UdpSpec,
)
from meshgate.upstream.pool import PoolRegistry
from tests.unit.dataplane.flood import Flood


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def terminating(
    upstream_port: int, tmp_path: Path
) -> AsyncIterator[tuple[TlsListener, ssl.SSLContext, int]]:
    ca = trustme.CA()
    issued = ca.issue_cert("svc.example.com")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    pool = PoolSpec(
        "up",
        (EndpointAddr("127.0.0.1", upstream_port),),
        "round_robin",
        Timeouts(connect=2.0, idle=30.0, half_closed=10.0),
    )
    route = TlsRouteSpec((), True, "terminate", pool, CertRef(str(cert), str(key)), ())
    sni = SniRoutes((route,), {}, {}, route, hello_timeout=5.0, max_hello=16384)
    port = free_port()
    spec = ListenerSpec(ListenerKey("127.0.0.1", port, "tls"), "t", None, UdpSpec(60, 10), sni)
    ctx = Context(metrics=Metrics(), pools=PoolRegistry(), tls=TlsStore())
    ctx.tls.prepare(RouteTable(1, (spec,)))
    ctx.pools.reconcile([pool])
    listener = TlsListener(spec, ctx)
    await listener.start()
    assert listener.state is State.SERVING
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    try:
        yield listener, client_ctx, port
    finally:
        await listener.drain(asyncio.get_running_loop().time() + 1)


async def test_plaintext_round_trip_and_half_close(tmp_path: Path) -> None:
    async def shout(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client's close_notify -> FIN
        writer.write(data.upper())
        writer.write_eof()
        writer.close()

    server = await asyncio.start_server(shout, "127.0.0.1", 0)
    async with terminating(server.sockets[0].getsockname()[1], tmp_path) as (_, ctx, port):

        def client() -> bytes:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            with ctx.wrap_socket(raw, server_hostname="svc.example.com") as tls:
                tls.sendall(b"hello through tls")
                # A FIN without close_notify, through a duplicate of the fd
                # (SSLSocket.shutdown would drop its SSL state).
                with socket.fromfd(tls.fileno(), socket.AF_INET, socket.SOCK_STREAM) as dup:
                    dup.shutdown(socket.SHUT_WR)
                reply = b""
                with contextlib.suppress(ssl.SSLEOFError):
                    while chunk := tls.recv(4096):
                        reply += chunk
                return reply

        reply = await asyncio.to_thread(client)
    server.close()
    await server.wait_closed()
    assert reply == b"HELLO THROUGH TLS"


async def test_slow_tls_client_pauses_the_upstream(tmp_path: Path) -> None:
    async with Flood() as flood, terminating(flood.port, tmp_path) as (listener, ctx, port):
        # A blocking TLS client in a thread: it reads nothing until told to.
        go = asyncio.Event()
        loop = asyncio.get_running_loop()

        def client() -> int:
            raw = socket.create_connection(("127.0.0.1", port), timeout=20)
            with ctx.wrap_socket(raw, server_hostname="svc.example.com") as tls:
                asyncio.run_coroutine_threadsafe(go.wait(), loop).result()
                got = 0
                with contextlib.suppress(ssl.SSLEOFError):
                    while data := tls.recv(1 << 20):
                        got += len(data)
                return got

        reader_task = loop.run_in_executor(None, client)
        await flood.wait_stalled()
        (relay,) = listener.live
        assert isinstance(relay, Relay)
        assert relay.client is not None
        assert relay.client.get_write_buffer_size() <= settings.WRITE_HIGH_WATER + 1024 * 1024
        flood.stop.set()
        go.set()
        got = await asyncio.wait_for(reader_task, 20)
        assert got == flood.sent, (got, flood.sent)


class _App(asyncio.Protocol):
    """Records what the terminator asks of the Relay above it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")


class _Raw(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def get_write_buffer_size(self) -> int:
        return 0  # as if the socket took everything

    def get_write_buffer_limits(self) -> tuple[int, int]:
        # The marks a Relay sets when it has no listener's buffer_limit.
        return settings.WRITE_LOW_WATER, settings.WRITE_HIGH_WATER


def test_upstream_data_before_the_handshake_is_bounded() -> None:
    # The upstream speaks while the client is still shaking hands (slowly):
    # past the high-water mark the Relay is told to stop reading it.
    from meshgate.dataplane.tls_terminate import TlsTerminator

    ca = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("svc.example.com").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    app, raw = _App(), _Raw()
    tls = TlsTerminator(server, app, lambda obj, why: None)
    tls.raw = raw
    for _ in range(3):
        tls.encrypt(b"x" * (settings.WRITE_HIGH_WATER // 2))
    assert app.calls == ["pause"]
    # The handshake completes: the held data goes out and reading resumes.
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    peer = client.wrap_bio(incoming, outgoing, server_hostname="svc.example.com")
    for _ in range(10):
        with contextlib.suppress(ssl.SSLWantReadError):
            peer.do_handshake()
        tls.data_received(outgoing.read())
        incoming.write(bytes(raw.out))
        raw.out.clear()
        if tls.handshaken and peer.version():
            break
    assert tls.handshaken
    assert app.calls == ["pause", "resume"]
