"""TCP listeners: accept, then relay (pipe.Relay) or answer in-process (builtin).

The listening socket is opened through the event loop's `create_server`;
which protocol serves an accepted connection is decided from the listener's
current spec at accept time, so a reload that changes the backend applies to
new connections only.
"""

from __future__ import annotations

import asyncio

from meshgate.dataplane.builtin import EchoBackend, HelloBackend
from meshgate.dataplane.listener import Listener, open_tcp_server
from meshgate.dataplane.pipe import Relay
from meshgate.dataplane.proxy_accept import ProxyHeaderReader
from meshgate.routing.table import ListenerSpec


class TcpListener(Listener):
    _server: asyncio.AbstractServer | None = None

    async def _bind(self) -> None:
        self._server = await open_tcp_server(self.spec, self._accept)

    def _accept(self) -> asyncio.Protocol:
        spec = self.spec
        if spec.proxy_accept is not None:
            return ProxyHeaderReader(self, spec.proxy_accept, lambda peer: self._serve(spec, peer))
        return self._serve(spec, None)

    def _serve(self, spec: ListenerSpec, peer: tuple[str, int] | None) -> asyncio.Protocol:
        pool = spec.l4_pool
        if pool.builtin == "hello":
            return HelloBackend(self, spec, pool)
        if pool.builtin == "echo":
            return EchoBackend(self, spec, pool)
        return Relay(self, spec, pool, peer=peer)

    def _stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
