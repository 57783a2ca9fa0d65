"""The JSON documents behind the dashboard: /api/overview, /api/stats, /api/errors.

Each is built from what the admin state serves anyway (the /status document,
the /config table, the /metrics registry, the recent errors) and only reshaped
here: joined, named consistently, missing parts as null or empty lists, so
the page draws without guessing. The field names are part of the admin API
(README, "Dashboard"): add fields, never rename them.

Rates and latency quantiles are not computed here. /api/stats is one scrape:
cumulative counters and histogram buckets with the time they were read; the
page derives per-second rates and p50/p99 from the difference between two
polls (as Prometheus' rate() and histogram_quantile() do). So the server
keeps no state per viewer, and a script gets the raw numbers.

The admin state is passed in; this module never imports admin (which
imports it) nor anything that touches the data plane.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Final

from meshgate.dashboard.samples import Samples
from meshgate.routing.table import DEFAULT_ROUTE_LABEL, http_route_label

if TYPE_CHECKING:
    from meshgate.admin import AdminState

# Per-listener error counters, by the key they get in /api/stats.
LISTENER_ERRORS: Final = {
    "connection_errors": "meshgate_connection_errors_total",
    "tls_rejected": "meshgate_tls_rejected_total",
    "http_rejected": "meshgate_http_rejected_total",
    "proxy_protocol_rejected": "meshgate_proxy_protocol_rejected_total",
    "udp_datagrams_dropped": "meshgate_udp_datagrams_dropped_total",
}

# Per-listener traffic counters and gauges, summed over backends.
LISTENER_COUNTERS: Final = {
    "connections_total": "meshgate_connections_total",
    "connections_active": "meshgate_connections_active",
    "bytes_in_total": "meshgate_bytes_in_total",
    "bytes_out_total": "meshgate_bytes_out_total",
    "udp_flows_total": "meshgate_udp_flows_total",
    "udp_flows_active": "meshgate_udp_flows_active",
    "requests_total": "meshgate_http_requests_total",
}

DURATION: Final = "meshgate_http_request_duration_seconds"

# Labels that tie a metric to one listener, route or backend; metrics
# without any of them are process-wide and go to "global".
_SCOPED: Final = frozenset({"listener", "route", "backend", "endpoint"})


# -- /api/overview -------------------------------------------------------------


def overview(state: AdminState, now: float) -> dict[str, Any]:
    """What is configured and how it is doing now, one joined document."""
    status = state.status()
    ready, details = state.ready()
    return {
        "kind": "operator" if "operator" in status else "proxy",
        "time": now,
        "started": status.get("started"),
        "admin": status.get("admin"),
        "ready": {"ready": ready, "reason": details.get("reason")},
        "config": _config(status),
        "mesh": status.get("mesh"),
        "dns": status.get("dns"),
        "listeners": _listeners(status, state.config()),
        "backends": [_backend(item) for item in status.get("backends") or []],
        "operator": status.get("operator"),
        "services": _services(status),
    }


def _config(status: dict[str, Any]) -> dict[str, Any] | None:
    if "version" not in status:  # the operator serves no routing table
        return None
    skipped = status.get("skipped") or {}
    return {
        "version": status["version"],
        "sources": list(status.get("sources") or []),
        "last_reload": status.get("last_reload"),
        "problems": list(skipped.get("problems") or []),
        "notes": list(skipped.get("notes") or []),
    }


def _key(item: dict[str, Any]) -> tuple[Any, Any, Any]:
    return item.get("address"), item.get("port"), item.get("protocol")


def _listeners(status: dict[str, Any], table: dict[str, Any]) -> list[dict[str, Any]]:
    # Joined by address, port and protocol, not by name: a listener on the
    # mesh address has one instance per address, all with the same name.
    specs = {_key(spec): spec for spec in table.get("listeners") or []}
    out = []
    for live in status.get("listeners") or []:
        spec = specs.get(_key(live))
        out.append(
            {
                "name": live.get("name"),
                "address": live.get("address"),
                "port": live.get("port"),
                "protocol": live.get("protocol"),
                "state": live.get("state"),
                "error": live.get("error"),
                "backend": live.get("backend"),
                "active": live.get("active", 0),
                "total": live.get("total", 0),
                "bytes_in": live.get("bytes_in", 0),
                "bytes_out": live.get("bytes_out", 0),
                "udp_flows": live.get("udp_flows", 0),
                # A draining listener left the table: its routes are gone.
                "routes": _routes(spec) if spec is not None else [],
            }
        )
    return out


def _route(kind: str, backend: str | None, **fields: Any) -> dict[str, Any]:
    """One route with every field present (null when it does not apply)."""
    route: dict[str, Any] = {
        "kind": kind,
        "sni": None,
        "default": False,
        "mode": None,
        "host": None,
        "path": None,
        "path_type": None,
        "rewrite_target": None,
        "origin": None,
        "metric_route": None,
        "backend": backend,
    }
    route.update(fields)
    return route


def _routes(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """A listener's routes in match order: SNI routes (tls, https passthrough),
    HTTP host/path rules, the HTTP default backend, or the one L4 backend."""
    routes = [
        _route(
            "sni",
            item.get("backend"),
            sni=list(item.get("sni") or []),
            default=bool(item.get("default")),
            mode=item.get("mode"),
        )
        for item in spec.get("routes") or []
    ]
    http = spec.get("http")
    if http:
        for item in http.get("routes") or []:
            path = item.get("path") or "/"
            routes.append(
                _route(
                    "http",
                    item.get("backend"),  # None: a redirect-only route
                    host=item.get("host"),
                    path=path,
                    path_type=item.get("path_type"),
                    rewrite_target=item.get("rewrite_target"),
                    origin=item.get("origin") or None,
                    metric_route=http_route_label(item.get("host"), path),
                )
            )
        if http.get("default_backend"):
            routes.append(
                _route(
                    "default",
                    http["default_backend"],
                    path="/",
                    metric_route=DEFAULT_ROUTE_LABEL,
                )
            )
    if not routes and spec.get("protocol") in ("tcp", "udp") and spec.get("backend"):
        routes.append(_route("backend", spec["backend"]))
    return routes


def _backend(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": item.get("name"),
        "balance": item.get("balance"),
        "builtin": item.get("builtin"),
        "health_check": item.get("health_check"),
        "endpoints": [
            {
                "address": ep.get("address"),
                "state": ep.get("state"),
                "in_flight": ep.get("in_flight", 0),
                "failures": ep.get("failures", 0),
                "ejections": ep.get("ejections", 0),
                "ejected_for": ep.get("ejected_for"),
                "check": ep.get("check"),  # None: the backend has no health check
                "check_reason": ep.get("check_reason"),
            }
            for ep in item.get("endpoints") or []
        ],
    }


def _services(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The operator's Services: those with a proxy, then the rejected ones."""
    services = []
    for proxy in status.get("proxies") or []:
        ready = int(proxy.get("ready_replicas") or 0)
        services.append(
            {
                "service": proxy.get("service"),
                "deployment": proxy.get("deployment"),
                "ready_replicas": ready,
                "state": "ready" if ready else "pending",
                "reason": None,
            }
        )
    for service, why in (status.get("rejected") or {}).items():
        services.append(
            {
                "service": service,
                "deployment": None,
                "ready_replicas": 0,
                "state": "rejected",
                "reason": why,
            }
        )
    return sorted(services, key=lambda s: str(s["service"]))


# -- /api/stats ----------------------------------------------------------------


def _number(value: float) -> int | float:
    # Counters are floats in Prometheus; whole ones read better as integers.
    return int(value) if value.is_integer() else value


def stats(state: AdminState, now: float) -> dict[str, Any]:
    """One scrape of the counters, shaped per listener, route and backend."""
    samples = Samples.collect(state.metric_families())
    return {
        "time": now,
        "listeners": _listener_stats(samples),
        "routes": _route_stats(samples),
        "backends": _backend_stats(samples),
        "global": _global(samples),
    }


def _listener_stats(samples: Samples) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}

    def row(name: str) -> dict[str, Any]:
        if name not in rows:
            rows[name] = {
                "listener": name,
                **dict.fromkeys(LISTENER_COUNTERS, 0),
                "errors": {},
                "errors_total": 0,
            }
        return rows[name]

    for (name,) in samples.sum_by("meshgate_listener_up", "listener"):
        row(name)
    for field, metric in LISTENER_COUNTERS.items():
        for (name,), value in samples.sum_by(metric, "listener").items():
            row(name)[field] = _number(value)
    for family, metric in LISTENER_ERRORS.items():
        for (name, reason), value in samples.sum_by(metric, "listener", "reason").items():
            target = row(name)
            target["errors"].setdefault(family, {})[reason] = _number(value)
            target["errors_total"] = _number(target["errors_total"] + value)
    return sorted(rows.values(), key=lambda r: str(r["listener"]))


def _route_stats(samples: Samples) -> list[dict[str, Any]]:
    counts = samples.sum_by(f"{DURATION}_count", "listener", "route")
    sums = samples.sum_by(f"{DURATION}_sum", "listener", "route")
    per_code: dict[tuple[str, ...], dict[str, int | float]] = defaultdict(dict)
    for (listener, route, code), value in samples.sum_by(
        "meshgate_http_requests_total", "listener", "route", "code"
    ).items():
        per_code[listener, route][code] = _number(value)
    per_le: dict[tuple[str, ...], list[tuple[float, float]]] = defaultdict(list)
    for (listener, route, le), value in samples.sum_by(
        f"{DURATION}_bucket", "listener", "route", "le"
    ).items():
        bound = float(le)
        if math.isfinite(bound):  # the +Inf bucket is `count`
            per_le[listener, route].append((bound, value))
    out = []
    for key in sorted(per_code.keys() | counts.keys()):
        codes = per_code.get(key, {})
        bounds = sorted(per_le.get(key, []))
        out.append(
            {
                "listener": key[0],
                "route": key[1],
                "requests_total": _number(float(sum(codes.values()))),
                "codes": dict(sorted(codes.items())),
                "latency": {
                    "le": [bound for bound, _ in bounds],
                    "cumulative": [_number(value) for _, value in bounds],
                    "count": _number(counts.get(key, 0.0)),
                    "sum": sums.get(key, 0.0),
                },
            }
        )
    return out


def _backend_stats(samples: Samples) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}

    def row(name: str) -> dict[str, Any]:
        return rows.setdefault(
            name,
            {
                "backend": name,
                "connect_failures": {},
                "connect_failures_total": 0,
                "upstream_errors": {},
                "upstream_connections": {},
            },
        )

    for (name, endpoint, reason), value in samples.sum_by(
        "meshgate_connect_failures_total", "backend", "endpoint", "reason"
    ).items():
        target = row(name)
        target["connect_failures"].setdefault(endpoint, {})[reason] = _number(value)
        target["connect_failures_total"] = _number(target["connect_failures_total"] + value)
    for (name, reason), value in samples.sum_by(
        "meshgate_http_upstream_errors_total", "backend", "reason"
    ).items():
        row(name)["upstream_errors"][reason] = _number(value)
    for (name, kind), value in samples.sum_by(
        "meshgate_http_upstream_connections_total", "backend", "kind"
    ).items():
        row(name)["upstream_connections"][kind] = _number(value)
    return sorted(rows.values(), key=lambda r: str(r["backend"]))


def _global(samples: Samples) -> dict[str, Any]:
    """Process-wide metrics by family name without the "meshgate_" prefix:
    a number, or {label value: number} for a family with one label."""
    out: dict[str, Any] = {}
    for family in samples.families():
        found = samples.by_family[family]
        if any(_SCOPED & sample.labels.keys() for sample in found):
            continue
        key = family.removeprefix("meshgate_")
        if all(not sample.labels for sample in found):
            out[key] = _number(sum(sample.value for sample in found))
        elif all(len(sample.labels) == 1 for sample in found):
            out[key] = {
                next(iter(sample.labels.values())): _number(sample.value) for sample in found
            }
    return dict(sorted(out.items()))


# -- /api/errors ---------------------------------------------------------------


def errors(state: AdminState) -> dict[str, Any]:
    """The last errors logged, newest first (see obs/recent.py)."""
    return state.recent_errors()
