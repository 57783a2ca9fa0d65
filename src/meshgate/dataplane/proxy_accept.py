"""Accepting a PROXY header (v1 or v2) in front of a tcp or tls listener.

When meshgate sits behind another proxy or load balancer, that hop can tell
it the real client address with a PROXY header. Only sources in the
listener's trusted ranges may send one (anyone else could claim any
address), and it must arrive within the header deadline. After the header
the connection is handed, with the announced client address, to the
listener's usual protocol, together with any bytes that followed the header.

The listener's allow-list and per-client limits apply to the announced
address (the real client), checked as soon as the header is parsed, before
the connection is handed on. Until then the connection is tracked by the
listener like any other: a drain waits for it, a cap counts it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Callable
from typing import cast

from meshgate.dataplane.listener import NO_TRAFFIC, Listener, Tracked, client_text
from meshgate.errors import ProtocolError
from meshgate.protocols.proxy_protocol import parse_proxy_header
from meshgate.protocols.result import NEED_MORE
from meshgate.routing.table import ListenerSpec, ProxyAcceptSpec

log = logging.getLogger("meshgate.proxy_protocol")

Peer = tuple[str, int]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=64)
def _networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in trusted)


def is_trusted(address: str, trusted: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in _networks(trusted))


class ProxyHeaderReader(asyncio.Protocol):
    """Reads the header, then becomes `then(client address)`."""

    traffic = NO_TRAFFIC  # as Tracked: the header's bytes are not the client's traffic
    backend = ""

    def __init__(
        self,
        listener: Listener,
        spec: ProxyAcceptSpec,
        then: Callable[[Peer | None], asyncio.Protocol],
        rules: ListenerSpec,
    ) -> None:
        self.listener = listener
        self.spec = spec
        self.then = then
        self.rules = rules  # the listener spec at accept: its allow-list and per-client limits
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.peer = "-"
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.listener.hold(self)
        peer = transport.get_extra_info("peername")
        self.peer = client_text(transport)
        if not peer or not is_trusted(peer[0], self.spec.trusted):
            self._reject("untrusted_source")
            return
        self._timer = asyncio.get_running_loop().call_later(
            self.spec.timeout, self._reject, "proxy_header_timeout"
        )

    def data_received(self, data: bytes) -> None:
        if self._done or self.transport is None:
            return
        self.buf += data
        try:
            header = parse_proxy_header(self.buf)
        except ProtocolError as exc:
            self._reject(exc.label)
            return
        if header is NEED_MORE:
            return
        self._finish()
        # LOCAL (a health check from the balancer itself): the real peer stands.
        client = header.source if header.command == "proxy" else None
        listener = self.listener
        if client is not None:
            host: str | None = client[0]
        else:
            peer = self.transport.get_extra_info("peername")
            host = peer[0] if peer else None
        if not listener.admit_client(self, host, self.rules):
            self.transport.close()
            return
        nxt = self.then(client)
        # Every protocol a listener serves with tracks itself (Tracked).
        listener.pass_on(self, cast(Tracked, nxt))
        self.transport.set_protocol(nxt)
        nxt.connection_made(self.transport)
        rest = self.buf[header.length :]
        if rest:
            nxt.data_received(rest)

    def eof_received(self) -> bool:
        self._reject("eof_before_proxy_header")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # Reached only while this is still the socket's protocol (not handed on).
        self._finish()
        self.listener.untrack(self)

    def abort(self) -> None:
        """Close now (the listener's drain deadline)."""
        self._finish()
        if self.transport is not None:
            self.transport.abort()

    def _reject(self, reason: str) -> None:
        if self._done:
            return
        self._finish()
        self.listener.ctx.metrics.proxy_protocol_rejected.labels(
            self.listener.spec.name, reason
        ).inc()
        log.info(
            "proxy header rejected",
            extra={
                "fields": {
                    "listener": self.listener.spec.name,
                    "client": self.peer,
                    "reason": reason,
                }
            },
        )
        if self.transport is not None:
            self.transport.close()

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
