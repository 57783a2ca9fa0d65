"""`http` and `https` listeners: the Ingress data plane.

`http`: every accepted connection is an `HttpServer` (dataplane/http_server.py).

`https`: the ClientHello is peeked first (the `tls` listener's HelloPeeker).
A server name that an `ssl-passthrough` route claims is passed through to its
backend untouched; everything else is terminated with the certificate chosen
by SNI (exact, one-label wildcard, the default, else a generated self-signed
one) and served as HTTP by an `HttpServer` that knows the SNI, so a request
for a host the certificate does not cover gets 421.
"""

from __future__ import annotations

import asyncio

from meshgate.dataplane.http_server import HttpServer
from meshgate.dataplane.pipe import Relay
from meshgate.dataplane.proxy_accept import Peer
from meshgate.dataplane.stream import StreamListener
from meshgate.dataplane.tls_listener import HelloPeeker, TlsListener
from meshgate.routing.match import select_sni
from meshgate.routing.table import ListenerSpec


class HttpListener(StreamListener):
    def _serve(self, spec: ListenerSpec, peer: Peer | None) -> asyncio.Protocol:
        return HttpServer(self, spec, peer, scheme="http")


class HttpsListener(TlsListener):
    def _serve(self, spec: ListenerSpec, peer: Peer | None) -> asyncio.Protocol:
        return HttpsHello(self, spec, peer)


class HttpsHello(HelloPeeker):
    def _route(self, sni: str | None) -> None:
        passthrough = select_sni(self.routes, sni) if sni else None
        if passthrough is not None:
            relay = Relay(self.listener, self.spec, passthrough.pool, sni, self.peer)
            self._pass_through(relay)
            return
        certs = self.spec.certs
        assert certs is not None
        ctx, cert = self.listener.ctx.tls.for_sni(certs, sni)
        server = HttpServer(self.listener, self.spec, self.peer, scheme="https", sni=sni, cert=cert)
        self._terminate(ctx, server, sni)
