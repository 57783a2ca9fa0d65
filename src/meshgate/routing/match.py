"""Route selection by TLS server name (pure).

Ingress v1 host semantics: exact names first; then a wildcard `*.foo.com`,
which covers exactly one more label (`bar.foo.com`, not `baz.bar.foo.com`
and not `foo.com`); then the default route. Names compare case-insensitively
and a trailing dot is ignored. No SNI at all goes to the default route.
"""

from __future__ import annotations

from meshgate.routing.table import CertRef, ServerCerts, SniRoutes, TlsRouteSpec


def select_sni(routes: SniRoutes, sni: str | None) -> TlsRouteSpec | None:
    """The route for `sni`, or None when nothing (not even a default) takes it."""
    if not sni:
        return routes.default
    name = sni.lower().rstrip(".")
    route = routes.exact.get(name)
    if route is not None:
        return route
    _, dot, parent = name.partition(".")
    if dot:
        route = routes.wildcard.get(parent)
        if route is not None:
            return route
    return routes.default


def select_cert(certs: ServerCerts, name: str | None) -> CertRef | None:
    """The certificate an https listener presents for `name`: exact, then
    one-label wildcard, then the default (None: the generated one)."""
    if name:
        name = name.lower().rstrip(".")
        ref = certs.exact.get(name)
        if ref is not None:
            return ref
        _, dot, parent = name.partition(".")
        if dot and (ref := certs.wildcard.get(parent)) is not None:
            return ref
    return certs.default
