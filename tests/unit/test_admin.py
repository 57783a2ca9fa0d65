"""The admin server, served for real on a loopback port to a fake runtime state."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
import pytest
from prometheus_client.metrics_core import Metric

from meshgate.admin import METRICS_CONTENT_TYPE, AdminServer, parse_listen
from meshgate.obs.metrics import Metrics
from meshgate.routing.table import (
    EndpointAddr,
    ListenerKey,
    ListenerSpec,
    PoolSpec,
    RouteTable,
    Timeouts,
    UdpSpec,
)

TABLE = RouteTable(
    version=3,
    sources=("examples/quickstart.yaml",),
    listeners=(
        ListenerSpec(
            key=ListenerKey("127.0.0.1", 8080, "tcp"),
            name="web",
            pool=PoolSpec(
                name="web",
                endpoints=(EndpointAddr("127.0.0.1", 9000),),
                balance="round_robin",
                timeouts=Timeouts(connect=5.0, idle=3600.0, half_closed=60.0),
            ),
            udp=UdpSpec(flow_idle_timeout=60.0, max_flows=10_000),
        ),
    ),
)

STATUS: dict[str, Any] = {
    "version": 3,
    "started": 1700000000.0,
    "sources": ["examples/quickstart.yaml"],
    "last_reload": {"time": 1700000100.0, "result": "ok", "error": None},
    "admin": "127.0.0.1:9901",
    "listeners": [],
    "backends": [],
}


class FakeState:
    """An AdminState whose answers a test sets directly."""

    def __init__(self) -> None:
        self.ready_answer: tuple[bool, dict[str, Any]] = (True, {"table_version": 3})
        self.status_error: Exception | None = None
        self.status_answer: dict[str, Any] = STATUS
        self.metrics_source = Metrics()
        self.metrics_source.table_version.set(3)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        return self.ready_answer

    def status(self) -> dict[str, Any]:
        if self.status_error is not None:
            raise self.status_error
        return self.status_answer

    def config(self) -> dict[str, Any]:
        return TABLE.to_json()

    def metrics(self) -> bytes:
        return self.metrics_source.render()

    def metric_families(self) -> Iterable[Metric]:
        return self.metrics_source.registry.collect()

    def recent_errors(self) -> dict[str, Any]:
        return {"capacity": 50, "seen": 0, "errors": []}


@pytest.fixture
def state() -> FakeState:
    return FakeState()


@pytest.fixture
async def base_url(state: FakeState) -> AsyncIterator[str]:
    server = AdminServer("127.0.0.1", 0, state)
    host, port = await server.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_healthz(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base_url}/healthz") as response:
        assert response.status == 200
        assert await response.text() == "ok"


async def test_head_is_answered_like_get(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.head(f"{base_url}/healthz") as response:
        assert response.status == 200


async def test_readyz_ready(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base_url}/readyz") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == {"ready": True, "table_version": 3}


async def test_readyz_not_ready_says_why(
    state: FakeState, base_url: str, http: aiohttp.ClientSession
) -> None:
    state.ready_answer = (False, {"reason": "no routing table yet"})
    async with http.get(f"{base_url}/readyz") as response:
        assert response.status == 503
        assert response.content_type == "application/json"
        assert await response.json() == {"ready": False, "reason": "no routing table yet"}


def _endpoint(address: str, state: str, check: str | None, **more: Any) -> dict[str, Any]:
    return {"address": address, "state": state, "check": check, "check_reason": None, **more}


async def test_readyz_names_backends_with_endpoints_out_but_stays_ready(
    state: FakeState, base_url: str, http: aiohttp.ClientSession
) -> None:
    state.status_answer = {
        **STATUS,
        "backends": [
            {
                "name": "app",
                "endpoints": [
                    _endpoint("10.0.0.1:80", "healthy", "healthy"),
                    _endpoint("10.0.0.2:80", "healthy", "unhealthy", check_reason="refused"),
                    _endpoint("10.0.0.3:80", "ejected", "healthy", ejected_for=8.5),
                ],
            },
            {"name": "fine", "endpoints": [_endpoint("10.0.1.1:80", "suspect", None)]},
            {"name": "hello", "builtin": "hello", "endpoints": []},
        ],
    }
    async with http.get(f"{base_url}/readyz") as response:
        # A backend down is no reason to take the proxy out of rotation.
        assert response.status == 200
        body = await response.json()
    assert body["ready"] is True
    assert body["degraded_backends"] == [
        {
            "name": "app",
            "endpoints": 3,
            "ejected": [{"address": "10.0.0.3:80", "ejected_for": 8.5}],
            "unhealthy": [{"address": "10.0.0.2:80", "reason": "refused"}],
        }
    ]


async def test_readyz_answers_even_when_the_status_cannot_be_read(
    state: FakeState,
    base_url: str,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state.status_error = RuntimeError("status exploded")
    with caplog.at_level(logging.ERROR, logger="meshgate.admin"):
        async with http.get(f"{base_url}/readyz") as response:
            assert response.status == 200
            assert await response.json() == {"ready": True, "table_version": 3}
    assert any("status exploded" in str(r.exc_info) for r in caplog.records)


async def test_metrics_is_prometheus_text(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base_url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == METRICS_CONTENT_TYPE
        assert METRICS_CONTENT_TYPE.startswith("text/plain; version=0.0.4")
        assert "meshgate_table_version 3.0" in await response.text()


async def test_config_is_the_table_json(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base_url}/config") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == TABLE.to_json()


async def test_status(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base_url}/status") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == STATUS


async def test_unknown_path_is_404_json(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base_url}/nope") as response:
        assert response.status == 404
        assert response.content_type == "application/json"
        assert await response.json() == {"error": "not found", "path": "/nope"}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_other_methods_are_405_json(
    base_url: str, http: aiohttp.ClientSession, method: str
) -> None:
    async with http.request(method, f"{base_url}/status") as response:
        assert response.status == 405
        assert response.content_type == "application/json"
        assert response.headers["Allow"] == "GET, HEAD"
        body = await response.json()
        assert body["method"] == method
        assert body["allowed"] == ["GET", "HEAD"]


async def test_handler_error_is_500_and_the_server_keeps_answering(
    state: FakeState,
    base_url: str,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state.status_error = RuntimeError("status exploded")
    with caplog.at_level(logging.ERROR, logger="meshgate.admin"):
        async with http.get(f"{base_url}/status") as response:
            assert response.status == 500
            assert response.content_type == "application/json"
            body = await response.json()
    assert body["error"] == "internal server error"
    assert "status exploded" in body["detail"]
    [record] = [r for r in caplog.records if r.name == "meshgate.admin"]
    assert record.getMessage() == "admin request failed"
    assert record.exc_info is not None
    assert record.fields == {"method": "GET", "path": "/status"}  # type: ignore[attr-defined]

    async with http.get(f"{base_url}/healthz") as response:
        assert response.status == 200
    state.status_error = None
    async with http.get(f"{base_url}/status") as response:
        assert response.status == 200


async def test_unencodable_status_is_500(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    class Odd(FakeState):
        def status(self) -> dict[str, Any]:
            return {"started": object()}

    server = AdminServer("127.0.0.1", 0, Odd())
    host, port = await server.start()
    try:
        with caplog.at_level(logging.ERROR, logger="meshgate.admin"):
            async with http.get(f"http://{host}:{port}/status") as response:
                assert response.status == 500
    finally:
        await server.stop()


async def test_start_reports_the_real_address_and_logs_it(
    state: FakeState, caplog: pytest.LogCaptureFixture
) -> None:
    server = AdminServer("127.0.0.1", 0, state)
    with caplog.at_level(logging.INFO, logger="meshgate.admin"):
        host, port = await server.start()
    try:
        assert host == "127.0.0.1"
        assert port > 0
        [record] = [r for r in caplog.records if r.getMessage() == "admin listening"]
        assert record.fields == {"address": f"127.0.0.1:{port}"}  # type: ignore[attr-defined]
    finally:
        await server.stop()
    await server.stop()  # a second stop is harmless


async def test_requests_are_not_access_logged(
    base_url: str, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with http.get(f"{base_url}/healthz") as response:
            assert response.status == 200
    assert not [r for r in caplog.records if r.name.startswith("aiohttp")]


async def test_stop_frees_the_port(state: FakeState, http: aiohttp.ClientSession) -> None:
    first = AdminServer("127.0.0.1", 0, state)
    _, port = await first.start()
    await first.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"http://127.0.0.1:{port}/healthz"):
            pass
    second = AdminServer("127.0.0.1", port, state)
    assert await second.start() == ("127.0.0.1", port)
    await second.stop()


async def test_port_in_use_is_a_clear_oserror(state: FakeState) -> None:
    first = AdminServer("127.0.0.1", 0, state)
    _, port = await first.start()
    try:
        with pytest.raises(OSError, match=rf"admin cannot listen on 127\.0\.0\.1:{port}: "):
            await AdminServer("127.0.0.1", port, state).start()
    finally:
        await first.stop()


async def test_start_twice_is_refused(state: FakeState) -> None:
    server = AdminServer("127.0.0.1", 0, state)
    await server.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            await server.start()
    finally:
        await server.stop()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6(state: FakeState, http: aiohttp.ClientSession) -> None:
    server = AdminServer("::1", 0, state)
    host, port = await server.start()
    try:
        assert host == "::1"
        async with http.get(f"http://[::1]:{port}/healthz") as response:
            assert response.status == 200
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9901", ("127.0.0.1", 9901)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:0", ("::1", 0)),
        ("[::]:9901", ("::", 9901)),
        ("[fd00::1]:65535", ("fd00::1", 65535)),
        ("localhost:9901", ("localhost", 9901)),
        ("admin.mesh.internal:9901", ("admin.mesh.internal", 9901)),
        ("  127.0.0.1:9901 ", ("127.0.0.1", 9901)),
        ("off", None),
        ("OFF", None),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected HOST:PORT"),
        ("9901", "expected HOST:PORT"),
        (":9901", "expected HOST:PORT"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:", "port '' is not a number"),
        ("127.0.0.1:abc", "port 'abc' is not a number"),
        ("127.0.0.1:65536", "port '65536' is not a number from 0 to 65535"),
        ("127.0.0.1:-1", "port '-1' is not a number"),
        ("::1:9901", "put an IPv6 address in brackets"),
        ("[::1]", "expected HOST:PORT"),
        ("[::1]9901", "expected HOST:PORT"),
        ("[127.0.0.1]:9901", "is not an IPv6 address"),
        ("10.0.0.300:9901", "is not an IP address or a host name"),
        ("bad host:9901", "is not an IP address or a host name"),
        ("http://127.0.0.1:9901", "without a scheme"),
    ],
)
def test_parse_listen_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="invalid admin address") as caught:
        parse_listen(text)
    assert message in str(caught.value)
