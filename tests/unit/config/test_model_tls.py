"""The tls schema in files: listeners with SNI routes, upstream TLS, `resolve`.

Everything goes through `parse_yaml`, so each error is checked with the field
and line a user would be pointed at.
"""

from __future__ import annotations

import pytest

from meshgate.config.files import parse_yaml
from meshgate.config.merge import merge
from meshgate.config.model import (
    Certificate,
    Config,
    UpstreamTls,
    check_listen,
    check_server_name,
)
from meshgate.errors import ConfigError, ConfigProblem

BACKENDS = """\
backends:
  - {name: api, endpoints: ["10.0.0.1:443"]}
  - {name: web, endpoints: ["10.0.0.2:443"]}
  - {name: hi, builtin: hello}
"""

GOOD = (
    """\
listeners:
  - name: edge
    port: 443
    protocol: TLS
    tls:
      hello_timeout: 2s
      max_hello: 4096
      default_certificate: {cert: /d.crt, key: /d.key}
    routes:
      - sni: [API.Example.com., "*.example.com"]
        mode: terminate
        alpn: [h2]
        backend: api
      - sni: [web.example.com]
        mode: terminate
        certificate: {cert: /w.crt, key: /w.key}
        backend: web
      - {default: true, backend: api}
"""
    + BACKENDS
    + """\
  - name: up
    endpoints: ["api.internal:8443"]
    tls: {sni: API.internal, ca: /ca.pem, alpn: [h2, http/1.1]}
    proxy_protocol: v2
resolve:
  API.Internal.: 100.64.0.7
  other.internal: "fd00:0::7"
"""
)


def _problems(text: str) -> tuple[ConfigProblem, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_yaml(text, "mesh.yaml")
    return caught.value.problems


def _one(text: str) -> ConfigProblem:
    [problem] = _problems(text)
    return problem


def _tls(*route_lines: str, extra: str = "") -> str:
    """A file with one tls listener `t` on 443 whose routes are `route_lines`."""
    routes = "".join(f"      - {line}\n" for line in route_lines)
    return (
        "listeners:\n  - name: t\n    port: 443\n    protocol: tls\n"
        + extra
        + "    routes:\n"
        + routes
        + BACKENDS
    )


# --- what a good file gives ---------------------------------------------------


def test_valid_tls_file_gives_the_config_it_describes() -> None:
    config = parse_yaml(GOOD, "mesh.yaml")
    [edge] = config.listeners
    assert (edge.protocol, edge.backend, edge.backends) == ("tls", None, ("api", "web"))
    assert (edge.tls.hello_timeout, edge.tls.max_hello) == (2.0, 4096)
    assert edge.tls.default_certificate == Certificate(cert="/d.crt", key="/d.key")
    first, second, default = edge.routes
    assert first.sni == ("api.example.com", "*.example.com")  # folded, root dot dropped
    assert (first.mode, first.certificate, first.alpn, first.default) == (
        "terminate",
        None,
        ("h2",),
        False,
    )
    assert second.certificate == Certificate(cert="/w.crt", key="/w.key")
    assert (default.sni, default.default, default.mode) == ((), True, "passthrough")
    up = config.backends[-1]
    assert up.tls == UpstreamTls(sni="api.internal", ca="/ca.pem", alpn=("h2", "http/1.1"))
    assert up.tls.insecure_skip_verify is False  # verification stays on unless turned off
    assert up.proxy_protocol == "v2"
    assert config.resolve == {"api.internal": "100.64.0.7", "other.internal": "fd00::7"}


# --- listener shape -----------------------------------------------------------


def test_tls_listener_with_a_backend_is_an_error() -> None:
    problem = _one(_tls("{sni: [a.com], backend: api}", extra="    backend: api\n"))
    assert (problem.object, problem.field, problem.line) == ("listeners[0] (t)", "listeners[0]", 2)
    assert problem.reason == "a tls listener takes 'routes' (SNI routes), not 'backend'"


def test_tls_listener_without_routes_is_an_error() -> None:
    problem = _one("listeners:\n  - {name: t, port: 443, protocol: tls}\n" + BACKENDS)
    assert problem.field == "listeners[0]"
    assert problem.reason == "a tls listener takes 'routes' (SNI routes), not 'backend'"


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_tcp_or_udp_listener_with_routes_is_an_error(protocol: str) -> None:
    problem = _one(
        f"listeners:\n  - name: l\n    port: 443\n    protocol: {protocol}\n    backend: api\n"
        "    routes:\n      - {sni: [a.com], backend: api}\n" + BACKENDS
    )
    assert (problem.field, problem.line) == ("listeners[0]", 2)
    assert problem.reason == f"a {protocol} listener takes 'backend', not 'routes'"


def test_route_needs_sni_or_default() -> None:
    problem = _one(_tls("{sni: [a.com], backend: api}", "{backend: web}"))
    assert (problem.field, problem.line) == ("listeners[0].routes[1]", 7)
    assert problem.reason == "a route needs 'sni' names or 'default: true'"


def test_only_one_default_route() -> None:
    problem = _one(_tls("{default: true, backend: api}", "{default: true, backend: web}"))
    assert (problem.field, problem.line) == ("listeners[0]", 2)
    assert problem.reason == "only one route may be the default"


def test_terminate_needs_a_route_or_listener_certificate() -> None:
    problem = _one(_tls("{sni: [a.com], mode: terminate, backend: web}"))
    assert problem.field == "listeners[0]"
    assert problem.reason == (
        "route to 'web' terminates TLS but has no certificate "
        "and the listener has no tls.default_certificate"
    )


def test_terminate_with_only_the_listener_default_certificate_is_fine() -> None:
    extra = "    tls: {default_certificate: {cert: /c, key: /k}}\n"
    parse_yaml(_tls("{sni: [a.com], mode: terminate, backend: web}", extra=extra), "mesh.yaml")


@pytest.mark.parametrize(
    "route",
    [
        "{sni: [a.com], certificate: {cert: /c, key: /k}, backend: web}",
        "{sni: [a.com], mode: passthrough, alpn: [h2], backend: web}",
    ],
)
def test_passthrough_takes_no_certificate_or_alpn(route: str) -> None:
    problem = _one(_tls(route))
    assert (problem.field, problem.line) == ("listeners[0].routes[0]", 6)
    assert problem.reason == "a passthrough route takes no 'certificate' or 'alpn'"


def test_unknown_tls_mode() -> None:
    problem = _one(_tls("{sni: [a.com], mode: reencrypt, backend: web}"))
    assert problem.field == "listeners[0].routes[0].mode"
    assert "'passthrough' or 'terminate'" in problem.reason


def test_certificate_needs_cert_and_key() -> None:
    problem = _one(_tls("{sni: [a.com], mode: terminate, certificate: {cert: /c}, backend: web}"))
    assert problem.field == "listeners[0].routes[0].certificate.key"
    assert problem.reason == "missing required key 'key'"


# --- server names -------------------------------------------------------------

LONG = ".".join(["a" * 63] * 3) + "." + "b" * 62  # 254 characters, each label fine


@pytest.mark.parametrize("name", ["*.*.foo", "foo..com", "-a.com", "a-.com", "*", "a*.com", LONG])
def test_bad_server_name_names_the_field(name: str) -> None:
    problem = _one(_tls(f"{{sni: [ok.com, '{name}'], backend: api}}"))
    assert (problem.object, problem.field, problem.line) == (
        "listeners[0] (t)",
        "listeners[0].routes[0].sni[1]",
        6,
    )
    assert problem.reason.startswith(f"not a server name: {name!r}")


def test_upstream_sni_is_checked_too() -> None:
    problem = _one("backends:\n  - name: b\n    endpoints: [x:1]\n    tls: {sni: 'foo..com'}\n")
    assert (problem.field, problem.line) == ("backends[0].tls.sni", 4)
    assert problem.reason.startswith("not a server name: 'foo..com'")


@pytest.mark.parametrize(
    ("name", "normal"),
    [
        ("Foo.COM.", "foo.com"),
        ("*.Foo.com", "*.foo.com"),
        ("*.com", "*.com"),  # one label after the star is enough
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        (LONG[1:], LONG[1:]),  # 253 characters: the longest name
    ],
)
def test_good_server_names_are_normalised(name: str, normal: str) -> None:
    assert check_server_name(name) == normal


def test_label_longer_than_63_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a server name"):
        check_server_name("a" * 64 + ".com")


# --- cross references (merge.validate) ----------------------------------------


def test_unknown_route_backend_is_named_with_its_path_and_line() -> None:
    problem = _one(_tls("{sni: [a.com], backend: api}", "{sni: [b.com], backend: nope}"))
    assert problem == ConfigProblem(
        "mesh.yaml",
        "listeners[0] (t)",
        "listeners[0].routes[1].backend",
        "unknown backend 'nope'; known backends: api, hi, web",
        7,
    )


def test_builtin_backend_behind_a_tls_route_is_rejected() -> None:
    problem = _one(_tls("{sni: [a.com], backend: api}", "{default: true, backend: hi}"))
    assert (problem.field, problem.line) == ("listeners[0].routes[1].backend", 7)
    assert problem.reason == (
        "backend 'hi' is the builtin 'hello', which answers plain TCP only; "
        "a tls listener needs a backend with endpoints"
    )


def test_tcp_and_tls_listener_on_one_port_is_a_duplicate_listener() -> None:
    problem = _one(
        "listeners:\n"
        "  - {name: plain, address: 0.0.0.0, port: 443, backend: hi}\n"
        "  - name: t\n"
        "    port: 443\n"
        "    protocol: tls\n"
        "    routes: [{default: true, backend: api}]\n" + BACKENDS
    )
    assert (problem.object, problem.field, problem.line) == (
        "listeners[1] (t)",
        "listeners[1].port",
        4,
    )
    assert problem.reason == (
        "duplicate listener: tls port 443 on 127.0.0.1 overlaps listeners[0] (plain) on 0.0.0.0"
    )


def test_udp_and_tls_listener_on_one_port_are_fine() -> None:
    config = parse_yaml(
        "listeners:\n"
        "  - {name: quic, port: 443, protocol: udp, backend: api}\n"
        "  - {name: t, port: 443, protocol: tls, routes: [{default: true, backend: api}]}\n"
        + BACKENDS,
        "mesh.yaml",
    )
    assert [listener.protocol for listener in config.listeners] == ["udp", "tls"]


def test_tcp_and_tls_listener_on_one_port_in_two_sources_clash() -> None:
    tcp = parse_yaml("listeners:\n  - {name: a, port: 443, backend: hi}\n" + BACKENDS, "a.yaml")
    tls = parse_yaml(_tls("{default: true, backend: api}"), "b.yaml")
    with pytest.raises(ConfigError) as caught:
        merge([("a.yaml", tcp), ("b.yaml", tls)])
    [problem] = caught.value.problems
    assert (problem.source, problem.field) == ("b.yaml", "listeners[0].port")
    assert problem.reason.startswith("duplicate listener: tls port 443")
    assert "a.yaml listeners[0] (a)" in problem.reason


# --- resolve --------------------------------------------------------------------


@pytest.mark.parametrize("address", ["1.2.3", "300.1.1.1", "api.internal", "fd00::1::2"])
def test_resolve_to_a_bad_ip_is_rejected(address: str) -> None:
    problem = _one(f"resolve:\n  ok.internal: 10.0.0.1\n  api.internal: '{address}'\n")
    assert (problem.field, problem.line) == ("resolve.api.internal", 3)
    assert repr(address) in problem.reason


def test_resolve_of_a_bad_name_is_rejected() -> None:
    problem = _one("resolve:\n  foo..com: 10.0.0.1\n")
    assert problem.field.startswith("resolve.foo..com")
    assert problem.line == 2
    assert problem.reason.startswith("not a server name: 'foo..com'")


def test_resolve_does_not_accept_a_wildcard_it_would_ignore() -> None:
    problem = _one("resolve:\n  '*.internal': 10.0.0.1\n")
    assert problem.field.startswith("resolve")
    assert "wildcard" in problem.reason


def _resolving(name: str, address: str) -> Config:
    return Config.model_validate({"resolve": {name: address}})


def test_two_sources_resolving_one_name_differently_name_both() -> None:
    parts = [
        ("a.yaml", _resolving("API.internal.", "10.0.0.1")),
        ("b.yaml", _resolving("api.internal", "10.0.0.1")),  # the same: fine
        ("c.yaml", _resolving("api.internal", "10.0.0.2")),
    ]
    with pytest.raises(ConfigError) as caught:
        merge(parts)
    assert caught.value.problems == (
        ConfigProblem(
            "c.yaml",
            "resolve",
            "resolve.api.internal",
            "'api.internal' resolves to 10.0.0.2 here but to 10.0.0.1 in a.yaml",
        ),
    )


def test_sources_agreeing_on_resolve_merge() -> None:
    merged = merge(
        [
            ("a.yaml", _resolving("api.internal", "fd00::7")),
            ("b.yaml", _resolving("Api.Internal", "fd00:0:0::7")),  # same name, same address
            ("c.yaml", _resolving("db.internal", "10.0.0.3")),
        ]
    )
    assert merged.resolve == {"api.internal": "fd00::7", "db.internal": "10.0.0.3"}


@pytest.mark.parametrize("name", ["10.0.0.1", "100.100.0.300"])
def test_ip_literals_are_not_server_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a server name"):
        check_server_name(name)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("off", "off"),
        ("OFF", "off"),
        ("auto:53", "auto:53"),
        ("AUTO:5353", "auto:5353"),
        ("100.100.0.2:53", "100.100.0.2:53"),
        ("[fd00::2]:53", "[fd00::2]:53"),
    ],
)
def test_dns_listen_forms(given: str, expected: str) -> None:
    assert check_listen(given) == expected
