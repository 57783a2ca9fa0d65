"""TCP listeners: accept, then relay (pipe.Relay) or answer in-process (builtin).

The listening socket is opened through the event loop's `create_server`;
which protocol serves an accepted connection is decided from the listener's
current spec at accept time, so a reload that changes the backend applies to
new connections only.
"""

from __future__ import annotations

import asyncio

from meshgate.dataplane.builtin import EchoBackend, HelloBackend
from meshgate.dataplane.pipe import Relay
from meshgate.dataplane.proxy_accept import Peer
from meshgate.dataplane.stream import StreamListener
from meshgate.routing.table import ListenerSpec


class TcpListener(StreamListener):
    def _serve(self, spec: ListenerSpec, peer: Peer | None) -> asyncio.Protocol:
        pool = spec.l4_pool
        if pool.builtin == "hello":
            return HelloBackend(self, spec, pool)
        if pool.builtin == "echo":
            return EchoBackend(self, spec, pool)
        return Relay(self, spec, pool, peer=peer)
