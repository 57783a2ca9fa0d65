"""Every Prometheus metric meshgate exports, defined once.

A `Metrics` object owns its own registry (no module-level global), so tests
and several data planes in one process do not collide. Hot-path byte counts
are kept as plain integers on each connection and added here when the
connection closes and when /metrics is scraped (see `Dataplane.flush`).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

LB = ("listener", "backend")

# `*_created` timestamps double the exposition size for no use on a proxy
# (process start is known); the switch is process-wide in prometheus_client.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections_active = Gauge(
            "meshgate_connections_active", "TCP connections open now", LB, registry=r
        )
        self.connections = Counter(
            "meshgate_connections", "TCP connections accepted", LB, registry=r
        )
        self.bytes_in = Counter("meshgate_bytes_in", "Bytes received from clients", LB, registry=r)
        self.bytes_out = Counter("meshgate_bytes_out", "Bytes sent to clients", LB, registry=r)
        self.connect_failures = Counter(
            "meshgate_connect_failures",
            "Upstream connect attempts that failed, by reason",
            ("backend", "endpoint", "reason"),
            registry=r,
        )
        self.connection_errors = Counter(
            "meshgate_connection_errors",
            "Connections closed because of an error, by reason",
            ("listener", "reason"),
            registry=r,
        )
        self.udp_flows_active = Gauge(
            "meshgate_udp_flows_active", "UDP flows tracked now", LB, registry=r
        )
        self.udp_flows = Counter("meshgate_udp_flows", "UDP flows created", LB, registry=r)
        self.udp_datagrams_dropped = Counter(
            "meshgate_udp_datagrams_dropped",
            "UDP datagrams dropped, by reason",
            ("listener", "reason"),
            registry=r,
        )
        self.endpoint_healthy = Gauge(
            "meshgate_endpoint_healthy",
            "1 when an endpoint takes new connections, 0 while ejected or failing its health check",
            ("backend", "endpoint"),
            registry=r,
        )
        self.listener_up = Gauge(
            "meshgate_listener_up", "1 while a listener is bound", ("listener",), registry=r
        )
        self.table_version = Gauge(
            "meshgate_table_version", "Version of the routing table in use", registry=r
        )
        self.tls_rejected = Counter(
            "meshgate_tls_rejected",
            "TLS connections closed before routing or in the handshake, by reason",
            ("listener", "reason"),
            registry=r,
        )
        self.tls_handshakes = Counter(
            "meshgate_tls_handshakes",
            "TLS handshakes completed by terminating routes, by TLS version",
            ("listener", "version"),
            registry=r,
        )
        self.proxy_protocol_rejected = Counter(
            "meshgate_proxy_protocol_rejected",
            "Connections closed while reading a PROXY header, by reason",
            ("listener", "reason"),
            registry=r,
        )
        self.dns_queries = Counter(
            "meshgate_dns_queries",
            "Mesh DNS queries answered, by response code",
            ("rcode",),
            registry=r,
        )
        self.internal_errors = Counter(
            "meshgate_internal_errors",
            "Unexpected exceptions caught by the event loop (each closed one connection)",
            registry=r,
        )
        self.http_requests = Counter(
            "meshgate_http_requests",
            "HTTP requests answered, by route and status code",
            ("listener", "route", "code"),
            registry=r,
        )
        self.http_duration = Histogram(
            "meshgate_http_request_duration_seconds",
            "Time from the request head to the end of the response, by route",
            ("listener", "route"),
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.http_rejected = Counter(
            "meshgate_http_rejected",
            "HTTP requests refused before routing (malformed, smuggling, limits), by reason",
            ("listener", "reason"),
            registry=r,
        )
        self.http_upstream_errors = Counter(
            "meshgate_http_upstream_errors",
            "Upstream exchanges that failed, by reason",
            ("backend", "reason"),
            registry=r,
        )
        self.http_upstream_connections = Counter(
            "meshgate_http_upstream_connections",
            "Upstream connections used for a request: new, or reused from keep-alive",
            ("backend", "kind"),
            registry=r,
        )
        self.connections_refused = Counter(
            "meshgate_connections_refused",
            "Connections closed at accept, by reason (not_allowed, listener_limit, client_gone, "
            "global_limit, client_limit, client_rate, overload)",
            ("listener", "reason"),
            registry=r,
        )
        self.listener_accepting = Gauge(
            "meshgate_listener_accepting",
            "1 while a listener takes new connections, 0 while paused at a limit",
            ("listener",),
            registry=r,
        )
        self.overload_stage = Gauge(
            "meshgate_overload_stage",
            "0 normal, 1 keep-alive off, 2 new HTTP requests get 503, 3 not accepting",
            registry=r,
        )
        self.resident_memory = Gauge(
            "meshgate_resident_memory_bytes",
            "Resident memory of this process, as the overload stages measure it",
            registry=r,
        )
        self.health_checks = Counter(
            "meshgate_health_checks",
            "Active health checks of endpoints, by result",
            ("backend", "endpoint", "result"),
            registry=r,
        )
        self.endpoint_ejections = Counter(
            "meshgate_endpoint_ejections",
            "Endpoints ejected by outlier detection (consecutive failures)",
            ("backend", "endpoint"),
            registry=r,
        )
        self.open_fds = Gauge(
            "meshgate_open_fds", "File descriptors this process has open", registry=r
        )
        self.tasks = Gauge(
            "meshgate_asyncio_tasks",
            "asyncio tasks alive (a count that grows with no traffic is a leak)",
            registry=r,
        )
        self.objects_skipped = Gauge(
            "meshgate_config_objects_skipped",
            "Objects of the configuration sources skipped as invalid (manifests, "
            "Kubernetes objects); `meshgate status` and the log say which and why",
            registry=r,
        )
        self.reloads = Counter(
            "meshgate_reloads", "Configuration reloads, by result", ("result",), registry=r
        )

        # Label children of the per-request metrics, looked up once per label
        # set: `labels()` costs a lock and a tuple build on every request.
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._durations: dict[tuple[str, str], Any] = {}
        self._upstream_conns: dict[tuple[str, str], Any] = {}
        # The same for the per-connection metrics of TCP listeners.
        self._conns: dict[tuple[str, str], ConnChildren] = {}
        self._conn_errors: dict[tuple[str, str], Any] = {}
        self._bytes: dict[tuple[str, str, bool], Any] = {}  # bool: inbound
        self._refused: dict[tuple[str, str], Any] = {}

    def http_request_done(self, listener: str, route: str, code: int, seconds: float) -> None:
        """Count one answered HTTP request and its duration."""
        key = (listener, route, code)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.http_requests.labels(listener, route, str(code))
        counter.inc()
        _child(self._durations, self.http_duration, (listener, route)).observe(seconds)

    def http_upstream_connection(self, backend: str, kind: str) -> None:
        """Count an upstream connection used for a request ("new" or "reused")."""
        _child(self._upstream_conns, self.http_upstream_connections, (backend, kind)).inc()

    def conn_children(self, listener: str, backend: str) -> ConnChildren:
        """The per-connection metrics of one (listener, backend), looked up once."""
        key = (listener, backend)
        children = self._conns.get(key)
        if children is None:
            children = self._conns[key] = ConnChildren(self, listener, backend)
        return children

    def add_bytes(self, listener: str, backend: str, bytes_in: int, bytes_out: int) -> None:
        """Add a connection's (or flow's) byte counts; a zero makes no series."""
        for inbound, n in ((True, bytes_in), (False, bytes_out)):
            if n:
                key = (listener, backend, inbound)
                counter = self._bytes.get(key)
                if counter is None:
                    family = self.bytes_in if inbound else self.bytes_out
                    counter = self._bytes[key] = family.labels(listener, backend)
                counter.inc(n)

    def connection_error(self, listener: str, reason: str) -> None:
        """Count a connection closed because of an error."""
        _child(self._conn_errors, self.connection_errors, (listener, reason)).inc()

    def connection_refused(self, listener: str, reason: str) -> None:
        """Count a connection closed at accept by a limit or an allow-list."""
        _child(self._refused, self.connections_refused, (listener, reason)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _child(cache: dict[Any, Any], family: Any, labels: tuple[str, ...]) -> Any:
    """`family.labels(*labels)`, looked up in `cache` after the first time."""
    child = cache.get(labels)
    if child is None:
        child = cache[labels] = family.labels(*labels)
    return child


class ConnChildren:
    """Label children of one (listener, backend) for connection bookkeeping."""

    __slots__ = ("active", "opened")

    def __init__(self, metrics: Metrics, listener: str, backend: str) -> None:
        self.opened = metrics.connections.labels(listener, backend)
        self.active = metrics.connections_active.labels(listener, backend)
