"""`http` and `https` listeners: the Ingress data plane.

`http`: every accepted connection is an `HttpServer` (dataplane/http_server.py).

`https`: the ClientHello is peeked first (the `tls` listener's HelloPeeker).
A server name that an `ssl-passthrough` route claims is passed through to its
backend untouched; everything else is terminated with the certificate chosen
by SNI (exact, one-label wildcard, the default, else a generated self-signed
one) and served as HTTP by an `HttpServer` that knows the SNI, so a request
for a host the certificate does not cover gets 421.

Both keep the token buckets of the per-client `request_rate` on the listener,
so a reload that leaves the rate alone does not refill every client's bucket
(which would make the limit a reload away from void); a changed rate or
burst starts afresh. Connections keep the buckets they were accepted with.
"""

from __future__ import annotations

import asyncio

from meshgate.dataplane.http_server import HttpServer
from meshgate.dataplane.listener import Context, Listener
from meshgate.dataplane.pipe import Relay
from meshgate.dataplane.proxy_accept import Peer
from meshgate.dataplane.ratelimit import ClientBuckets, keep_or_new
from meshgate.dataplane.stream import StreamListener
from meshgate.dataplane.tls_listener import HelloPeeker, TlsListener
from meshgate.routing.match import select_sni
from meshgate.routing.table import ListenerSpec


def request_buckets(spec: ListenerSpec, current: ClientBuckets | None) -> ClientBuckets | None:
    """The buckets for `spec`'s per-client request rate (`current` while its
    rate and burst stay the same); None when the listener has no such limit."""
    limits = spec.per_client
    if limits is None or limits.request_rate is None:
        return None
    return keep_or_new(current, limits.request_rate, limits.burst)


class RequestLimited(Listener):
    """What both HTTP listener kinds add to their base: the request-rate buckets."""

    def __init__(self, spec: ListenerSpec, ctx: Context) -> None:
        super().__init__(spec, ctx)
        self.requests: ClientBuckets | None = request_buckets(spec, None)

    def swap(self, spec: ListenerSpec) -> None:
        super().swap(spec)
        self.requests = request_buckets(spec, self.requests)


class HttpListener(RequestLimited, StreamListener):
    def _serve(self, spec: ListenerSpec, peer: Peer | None) -> asyncio.Protocol:
        return HttpServer(self, spec, peer, scheme="http", buckets=self.requests)


class HttpsListener(RequestLimited, TlsListener):
    def _serve(self, spec: ListenerSpec, peer: Peer | None) -> asyncio.Protocol:
        return HttpsHello(self, spec, peer, self.requests)


class HttpsHello(HelloPeeker):
    def __init__(
        self,
        listener: TlsListener,
        spec: ListenerSpec,
        peer: Peer | None,
        buckets: ClientBuckets | None,
    ) -> None:
        super().__init__(listener, spec, peer)
        self.buckets = buckets  # taken at accept, like the spec

    def _route(self, sni: str | None) -> None:
        passthrough = select_sni(self.routes, sni) if sni else None
        if passthrough is not None:
            relay = Relay(self.listener, self.spec, passthrough.pool, sni, self.peer)
            self._pass_through(relay)
            return
        certs = self.spec.certs
        assert certs is not None
        ctx, cert = self.listener.ctx.tls.for_sni(certs, sni)
        server = HttpServer(
            self.listener,
            self.spec,
            self.peer,
            scheme="https",
            sni=sni,
            cert=cert,
            buckets=self.buckets,
        )
        self._terminate(ctx, server, sni)
