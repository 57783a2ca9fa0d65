"""An upstream that writes as fast as it can: the peer for backpressure tests."""

from __future__ import annotations

import asyncio
from types import TracebackType

LIMIT = 64 * 1024 * 1024  # never reached unless the relay fails to pause it


class Flood:
    """Serves on 127.0.0.1; each connection gets bytes until `stop` is set."""

    def __init__(self) -> None:
        self.sent = 0
        self.stop = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def _serve(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b"x" * 65536
        while self.sent < LIMIT and not self.stop.is_set():
            writer.write(chunk)
            self.sent += len(chunk)
            await writer.drain()
        writer.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def wait_stalled(self) -> None:
        """Return once `sent` stops growing; fail if the whole LIMIT went out."""
        last = -1
        for _ in range(300):
            await asyncio.sleep(0.02)
            if self.sent == last and self.sent > 0:
                break
            last = self.sent
        assert self.sent < LIMIT, "upstream was never paused"

    async def __aenter__(self) -> Flood:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
