"""nexd-style rules: parsing, printing back, errors naming the part, and rules -> Config."""

from __future__ import annotations

from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgate.config.model import Endpoint
from meshgate.config.rules import Direction, Rule, rules_to_config
from meshgate.errors import ConfigError, ConfigProblem

# --- parsing -----------------------------------------------------------------


def test_parse_ingress_rule_from_the_nexd_docs() -> None:
    rule = Rule.parse("tcp:80:nginx-service.nexd-proxy-demo1.svc.cluster.local:80", "ingress")
    assert rule == Rule(
        "ingress", "tcp", 80, "nginx-service.nexd-proxy-demo1.svc.cluster.local", 80
    )


def test_parse_egress_rule_from_the_nexd_docs() -> None:
    assert Rule.parse("tcp:80:100.100.0.1:80", "egress") == Rule(
        "egress", "tcp", 80, "100.100.0.1", 80
    )


def test_protocol_is_case_insensitive_and_stored_lowercase() -> None:
    assert Rule.parse("UdP:53:100.100.0.1:53", "egress").protocol == "udp"


def test_ipv6_host_is_bracketed_in_text_and_stored_bare_and_normalised() -> None:
    rule = Rule.parse("tcp:443:[FD00:0::0001]:8443", "ingress")
    assert rule.host == "fd00::1"
    assert rule.port == 8443
    assert str(rule) == "tcp:443:[fd00::1]:8443"


def test_surrounding_whitespace_and_leading_zeros_are_tolerated() -> None:
    rule = Rule.parse("  TCP:0080:web:08080\n", "ingress")
    assert (rule.listen_port, rule.port) == (80, 8080)
    assert str(rule) == "tcp:80:web:8080"


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("tcp:99999:web:80", "listen_port", "port 99999 out of range 1-65535"),
        ("tcp:0:web:80", "listen_port", "port 0 out of range 1-65535"),
        ("tcp:80:web:65536", "port", "port 65536 out of range 1-65535"),
        ("tcp:80:web:" + "9" * 5000, "port", "out of range 1-65535"),
        ("tcp:http:web:80", "listen_port", "port 'http' is not a number"),
        ("tcp:-1:web:80", "listen_port", "is not a number"),
        ("tcp:²:web:80", "listen_port", "is not a number"),
        ("tcp:80:web:", "port", "port is missing"),
        ("sctp:80:web:80", "protocol", "unknown protocol 'sctp'; expected one of: tcp, udp"),
        (":80:web:80", "protocol", "unknown protocol ''"),
        ("tcp:80:web server:80", "host", "not an IP address or DNS name"),
        ("tcp:80:100.100.0.300:80", "host", "not an IP address or DNS name"),
        ("tcp:80::80", "host", "host is missing"),
        ("tcp:80:fd00::1:80", "host", "IPv6 addresses need brackets: [fd00::1]:80"),
        ("tcp:80:[web]:80", "host", "brackets are only for IPv6 addresses"),
        ("tcp:80:[10.0.0.1]:80", "host", "brackets are only for IPv6 addresses"),
        ("tcp:80:[fd00::1:80", "host", "missing ']'"),
        ("tcp:80:[fd00::1]", "rule", "expected PROTO:LISTEN_PORT:HOST:PORT"),
        ("tcp:80:web", "rule", "expected PROTO:LISTEN_PORT:HOST:PORT"),
        ("tcp:80", "rule", "got 2 part(s)"),
        ("tcp:80:web:80:90", "rule", "got 5 parts"),
        ("", "rule", "empty rule"),
    ],
)
def test_invalid_rule_names_the_field(text: str, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Rule.parse(text, "ingress")
    [problem] = caught.value.problems
    assert problem.source == "--ingress"
    assert problem.object == text
    assert problem.field == field
    assert reason in problem.reason


def test_error_source_is_the_flag_of_the_direction() -> None:
    with pytest.raises(ConfigError) as caught:
        Rule.parse("tcp:99999:web:80", "egress")
    assert str(caught.value) == (
        "--egress: tcp:99999:web:80: field 'listen_port': port 99999 out of range 1-65535"
    )


# --- round trip ---------------------------------------------------------------

_label = st.from_regex(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,12}[A-Za-z0-9_])?", fullmatch=True)
_dns_names = (
    st.lists(_label, min_size=1, max_size=4)
    .filter(lambda labels: not labels[-1].isdigit())
    .map(".".join)
)
_hosts = st.one_of(
    _dns_names,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
_ports = st.integers(min_value=1, max_value=65535)
_directions: st.SearchStrategy[Direction] = st.sampled_from(get_args(Direction))

_rules = st.builds(
    Rule,
    direction=_directions,
    protocol=st.sampled_from(["tcp", "udp"]),
    listen_port=_ports,
    host=_hosts,
    port=_ports,
)


@given(_rules)
def test_parse_of_str_is_identity(rule: Rule) -> None:
    assert Rule.parse(str(rule), rule.direction) == rule


def _any_case(word: str) -> st.SearchStrategy[str]:
    return st.tuples(*(st.sampled_from([c.lower(), c.upper()]) for c in word)).map("".join)


@given(
    direction=_directions,
    protocol=st.sampled_from(["tcp", "udp"]).flatmap(_any_case),
    listen_port=_ports,
    host=_hosts,
    port=_ports,
    zeros=st.integers(min_value=0, max_value=3),
)
def test_any_spelling_parses_to_the_canonical_rule(
    *, direction: Direction, protocol: str, listen_port: int, host: str, port: int, zeros: int
) -> None:
    written_host = f"[{host.upper()}]" if ":" in host else host
    text = f"{protocol}:{'0' * zeros}{listen_port}:{written_host}:{port}"
    rule = Rule.parse(text, direction)
    assert rule.protocol == protocol.lower()
    assert (rule.listen_port, rule.port) == (listen_port, port)
    assert rule.host == host
    assert Rule.parse(str(rule), direction) == rule


# --- rules -> Config ----------------------------------------------------------


def test_rules_become_listeners_and_backends_named_by_direction_protocol_port() -> None:
    config = rules_to_config(
        ["tcp:80:web.default.svc.cluster.local:80"],
        ["udp:53:100.100.0.1:53"],
        bind="100.100.0.2",
        cluster_bind="10.0.0.5",
    )
    ingress, egress = config.listeners
    assert (ingress.name, ingress.address, ingress.port, ingress.protocol, ingress.backend) == (
        "ingress-tcp-80",
        "100.100.0.2",
        80,
        "tcp",
        "ingress-tcp-80",
    )
    assert (egress.name, egress.address, egress.port, egress.protocol, egress.backend) == (
        "egress-udp-53",
        "10.0.0.5",
        53,
        "udp",
        "egress-udp-53",
    )
    assert [b.name for b in config.backends] == ["ingress-tcp-80", "egress-udp-53"]
    assert config.backends[1].endpoints == (Endpoint(host="100.100.0.1", port=53),)


def test_default_binds_are_loopback_for_ingress_and_all_interfaces_for_egress() -> None:
    config = rules_to_config(["tcp:80:web:80"], ["tcp:81:100.100.0.1:80"])
    assert [listener.address for listener in config.listeners] == ["127.0.0.1", "0.0.0.0"]


def test_rules_on_one_port_share_one_backend_with_endpoints_in_order() -> None:
    config = rules_to_config(
        ["tcp:80:a:8080", "udp:80:dns:53", "TCP:80:[fd00::2]:8080", "tcp:80:c:9090"], []
    )
    assert [listener.name for listener in config.listeners] == ["ingress-tcp-80", "ingress-udp-80"]
    pool = config.backends[0]
    assert [str(ep) for ep in pool.endpoints] == ["a:8080", "[fd00::2]:8080", "c:9090"]
    assert pool.balance == "round_robin"


def test_repeated_rule_adds_its_target_once_without_error() -> None:
    config = rules_to_config(["tcp:80:a:80", "tcp:80:b:80", "TCP:080:a:80"], [])
    assert [str(ep) for ep in config.backends[0].endpoints] == ["a:80", "b:80"]


def test_no_rules_give_an_empty_config() -> None:
    config = rules_to_config([], [])
    assert config.listeners == ()
    assert config.backends == ()


def test_every_bad_rule_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        rules_to_config(
            ["tcp:99999:web:80", "tcp:80:web:80", "icmp:1:web:1"],
            ["tcp:80:bad host:80"],
        )
    assert [(p.source, p.object, p.field) for p in caught.value.problems] == [
        ("--ingress", "tcp:99999:web:80", "listen_port"),
        ("--ingress", "icmp:1:web:1", "protocol"),
        ("--egress", "tcp:80:bad host:80", "host"),
    ]


def test_bad_bind_address_is_reported_with_the_rules() -> None:
    with pytest.raises(ConfigError) as caught:
        rules_to_config(["tcp:80:web:80"], ["tcp:0:x:1"], bind="a/b", cluster_bind="::")
    assert caught.value.problems == (
        ConfigProblem(
            "--bind",
            "a/b",
            "bind",
            "listen address must be an IP address, an interface name or 'auto', got 'a/b'",
        ),
        ConfigProblem("--egress", "tcp:0:x:1", "listen_port", "port 0 out of range 1-65535"),
    )


@pytest.mark.parametrize(
    ("bind", "cluster_bind"),
    [("127.0.0.1", "0.0.0.0"), ("0.0.0.0", "10.0.0.1"), ("10.0.0.1", "10.0.0.1"), ("::", "::1")],
)
def test_ingress_and_egress_on_one_socket_is_a_duplicate_listener(
    bind: str, cluster_bind: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        rules_to_config(
            ["tcp:80:web:80", "tcp:80:web2:80"],
            ["tcp:80:100.100.0.1:80"],
            bind=bind,
            cluster_bind=cluster_bind,
        )
    [problem] = caught.value.problems
    assert problem.source == "--egress"
    assert problem.object == "tcp:80:100.100.0.1:80"
    assert problem.field == "listen_port"
    assert problem.reason.startswith("duplicate listener: tcp port 80")
    assert "--ingress tcp:80:web:80" in problem.reason


@pytest.mark.parametrize(
    ("ingress", "egress", "bind", "cluster_bind"),
    [
        ("tcp:80:web:80", "udp:80:x:80", "127.0.0.1", "0.0.0.0"),  # other protocol
        ("tcp:80:web:80", "tcp:81:x:80", "127.0.0.1", "0.0.0.0"),  # other port
        ("tcp:80:web:80", "tcp:80:x:80", "100.100.0.2", "10.0.0.1"),  # other address
        ("tcp:80:web:80", "tcp:80:x:80", "100.100.0.2", "::"),  # other IP family
    ],
)
def test_ingress_and_egress_on_distinct_sockets_are_fine(
    ingress: str, egress: str, bind: str, cluster_bind: str
) -> None:
    config = rules_to_config([ingress], [egress], bind=bind, cluster_bind=cluster_bind)
    assert len(config.listeners) == 2


def test_bind_auto_is_kept_for_the_runtime_to_detect() -> None:
    config = rules_to_config(["tcp:80:web:80"], [], bind="AUTO")
    assert config.listeners[0].address == "auto"


def test_bind_an_interface_name_means_auto_on_that_interface_only() -> None:
    config = rules_to_config(["tcp:80:web:80"], [], bind="wg7")
    assert config.listeners[0].address == "auto"
    assert config.mesh is not None
    assert config.mesh.bind_interface == "wg7"


def test_cluster_bind_takes_no_interface_name() -> None:
    with pytest.raises(ConfigError) as caught:
        rules_to_config([], ["tcp:80:web:80"], cluster_bind="eth0")
    assert caught.value.problems[0].field == "cluster_bind"
