"""Rendering status and config documents, and fetching them from a real admin server."""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import Iterable
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from rich.console import Console

from meshgate.admin import AdminServer
from meshgate.routing.table import (
    EndpointAddr,
    ListenerKey,
    ListenerSpec,
    PoolSpec,
    RouteTable,
    Timeouts,
    UdpSpec,
)
from meshgate.statusview import (
    StatusError,
    fetch_json,
    human_bytes,
    render_config,
    render_status,
)

RELOAD_ERROR = "meshgate.yaml:12: listeners[1] (dns): field 'port': must be 1-65535"

STATUS: dict[str, Any] = {
    "version": 3,
    "started": 1700000000.0,
    "sources": ["examples/quickstart.yaml"],
    "last_reload": {"time": 1700000100.0, "result": "rejected", "error": RELOAD_ERROR},
    "admin": "127.0.0.1:9901",
    "listeners": [
        {
            "name": "web",
            "key": "tcp://127.0.0.1:8080",
            "address": "127.0.0.1",
            "port": 8080,
            "protocol": "tcp",
            "state": "serving",
            "error": None,
            "backend": "hello",
            "active": 2,
            "total": 10,
            "bytes_in": 1234,
            "bytes_out": 5 * 1024 * 1024,
            "udp_flows": 0,
        },
        {
            "name": "dns",
            "key": "udp://[::1]:5353",
            "address": "::1",
            "port": 5353,
            "protocol": "udp",
            "state": "failed",
            "error": "[errno 98] address already in use",
            "backend": "resolvers",
            "active": 0,
            "total": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "udp_flows": 7,
        },
    ],
    "backends": [
        {"name": "hello", "balance": "round_robin", "builtin": "hello", "endpoints": []},
        {
            "name": "resolvers",
            "balance": "least_conn",
            "builtin": None,
            "endpoints": [
                {"address": "100.100.0.1:53", "state": "healthy", "in_flight": 4, "failures": 0},
                {"address": "100.100.0.2:53", "state": "ejected", "in_flight": 0, "failures": 3},
                {"address": "100.100.0.3:53", "state": "probing", "in_flight": 1, "failures": 3},
                {"address": "100.100.0.4:53", "state": "suspect", "in_flight": 0, "failures": 1},
            ],
        },
    ],
}

TIMEOUTS = Timeouts(connect=5.0, idle=3600.0, half_closed=60.0)
HELLO = PoolSpec("hello", (), "round_robin", TIMEOUTS, builtin="hello")
RESOLVERS = PoolSpec(
    "resolvers",
    (EndpointAddr("100.100.0.1", 53), EndpointAddr("fd00::53", 53)),
    "least_conn",
    TIMEOUTS,
)
TABLE = RouteTable(
    version=7,
    sources=("examples/quickstart.yaml", "--ingress"),
    listeners=(
        ListenerSpec(ListenerKey("127.0.0.1", 8080, "tcp"), "web", HELLO, UdpSpec(60.0, 10_000)),
        ListenerSpec(ListenerKey("::1", 5353, "udp"), "dns", RESOLVERS, UdpSpec(30.0, 500)),
    ),
)


def _render(draw: Any, document: dict[str, Any]) -> str:
    out = io.StringIO()
    draw(document, Console(file=out, width=120))
    return out.getvalue()


def test_render_status_shows_listeners_backends_and_the_rejected_reload() -> None:
    text = _render(render_status, STATUS)
    assert "table version 3" in text
    assert "examples/quickstart.yaml" in text
    assert "last reload: rejected at " in text
    assert "still serving version 3" in text
    assert RELOAD_ERROR in text
    for expected in ("web", "dns", "127.0.0.1:8080/tcp", "[::1]:5353/udp", "serving", "failed"):
        assert expected in text
    # An error starting with "[errno" must not be eaten as rich markup.
    assert "[errno 98] address already in use" in text
    assert "1.2 KiB" in text
    assert "5.0 MiB" in text
    for expected in ("builtin:hello", "100.100.0.1:53", "healthy", "ejected", "probing", "suspect"):
        assert expected in text


def test_render_status_shows_each_endpoints_health_check() -> None:
    status = {
        **STATUS,
        "backends": [
            {
                "name": "app",
                "balance": "round_robin",
                "builtin": None,
                "health_check": "http",
                "endpoints": [
                    {"address": "10.0.0.1:80", "state": "healthy", "check": "healthy"},
                    {
                        "address": "10.0.0.2:80",
                        "state": "healthy",
                        "check": "unhealthy",
                        "check_reason": "status 503",
                    },
                    {"address": "10.0.0.3:80", "state": "ejected", "ejected_for": 42.4},
                    {"address": "10.0.0.4:80", "state": "healthy", "check": "pending"},
                ],
            }
        ],
    }
    rows = {
        line.split()[1] if line.split()[0] == "app" else line.split()[0]: " ".join(line.split())
        for line in _render(render_status, status).splitlines()
        if "10.0.0." in line
    }
    assert rows["10.0.0.1:80"].endswith("10.0.0.1:80 healthy healthy 0 0")
    assert "healthy unhealthy (status 503)" in rows["10.0.0.2:80"]
    assert "ejected 42s -" in rows["10.0.0.3:80"]  # no health check on this one
    assert "healthy pending" in rows["10.0.0.4:80"]


def test_render_status_udp_flows_only_for_udp() -> None:
    text = _render(render_status, STATUS)
    [web] = [line for line in text.splitlines() if "127.0.0.1:8080/tcp" in line]
    [dns] = [line for line in text.splitlines() if "[::1]:5353/udp" in line]
    assert web.rstrip().endswith("-")
    assert dns.rstrip().endswith("7")


def test_render_status_plain_when_not_a_terminal() -> None:
    text = _render(render_status, STATUS)
    assert "\x1b[" not in text


def test_render_status_off_a_terminal_is_never_folded() -> None:
    # Off a terminal rich guesses 80 columns; rows must still be whole lines.
    out = io.StringIO()
    render_status(STATUS, Console(file=out))
    [row] = [line for line in out.getvalue().splitlines() if line.startswith(" web ")]
    assert " ".join(row.split()) == "web 127.0.0.1:8080/tcp serving hello 2 10 0 1.2 KiB 5.0 MiB -"


def test_render_status_on_a_terminal_fits_its_width() -> None:
    out = io.StringIO()
    render_status(STATUS, Console(file=out, width=60, force_terminal=True, color_system=None))
    assert max(len(line) for line in out.getvalue().splitlines()) <= 60


def test_render_status_with_record_console() -> None:
    console = Console(record=True, width=120, file=io.StringIO())
    render_status(STATUS, console)
    text = console.export_text()
    assert "Listeners" in text
    assert "Backends" in text
    assert "ejected" in text


def test_render_status_ok_reload_and_empty_tables() -> None:
    status = {
        **STATUS,
        "last_reload": {"time": 1700000100.0, "result": "ok", "error": None},
        "listeners": [],
        "backends": [],
    }
    text = _render(render_status, status)
    assert "last reload: ok" in text
    assert "still serving" not in text
    assert "no listeners" in text
    assert "no backends" in text


def test_render_config() -> None:
    text = _render(render_config, TABLE.to_json())
    assert "table version 7 from examples/quickstart.yaml, --ingress" in text
    for expected in ("web", "dns", "127.0.0.1:8080", "[::1]:5353", "tcp", "udp", "resolvers"):
        assert expected in text
    assert "flow idle 30s, max 500 flows" in text
    assert "builtin:hello" in text
    assert "100.100.0.1:53" in text
    assert "[fd00::53]:53" in text
    assert "least_conn" in text
    assert "connect 5s, idle 1h, half-closed 60s" in text
    assert "\x1b[" not in text


@pytest.mark.parametrize(
    ("count", "expected"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1234, "1.2 KiB"), (3 << 30, "3.0 GiB")],
)
def test_human_bytes(count: int, expected: str) -> None:
    assert human_bytes(count) == expected


def _closed_port() -> int:
    # Bound but not listening: connecting to it is refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_fetch_json_unreachable_names_the_address() -> None:
    port = _closed_port()
    with pytest.raises(StatusError) as caught:
        fetch_json(f"127.0.0.1:{port}", "/status", timeout=2.0)
    message = str(caught.value)
    assert f"cannot reach meshgate admin at 127.0.0.1:{port}" in message
    assert "connection refused" in message
    assert "--admin" in message
    assert caught.value.status is None


def test_fetch_json_brackets_ipv6() -> None:
    with pytest.raises(StatusError, match=r"at \[::1\]:1\b"):
        fetch_json("::1:1", "/status", timeout=2.0)


@pytest.mark.parametrize("admin", ["localhost", "127.0.0.1:http", "[::1]", "[::1]:", ""])
def test_fetch_json_rejects_a_bad_address(admin: str) -> None:
    with pytest.raises(StatusError, match="expected HOST:PORT"):
        fetch_json(admin, "/status")


class State:
    def __init__(self, ready: bool) -> None:
        self._ready = ready

    def ready(self) -> tuple[bool, dict[str, Any]]:
        return self._ready, {} if self._ready else {"reason": "no routing table yet"}

    def status(self) -> dict[str, Any]:
        return STATUS

    def config(self) -> dict[str, Any]:
        return TABLE.to_json()

    def metrics(self) -> bytes:
        return b""

    def metric_families(self) -> Iterable[Metric]:
        return ()

    def recent_errors(self) -> dict[str, Any]:
        return {"capacity": 50, "seen": 0, "errors": []}


async def test_fetch_json_from_a_real_admin_server() -> None:
    server = AdminServer("127.0.0.1", 0, State(ready=False))
    host, port = await server.start()
    admin = f"{host}:{port}"
    try:
        # urllib blocks, so it runs in a thread while this loop serves it.
        assert await asyncio.to_thread(fetch_json, admin, "/status") == STATUS
        assert await asyncio.to_thread(fetch_json, f"http://{admin}/", "config") == (
            TABLE.to_json()
        )

        with pytest.raises(StatusError, match="not JSON") as caught:
            await asyncio.to_thread(fetch_json, admin, "/healthz")
        assert "'ok'" in str(caught.value)

        with pytest.raises(StatusError, match="HTTP 503") as caught:
            await asyncio.to_thread(fetch_json, admin, "/readyz")
        assert caught.value.status == 503
        assert "no routing table yet" in str(caught.value)

        with pytest.raises(StatusError, match="HTTP 404"):
            await asyncio.to_thread(fetch_json, admin, "/nope")
    finally:
        await server.stop()


def test_render_config_shows_tls_routes_and_upstream_settings() -> None:
    table = {
        "version": 4,
        "sources": ["tls.yaml"],
        "listeners": [
            {
                "name": "edge",
                "address": "127.0.0.1",
                "port": 443,
                "protocol": "tls",
                "backend": "a|b",
                "routes": [
                    {
                        "sni": ["a.example.com"],
                        "default": False,
                        "mode": "passthrough",
                        "backend": "a",
                        "certificate": None,
                        "alpn": [],
                    },
                    {
                        "sni": [],
                        "default": True,
                        "mode": "terminate",
                        "backend": "b",
                        "certificate": "certs/b.crt",
                        "alpn": ["h2"],
                    },
                ],
            }
        ],
        "backends": [
            {
                "name": "b",
                "balance": "round_robin",
                "endpoints": ["b.svc:443"],
                "builtin": None,
                "timeouts": {"connect": 5, "idle": 60, "half_closed": 5},
                "tls": {
                    "sni": "b.example.com",
                    "ca": None,
                    "insecure_skip_verify": True,
                    "alpn": [],
                },
                "proxy_protocol": "v2",
            },
        ],
    }
    console = Console(record=True, width=200)
    render_config(table, console)
    text = console.export_text()
    assert "TLS routes" in text
    assert "a.example.com" in text
    assert "(default)" in text
    assert "terminate alpn h2" in text
    assert "certs/b.crt" in text
    assert "tls sni b.example.com, NO VERIFY; proxy protocol v2" in text


def test_render_status_shows_the_mesh_binding_and_dns_names() -> None:
    status = {
        "version": 2,
        "sources": ["--ingress/--egress"],
        "listeners": [],
        "backends": [],
        "mesh": {
            "addresses": ["100.100.0.2"],
            "interface": "netmaker",
            "reason": "interface netmaker (preferred name)",
            "fallback": False,
        },
        "dns": {
            "listen": "100.100.0.2:53",
            "zones": ["mesh.internal"],
            "names": {"my-app.mesh.internal": ["100.100.0.2"]},
            "error": None,
        },
    }
    console = Console(record=True, width=200)
    render_status(status, console)
    text = console.export_text()
    assert "mesh: 100.100.0.2 on netmaker (interface netmaker (preferred name))" in text
    assert "mesh DNS on 100.100.0.2:53: my-app.mesh.internal -> 100.100.0.2" in text
    assert "FALLBACK" not in text
    status["mesh"] = {
        "addresses": ["0.0.0.0"],
        "interface": None,
        "reason": "last resort",
        "fallback": True,
    }
    console = Console(record=True, width=200)
    render_status(status, console)
    assert "FALLBACK: not on the mesh" in console.export_text()


def test_render_status_of_the_operator_shows_leadership_proxies_and_rejections() -> None:
    text = _render(
        render_status,
        {
            "operator": {
                "namespace": "meshgate-system",
                "identity": "op-1",
                "leader": True,
                "lease_holder": "op-1",
                "reconciles": 7,
                "errors": 0,
            },
            "proxies": [
                {"deployment": "mg-default-web-1a2b", "service": "default/web", "ready_replicas": 1}
            ],
            "rejected": {"default/bad": "metadata.annotations[meshgate.io/ingress-bind-ip]: bad"},
        },
    )
    for expected in ("leader", "op-1", "reconciles 7", "mg-default-web-1a2b", "default/web"):
        assert expected in text
    assert "default/bad" in text
    assert "ingress-bind-ip" in text


def test_render_status_shows_overload_paused_listeners_and_refusals() -> None:
    listener = {**STATUS["listeners"][0], "accepting": False, "refused": {"listener_limit": 7}}
    doc = {
        **STATUS,
        "listeners": [listener],
        "overload": {
            "stage": "reject_requests",
            "level": 2,
            "reason": "memory",
            "connections": 9000,
            "max_connections": 9872,
        },
    }
    text = _render(render_status, doc)
    assert "overload: reject_requests (memory; 9000 of 9872 connections)" in text
    assert "serving paused" in text
    calm = _render(render_status, {**STATUS, "overload": {"stage": "normal", "level": 0}})
    assert "overload" not in calm
