"""compile_table: a validated Config becomes the plain, frozen RouteTable."""

from __future__ import annotations

import pytest

from meshgate.config.model import Config
from meshgate.routing.compile import compile_table
from meshgate.routing.table import EndpointAddr, ListenerKey, PoolSpec, Timeouts, UdpSpec

CONFIG = Config.model_validate(
    {
        "listeners": [
            {"name": "web", "address": "100.100.0.2", "port": 80, "backend": "web"},
            {
                "name": "dns",
                "address": "::",
                "port": 53,
                "protocol": "udp",
                "backend": "dns",
                "udp": {"flow_idle_timeout": "30s", "max_flows": 50},
            },
            {"name": "web-alt", "address": "100.100.0.2", "port": 8080, "backend": "web"},
            {"name": "hi", "port": 9000, "backend": "hello"},
        ],
        "backends": [
            {"name": "unused", "builtin": "echo"},
            {
                "name": "web",
                "endpoints": ["web.default.svc:80", "[fd00::1]:8080"],
                "balance": "least_conn",
                "timeouts": {"connect": "250ms", "idle": "2m", "half_closed": 7},
            },
            {"name": "dns", "endpoints": ["100.100.0.1:53"]},
            {"name": "hello", "builtin": "hello"},
        ],
    }
)


def test_listeners_keep_config_order_and_keys() -> None:
    table = compile_table(CONFIG, version=7, sources=("a.yaml", "--ingress/--egress"))
    assert table.version == 7
    assert table.sources == ("a.yaml", "--ingress/--egress")
    assert [spec.name for spec in table.listeners] == ["web", "dns", "web-alt", "hi"]
    assert [spec.key for spec in table.listeners] == [
        ListenerKey("100.100.0.2", 80, "tcp"),
        ListenerKey("::", 53, "udp"),
        ListenerKey("100.100.0.2", 8080, "tcp"),
        ListenerKey("127.0.0.1", 9000, "tcp"),
    ]
    assert table.get(ListenerKey("::", 53, "udp")) is table.listeners[1]


def test_pool_spec_carries_endpoints_balance_and_timeouts() -> None:
    web = compile_table(CONFIG, version=1).listeners[0].pool
    assert web == PoolSpec(
        name="web",
        endpoints=(EndpointAddr("web.default.svc", 80), EndpointAddr("fd00::1", 8080)),
        balance="least_conn",
        timeouts=Timeouts(connect=0.25, idle=120.0, half_closed=7.0),
        builtin=None,
    )


def test_builtin_backend_and_default_timeouts() -> None:
    hello = compile_table(CONFIG, version=1).listeners[3].l4_pool
    assert (hello.builtin, hello.endpoints, hello.balance) == ("hello", (), "round_robin")
    assert hello.timeouts == Timeouts(connect=5.0, idle=3600.0, half_closed=60.0)


def test_udp_spec_from_listener_options_and_defaults() -> None:
    table = compile_table(CONFIG, version=1)
    assert table.listeners[1].udp == UdpSpec(flow_idle_timeout=30.0, max_flows=50)
    assert table.listeners[0].udp == UdpSpec(flow_idle_timeout=60.0, max_flows=10_000)


def test_listeners_sharing_a_backend_share_one_pool_spec() -> None:
    table = compile_table(CONFIG, version=1)
    assert table.listeners[0].pool is table.listeners[2].pool
    assert set(table.pools) == {"web", "dns", "hello"}  # unused backends are not in the table


def test_compiling_is_pure() -> None:
    assert compile_table(CONFIG, version=3) == compile_table(CONFIG, version=3)
    assert compile_table(Config(), version=1).listeners == ()


def test_table_serialises_for_the_admin_endpoint() -> None:
    data = compile_table(CONFIG, version=2).to_json()
    assert data["listeners"][1]["udp"] == {"flow_idle_timeout": 30.0, "max_flows": 50}
    assert data["backends"][0]["endpoints"] == ["web.default.svc:80", "[fd00::1]:8080"]


def test_unvalidated_dangling_reference_fails_loudly() -> None:
    config = Config.model_validate({"listeners": [{"name": "a", "port": 1, "backend": "gone"}]})
    with pytest.raises(ValueError, match="unknown backend 'gone'"):
        compile_table(config, version=1)
