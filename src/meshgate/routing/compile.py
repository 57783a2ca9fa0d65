"""Config -> RouteTable: the one step from the validated model to the hot path.

A pure function of its input: the same Config and version give an equal
table. It copies what the data plane needs into the plain dataclasses of
`routing.table` so that listeners never see pydantic or config code. It does
no checking of its own: the Config has passed `merge.validate` already.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from meshgate.config.model import (
    AUTO,
    Backend,
    Certificate,
    ClientLimits,
    Config,
    GlobalLimits,
    HealthCheck,
    HttpOptions,
    HttpRoute,
    Listener,
    TlsRoute,
)
from meshgate.routing.http_match import index_routes
from meshgate.routing.table import (
    CertRef,
    ClientLimitsSpec,
    EndpointAddr,
    GlobalLimitsSpec,
    HealthCheckSpec,
    HttpLimits,
    HttpRoutes,
    HttpRouteSpec,
    ListenerKey,
    ListenerSpec,
    OutlierSpec,
    PoolSpec,
    ProxyAcceptSpec,
    RouteTable,
    ServerCerts,
    SniRoutes,
    Timeouts,
    TlsRouteSpec,
    UdpSpec,
    UpstreamTlsSpec,
)


def compile_table(
    config: Config,
    *,
    version: int,
    sources: tuple[str, ...] = (),
    mesh_addresses: tuple[str, ...] = (),
) -> RouteTable:
    """Build the immutable table for `config`, listeners in config order.

    A listener on `auto` becomes one listener per detected mesh address (IPv4
    and IPv6); when the mesh address changes, the runtime compiles again and
    the new keys make the data plane move those listeners.
    """
    # One PoolSpec per backend, shared by every listener that uses it.
    pools = {backend.name: _pool(backend, config.resolve) for backend in config.backends}
    limits = config.limits or GlobalLimits()
    listeners: list[ListenerSpec] = []
    for listener in config.listeners:
        if listener.address != AUTO:
            listeners.append(_listener(listener, listener.address, pools, limits))
            continue
        if not mesh_addresses:
            raise ValueError(
                f"listener {listener.name!r} binds 'auto' but no mesh address was detected"
            )
        listeners.extend(_listener(listener, address, pools, limits) for address in mesh_addresses)
    return RouteTable(
        version=version,
        listeners=tuple(listeners),
        sources=sources,
        limits=_global_limits(limits),
    )


def _global_limits(limits: GlobalLimits) -> GlobalLimitsSpec:
    return GlobalLimitsSpec(
        max_connections=limits.max_connections,
        fd_reserve=limits.fd_reserve,
        memory_limit=limits.memory_limit,
        connection_buffer=limits.connection_buffer,
        disable_keepalive=limits.overload.disable_keepalive,
        reject_requests=limits.overload.reject_requests,
        stop_accepting=limits.overload.stop_accepting,
    )


def needs_mesh(config: Config) -> bool:
    """Whether some listener binds the detected mesh address."""
    return any(listener.address == AUTO for listener in config.listeners)


def _pool(backend: Backend, resolve: Mapping[str, str]) -> PoolSpec:
    tls = backend.tls
    return PoolSpec(
        name=backend.name,
        endpoints=tuple(
            EndpointAddr(ep.host, ep.port, resolve.get(ep.host.lower().rstrip(".")))
            for ep in backend.endpoints
        ),
        balance=backend.balance,
        timeouts=Timeouts(
            connect=backend.timeouts.connect,
            idle=backend.timeouts.idle,
            half_closed=backend.timeouts.half_closed,
        ),
        builtin=backend.builtin,
        tls=(
            UpstreamTlsSpec(tls.sni, tls.ca, tls.insecure_skip_verify, tls.alpn, tls.ca_pem)
            if tls is not None
            else None
        ),
        proxy_protocol=backend.proxy_protocol,
        outlier=OutlierSpec(
            consecutive_failures=backend.outlier.consecutive_failures,
            base_ejection=backend.outlier.base_ejection,
            max_ejection=backend.outlier.max_ejection,
            max_ejected_percent=backend.outlier.max_ejected_percent,
        ),
        health_check=_health_check(backend.health_check),
    )


def _health_check(check: HealthCheck | None) -> HealthCheckSpec | None:
    if check is None:
        return None
    return HealthCheckSpec(
        type=check.type,
        interval=check.interval,
        timeout=check.timeout,
        healthy_threshold=check.healthy_threshold,
        unhealthy_threshold=check.unhealthy_threshold,
        path=check.path,
        host=check.host,
        expect_status=check.expect_status,
    )


def _get(pools: dict[str, PoolSpec], name: str, listener: Listener) -> PoolSpec:
    pool = pools.get(name)
    if pool is None:
        # Only reachable when a caller skipped validation: fail loudly, not late.
        raise ValueError(
            f"listener {listener.name!r} refers to unknown backend {name!r}; "
            "validate the config before compiling it"
        )
    return pool


def _cert(cert: Certificate | None) -> CertRef | None:
    if cert is None:
        return None
    pem = (cert.cert_pem, cert.key_pem) if cert.cert_pem and cert.key_pem else None
    return CertRef(cert.cert, cert.key, pem)


def _server_certs(listener: Listener) -> ServerCerts:
    exact: dict[str, CertRef] = {}
    wildcard: dict[str, CertRef] = {}
    for entry in listener.tls.certificates:
        ref = _cert(entry.certificate)
        assert ref is not None
        for name in entry.hosts:
            # The first certificate naming a host wins, as in config order.
            if name.startswith("*."):
                wildcard.setdefault(name[2:], ref)
            else:
                exact.setdefault(name, ref)
    return ServerCerts(exact, wildcard, _cert(listener.tls.default_certificate))


def _http_route(
    route: HttpRoute, options: HttpOptions, listener: Listener, pools: dict[str, PoolSpec]
) -> HttpRouteSpec:
    return HttpRouteSpec(
        host=route.host,
        path=route.path,
        path_type=route.path_type,
        pool=_get(pools, route.backend, listener) if route.backend is not None else None,
        rewrite_target=route.rewrite_target,
        ssl_redirect=route.ssl_redirect,
        app_root=route.app_root,
        allow=tuple(ipaddress.ip_network(net) for net in route.allow),
        max_body=route.max_body if route.max_body is not None else options.max_body,
        connect_timeout=route.connect_timeout,
        read_timeout=route.read_timeout or options.read_timeout,
        origin=route.origin,
        # ingress-nginx regex locations: `~* ^path`, anchored at the start only.
        pattern=re.compile(route.path, re.IGNORECASE) if route.path_type == "Regex" else None,
    )


def _http_routes(listener: Listener, pools: dict[str, PoolSpec]) -> HttpRoutes:
    options = listener.http
    assert options is not None
    routes = tuple(_http_route(r, options, listener, pools) for r in options.routes)
    default = (
        _http_route(
            HttpRoute(backend=options.default_backend, origin="default backend"),
            options,
            listener,
            pools,
        )
        if options.default_backend is not None
        else None
    )
    return HttpRoutes(
        routes=routes,
        default=default,
        index=index_routes(routes),
        limits=HttpLimits(
            max_request_line=options.max_request_line,
            max_header_bytes=options.max_header_bytes,
            max_headers=options.max_headers,
            max_body=options.max_body,
            header_timeout=options.header_timeout,
            keepalive_timeout=options.keepalive_timeout,
            trusted_proxies=tuple(ipaddress.ip_network(n) for n in options.trusted_proxies),
            https_port=options.https_port,
            access_log=options.access_log,
            body_timeout=options.body_timeout,
            send_timeout=options.send_timeout,
        ),
    )


def _route(route: TlsRoute, listener: Listener, pools: dict[str, PoolSpec]) -> TlsRouteSpec:
    cert = route.certificate or listener.tls.default_certificate
    return TlsRouteSpec(
        names=route.sni,
        default=route.default,
        mode=route.mode,
        pool=_get(pools, route.backend, listener),
        cert=_cert(cert) if route.mode == "terminate" else None,
        alpn=route.alpn,
    )


def _sni_routes(listener: Listener, pools: dict[str, PoolSpec]) -> SniRoutes:
    routes = tuple(_route(r, listener, pools) for r in listener.routes)
    exact: dict[str, TlsRouteSpec] = {}
    wildcard: dict[str, TlsRouteSpec] = {}
    for route in routes:
        for name in route.names:
            # First route naming a server wins, as in config order.
            if name.startswith("*."):
                wildcard.setdefault(name[2:], route)
            else:
                exact.setdefault(name, route)
    return SniRoutes(
        routes=routes,
        exact=exact,
        wildcard=wildcard,
        default=next((r for r in routes if r.default), None),
        hello_timeout=listener.tls.hello_timeout,
        max_hello=listener.tls.max_hello,
    )


def _listener(
    listener: Listener, address: str, pools: dict[str, PoolSpec], limits: GlobalLimits
) -> ListenerSpec:
    return ListenerSpec(
        key=ListenerKey(address, listener.port, listener.protocol),
        name=listener.name,
        pool=_get(pools, listener.backend, listener) if listener.backend is not None else None,
        udp=UdpSpec(
            flow_idle_timeout=listener.udp.flow_idle_timeout,
            max_flows=listener.udp.max_flows,
        ),
        sni=_sni_routes(listener, pools) if listener.protocol in ("tls", "https") else None,
        http=_http_routes(listener, pools) if listener.http is not None else None,
        certs=_server_certs(listener) if listener.protocol == "https" else None,
        dns_name=listener.dns_name,
        proxy_accept=(
            ProxyAcceptSpec(listener.proxy_protocol.trusted, listener.proxy_protocol.timeout)
            if listener.proxy_protocol is not None
            else None
        ),
        allow=tuple(ipaddress.ip_network(net) for net in listener.allow),
        max_connections=listener.limits.max_connections,
        per_client=_client_limits(listener.limits.per_client),
        buffer_limit=limits.connection_buffer,
    )


def _client_limits(limits: ClientLimits | None) -> ClientLimitsSpec | None:
    if limits is None:
        return None
    return ClientLimitsSpec(
        max_connections=limits.max_connections,
        connection_rate=limits.connection_rate,
        request_rate=limits.request_rate,
        burst=limits.burst,
    )
