"""compile_table for tls listeners: SNI routes, certificates, upstream TLS and `resolve`."""

from __future__ import annotations

import pytest

from meshgate.config.model import Config
from meshgate.routing.compile import compile_table
from meshgate.routing.table import (
    CertRef,
    EndpointAddr,
    ListenerSpec,
    RouteTable,
    SniRoutes,
    TlsRouteSpec,
    UpstreamTlsSpec,
)

CONFIG = Config.model_validate(
    {
        "listeners": [
            {"name": "web", "port": 80, "backend": "plain"},
            {
                "name": "edge",
                "address": "100.100.0.2",
                "port": 443,
                "protocol": "tls",
                "tls": {
                    "hello_timeout": "2s",
                    "max_hello": 4096,
                    "default_certificate": {"cert": "/d.crt", "key": "/d.key"},
                },
                "routes": [
                    {
                        "sni": ["api.example.com", "*.api.example.com"],
                        "mode": "terminate",
                        "certificate": {"cert": "/api.crt", "key": "/api.key"},
                        "alpn": ["h2", "http/1.1"],
                        "backend": "api",
                    },
                    {"sni": ["Shop.Example.com."], "mode": "terminate", "backend": "shop"},
                    {"sni": ["db.example.com"], "backend": "db"},
                    {"default": True, "backend": "api"},
                ],
            },
        ],
        "backends": [
            {"name": "unused", "endpoints": ["10.0.0.9:1"]},
            {"name": "plain", "endpoints": ["10.0.0.1:80"]},
            {
                "name": "api",
                "endpoints": ["API.internal.:8443", "10.0.0.2:8443", "other.internal:8443"],
                "tls": {
                    "sni": "api.internal",
                    "ca": "/ca.pem",
                    "insecure_skip_verify": True,
                    "alpn": ["h2"],
                },
                "proxy_protocol": "v2",
            },
            {"name": "shop", "endpoints": ["shop.internal:443"], "tls": {}},
            {"name": "db", "endpoints": ["db.internal:5432"], "proxy_protocol": "v1"},
        ],
        "resolve": {"api.internal": "100.64.0.7", "shop.internal": "fd00::7"},
    }
)


def _table() -> RouteTable:
    return compile_table(CONFIG, version=4)


def _edge() -> ListenerSpec:
    return _table().listeners[1]


def _sni() -> SniRoutes:
    sni = _edge().sni
    assert sni is not None
    return sni


def test_tls_listener_has_sni_routes_and_no_single_pool() -> None:
    edge, web = _edge(), _table().listeners[0]
    assert str(edge.key) == "tls://100.100.0.2:443"
    assert edge.pool is None
    assert web.sni is None
    with pytest.raises(ValueError, match="routes by SNI"):
        _ = edge.l4_pool


def test_routes_compiled_in_config_order_with_their_pools() -> None:
    table = _table()
    sni = table.listeners[1].sni
    assert sni is not None
    routes = sni.routes
    assert [(r.names, r.default, r.mode, r.pool.name) for r in routes] == [
        (("api.example.com", "*.api.example.com"), False, "terminate", "api"),
        (("shop.example.com",), False, "terminate", "shop"),  # normalised
        (("db.example.com",), False, "passthrough", "db"),
        ((), True, "passthrough", "api"),
    ]
    # A backend used by several routes is one PoolSpec, the table's own.
    assert routes[0].pool is routes[3].pool is table.pools["api"]


def test_indexes_point_at_the_compiled_routes() -> None:
    sni = _sni()
    assert sni.exact == {
        "api.example.com": sni.routes[0],
        "shop.example.com": sni.routes[1],
        "db.example.com": sni.routes[2],
    }
    assert sni.wildcard == {"api.example.com": sni.routes[0]}
    assert sni.default is sni.routes[3]


def test_listener_tls_options_are_copied() -> None:
    assert (_sni().hello_timeout, _sni().max_hello) == (2.0, 4096)


def test_tls_option_defaults() -> None:
    config = Config.model_validate(
        {
            "listeners": [
                {
                    "name": "t",
                    "port": 443,
                    "protocol": "tls",
                    "routes": [{"sni": ["a.b"], "backend": "b"}],
                }
            ],
            "backends": [{"name": "b", "endpoints": ["10.0.0.1:443"]}],
        }
    )
    sni = compile_table(config, version=1).listeners[0].sni
    assert sni is not None
    assert (sni.hello_timeout, sni.max_hello, sni.default) == (5.0, 16384, None)


def test_terminate_route_presents_its_own_certificate_and_alpn() -> None:
    route = _sni().routes[0]
    assert route.cert == CertRef("/api.crt", "/api.key")
    assert route.alpn == ("h2", "http/1.1")


def test_terminate_route_without_one_gets_the_listener_default_certificate() -> None:
    assert _sni().routes[1].cert == CertRef("/d.crt", "/d.key")


def test_passthrough_route_presents_no_certificate() -> None:
    # The listener has a default certificate; passthrough routes must not pick it up.
    passthrough = [r for r in _sni().routes if r.mode == "passthrough"]
    assert len(passthrough) == 2
    assert all(r.cert is None and r.alpn == () for r in passthrough)


def test_resolve_sets_the_endpoint_address_whatever_the_case_of_the_name() -> None:
    api = _table().pools["api"]
    assert api.endpoints == (
        EndpointAddr("API.internal.", 8443, "100.64.0.7"),
        EndpointAddr("10.0.0.2", 8443, None),
        EndpointAddr("other.internal", 8443, None),
    )
    assert [ep.connect_host for ep in api.endpoints] == [
        "100.64.0.7",
        "10.0.0.2",
        "other.internal",
    ]
    assert _table().pools["shop"].endpoints[0].address == "fd00::7"


def test_upstream_tls_and_proxy_protocol_are_copied() -> None:
    pools = _table().pools
    assert pools["api"].tls == UpstreamTlsSpec("api.internal", "/ca.pem", True, ("h2",))
    assert pools["api"].proxy_protocol == "v2"
    assert pools["shop"].tls == UpstreamTlsSpec(None, None, False, ())  # verify by default
    assert pools["shop"].proxy_protocol is None
    assert (pools["db"].tls, pools["db"].proxy_protocol) == (None, "v1")


def test_table_pools_include_route_backends() -> None:
    assert list(_table().pools) == ["plain", "api", "shop", "db"]  # not "unused"
    assert _edge().backend_label == "api|shop|db"


def test_to_json_lists_routes_and_upstream_tls() -> None:
    data = _table().to_json()
    edge = data["listeners"][1]
    assert (edge["protocol"], edge["backend"]) == ("tls", "api|shop|db")
    assert edge["routes"] == [
        {
            "sni": ["api.example.com", "*.api.example.com"],
            "default": False,
            "mode": "terminate",
            "backend": "api",
            "certificate": "/api.crt",
            "alpn": ["h2", "http/1.1"],
        },
        {
            "sni": ["shop.example.com"],
            "default": False,
            "mode": "terminate",
            "backend": "shop",
            "certificate": "/d.crt",
            "alpn": [],
        },
        {
            "sni": ["db.example.com"],
            "default": False,
            "mode": "passthrough",
            "backend": "db",
            "certificate": None,
            "alpn": [],
        },
        {
            "sni": [],
            "default": True,
            "mode": "passthrough",
            "backend": "api",
            "certificate": None,
            "alpn": [],
        },
    ]
    assert "routes" not in data["listeners"][0]
    backends = {b["name"]: b for b in data["backends"]}
    assert backends["api"]["tls"] == {
        "sni": "api.internal",
        "ca": "/ca.pem",
        "insecure_skip_verify": True,
        "alpn": ["h2"],
    }
    assert backends["api"]["proxy_protocol"] == "v2"
    assert backends["plain"]["tls"] is None
    assert backends["db"]["proxy_protocol"] == "v1"


def test_compiling_tls_listeners_is_pure() -> None:
    assert compile_table(CONFIG, version=4) == _table()


def test_unvalidated_dangling_route_backend_fails_loudly() -> None:
    config = Config.model_validate(
        {
            "listeners": [
                {
                    "name": "t",
                    "port": 443,
                    "protocol": "tls",
                    "routes": [{"default": True, "backend": "gone"}],
                }
            ]
        }
    )
    with pytest.raises(ValueError, match="unknown backend 'gone'"):
        compile_table(config, version=1)


def test_route_spec_is_frozen() -> None:
    route: TlsRouteSpec = _sni().routes[0]
    with pytest.raises(AttributeError):
        route.mode = "passthrough"  # type: ignore[misc]
