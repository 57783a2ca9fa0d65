"""TLS contexts built from the table's certificate and trust references.

`TlsStore.prepare(table)` loads every certificate, key and CA bundle a table
names *before* the table is applied, so a bad file rejects the whole reload
(with the file named) and the running contexts stay. Contexts are cached by
the files' paths and modification times: a reload that changed nothing
reuses them, a renewed certificate gets a fresh context, and established
connections keep the context they handshook with.

Server side follows Mozilla's "intermediate" profile: TLS 1.2 and 1.3,
ECDHE with AES-GCM or ChaCha20-Poly1305 for 1.2, no compression, no
renegotiation. The client side verifies the upstream's certificate and name
unless `insecure_skip_verify` is spelled out.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass

from meshgate.routing.table import (
    CertRef,
    EndpointAddr,
    PoolSpec,
    RouteTable,
    TlsRouteSpec,
    UpstreamTlsSpec,
)

log = logging.getLogger("meshgate.tls")

# Mozilla Server Side TLS, "intermediate" (v5.7) cipher suites for TLS 1.2;
# TLS 1.3 suites are OpenSSL's defaults, which match the profile.
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)


class CertError(Exception):
    """A certificate, key or CA file that cannot be used; names the file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _stamp(path: str) -> tuple[str, int, int]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CertError(path, exc.strerror or str(exc)) from None
    return (path, st.st_mtime_ns, st.st_size)


@dataclass(frozen=True, slots=True)
class _ServerKey:
    cert: tuple[str, int, int]
    key: tuple[str, int, int]
    alpn: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _ClientKey:
    ca: tuple[str, int, int] | None
    insecure: bool
    alpn: tuple[str, ...]


def server_context(cert: CertRef, alpn: tuple[str, ...]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # Let the client's order win: every suite offered is strong (Mozilla's advice).
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cert.cert, cert.key)
    except FileNotFoundError as exc:
        raise CertError(exc.filename or cert.cert, "no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise CertError(
            f"{cert.cert} / {cert.key}", f"cannot load certificate and key: {exc}"
        ) from None
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(spec: UpstreamTlsSpec) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if spec.ca is not None:
        try:
            ctx.load_verify_locations(cafile=spec.ca)
        except FileNotFoundError:
            raise CertError(spec.ca, "no such file") from None
        except (ssl.SSLError, OSError) as exc:
            raise CertError(spec.ca, f"cannot load CA bundle: {exc}") from None
    if spec.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if spec.alpn:
        ctx.set_alpn_protocols(list(spec.alpn))
    return ctx


class TlsStore:
    """The SSL contexts of the table in use, built ahead and cached by file stamp."""

    def __init__(self) -> None:
        self._servers: dict[_ServerKey, ssl.SSLContext] = {}
        self._clients: dict[_ClientKey, ssl.SSLContext] = {}
        self._route_ctx: dict[tuple[CertRef, tuple[str, ...]], ssl.SSLContext] = {}
        self._pool_ctx: dict[UpstreamTlsSpec, ssl.SSLContext] = {}

    def prepare(self, table: RouteTable) -> None:
        """Build every context `table` needs; raise CertError and change
        nothing when one file is bad."""
        servers: dict[_ServerKey, ssl.SSLContext] = {}
        clients: dict[_ClientKey, ssl.SSLContext] = {}
        route_ctx: dict[tuple[CertRef, tuple[str, ...]], ssl.SSLContext] = {}
        pool_ctx: dict[UpstreamTlsSpec, ssl.SSLContext] = {}
        for spec in table.listeners:
            for route in spec.sni.routes if spec.sni else ():
                if route.cert is None:
                    continue
                skey = _ServerKey(_stamp(route.cert.cert), _stamp(route.cert.key), route.alpn)
                ctx = (
                    servers.get(skey)
                    or self._servers.get(skey)
                    or server_context(route.cert, route.alpn)
                )
                servers[skey] = route_ctx[(route.cert, route.alpn)] = ctx
        for pool in table.pools.values():
            if pool.tls is None:
                continue
            ckey = _ClientKey(
                _stamp(pool.tls.ca) if pool.tls.ca else None,
                pool.tls.insecure_skip_verify,
                pool.tls.alpn,
            )
            ctx = clients.get(ckey) or self._clients.get(ckey) or client_context(pool.tls)
            clients[ckey] = pool_ctx[pool.tls] = ctx
            if pool.tls.insecure_skip_verify:
                log.warning(
                    "upstream certificate checks are OFF (insecure_skip_verify)",
                    extra={"fields": {"backend": pool.name}},
                )
        self._servers, self._clients = servers, clients
        self._route_ctx, self._pool_ctx = route_ctx, pool_ctx

    def server_side(self, route: TlsRouteSpec) -> ssl.SSLContext:
        """The context a terminating route handshakes with (prepared before)."""
        assert route.cert is not None
        return self._route_ctx[(route.cert, route.alpn)]

    def client_side(
        self, pool: PoolSpec, addr: EndpointAddr
    ) -> tuple[ssl.SSLContext, str | None] | None:
        """(context, server name) to re-originate TLS to `addr`, or None for TCP."""
        if pool.tls is None:
            return None
        ctx = self._pool_ctx.get(pool.tls)
        if ctx is None:  # a connection from an older table whose backend changed
            ctx = client_context(pool.tls)
        # The configured name, else the endpoint's own host. For an IP literal
        # Python's ssl sends no SNI (RFC 6066 §3) but checks the IP SAN.
        return ctx, pool.tls.sni or addr.host


def cert_files(table: RouteTable) -> set[str]:
    """Every file the table's TLS settings read (to watch them for changes)."""
    files: set[str] = set()
    for spec in table.listeners:
        for route in spec.sni.routes if spec.sni else ():
            if route.cert is not None:
                files.update((route.cert.cert, route.cert.key))
    for pool in table.pools.values():
        if pool.tls is not None and pool.tls.ca:
            files.add(pool.tls.ca)
    return files
