"""What to do with one HTTP request head: answer it, or forward it where (pure).

The checks run in the order a user reasons about them, each answering with
the status ingress-nginx users know:
1. a route for host + path (else the default backend, else 404);
2. on https, the Host must be served by the certificate the TLS handshake
   chose for the SNI, else 421 (a client reusing one connection for another
   host, RFC 9110 §15.5.20);
3. the route's client allow-list (403);
4. redirects: `ssl_redirect` on plain HTTP (308, method and body kept), and
   `app_root` for "/" (302);
5. a declared body larger than the route allows (413) — chunked bodies are
   counted as they stream;
6. forward, with the path rewritten when the route says so.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from meshgate.protocols.http1 import RequestHead
from meshgate.routing.http_match import host_of, normalize_path, rewrite_path, select_http
from meshgate.routing.match import select_cert
from meshgate.routing.table import HttpRoutes, HttpRouteSpec, ServerCerts

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer the request in meshgate; `label` says why (metrics, access log)."""

    status: int
    label: str
    location: str | None = None


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the request to the route's backend with this request-target."""

    target: str


def decide(
    routes: HttpRoutes,
    head: RequestHead,
    *,
    scheme: str,
    client: IpAddress | None,
    sni: str | None = None,
    certs: ServerCerts | None = None,
) -> tuple[HttpRouteSpec | None, Respond | Forward]:
    path = normalize_path(head.path)
    found = select_http(routes, head.host, path)
    if found is None:
        return None, Respond(404, "no_route")
    route = found.route
    host = host_of(head.host)
    if certs is not None and sni and select_cert(certs, host) != select_cert(certs, sni):
        return route, Respond(421, "misdirected")
    if route.allow and (client is None or not any(client in net for net in route.allow)):
        return route, Respond(403, "forbidden")
    query = f"?{head.query}" if head.query else ""
    if route.ssl_redirect and scheme == "http":
        port = routes.limits.https_port
        authority = f"[{host}]" if host and ":" in host else (host or "")
        if port != 443:
            authority = f"{authority}:{port}"
        return route, Respond(308, "redirect", f"https://{authority}{head.path}{query}")
    if route.app_root is not None and path == "/":
        return route, Respond(302, "redirect", route.app_root)
    if route.pool is None:
        return route, Respond(404, "no_route")
    limit = route.max_body
    if limit is not None and head.content_length is not None and head.content_length > limit:
        return route, Respond(413, "body_too_large")
    if route.rewrite_target is not None:
        return route, Forward(rewrite_path(found, path) + query)
    return route, Forward(head.path + query)
