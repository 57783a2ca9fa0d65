"""The declarative configuration model, validated at the edge with pydantic.

Every source (rules, YAML file, later manifests and the Kubernetes watch)
produces a `Config`; `routing.compile` turns it into the immutable table the
data plane runs on. Models are frozen and forbid unknown keys, so a typo in a
file is an error that names the key, never a silently ignored setting.

The schema is meant to grow: listeners will gain `tls` and `routes`, backends
health checks, and the top level `mesh` options, without changing what is here.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

Protocol = Literal["tcp", "udp", "tls", "http", "https"]

# A listen address meaning "the mesh interface's addresses, as detected".
AUTO = "auto"
TlsMode = Literal["passthrough", "terminate"]
ProxyVersion = Literal["v1", "v2"]
Balance = Literal["round_robin", "random", "least_conn", "least_request"]
PathType = Literal["Exact", "Prefix", "Regex"]
Builtin = Literal["hello", "echo"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Accept 5, 2.5, "250ms", "5s", "2m", "1h"; return seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 5s, 250ms or 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"expected a duration like 5s, 250ms or 2m, got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:  # NaN passes `<= 0`
        raise ValueError("a duration must be a finite number greater than zero")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _ip(value: object) -> str:
    return str(ipaddress.ip_address(str(value)))


IpAddress = Annotated[str, BeforeValidator(_ip)]
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]  # strict: `port: true` is not 1
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,126}[A-Za-z0-9])?$")]


def format_hostport(host: str, port: int) -> str:
    """host:port with IPv6 literals bracketed, the inverse of `split_hostport`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_hostport(text: str) -> tuple[str, str]:
    """Split "host:port" or "[v6]:port" into its two parts (port not yet checked)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"expected [IPv6]:port, got {text!r}")
        return host, rest[1:]
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, got {text!r}")
    if ":" in host:
        raise ValueError(f"IPv6 addresses need brackets: [{host}]:{port}")
    return host, port


def check_host(host: str) -> str:
    """A host is an IP literal or a DNS name (resolved at connect time)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    # An all-numeric last label is never a DNS name (RFC 3696 section 2): it is
    # a mistyped IPv4 address such as 100.100.0.300, and saying so now beats a
    # lookup failure on the first connection.
    ok = (
        len(host) <= 253
        and not labels[-1].isdigit()
        and all(
            re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", label)
            for label in labels
        )
    )
    if not ok:
        raise ValueError(f"not an IP address or DNS name: {host!r}")
    return host


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Endpoint(_Frozen):
    """One upstream address; `host` may be a DNS name such as a Service's."""

    host: str
    port: Port

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: object) -> object:
        if isinstance(data, str):
            host, port = split_hostport(data.strip())
            if not port.isdigit():
                raise ValueError(f"port must be a number, got {port!r}")
            return {"host": host, "port": int(port)}
        return data

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_host(value)

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)


_SIZE = re.compile(r"^\s*(\d+)\s*(k|ki|kib|kb|m|mi|mib|mb|g|gi|gib|gb)?\s*$", re.IGNORECASE)
_SIZE_UNIT = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(value: object) -> int:
    """Accept 65536, "64Ki", "64KiB", "512Mi", "1Gi" (also k/M/G, binary
    multiples as Kubernetes' Ki/Mi/Gi); return bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 65536, 64Ki or 512Mi")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        unit = m.group(2)
        size = int(m.group(1)) * (_SIZE_UNIT[unit[0].lower()] if unit else 1)
    else:
        raise ValueError(f"expected a size like 65536, 64Ki or 512Mi, got {value!r}")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


ByteSize = Annotated[int, BeforeValidator(parse_size)]
Count = Annotated[int, Field(ge=1, strict=True)]
Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Percent = Annotated[int, Field(ge=0, le=100, strict=True)]
StatusCode = Annotated[int, Field(ge=100, le=599, strict=True)]


class Timeouts(_Frozen):
    connect: Duration = 5.0
    idle: Duration = 3600.0  # also ends a relay whose reader takes nothing (no progress)
    half_closed: Duration = 60.0


def check_server_name(value: str) -> str:
    """A TLS server name: an exact DNS name or `*.` plus one (Ingress semantics)."""
    name = value.strip().lower().rstrip(".")
    bare = name[2:] if name.startswith("*.") else name
    labels = bare.split(".")
    ok = (
        0 < len(name) <= 253
        and all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", label) for label in labels)
        # An all-digit last label is an IP address (or a typo of one); SNI
        # carries host names only (RFC 6066 §3).
        and not labels[-1].isdigit()
    )
    if not ok or "*" in bare:
        raise ValueError(
            f"not a server name: {value!r} (use a DNS name, or *.example.com for one label)"
        )
    return name


ServerName = Annotated[str, BeforeValidator(lambda v: check_server_name(str(v)))]


def check_exact_name(value: str) -> str:
    """A server name without wildcard (what `resolve` and upstream SNI take)."""
    name = check_server_name(value)
    if name.startswith("*."):
        raise ValueError(f"a wildcard cannot be used here: {value!r}; give the exact name")
    return name


ExactName = Annotated[str, BeforeValidator(lambda v: check_exact_name(str(v)))]


class Certificate(_Frozen):
    """A certificate chain and its private key: PEM files, or PEM text inline
    (what a Kubernetes `kubernetes.io/tls` Secret holds). Inline key material
    is never shown by /config or `meshgate check`: `cert` then names its origin
    (for example `secret:default/foo-tls`)."""

    cert: str
    key: str
    cert_pem: str | None = None
    key_pem: str | None = None

    @model_validator(mode="after")
    def _both_inline(self) -> Certificate:
        if (self.cert_pem is None) != (self.key_pem is None):
            raise ValueError("give both 'cert_pem' and 'key_pem', or neither")
        return self


class HostCertificate(_Frozen):
    """The certificate an `https` listener presents for these server names."""

    hosts: tuple[ServerName, ...]
    certificate: Certificate


class UpstreamTls(_Frozen):
    """Re-originate TLS to the backend (ingress-nginx `proxy-ssl-*`, Traefik
    serversTransport). Verification is on unless spelled out as off."""

    sni: ExactName | None = None  # default: the endpoint's host name
    ca: str | None = None  # PEM bundle file; default: the system roots
    # The bundle as PEM text (a Kubernetes Secret's ca.crt); `ca` then names its origin.
    ca_pem: str | None = None
    insecure_skip_verify: bool = False
    alpn: tuple[str, ...] = ()


class Outlier(_Frozen):
    """Passive outlier detection: failures in a row eject an endpoint for a
    period that doubles with each ejection in a row (Envoy's outlier
    detection), never more than `max_ejected_percent` of the pool at once."""

    consecutive_failures: Count = 3
    base_ejection: Duration = 10.0
    max_ejection: Duration = 300.0
    max_ejected_percent: Percent = 50


HealthCheckType = Literal["tcp", "tls", "http"]


class HealthCheck(_Frozen):
    """Active health checks of every endpoint of a backend: a TCP connect, a
    TLS handshake, or an HTTP GET answered with an expected status."""

    type: HealthCheckType = "tcp"
    interval: Duration = 10.0
    timeout: Duration = 2.0
    healthy_threshold: Count = 2  # successes in a row that bring an endpoint back
    unhealthy_threshold: Count = 3  # failures in a row that take it out
    path: str = "/"  # http
    host: ExactName | None = None  # http: the Host header (default: the endpoint's host)
    expect_status: tuple[StatusCode, ...] = ()  # http: empty means 200-399

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return check_path(value)

    @model_validator(mode="after")
    def _shape(self) -> HealthCheck:
        if self.type != "http" and (self.path != "/" or self.host or self.expect_status):
            raise ValueError(f"a {self.type} check takes no 'path', 'host' or 'expect_status'")
        if self.timeout > self.interval:
            raise ValueError("'timeout' cannot be longer than 'interval'")
        return self


class Backend(_Frozen):
    """A pool of endpoints, or a built-in responder (`hello`, `echo`)."""

    name: Name
    endpoints: tuple[Endpoint, ...] = ()
    builtin: Builtin | None = None
    balance: Balance = "round_robin"
    timeouts: Timeouts = Timeouts()
    tls: UpstreamTls | None = None
    proxy_protocol: ProxyVersion | None = None  # send a PROXY header to the backend
    # Endpoints come from discovery (EndpointSlices) and may be none right now:
    # such a backend answers 503 (HTTP) or refuses (TCP) instead of being an error.
    allow_empty: bool = False
    outlier: Outlier = Outlier()
    health_check: HealthCheck | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Backend:
        if self.builtin is None and not self.endpoints and not self.allow_empty:
            raise ValueError("a backend needs 'endpoints' or 'builtin'")
        if self.builtin is not None and self.endpoints:
            raise ValueError("'endpoints' and 'builtin' exclude each other")
        if self.builtin is not None and (self.tls or self.proxy_protocol or self.health_check):
            raise ValueError("a builtin backend takes no 'tls', 'proxy_protocol' or 'health_check'")
        return self


class TlsRoute(_Frozen):
    """One SNI route of a `tls` listener."""

    sni: tuple[ServerName, ...] = ()
    default: bool = False  # takes hellos with no SNI or an SNI no route names
    mode: TlsMode = "passthrough"
    certificate: Certificate | None = None  # terminate: else the listener's default
    alpn: tuple[str, ...] = ()  # terminate: protocols offered, in preference order
    backend: Name

    @model_validator(mode="after")
    def _shape(self) -> TlsRoute:
        if not self.sni and not self.default:
            raise ValueError("a route needs 'sni' names or 'default: true'")
        if self.mode == "passthrough" and (self.certificate or self.alpn):
            raise ValueError("a passthrough route takes no 'certificate' or 'alpn'")
        return self


def _network(value: object) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=False))
    except ValueError:
        raise ValueError(f"not an address or CIDR range: {value!r}") from None


Network = Annotated[str, BeforeValidator(_network)]


class ProxyProtocolAccept(_Frozen):
    """Read a PROXY header (v1 or v2) from clients in `trusted` ranges only."""

    trusted: tuple[Network, ...]
    timeout: Duration = 5.0

    @field_validator("trusted")
    @classmethod
    def _some(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list the address ranges allowed to send a PROXY header")
        return value


class TlsOptions(_Frozen):
    hello_timeout: Duration = 5.0
    max_hello: Annotated[int, Field(ge=512, le=65536, strict=True)] = 16384
    default_certificate: Certificate | None = None
    # https: certificates chosen by SNI; without a match, `default_certificate`,
    # else a self-signed one generated at start.
    certificates: tuple[HostCertificate, ...] = ()


Size = Annotated[int, Field(ge=0, strict=True)]


def check_path(value: str) -> str:
    """A path rule, rewrite target or redirect path: it goes into request
    lines and Location headers, so visible ASCII only (RFC 3986: anything
    else is percent-encoded)."""
    if not value.startswith("/"):
        raise ValueError(f"a path starts with '/', got {value!r}")
    return check_visible(value)


def check_visible(value: str) -> str:
    """Visible ASCII only: what a request line or header can carry as is."""
    if not _VISIBLE_ASCII.fullmatch(value):
        raise ValueError(
            "a path cannot contain spaces or control characters, and non-ASCII "
            f"characters must be percent-encoded: {value!r}"
        )
    return value


_VISIBLE_ASCII = re.compile(r"[!-~]+")


class HttpRoute(_Frozen):
    """Host + path -> backend, with the per-route options Ingress annotations set.

    Host: exact, or `*.suffix` for one label; none means any host. Path types
    follow Ingress v1 (`Exact`, `Prefix`); `Regex` is an anchored,
    case-insensitive regular expression (ingress-nginx `use-regex`)."""

    host: ServerName | None = None
    path: str = "/"
    path_type: PathType = "Prefix"
    backend: Name | None = None  # None: only for redirect routes (ssl_redirect/app_root)
    rewrite_target: str | None = None  # "/$2": capture groups of a Regex path
    ssl_redirect: bool = False  # plain-HTTP requests get 308 to https
    app_root: str | None = None  # requests for "/" get 302 to this path
    allow: tuple[Network, ...] = ()  # client CIDRs; others get 403 (empty: everyone)
    max_body: Size | None = None  # bytes; larger request bodies get 413
    connect_timeout: Duration | None = None  # default: the backend's
    read_timeout: Duration | None = None  # upstream response (and between reads)
    origin: str = ""  # where the route came from, e.g. "Ingress default/web"

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return check_path(value) if value else "/"

    @field_validator("app_root")
    @classmethod
    def _app_root(cls, value: str | None) -> str | None:
        return check_path(value) if value is not None else None

    @field_validator("rewrite_target")
    @classmethod
    def _rewrite_target(cls, value: str | None) -> str | None:
        # "$1" alone is allowed: the rewritten path gets its leading "/".
        return check_visible(value) if value is not None else None

    @model_validator(mode="after")
    def _shape(self) -> HttpRoute:
        if self.path_type == "Regex":
            try:
                re.compile(self.path)
            except re.error as exc:
                raise ValueError(f"path is not a valid regular expression: {exc}") from None
        if self.app_root is not None:
            check_path(self.app_root)
        if self.backend is None and not (self.ssl_redirect or self.app_root):
            raise ValueError("a route needs a 'backend' (or only redirects)")
        return self


class HttpOptions(_Frozen):
    """An http or https listener: its routes and its limits."""

    routes: tuple[HttpRoute, ...] = ()
    default_backend: Name | None = None  # what no route takes; without it, 404
    max_request_line: Annotated[int, Field(ge=256, le=1 << 20, strict=True)] = 8192
    max_header_bytes: Annotated[int, Field(ge=1024, le=1 << 22, strict=True)] = 32768
    max_headers: Annotated[int, Field(ge=8, le=10_000, strict=True)] = 100
    max_body: Size | None = None  # default for routes without their own
    header_timeout: Duration = 10.0  # the whole request head, from its first byte
    keepalive_timeout: Duration = 75.0  # idle client connection between requests
    read_timeout: Duration = 60.0  # upstream response, default for routes
    body_timeout: Duration = 60.0  # request body: longest wait for its next bytes
    send_timeout: Duration = 60.0  # response: longest a client may take no bytes of it
    # Clients whose own X-Forwarded-* / X-Request-ID headers are kept;
    # from anyone else they are replaced.
    trusted_proxies: tuple[Network, ...] = ()
    https_port: Port = 443  # where ssl_redirect sends plain-HTTP clients
    access_log: bool = True

    @property
    def backends(self) -> tuple[str, ...]:
        names = [r.backend for r in self.routes if r.backend is not None]
        if self.default_backend is not None:
            names.append(self.default_backend)
        return tuple(dict.fromkeys(names))


class UdpOptions(_Frozen):
    flow_idle_timeout: Duration = 60.0
    max_flows: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000


class ClientLimits(_Frozen):
    """Limits per client IP address (the one a trusted PROXY header announced)."""

    max_connections: Count | None = None  # open at once; more are closed at accept
    connection_rate: Rate | None = None  # new connections per second (token bucket)
    request_rate: Rate | None = None  # http/https requests per second; past it 429
    burst: Count | None = None  # bucket size of both rates (default: twice the rate)


class ListenerLimits(_Frozen):
    max_connections: Count | None = None  # open at once; past it the listener stops accepting
    per_client: ClientLimits | None = None


class Listener(_Frozen):
    """A socket meshgate listens on and the backend it forwards to."""

    name: Name
    address: str = "127.0.0.1"
    port: Port
    protocol: Protocol = "tcp"
    backend: Name | None = None  # tcp and udp
    routes: tuple[TlsRoute, ...] = ()  # tls; https: passthrough routes by SNI
    tls: TlsOptions = TlsOptions()
    http: HttpOptions | None = None  # http and https
    udp: UdpOptions = UdpOptions()
    proxy_protocol: ProxyProtocolAccept | None = None  # tcp and tls
    dns_name: ExactName | None = None  # served by the mesh DNS responder
    # Client CIDRs allowed to connect (empty: everyone); others are closed at
    # accept, before any upstream work.
    allow: tuple[Network, ...] = ()
    limits: ListenerLimits = ListenerLimits()

    @model_validator(mode="after")
    def _shape(self) -> Listener:
        if self.protocol == "udp" and self.proxy_protocol is not None:
            raise ValueError("a udp listener cannot read a PROXY header (it is a TCP feature)")
        if self.protocol == "tls":
            if self.backend is not None or not self.routes:
                raise ValueError("a tls listener takes 'routes' (SNI routes), not 'backend'")
            if sum(r.default for r in self.routes) > 1:
                raise ValueError("only one route may be the default")
            for route in self.routes:
                if route.mode == "terminate" and not (
                    route.certificate or self.tls.default_certificate
                ):
                    raise ValueError(
                        f"route to '{route.backend}' terminates TLS but has no certificate "
                        "and the listener has no tls.default_certificate"
                    )
        elif self.protocol in ("http", "https"):
            if self.backend is not None or self.http is None:
                raise ValueError(
                    f"an {self.protocol} listener takes 'http' (routes), not 'backend'"
                )
            if self.protocol == "http" and self.routes:
                raise ValueError("an http listener takes no SNI 'routes'")
            if any(r.mode != "passthrough" or r.default for r in self.routes):
                raise ValueError(
                    "the SNI routes of an https listener are passthrough routes for "
                    "named hosts (the rest is terminated and routed by 'http')"
                )
        elif self.backend is None or self.routes:
            raise ValueError(f"a {self.protocol} listener takes 'backend', not 'routes'")
        if self.http is not None and self.protocol not in ("http", "https"):
            raise ValueError(f"a {self.protocol} listener takes no 'http' section")
        return self

    @property
    def backends(self) -> tuple[str, ...]:
        """Every backend name this listener sends to."""
        if self.backend is not None:
            return (self.backend,)
        names = [r.backend for r in self.routes]
        if self.http is not None:
            names.extend(self.http.backends)
        return tuple(dict.fromkeys(names))

    @field_validator("protocol", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        if value.strip().lower() == AUTO:
            return AUTO
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(
                f"listen address must be an IP address or 'auto' (the mesh address), got {value!r}"
            ) from None


def check_listen(value: str) -> str:
    """ "off", or ADDR:PORT where ADDR is an IP address or "auto"."""
    text = value.strip()
    if text.lower() == "off":
        return "off"
    host, port = split_hostport(text)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be 1-65535 in {value!r}")
    if host.lower() == AUTO:
        return f"{AUTO}:{int(port)}"
    try:
        return format_hostport(str(ipaddress.ip_address(host)), int(port))
    except ValueError:
        raise ValueError(f"expected IP:PORT, auto:PORT or off, got {value!r}") from None


# YAML 1.1 reads a bare `off` as false: take it as meant.
ListenAddress = Annotated[
    str, BeforeValidator(lambda v: "off" if v is False else check_listen(str(v)))
]


class MeshOptions(_Frozen):
    """How `address: auto` finds the mesh address."""

    interfaces: tuple[str, ...] = ()  # accepted besides netmaker, wg0, wg1
    # `--bind IFACE`: this interface only (its addresses, followed), no ranking.
    bind_interface: str | None = None
    bind_wait: Duration = 60.0
    # Mesh DNS: zones answered (default: the parent domain of each dns_name)
    # and where the responder listens ("auto:53": the mesh address; "off").
    dns_zones: tuple[ExactName, ...] = ()
    dns_listen: ListenAddress | None = None


class IngressSettings(_Frozen):
    """How `--manifests` Ingresses are served, when the flags do not say."""

    ingress_class: Name | None = None
    http_listen: ListenAddress | None = None
    https_listen: ListenAddress | None = None


class Overload(_Frozen):
    """Staged overload response, as fractions of `max_connections` and of
    `memory_limit` (whichever is higher): first keep-alive is turned off,
    then new HTTP requests get 503, then listeners stop accepting."""

    disable_keepalive: Fraction = 0.80
    reject_requests: Fraction = 0.90
    stop_accepting: Fraction = 0.95

    @model_validator(mode="after")
    def _ordered(self) -> Overload:
        if not self.disable_keepalive <= self.reject_requests <= self.stop_accepting:
            raise ValueError("expected disable_keepalive <= reject_requests <= stop_accepting")
        return self


class GlobalLimits(_Frozen):
    """Process-wide limits: what keeps meshgate up when clients do not behave."""

    # Client connections open at once, all listeners together. Default: what
    # the descriptor limit allows with `fd_reserve` kept free, two
    # descriptors per proxied connection.
    max_connections: Count | None = None
    fd_reserve: Count = 256  # descriptors kept for upstream connects, admin, DNS, logs
    # Resident memory the overload stages are measured against. Default: the
    # cgroup's memory.max when there is one, else memory is not watched.
    memory_limit: ByteSize | None = None
    # Bytes buffered per connection and direction before the other side
    # stops reading (backpressure).
    connection_buffer: Annotated[ByteSize, Field(ge=4096, le=16 << 20)] = 64 << 10
    overload: Overload = Overload()


class Config(_Frozen):
    """A whole configuration; cross-references are checked by `merge.validate`."""

    listeners: tuple[Listener, ...] = ()
    backends: tuple[Backend, ...] = ()
    admin: Annotated[str, BeforeValidator(lambda v: "off" if v is False else v)] | None = None
    drain_timeout: Duration | None = None
    # Static name -> address overrides, used before DNS (Kubernetes hostAliases):
    # lets a re-originating listener reach a name cluster DNS cannot resolve yet.
    resolve: dict[ExactName, IpAddress] = Field(default_factory=dict)
    mesh: MeshOptions | None = None
    ingress: IngressSettings | None = None
    limits: GlobalLimits | None = None
