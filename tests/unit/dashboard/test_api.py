"""The dashboard's JSON documents and page, served by a real admin server
(loopback, port 0) over a fake admin state built from real parts: a routing
table compiled from a config, a Metrics registry with counts in it, and the
recent-errors handler fed through logging."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics_core import Metric

from meshgate.admin import AdminServer
from meshgate.config.model import Config
from meshgate.dashboard.web import dashboard_routes
from meshgate.obs.metrics import Metrics
from meshgate.obs.recent import RecentErrors
from meshgate.routing.compile import compile_table
from meshgate.routing.table import DEFAULT_ROUTE_LABEL, http_route_label

CONFIG = Config.model_validate(
    {
        "listeners": [
            {
                "name": "web",
                "address": "127.0.0.1",
                "port": 8080,
                "protocol": "http",
                "http": {
                    "routes": [
                        {
                            "host": "app.example",
                            "path": "/api(/|$)(.*)",
                            "path_type": "Regex",
                            "rewrite_target": "/$2",
                            "backend": "api",
                        },
                        {"host": "app.example", "path": "/", "backend": "app"},
                    ],
                    "default_backend": "hello",
                },
            },
            {
                "name": "tenants",
                "address": "127.0.0.1",
                "port": 6443,
                "protocol": "tls",
                "routes": [
                    {"sni": ["a.example.com"], "backend": "app"},
                    {"default": True, "backend": "api"},
                ],
            },
            {"name": "relay", "address": "127.0.0.1", "port": 9000, "backend": "app"},
        ],
        "backends": [
            {"name": "app", "endpoints": ["127.0.0.1:7001", "127.0.0.2:7001"]},
            {"name": "api", "endpoints": ["127.0.0.1:7002"]},
            {"name": "hello", "builtin": "hello"},
        ],
    }
)
TABLE = compile_table(CONFIG, version=4, sources=("meshgate.yaml",)).to_json()


def _listener(name: str, port: int, protocol: str, state: str = "serving") -> dict[str, Any]:
    # The shape of Listener.to_json() (dataplane/listener.py).
    return {
        "name": name,
        "key": f"{protocol}://127.0.0.1:{port}",
        "address": "127.0.0.1",
        "port": port,
        "protocol": protocol,
        "state": state,
        "error": None,
        "backend": "-",
        "active": 2,
        "total": 40,
        "bytes_in": 1000,
        "bytes_out": 5000,
        "udp_flows": 0,
    }


def _endpoint(address: str, state: str, in_flight: int = 0) -> dict[str, Any]:
    return {
        "address": address,
        "state": state,
        "in_flight": in_flight,
        "failures": 3 if state == "ejected" else 0,
        "ejections": 1 if state == "ejected" else 0,
    }


PROXY_STATUS: dict[str, Any] = {
    "version": 4,
    "started": 1700000000.0,
    "sources": ["meshgate.yaml"],
    "last_reload": {
        "time": 1700000100.0,
        "result": "rejected",
        "error": "meshgate.yaml: listeners[0].port: port 99999 out of range 1-65535",
    },
    "admin": "127.0.0.1:9901",
    "listeners": [
        _listener("web", 8080, "http"),
        _listener("tenants", 6443, "tls"),
        _listener("relay", 9000, "tcp"),
        _listener("old", 9100, "tcp", state="draining"),  # removed by a reload
    ],
    "backends": [
        {
            "name": "app",
            "balance": "round_robin",
            "builtin": None,
            "endpoints": [
                _endpoint("127.0.0.1:7001", "healthy", in_flight=2),
                _endpoint("127.0.0.2:7001", "ejected"),
            ],
        },
        {
            "name": "api",
            "balance": "round_robin",
            "builtin": None,
            "endpoints": [_endpoint("127.0.0.1:7002", "healthy")],
        },
        {"name": "hello", "balance": "round_robin", "builtin": "hello", "endpoints": []},
    ],
    "mesh": {
        "addresses": ["192.168.1.20"],
        "interface": "eth0",
        "reason": "no mesh interface; private address not on the default route",
        "fallback": True,
    },
    "dns": {
        "listen": "192.168.1.20:53",
        "zones": ["mesh.internal"],
        "names": {"my-app.mesh.internal": ["192.168.1.20"]},
        "error": None,
    },
    "skipped": {"problems": ["Ingress default/broken: bad annotation"], "notes": []},
}

OPERATOR_STATUS: dict[str, Any] = {
    "operator": {
        "namespace": "meshgate-system",
        "identity": "op-0",
        "leader": True,
        "lease_holder": "op-0",
        "reconciles": 12,
        "errors": 1,
    },
    "proxies": [
        {"deployment": "meshgate-web-1a2b", "service": "default/web", "ready_replicas": 1},
        {"deployment": "meshgate-db-3c4d", "service": "data/db", "ready_replicas": 0},
    ],
    "rejected": {"default/both": "meshgate.io/egress: ingress and egress on one Service"},
}


def _metrics() -> Metrics:
    m = Metrics()
    m.table_version.set(4)
    m.reloads.labels("ok").inc(2)
    m.reloads.labels("rejected").inc()
    for name in ("web", "tenants", "relay"):
        m.listener_up.labels(name).set(1)
    # Two backends behind one listener: the dashboard shows the listener's sum.
    m.connections.labels("relay", "app").inc(3)
    m.connections.labels("relay", "other").inc(2)
    m.connections_active.labels("relay", "app").inc()
    m.bytes_in.labels("relay", "app").inc(100)
    m.bytes_out.labels("relay", "app").inc(2048)
    m.connection_errors.labels("relay", "idle_timeout").inc()
    m.connections.labels("web", "http").inc(7)
    m.http_requests.labels("web", "app.example/", "200").inc(5)
    m.http_requests.labels("web", "app.example/", "502").inc(1)
    m.http_requests.labels("web", "-", "404").inc(1)
    for seconds in (0.002, 0.002, 0.02, 0.02, 0.2, 3.0):
        m.http_duration.labels("web", "app.example/").observe(seconds)
    m.http_rejected.labels("web", "smuggling_cl_te").inc()
    m.tls_rejected.labels("tenants", "unknown_sni").inc(4)
    m.connect_failures.labels("app", "127.0.0.2:7001", "refused").inc(3)
    m.http_upstream_errors.labels("app", "connect").inc()
    m.http_upstream_connections.labels("app", "reused").inc(4)
    return m


class FakeState:
    """An AdminState answering with fixed documents and live metrics/errors."""

    def __init__(self, status: dict[str, Any], table: dict[str, Any]) -> None:
        self.status_doc = status
        self.table = table
        self.prom = _metrics()
        self.registry = self.prom.registry
        self.recent = RecentErrors(capacity=3)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        if (self.status_doc.get("mesh") or {}).get("fallback"):
            return False, {"reason": "no mesh interface: listening on a fallback address"}
        return True, {}

    def status(self) -> dict[str, Any]:
        return self.status_doc

    def config(self) -> dict[str, Any]:
        return self.table

    def metrics(self) -> bytes:
        return self.prom.render()

    def metric_families(self) -> Iterable[Metric]:
        return self.registry.collect()

    def recent_errors(self) -> dict[str, Any]:
        return self.recent.to_json()


@pytest.fixture
def state() -> FakeState:
    return FakeState(PROXY_STATUS, TABLE)


@pytest.fixture
async def get(state: FakeState) -> AsyncIterator[Any]:
    server = AdminServer("127.0.0.1", 0, state)
    host, port = await server.start()
    async with aiohttp.ClientSession() as session:

        async def fetch(path: str) -> tuple[int, dict[str, str], Any]:
            async with session.get(f"http://{host}:{port}{path}") as response:
                body: Any = (
                    await response.json()
                    if response.content_type == "application/json"
                    else await response.text()
                )
                return response.status, dict(response.headers), body

        yield fetch
    await server.stop()


# -- the page -----------------------------------------------------------------


async def test_the_page_and_its_files_are_served(get: Any) -> None:
    status, headers, body = await get("/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    # The page may load its own files only and talk to this server only.
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    assert 'src="static/dashboard.js"' in body
    for name, kind in [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")]:
        status, headers, body = await get(f"/static/{name}")
        assert status == 200
        assert headers["Content-Type"].startswith(kind)
        assert body


async def test_an_unknown_file_is_a_json_404(get: Any) -> None:
    status, _, body = await get("/static/../admin.py")
    assert status == 404
    status, _, body = await get("/static/secrets.txt")
    assert (status, body["error"]) == (404, "not found")


async def test_api_documents_are_never_cached(get: Any) -> None:
    for path in ("/api/overview", "/api/stats", "/api/errors"):
        status, headers, _ = await get(path)
        assert status == 200
        assert headers["Cache-Control"] == "no-store"


# -- /api/overview ------------------------------------------------------------


async def test_overview_says_what_runs_and_why_it_is_not_ready(get: Any) -> None:
    _, _, doc = await get("/api/overview")
    assert doc["kind"] == "proxy"
    assert doc["ready"] == {
        "ready": False,
        "reason": "no mesh interface: listening on a fallback address",
    }
    assert doc["mesh"]["fallback"] is True
    assert doc["mesh"]["interface"] == "eth0"
    assert doc["dns"]["names"] == {"my-app.mesh.internal": ["192.168.1.20"]}
    config = doc["config"]
    assert config["version"] == 4
    assert config["sources"] == ["meshgate.yaml"]
    assert config["last_reload"]["result"] == "rejected"
    assert "port 99999 out of range" in config["last_reload"]["error"]
    assert config["problems"] == ["Ingress default/broken: bad annotation"]
    assert doc["operator"] is None
    assert doc["services"] == []


async def test_overview_joins_listeners_with_their_routes(get: Any) -> None:
    _, _, doc = await get("/api/overview")
    listeners = {item["name"]: item for item in doc["listeners"]}
    assert list(listeners) == ["web", "tenants", "relay", "old"]
    web = listeners["web"]
    assert (web["protocol"], web["state"]) == ("http", "serving")
    assert (web["active"], web["total"]) == (2, 40)
    assert [(r["kind"], r["host"], r["path"], r["backend"]) for r in web["routes"]] == [
        ("http", "app.example", "/api(/|$)(.*)", "api"),
        ("http", "app.example", "/", "app"),
        ("default", None, "/", "hello"),
    ]
    api = web["routes"][0]
    assert (api["path_type"], api["rewrite_target"]) == ("Regex", "/$2")
    # Each HTTP route names the `route` label of its meshgate_http_* metrics.
    assert [r["metric_route"] for r in web["routes"]] == [
        "app.example/api(/|$)(.*)",
        "app.example/",
        "default",
    ]
    tenants = listeners["tenants"]["routes"]
    assert [(r["kind"], r["sni"], r["default"], r["backend"]) for r in tenants] == [
        ("sni", ["a.example.com"], False, "app"),
        ("sni", [], True, "api"),
    ]
    assert tenants[0]["mode"] == "passthrough"
    assert [(r["kind"], r["backend"]) for r in listeners["relay"]["routes"]] == [("backend", "app")]
    # A listener a reload removed still drains, and has no routes any more.
    assert (listeners["old"]["state"], listeners["old"]["routes"]) == ("draining", [])


async def test_every_route_has_the_same_fields(get: Any) -> None:
    _, _, doc = await get("/api/overview")
    shapes = {frozenset(r) for item in doc["listeners"] for r in item["routes"]}
    assert len(shapes) == 1


async def test_overview_backends_carry_endpoint_health(get: Any) -> None:
    _, _, doc = await get("/api/overview")
    backends = {b["name"]: b for b in doc["backends"]}
    app = backends["app"]["endpoints"]
    assert [(ep["address"], ep["state"], ep["in_flight"]) for ep in app] == [
        ("127.0.0.1:7001", "healthy", 2),
        ("127.0.0.2:7001", "ejected", 0),
    ]
    assert app[1]["ejections"] == 1
    assert backends["hello"]["builtin"] == "hello"


async def test_overview_of_the_operator_lists_its_services(state: FakeState, get: Any) -> None:
    state.status_doc, state.table = OPERATOR_STATUS, {}
    _, _, doc = await get("/api/overview")
    assert doc["kind"] == "operator"
    assert doc["config"] is None
    assert doc["mesh"] is None
    assert doc["listeners"] == []
    assert doc["operator"]["leader"] is True
    assert doc["services"] == [
        {
            "service": "data/db",
            "deployment": "meshgate-db-3c4d",
            "ready_replicas": 0,
            "state": "pending",
            "reason": None,
        },
        {
            "service": "default/both",
            "deployment": None,
            "ready_replicas": 0,
            "state": "rejected",
            "reason": "meshgate.io/egress: ingress and egress on one Service",
        },
        {
            "service": "default/web",
            "deployment": "meshgate-web-1a2b",
            "ready_replicas": 1,
            "state": "ready",
            "reason": None,
        },
    ]


async def test_overview_with_nothing_configured(state: FakeState, get: Any) -> None:
    state.status_doc = {"version": 1, "listeners": [], "backends": [], "mesh": None, "dns": None}
    state.table = {"version": 1, "listeners": [], "backends": []}
    _, _, doc = await get("/api/overview")
    assert doc["ready"]["ready"] is True
    assert (doc["listeners"], doc["backends"], doc["mesh"], doc["dns"]) == ([], [], None, None)
    assert doc["config"]["sources"] == []
    assert doc["config"]["last_reload"] is None


# -- /api/stats ---------------------------------------------------------------


async def test_stats_per_listener(get: Any) -> None:
    _, _, doc = await get("/api/stats")
    assert isinstance(doc["time"], float)
    listeners = {item["listener"]: item for item in doc["listeners"]}
    assert sorted(listeners) == ["relay", "tenants", "web"]
    relay = listeners["relay"]
    assert relay["connections_total"] == 5  # summed over its backends
    assert relay["connections_active"] == 1
    assert (relay["bytes_in_total"], relay["bytes_out_total"]) == (100, 2048)
    assert relay["errors"] == {"connection_errors": {"idle_timeout": 1}}
    assert relay["errors_total"] == 1
    web = listeners["web"]
    assert web["requests_total"] == 7
    assert web["errors"] == {"http_rejected": {"smuggling_cl_te": 1}}
    tenants = listeners["tenants"]
    # A listener without traffic is listed, with zeros.
    assert tenants["connections_total"] == 0
    assert tenants["errors"] == {"tls_rejected": {"unknown_sni": 4}}


async def test_stats_per_route_has_codes_and_latency_buckets(get: Any) -> None:
    _, _, doc = await get("/api/stats")
    routes = {(r["listener"], r["route"]): r for r in doc["routes"]}
    assert sorted(routes) == [("web", "-"), ("web", "app.example/")]
    app = routes["web", "app.example/"]
    assert app["requests_total"] == 6
    assert app["codes"] == {"200": 5, "502": 1}
    latency = app["latency"]
    assert latency["count"] == 6
    assert latency["sum"] == pytest.approx(3.244)
    assert latency["le"][:4] == [0.001, 0.0025, 0.005, 0.01]
    assert len(latency["cumulative"]) == len(latency["le"])
    cumulative = dict(zip(latency["le"], latency["cumulative"], strict=True))
    assert (cumulative[0.001], cumulative[0.0025], cumulative[0.025]) == (0, 2, 4)
    assert cumulative[30.0] == 6
    assert routes["web", "-"]["codes"] == {"404": 1}


async def test_stats_per_backend_and_global(get: Any) -> None:
    _, _, doc = await get("/api/stats")
    [app] = [b for b in doc["backends"] if b["backend"] == "app"]
    assert app["connect_failures"] == {"127.0.0.2:7001": {"refused": 3}}
    assert app["connect_failures_total"] == 3
    assert app["upstream_errors"] == {"connect": 1}
    assert app["upstream_connections"] == {"reused": 4}
    assert doc["global"]["table_version"] == 4
    assert doc["global"]["reloads"] == {"ok": 2, "rejected": 1}
    assert doc["global"]["internal_errors"] == 0


async def test_stats_of_the_operator_has_its_gauges(state: FakeState, get: Any) -> None:
    state.status_doc, state.table = OPERATOR_STATUS, {}
    state.registry = CollectorRegistry()
    Gauge("meshgate_operator_leader", "1 while leading", registry=state.registry).set(1)
    _, _, doc = await get("/api/stats")
    assert (doc["listeners"], doc["routes"], doc["backends"]) == ([], [], [])
    assert doc["global"] == {"operator_leader": 1}


async def test_stats_are_collected_at_most_once_a_second(state: FakeState) -> None:
    now = [1000.0]
    collected = []
    families = state.metric_families

    def counting() -> Iterable[Metric]:
        collected.append(now[0])
        return families()

    state.metric_families = counting  # type: ignore[method-assign]
    app = web.Application()
    app.add_routes(dashboard_routes(state, clock=lambda: now[0]))
    times = []
    async with TestClient(TestServer(app)) as client:
        for step in (0.0, 0.5, 0.6, -5.0):  # the last: the clock was set back
            now[0] += step
            async with client.get("/api/stats") as response:
                times.append((await response.json())["time"])
    assert times == [1000.0, 1000.0, 1001.1, 996.1]
    assert collected == [1000.0, 1001.1, 996.1]


# -- /api/errors --------------------------------------------------------------


async def test_errors_newest_first_with_their_fields(
    state: FakeState, get: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshgate")
    with state.recent.attached(logging.getLogger("meshgate")):
        logging.getLogger("meshgate.tcp").warning(
            "no upstream",
            extra={"fields": {"listener": "relay", "error": "backend app: 127.0.0.2:7001 refused"}},
        )
        logging.getLogger("meshgate.http").info(
            "http request rejected",
            extra={"fields": {"listener": "web", "status": 400, "reason": "smuggling_cl_te"}},
        )
    _, _, doc = await get("/api/errors")
    assert (doc["capacity"], doc["seen"]) == (3, 2)
    first, second = doc["errors"]
    assert (first["event"], first["level"], first["reason"]) == (
        "http request rejected",
        "info",
        "smuggling_cl_te",
    )
    assert first["fields"] == {"listener": "web", "status": 400, "reason": "smuggling_cl_te"}
    assert (second["event"], second["logger"]) == ("no upstream", "meshgate.tcp")
    assert second["reason"] == "backend app: 127.0.0.2:7001 refused"
    assert second["time"] <= first["time"]


def test_route_labels_tell_a_catch_all_rule_from_the_default_backend() -> None:
    assert http_route_label(None, "/") == "*/"
    assert http_route_label("app.example", "/api") == "app.example/api"
    assert http_route_label(None, "/") != DEFAULT_ROUTE_LABEL
