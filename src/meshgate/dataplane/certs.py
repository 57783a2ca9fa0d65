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

import datetime
import hashlib
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass

from meshgate.dataplane.tls_groups import restrict_groups, warn_once
from meshgate.routing.match import select_cert
from meshgate.routing.table import (
    CertRef,
    EndpointAddr,
    PoolSpec,
    RouteTable,
    ServerCerts,
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
    """What identifies a file's current content cheaply: path, mtime, size."""
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


def _pem_stamp(text: str) -> tuple[str, int, int]:
    return (f"pem:{hashlib.sha256(text.encode()).hexdigest()}", 0, 0)


def _cert_stamp(cert: CertRef) -> tuple[tuple[str, int, int], tuple[str, int, int]]:
    if cert.pem is not None:
        # Inline PEM (a Kubernetes Secret): its content is its identity.
        return _pem_stamp(cert.pem[0]), _pem_stamp(cert.pem[1])
    return _stamp(cert.cert), _stamp(cert.key)


def _load_chain(ctx: ssl.SSLContext, cert: CertRef) -> None:
    if cert.pem is None:
        ctx.load_cert_chain(cert.cert, cert.key)
        return
    # ssl can load a chain from files only: a private directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="meshgate-cert-") as tmp:
        cert_path, key_path = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        for path, text in ((cert_path, cert.pem[0]), (key_path, cert.pem[1])):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        ctx.load_cert_chain(cert_path, key_path)


def self_signed() -> CertRef:
    """A throwaway certificate for https listeners without a default one
    (what ingress-nginx calls its "fake certificate"): EC P-256, one year."""
    # Imported here: cryptography costs ~10 MB, and only https listeners need it.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshgate default certificate")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("meshgate.invalid")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    pem = (
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )
    return CertRef("generated:self-signed", "generated:self-signed", pem)


def server_context(cert: CertRef, alpn: tuple[str, ...]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # Let the client's order win: every suite offered is strong (Mozilla's advice).
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if not restrict_groups(ctx):
        warn_once()
    try:
        _load_chain(ctx, cert)
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
    if spec.ca_pem is not None:
        try:
            ctx.load_verify_locations(cadata=spec.ca_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise CertError(spec.ca or "inline CA", f"cannot load CA bundle: {exc}") from None
    elif spec.ca is not None:
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
        self._generated: CertRef | None = None

    @property
    def generated(self) -> CertRef:
        """The self-signed certificate of https listeners without a default."""
        if self._generated is None:
            self._generated = self_signed()
        return self._generated

    def prepare(self, table: RouteTable) -> None:
        """Build every context `table` needs; raise CertError and change
        nothing when one file is bad."""
        servers: dict[_ServerKey, ssl.SSLContext] = {}
        clients: dict[_ClientKey, ssl.SSLContext] = {}
        route_ctx: dict[tuple[CertRef, tuple[str, ...]], ssl.SSLContext] = {}
        pool_ctx: dict[UpstreamTlsSpec, ssl.SSLContext] = {}
        wanted: list[tuple[CertRef, tuple[str, ...]]] = []
        for spec in table.listeners:
            wanted.extend(
                (route.cert, route.alpn)
                for route in (spec.sni.routes if spec.sni else ())
                if route.cert is not None
            )
            if spec.certs is not None:
                refs = [*spec.certs.exact.values(), *spec.certs.wildcard.values()]
                refs.append(spec.certs.default or self.generated)
                wanted.extend((ref, HTTP_ALPN) for ref in refs)
        for cert, alpn in wanted:
            stamps = _cert_stamp(cert)
            skey = _ServerKey(stamps[0], stamps[1], alpn)
            ctx = servers.get(skey) or self._servers.get(skey) or server_context(cert, alpn)
            servers[skey] = route_ctx[(cert, alpn)] = ctx
        for pool in table.pools.values():
            if pool.tls is None:
                continue
            ckey = _ClientKey(
                _pem_stamp(pool.tls.ca_pem)
                if pool.tls.ca_pem
                else (_stamp(pool.tls.ca) if pool.tls.ca else None),
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

    def for_sni(self, certs: ServerCerts, sni: str | None) -> tuple[ssl.SSLContext, CertRef]:
        """An https listener's context for `sni` and the certificate it presents."""
        ref = select_cert(certs, sni) or self.generated
        return self._route_ctx[(ref, HTTP_ALPN)], ref

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


# Terminated https traffic is HTTP/1.1 (announced, so clients do not try h2).
HTTP_ALPN = ("http/1.1",)


def cert_files(table: RouteTable) -> set[str]:
    """Every file the table's TLS settings read (to watch them for changes)."""
    files: set[str] = set()
    for spec in table.listeners:
        refs = [r.cert for r in spec.sni.routes if r.cert is not None] if spec.sni else []
        if spec.certs is not None:
            refs.extend([*spec.certs.exact.values(), *spec.certs.wildcard.values()])
            if spec.certs.default is not None:
                refs.append(spec.certs.default)
        for ref in refs:
            if ref.pem is None:
                files.update((ref.cert, ref.key))
    for pool in table.pools.values():
        if pool.tls is not None and pool.tls.ca and pool.tls.ca_pem is None:
            files.add(pool.tls.ca)
    return files
