"""The routing table: the only thing the control and data planes share.

Plain frozen, slotted dataclasses with no validation logic (that happened at
the edge) and no imports from `config`: the hot path reads attributes and
nothing else. A table is never changed; a reload builds a new one with a
higher `version`, and every connection keeps the table it was accepted with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Protocol = Literal["tcp", "udp", "tls"]


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
    """A certificate chain and key by file path; the data plane loads them."""

    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class UpstreamTlsSpec:
    """TLS towards the backend: the name sent and checked, and what to trust."""

    sni: str | None  # None: the endpoint's host name (if it is a name)
    ca: str | None  # None: the system roots
    insecure_skip_verify: bool
    alpn: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    idle: float
    half_closed: float


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
class ListenerSpec:
    key: ListenerKey
    name: str
    pool: PoolSpec | None  # tcp, udp
    udp: UdpSpec
    sni: SniRoutes | None = None  # tls
    proxy_accept: ProxyAcceptSpec | None = None
    dns_name: str | None = None  # a mesh DNS name answering with this listener's address

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
        return tuple(r.pool for r in self.sni.routes) if self.sni else ()

    @property
    def backend_label(self) -> str:
        """The backend name for logs and /status ("a|b" for several routes)."""
        return "|".join(dict.fromkeys(p.name for p in self.pools))


@dataclass(frozen=True, slots=True)
class RouteTable:
    version: int
    listeners: tuple[ListenerSpec, ...]
    sources: tuple[str, ...] = ()
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
                        if spec.sni is not None
                        else {}
                    ),
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
                }
                for pool in self.pools.values()
            ],
        }


def _route_json(route: TlsRouteSpec) -> dict[str, Any]:
    return {
        "sni": list(route.names),
        "default": route.default,
        "mode": route.mode,
        "backend": route.pool.name,
        "certificate": route.cert.cert if route.cert else None,
        "alpn": list(route.alpn),
    }
