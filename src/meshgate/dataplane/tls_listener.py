"""`tls` listeners: read the ClientHello, pick a route by SNI, then pass the
connection through untouched, or terminate TLS (and maybe re-originate it).

The hello is parsed by the sans-I/O `protocols.tls_hello` as bytes arrive,
under a size cap and a deadline. Then the accepted socket changes protocol:
- passthrough: a Relay, fed the peeked bytes first, so the backend sees the
  client's own handshake (ssl-passthrough / Traefik `tls.passthrough`);
- terminate: a TlsTerminator with the route's certificate under a Relay; the
  Relay's backend gets plaintext, or TLS again when the backend has `tls`
  (re-origination with its own SNI, verified against its CA).
Bad or slow hellos and names no route takes are closed and counted by reason
(`meshgate_tls_rejected_total`); nothing reaches the accept loop.

While the hello is read, the connection is tracked by the listener like any
other (a drain waits for it, a cap counts it); the Relay or HTTP server that
takes it over is handed its place (`Listener.pass_on`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import cast

from meshgate.dataplane.listener import NO_TRAFFIC, Tracked, client_text
from meshgate.dataplane.pipe import Relay
from meshgate.dataplane.proxy_accept import Peer
from meshgate.dataplane.stream import StreamListener
from meshgate.dataplane.tls_terminate import TlsTerminator
from meshgate.errors import ProtocolError
from meshgate.protocols.result import NEED_MORE
from meshgate.protocols.tls_hello import parse_client_hello
from meshgate.routing.match import select_sni
from meshgate.routing.table import ListenerSpec, SniRoutes, TlsRouteSpec

log = logging.getLogger("meshgate.tls")


class TlsListener(StreamListener):
    def _serve(self, spec: ListenerSpec, peer: Peer | None) -> asyncio.Protocol:
        return HelloPeeker(self, spec, peer)

    def reject(self, reason: str, client: str, sni: str | None = None) -> None:
        self.ctx.metrics.tls_rejected.labels(self.spec.name, reason).inc()
        log.info(
            "tls connection rejected",
            extra={
                "fields": {
                    "listener": self.spec.name,
                    "client": client,
                    "reason": reason,
                    "sni": sni,
                }
            },
        )


class HelloPeeker(asyncio.Protocol):
    """Buffers the first bytes of a connection until the ClientHello is whole."""

    traffic = NO_TRAFFIC  # as Tracked: the peeked bytes are counted by the Relay
    backend = ""

    def __init__(
        self, listener: TlsListener, spec: ListenerSpec, peer: tuple[str, int] | None = None
    ) -> None:
        assert spec.sni is not None
        self.peer = peer  # announced by a PROXY header
        self.listener = listener
        self.spec = spec
        self.routes: SniRoutes = spec.sni
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.client = "-"
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.listener.hold(self)  # already tracked when a PROXY header came first
        self.client = client_text(transport, self.peer)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.routes.hello_timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self.buf += data
        try:
            hello = parse_client_hello(self.buf, self.routes.max_hello)
        except ProtocolError as exc:
            self._reject(exc.label)
            return
        if hello is NEED_MORE:
            return
        self._route(hello.sni)

    def _route(self, sni: str | None) -> None:
        """Pick the route for the hello's server name and hand the connection on."""
        route = select_sni(self.routes, sni)
        if route is None:
            self._reject("unknown_sni" if sni else "no_sni", sni)
            return
        self._hand_off(route, sni)

    def _hand_off(self, route: TlsRouteSpec, sni: str | None) -> None:
        relay = Relay(self.listener, self.spec, route.pool, sni, self.peer)
        if route.mode == "passthrough":
            self._pass_through(relay)
            return
        self._terminate(self.listener.ctx.tls.server_side(route), relay, sni)

    def _pass_through(self, app: asyncio.Protocol) -> None:
        """Give the connection, untouched, to `app`, replaying the peeked bytes."""
        assert self.transport is not None
        self._finish()
        # Every protocol a listener serves with tracks itself (Tracked).
        self.listener.pass_on(self, cast(Tracked, app))
        self.transport.set_protocol(app)
        app.connection_made(self.transport)
        app.data_received(self.buf)

    def _terminate(self, ctx: ssl.SSLContext, app: asyncio.Protocol, sni: str | None) -> None:
        """Decrypt the connection with `ctx` and give the plaintext to `app`."""
        assert self.transport is not None
        self._finish()
        transport, listener = self.transport, self.listener
        metrics = listener.ctx.metrics

        def handshake(obj: ssl.SSLObject | None, failure: str | None) -> None:
            if obj is None:
                listener.reject("handshake_failed", self.client, sni)
                log.debug("handshake failed", extra={"fields": {"reason": failure}})
            else:
                metrics.tls_handshakes.labels(self.spec.name, obj.version() or "?").inc()

        terminator = TlsTerminator(ctx, app, handshake)
        listener.pass_on(self, cast(Tracked, app))  # the app is the connection from now on
        transport.set_protocol(terminator)
        terminator.connection_made(transport)
        terminator.data_received(self.buf)

    def _too_slow(self) -> None:
        self._reject("hello_timeout")

    def eof_received(self) -> bool:
        self._reject("eof_before_hello")
        return False

    def _reject(self, reason: str, sni: str | None = None) -> None:
        if self._done:
            return
        self._finish()
        self.listener.reject(reason, self.client, sni)
        if self.transport is not None:
            self.transport.close()

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        # Reached only while this is still the socket's protocol (not handed on).
        if not self._done:
            self._finish()
            self.listener.reject("closed_before_hello", self.client)
        self.listener.untrack(self)

    def abort(self) -> None:
        """Close now (the listener's drain deadline)."""
        self._finish()
        if self.transport is not None:
            self.transport.abort()
