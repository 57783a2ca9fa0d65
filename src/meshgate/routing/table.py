"""The routing table: the only thing the control and data planes share.

Plain frozen, slotted dataclasses with no validation logic (that happened at
the edge) and no imports from `config`: the hot path reads attributes and
nothing else. A table is never changed; a reload builds a new one with a
higher `version`, and every connection keeps the table it was accepted with.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Protocol = Literal["tcp", "udp", "tls", "http", "https"]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class ListenerKey:
    """What identifies a listening socket: reloads diff listeners by this key."""

    address: str
    port: int
    protocol: Protocol

    def __str__(self) -> str:
        return f"{self.protocol}://{hostport(self.address, self.port)}"


@dataclass(frozen=True, slots=True)
class EndpointAddr:
    host: str  # IP literal or DNS name, resolved at connect time
    port: int
    address: str | None = None  # a static override of `host` (config `resolve`)

    @property
    def connect_host(self) -> str:
        return self.address or self.host

    def __str__(self) -> str:
        return hostport(self.host, self.port)


@dataclass(frozen=True, slots=True)
class CertRef:
    """A certificate chain and key by file path, or inline PEM text (`pem`:
    cert, key; then `cert` and `key` only name where it came from)."""

    cert: str
    key: str
    pem: tuple[str, str] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ServerCerts:
    """An https listener's certificates by SNI (Ingress host semantics)."""

    exact: dict[str, CertRef]
    wildcard: dict[str, CertRef]  # "foo.com" for "*.foo.com"
    default: CertRef | None  # None: a self-signed certificate generated at start


@dataclass(frozen=True, slots=True)
class UpstreamTlsSpec:
    """TLS towards the backend: the name sent and checked, and what to trust."""

    sni: str | None  # None: the endpoint's host name (if it is a name)
    ca: str | None  # None: the system roots
    insecure_skip_verify: bool
    alpn: tuple[str, ...]
    ca_pem: str | None = field(default=None, repr=False)  # inline bundle; `ca` names it


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    idle: float
    half_closed: float


@dataclass(frozen=True, slots=True)
class OutlierSpec:
    """Passive ejection: failures in a row, the doubling period, the share cap."""

    consecutive_failures: int = 3
    base_ejection: float = 10.0
    max_ejection: float = 300.0
    max_ejected_percent: int = 50


@dataclass(frozen=True, slots=True)
class HealthCheckSpec:
    """An active check of each endpoint: tcp connect, tls handshake or http GET."""

    type: str  # tcp | tls | http
    interval: float
    timeout: float
    healthy_threshold: int
    unhealthy_threshold: int
    path: str = "/"
    host: str | None = None  # http Host; None: the endpoint's host
    expect_status: tuple[int, ...] = ()  # empty: 200-399


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A backend: where to send traffic and how. Pools are keyed by `name`."""

    name: str
    endpoints: tuple[EndpointAddr, ...]
    balance: str  # round_robin | random | least_conn
    timeouts: Timeouts
    builtin: str | None = None  # "hello" | "echo": answered in-process
    tls: UpstreamTlsSpec | None = None  # re-originate TLS to the endpoints
    proxy_protocol: str | None = None  # "v1" | "v2": header sent before any data
    outlier: OutlierSpec = OutlierSpec()
    health_check: HealthCheckSpec | None = None


@dataclass(frozen=True, slots=True)
class UdpSpec:
    flow_idle_timeout: float
    max_flows: int


@dataclass(frozen=True, slots=True)
class TlsRouteSpec:
    """Where a TLS connection goes once its ClientHello names a server."""

    names: tuple[str, ...]  # exact names and "*.suffix" wildcards, lower case
    default: bool
    mode: str  # passthrough | terminate
    pool: PoolSpec
    cert: CertRef | None  # terminate: the certificate presented
    alpn: tuple[str, ...]  # terminate: protocols offered


@dataclass(frozen=True, slots=True)
class SniRoutes:
    """A tls listener's routes, indexed for `routing.match.select_sni`."""

    routes: tuple[TlsRouteSpec, ...]
    exact: dict[str, TlsRouteSpec]
    wildcard: dict[str, TlsRouteSpec]  # "foo.com" for "*.foo.com"
    default: TlsRouteSpec | None
    hello_timeout: float
    max_hello: int


@dataclass(frozen=True, slots=True)
class ProxyAcceptSpec:
    """Read a PROXY header first, from these source ranges only."""

    trusted: tuple[str, ...]  # CIDR ranges
    timeout: float


@dataclass(frozen=True, slots=True)
class HttpRouteSpec:
    """One host + path rule of an http/https listener and its options."""

    host: str | None  # exact or "*.suffix", lower case; None: any host
    path: str
    path_type: str  # Exact | Prefix | Regex
    pool: PoolSpec | None  # None: a redirect-only route
    rewrite_target: str | None
    ssl_redirect: bool
    app_root: str | None
    allow: tuple[IpNetwork, ...]  # empty: every client
    max_body: int | None
    connect_timeout: float | None  # None: the backend's
    read_timeout: float
    origin: str
    # Regex paths: compiled once, anchored at the start, case-insensitive.
    pattern: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class PathSet:
    """The routes of one host (or of "any host"), indexed for path lookup by
    `routing.http_match`."""

    exact: dict[str, HttpRouteSpec]
    prefix: dict[str, HttpRouteSpec]  # by normalised prefix ("" for "/")
    regex: tuple[HttpRouteSpec, ...]  # in the order they are tried


@dataclass(frozen=True, slots=True)
class HostIndex:
    exact: dict[str, PathSet]
    wildcard: dict[str, PathSet]  # "foo.com" for "*.foo.com"
    any_host: PathSet | None


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_request_line: int
    max_header_bytes: int
    max_headers: int
    max_body: int | None
    header_timeout: float
    keepalive_timeout: float
    trusted_proxies: tuple[IpNetwork, ...]
    https_port: int
    access_log: bool
    body_timeout: float = 60.0  # request body: longest wait for its next bytes
    send_timeout: float = 60.0  # response: longest the client may take no bytes


DEFAULT_ROUTE_LABEL = "default"  # the `route` label of requests the default backend takes


def http_route_label(host: str | None, path: str) -> str:
    """The `route` label of the meshgate_http_* metrics for a rule: host and
    path, "*" for any host (the default backend: DEFAULT_ROUTE_LABEL)."""
    return f"{host or '*'}{path}"


@dataclass(frozen=True, slots=True)
class HttpRoutes:
    """An http/https listener's routing: built by `routing.http_match.index_routes`."""

    routes: tuple[HttpRouteSpec, ...]  # in config order
    default: HttpRouteSpec | None  # defaultBackend: what no rule takes
    index: HostIndex
    limits: HttpLimits


@dataclass(frozen=True, slots=True)
class ClientLimitsSpec:
    """Per client IP address; None: no limit of that kind."""

    max_connections: int | None = None
    connection_rate: float | None = None  # per second
    request_rate: float | None = None  # per second (http/https)
    burst: int | None = None  # token bucket size; None: twice the rate


@dataclass(frozen=True, slots=True)
class GlobalLimitsSpec:
    """Process-wide limits (config `limits`); None fields are derived at run
    time (descriptor limit, cgroup memory)."""

    max_connections: int | None = None
    fd_reserve: int = 256
    memory_limit: int | None = None
    connection_buffer: int = 64 << 10
    disable_keepalive: float = 0.80
    reject_requests: float = 0.90
    stop_accepting: float = 0.95


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    key: ListenerKey
    name: str
    pool: PoolSpec | None  # tcp, udp
    udp: UdpSpec
    sni: SniRoutes | None = None  # tls; https: the passthrough hosts
    proxy_accept: ProxyAcceptSpec | None = None
    dns_name: str | None = None  # a mesh DNS name answering with this listener's address
    http: HttpRoutes | None = None  # http, https
    certs: ServerCerts | None = None  # https
    allow: tuple[IpNetwork, ...] = ()  # client ranges accepted; empty: every client
    max_connections: int | None = None  # open at once on this listener
    per_client: ClientLimitsSpec | None = None
    # Bytes buffered per connection and direction before the other side stops
    # reading (the table's limits.connection_buffer, copied for the hot path).
    buffer_limit: int = 64 << 10

    @property
    def l4_pool(self) -> PoolSpec:
        """The one backend of a tcp or udp listener."""
        if self.pool is None:
            raise ValueError(f"{self.key} routes by SNI; it has no single backend")
        return self.pool

    @property
    def pools(self) -> tuple[PoolSpec, ...]:
        if self.pool is not None:
            return (self.pool,)
        pools = [r.pool for r in self.sni.routes] if self.sni else []
        if self.http is not None:
            pools.extend(r.pool for r in self.http.routes if r.pool is not None)
            if self.http.default is not None and self.http.default.pool is not None:
                pools.append(self.http.default.pool)
        return tuple({p.name: p for p in pools}.values())

    @property
    def backend_label(self) -> str:
        """The backend name for logs and /status ("a|b" for several routes)."""
        return "|".join(dict.fromkeys(p.name for p in self.pools))


@dataclass(frozen=True, slots=True)
class RouteTable:
    version: int
    listeners: tuple[ListenerSpec, ...]
    sources: tuple[str, ...] = ()
    limits: GlobalLimitsSpec = GlobalLimitsSpec()
    _by_key: dict[ListenerKey, ListenerSpec] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_key", {spec.key: spec for spec in self.listeners})

    def get(self, key: ListenerKey) -> ListenerSpec | None:
        return self._by_key.get(key)

    @property
    def keys(self) -> frozenset[ListenerKey]:
        return frozenset(self._by_key)

    @property
    def pools(self) -> dict[str, PoolSpec]:
        return {pool.name: pool for spec in self.listeners for pool in spec.pools}

    def to_json(self) -> dict[str, Any]:
        """The table as plain JSON data (for /config and `meshgate check`)."""
        return {
            "version": self.version,
            "sources": list(self.sources),
            "limits": _limits_json(self.limits),
            "listeners": [
                {
                    "name": spec.name,
                    "address": spec.key.address,
                    "port": spec.key.port,
                    "protocol": spec.key.protocol,
                    "backend": spec.backend_label,
                    **(
                        {
                            "proxy_protocol": {
                                "trusted": list(spec.proxy_accept.trusted),
                                "timeout": spec.proxy_accept.timeout,
                            }
                        }
                        if spec.proxy_accept is not None
                        else {}
                    ),
                    **(
                        {"routes": [_route_json(r) for r in spec.sni.routes]}
                        if spec.sni is not None and spec.sni.routes
                        else {}
                    ),
                    **({"http": _http_json(spec.http)} if spec.http is not None else {}),
                    **({"allow": [str(n) for n in spec.allow]} if spec.allow else {}),
                    **(
                        {"max_connections": spec.max_connections}
                        if spec.max_connections is not None
                        else {}
                    ),
                    **(
                        {"per_client": _drop_none(asdict(spec.per_client))}
                        if spec.per_client is not None
                        else {}
                    ),
                    **({"certificates": _certs_json(spec.certs)} if spec.certs is not None else {}),
                    **(
                        {
                            "udp": {
                                "flow_idle_timeout": spec.udp.flow_idle_timeout,
                                "max_flows": spec.udp.max_flows,
                            }
                        }
                        if spec.key.protocol == "udp"
                        else {}
                    ),
                }
                for spec in self.listeners
            ],
            "backends": [
                {
                    "name": pool.name,
                    "endpoints": [str(ep) for ep in pool.endpoints],
                    "builtin": pool.builtin,
                    "balance": pool.balance,
                    "tls": (
                        {
                            "sni": pool.tls.sni,
                            "ca": pool.tls.ca,
                            "insecure_skip_verify": pool.tls.insecure_skip_verify,
                            "alpn": list(pool.tls.alpn),
                        }
                        if pool.tls
                        else None
                    ),
                    "proxy_protocol": pool.proxy_protocol,
                    "timeouts": {
                        "connect": pool.timeouts.connect,
                        "idle": pool.timeouts.idle,
                        "half_closed": pool.timeouts.half_closed,
                    },
                    "outlier": asdict(pool.outlier),
                    "health_check": (
                        asdict(pool.health_check) if pool.health_check is not None else None
                    ),
                }
                for pool in self.pools.values()
            ],
        }


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _limits_json(limits: GlobalLimitsSpec) -> dict[str, Any]:
    out = asdict(limits)
    overload = {k: out.pop(k) for k in ("disable_keepalive", "reject_requests", "stop_accepting")}
    return {**out, "overload": overload}


def _route_json(route: TlsRouteSpec) -> dict[str, Any]:
    return {
        "sni": list(route.names),
        "default": route.default,
        "mode": route.mode,
        "backend": route.pool.name,
        "certificate": route.cert.cert if route.cert else None,
        "alpn": list(route.alpn),
    }


def _http_route_json(route: HttpRouteSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "host": route.host,
        "path": route.path,
        "path_type": route.path_type,
        "backend": route.pool.name if route.pool else None,
        "origin": route.origin,
    }
    optional = {
        "rewrite_target": route.rewrite_target,
        "ssl_redirect": route.ssl_redirect or None,
        "app_root": route.app_root,
        "allow": [str(n) for n in route.allow] or None,
        "max_body": route.max_body,
        "connect_timeout": route.connect_timeout,
    }
    out.update({k: v for k, v in optional.items() if v is not None})
    out["read_timeout"] = route.read_timeout
    return out


def _http_json(http: HttpRoutes) -> dict[str, Any]:
    return {
        "routes": [_http_route_json(r) for r in http.routes],
        "default_backend": (http.default.pool.name if http.default and http.default.pool else None),
    }


def _certs_json(certs: ServerCerts) -> dict[str, Any]:
    # Names where a certificate came from, never its PEM (Secrets stay secret).
    return {
        "hosts": {
            **{name: ref.cert for name, ref in certs.exact.items()},
            **{f"*.{name}": ref.cert for name, ref in certs.wildcard.items()},
        },
        "default": certs.default.cert if certs.default else "generated:self-signed",
    }
