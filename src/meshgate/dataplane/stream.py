"""What tcp and tls listeners share: the listening TCP socket, and an optional
PROXY header read before the listener's own protocol takes the connection."""

from __future__ import annotations

import asyncio
from abc import abstractmethod

from meshgate.dataplane.listener import Listener, open_tcp_server
from meshgate.dataplane.proxy_accept import Peer, ProxyHeaderReader
from meshgate.routing.table import ListenerSpec


class StreamListener(Listener):
    _server: asyncio.AbstractServer | None = None

    async def _bind(self) -> None:
        self._server = await open_tcp_server(self.spec, self._accept)

    def _accept(self) -> asyncio.Protocol:
        # The spec is read once, at accept: a reload affects later connections only.
        spec = self.spec
        if spec.proxy_accept is not None:
            return ProxyHeaderReader(self, spec.proxy_accept, lambda peer: self._serve(spec, peer))
        return self._serve(spec, None)

    @abstractmethod
    def _serve(self, spec: ListenerSpec, peer: Peer | None) -> asyncio.Protocol:
        """The protocol that serves a new connection (`peer`: from a PROXY header)."""

    def _stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
