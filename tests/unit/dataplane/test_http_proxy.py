"""Idle upstream HTTP connections in-process, on real loopback sockets."""

from __future__ import annotations

import asyncio

from meshgate.upstream.http_conn import KeepAlive, UpstreamConn


class Watched(UpstreamConn):
    """An UpstreamConn that says when its connection is gone."""

    def __init__(self, keepalive: KeepAlive) -> None:
        super().__init__(None, "k", keepalive)
        self.lost = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.lost.set()


async def test_idle_connection_given_back_paused_still_sees_the_backend_close() -> None:
    # An exchange pauses its upstream while the client is slow to read; when
    # the response ends in that state the connection goes idle paused. It
    # must still notice the backend closing it, or the next request gets a
    # dead connection.
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    keepalive = KeepAlive()
    transport, conn = await loop.create_connection(lambda: Watched(keepalive), "127.0.0.1", port)
    try:
        transport.pause_reading()
        keepalive.give_back(conn)
        assert len(keepalive) == 1
        backend_side = await asyncio.wait_for(accepted.get(), 2)
        backend_side.close()  # the backend closes the idle connection
        await asyncio.wait_for(conn.lost.wait(), 2)
        assert len(keepalive) == 0
        assert keepalive.take("k") is None
    finally:
        keepalive.close_all()
        transport.abort()
        server.close()
        await server.wait_closed()
