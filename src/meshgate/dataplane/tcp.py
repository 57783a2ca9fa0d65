"""TCP listeners: accept, then relay (pipe.Relay) or answer in-process (builtin).

The listening socket is opened through the event loop's `create_server`;
which protocol serves an accepted connection is decided from the listener's
current spec at accept time, so a reload that changes the backend applies to
new connections only.
"""

from __future__ import annotations

import asyncio

from meshgate import settings
from meshgate.dataplane.builtin import EchoBackend, HelloBackend
from meshgate.dataplane.listener import Listener
from meshgate.dataplane.pipe import Relay


class TcpListener(Listener):
    _server: asyncio.AbstractServer | None = None

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept,
            self.spec.key.address,
            self.spec.key.port,
            backlog=settings.LISTEN_BACKLOG,
            reuse_address=True,
        )

    def _accept(self) -> asyncio.Protocol:
        spec = self.spec
        builtin = spec.pool.builtin
        if builtin == "hello":
            return HelloBackend(self, spec)
        if builtin == "echo":
            return EchoBackend(self, spec)
        return Relay(self, spec)

    def _stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
