"""YAML files -> Config: the schema, and errors that carry file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshgate.config.files import dotted, load_file, parse_yaml
from meshgate.config.model import Config, Endpoint
from meshgate.errors import ConfigError, ConfigProblem

GOOD = """\
listeners:
  - name: web
    address: 100.100.0.2
    port: 80
    backend: web
  - name: dns
    address: "::"
    port: 53
    protocol: UDP
    backend: dns
    udp: {flow_idle_timeout: 30s, max_flows: 100}
backends:
  - name: web
    endpoints: ["web.default.svc.cluster.local:80", "[fd00::1]:8080", {host: b, port: 81}]
    balance: least_conn
    timeouts: {connect: 250ms, idle: 5m}
  - name: dns
    endpoints: ["100.100.0.1:53"]
admin: 127.0.0.1:9901
drain_timeout: 10s
"""


def _problems(text: str) -> tuple[ConfigProblem, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_yaml(text, "mesh.yaml")
    return caught.value.problems


def _one(text: str) -> ConfigProblem:
    [problem] = _problems(text)
    return problem


def test_valid_file_gives_the_config_it_describes() -> None:
    config = parse_yaml(GOOD, "mesh.yaml")
    web, dns = config.listeners
    assert (web.name, web.address, web.port, web.protocol, web.backend) == (
        "web",
        "100.100.0.2",
        80,
        "tcp",
        "web",
    )
    assert (dns.address, dns.protocol, dns.udp.flow_idle_timeout, dns.udp.max_flows) == (
        "::",
        "udp",
        30.0,
        100,
    )
    pool = config.backends[0]
    assert pool.endpoints == (
        Endpoint(host="web.default.svc.cluster.local", port=80),
        Endpoint(host="fd00::1", port=8080),
        Endpoint(host="b", port=81),
    )
    assert (pool.balance, pool.timeouts.connect, pool.timeouts.idle) == ("least_conn", 0.25, 300.0)
    assert pool.timeouts.half_closed == 60.0  # the default
    assert (config.admin, config.drain_timeout) == ("127.0.0.1:9901", 10.0)


def test_empty_mapping_is_an_empty_config() -> None:
    assert parse_yaml("{}\n", "mesh.yaml") == Config()


def test_unknown_key_names_key_field_object_and_line() -> None:
    problem = _one(
        "listeners:\n"
        "  - name: web\n"
        "    port: 80\n"
        "    prot: tcp\n"
        "    backend: web\n"
        "backends:\n"
        "  - {name: web, builtin: hello}\n"
    )
    assert problem == ConfigProblem(
        source="mesh.yaml",
        object="listeners[0] (web)",
        field="listeners[0].prot",
        reason=problem.reason,
        line=4,
    )
    assert problem.reason.startswith("unknown key 'prot'; did you mean")


def test_unknown_key_suggests_the_closest_known_key() -> None:
    problem = _one("backends:\n  - name: b\n    builtin: echo\n    timeouts: {conect: 1s}\n")
    assert problem.field == "backends[0].timeouts.conect"
    assert problem.reason == "unknown key 'conect'; did you mean 'connect'?"
    assert problem.line == 4


def test_unknown_top_level_key_lists_the_allowed_ones() -> None:
    problem = _one("listeners: []\nxyzzy: 1\n")
    assert problem.object == ""
    assert problem.field == "xyzzy"
    assert problem.reason == (
        "unknown key 'xyzzy'; expected one of: "
        "listeners, backends, admin, drain_timeout, resolve, mesh, ingress, limits"
    )
    assert problem.line == 2


def test_wrong_type_names_the_value_and_line() -> None:
    problem = _one(
        "backends:\n  - name: b\n    builtin: echo\n"
        "listeners:\n  - name: web\n    backend: b\n\n    port: eighty\n"
    )
    assert problem.field == "listeners[0].port"
    assert problem.line == 8
    assert "valid integer" in problem.reason
    assert problem.reason.endswith("got 'eighty'")


def test_out_of_range_port_in_a_file() -> None:
    problem = _one("listeners:\n  - {name: web, port: 99999, backend: b}\n")
    assert (problem.field, problem.line) == ("listeners[0].port", 2)
    assert "65535" in problem.reason


def test_missing_key_points_at_the_item_that_lacks_it() -> None:
    problem = _one(
        "backends:\n  - name: b\n    builtin: echo\nlisteners:\n  - name: web\n    backend: b\n"
    )
    assert (problem.field, problem.reason, problem.line) == (
        "listeners[0].port",
        "missing required key 'port'",
        5,
    )


def test_our_validator_messages_lose_the_pydantic_prefix() -> None:
    problem = _one("backends:\n  - name: b\n    endpoints:\n      - web:80\n      - nonsense\n")
    assert (problem.field, problem.line) == ("backends[0].endpoints[1]", 5)
    assert problem.reason == "expected host:port, got 'nonsense'"


def test_bad_name_explains_what_a_name_may_contain() -> None:
    problem = _one("backends:\n  - name: my backend\n    builtin: echo\n")
    assert problem.field == "backends[0].name"
    assert problem.reason.startswith("'my backend' is not a valid name")


def test_list_expected_says_list_not_tuple() -> None:
    problem = _one("listeners: 5\n")
    assert problem.reason == "input should be a list, got 5"


def test_every_problem_in_a_file_is_reported() -> None:
    problems = _problems(
        "listeners:\n"
        "  - {name: a, port: 0, backend: x}\n"
        "  - {name: b, port: 1, backend: x, colour: red}\n"
        "backends:\n"
        "  - {name: x}\n"
    )
    assert [(p.field, p.line) for p in problems] == [
        ("listeners[0].port", 2),
        ("listeners[1].colour", 3),
        ("backends[0]", 5),
    ]
    assert problems[2].reason == "a backend needs 'endpoints' or 'builtin'"


def test_repeated_yaml_key_is_an_error_not_silently_overwritten() -> None:
    problem = _one(
        "listeners:\n  - name: a\n    port: 80\n    port: 81\n    backend: x\n"
        "backends:\n  - {name: x, builtin: echo}\n"
    )
    assert (problem.object, problem.field, problem.line) == (
        "listeners[0] (a)",
        "listeners[0].port",
        4,
    )
    assert problem.reason.startswith("duplicate key 'port'")


def test_cross_reference_errors_carry_lines() -> None:
    problems = _problems(
        "listeners:\n"
        "  - name: web\n"
        "    port: 80\n"
        "    backend: wbe\n"
        "  - name: web\n"
        "    address: 0.0.0.0\n"
        "    port: 80\n"
        "    backend: web\n"
        "backends:\n"
        "  - {name: web, builtin: hello}\n"
    )
    assert [(p.field, p.line) for p in problems] == [
        ("listeners[1].name", 5),
        ("listeners[1].port", 7),
        ("listeners[0].backend", 4),
    ]
    assert problems[1].reason.startswith("duplicate listener: tcp port 80 on 0.0.0.0")
    assert problems[2].reason == "unknown backend 'wbe'; known backends: web"


def test_udp_listener_cannot_use_a_builtin_backend() -> None:
    problem = _one(
        "listeners:\n  - {name: d, port: 53, protocol: udp, backend: h}\n"
        "backends:\n  - {name: h, builtin: hello}\n"
    )
    assert (problem.field, problem.line) == ("listeners[0].backend", 2)
    assert "TCP only" in problem.reason


def test_yaml_anchors_and_merge_keys_work() -> None:
    config = parse_yaml(
        "backends:\n"
        "  - {name: a, builtin: echo, timeouts: &t {connect: 1s}}\n"
        "  - {name: b, builtin: echo, timeouts: {<<: *t, idle: 2s}}\n",
        "mesh.yaml",
    )
    assert config.backends[1].timeouts.connect == 1.0
    assert config.backends[1].timeouts.idle == 2.0


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file_is_an_error(text: str) -> None:
    problem = _one(text)
    assert problem.reason.startswith("file is empty")


@pytest.mark.parametrize(
    ("text", "kind", "line"),
    [("- a\n- b\n", "a list", 1), ("~\n", "nothing (null)", 1), ("\n\nhello\n", "a str", 3)],
)
def test_top_level_must_be_a_mapping(text: str, kind: str, line: int) -> None:
    problem = _one(text)
    assert problem.reason.startswith("expected a mapping")
    assert kind in problem.reason
    assert problem.line == line


def test_yaml_syntax_error_gives_its_line() -> None:
    problem = _one("listeners:\n  - name: web\n    port: [80\n")
    assert problem.reason.startswith("invalid YAML:")
    assert problem.line == 4


def test_several_documents_are_rejected() -> None:
    problem = _one("listeners: []\n---\nbackends: []\n")
    assert problem.reason.startswith("invalid YAML: but found another document")
    assert problem.line == 2


def test_dotted_paths() -> None:
    assert dotted(()) == ""
    assert dotted(("listeners", 0, "udp", "max_flows")) == "listeners[0].udp.max_flows"
    assert dotted(("backends", 1, "endpoints", 2)) == "backends[1].endpoints[2]"


# --- files on disk ------------------------------------------------------------


def test_load_file_reads_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(GOOD, encoding="utf-8")
    assert load_file(path) == parse_yaml(GOOD, str(path))
    assert load_file(str(path)) == load_file(path)


def test_load_file_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert len(load_file(path).listeners) == 2


def test_load_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listeners:\n  - {name: a, port: 80, backend: nowhere}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    assert str(caught.value) == (
        f"{path}:2: listeners[0] (a): field 'listeners[0].backend': "
        "unknown backend 'nowhere'; known backends: none are defined"
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    assert caught.value.problems == (ConfigProblem(str(path), "", "", "file not found"),)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_file(tmp_path)
    assert caught.value.problems[0].reason == "is a directory, not a YAML file"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"listeners: []\n# caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    assert caught.value.problems[0].reason == "not UTF-8 text (byte 19)"
