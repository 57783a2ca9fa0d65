"""Cross-reference validation of one Config, and merging Configs from several sources."""

from __future__ import annotations

from typing import Any

import pytest

from meshgate.config.merge import listeners_overlap, merge, validate
from meshgate.config.model import Config, Listener, Protocol
from meshgate.errors import ConfigError, ConfigProblem


def _listener(
    name: str, port: int = 80, address: str = "127.0.0.1", **extra: Any
) -> dict[str, Any]:
    return {"name": name, "port": port, "address": address, "backend": "b", **extra}


def _config(
    *listeners: dict[str, Any], backends: list[dict[str, Any]] | None = None, **top: Any
) -> Config:
    if backends is None:
        backends = [{"name": "b", "endpoints": ["10.0.0.1:80"]}]
    return Config.model_validate({"listeners": list(listeners), "backends": backends, **top})


def _problems(config: Config, lines: dict[str, int] | None = None) -> tuple[ConfigProblem, ...]:
    with pytest.raises(ConfigError) as caught:
        validate(config, "mesh.yaml", lines)
    return caught.value.problems


# --- listeners_overlap --------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        (("tcp", 80, "127.0.0.1"), ("tcp", 80, "127.0.0.1"), True),
        (("tcp", 80, "0.0.0.0"), ("tcp", 80, "100.100.0.2"), True),
        (("tcp", 80, "10.0.0.1"), ("tcp", 80, "0.0.0.0"), True),
        (("udp", 53, "::"), ("udp", 53, "fd00::1"), True),
        (("tcp", 80, "::1"), ("tcp", 80, "0:0::1"), True),
        (("tcp", 80, "127.0.0.1"), ("tcp", 80, "127.0.0.2"), False),
        (("tcp", 80, "0.0.0.0"), ("tcp", 80, "::"), False),
        (("tcp", 80, "0.0.0.0"), ("udp", 80, "0.0.0.0"), False),
        (("tcp", 80, "0.0.0.0"), ("tcp", 81, "0.0.0.0"), False),
    ],
)
def test_listeners_overlap(
    a: tuple[Protocol, int, str], b: tuple[Protocol, int, str], overlap: bool
) -> None:
    first, second = (
        Listener(name="x", protocol=proto, port=port, address=addr, backend="b")
        for proto, port, addr in (a, b)
    )
    assert listeners_overlap(first, second) is overlap
    assert listeners_overlap(second, first) is overlap


# --- validate -----------------------------------------------------------------


def test_valid_config_passes() -> None:
    validate(_config(_listener("a"), _listener("b", port=81)), "mesh.yaml")


def test_duplicate_listener_name() -> None:
    [problem] = _problems(_config(_listener("web"), _listener("web", port=81)))
    assert problem == ConfigProblem(
        "mesh.yaml",
        "listeners[1] (web)",
        "listeners[1].name",
        "duplicate listener name 'web' (also listeners[0])",
    )


def test_duplicate_backend_name() -> None:
    backend = {"name": "b", "builtin": "echo"}
    [problem] = _problems(_config(_listener("a"), backends=[backend, backend]))
    assert (problem.object, problem.field) == ("backends[1] (b)", "backends[1].name")
    assert problem.reason == "duplicate backend name 'b' (also backends[0])"


def test_overlapping_listeners_are_a_duplicate_listener_naming_both() -> None:
    [problem] = _problems(_config(_listener("a", address="0.0.0.0"), _listener("b")))
    assert (problem.object, problem.field) == ("listeners[1] (b)", "listeners[1].port")
    assert problem.reason == (
        "duplicate listener: tcp port 80 on 127.0.0.1 overlaps listeners[0] (a) on 0.0.0.0"
    )


def test_a_listener_clashing_with_several_is_reported_once() -> None:
    problems = _problems(_config(_listener("a"), _listener("b"), _listener("c")))
    assert [p.field for p in problems] == ["listeners[1].port", "listeners[2].port"]


def test_unknown_backend_names_the_known_ones() -> None:
    backends = [{"name": "zeta", "builtin": "echo"}, {"name": "alpha", "builtin": "echo"}]
    [problem] = _problems(_config(_listener("a"), backends=backends))
    assert problem.field == "listeners[0].backend"
    assert problem.reason == "unknown backend 'b'; known backends: alpha, zeta"


def test_udp_listener_with_builtin_backend() -> None:
    config = _config(_listener("d", protocol="udp"), backends=[{"name": "b", "builtin": "hello"}])
    [problem] = _problems(config)
    assert problem.field == "listeners[0].backend"
    assert "builtin 'hello', which answers plain TCP only" in problem.reason


def test_all_problems_are_collected() -> None:
    config = _config(
        _listener("a", backend="x"), _listener("a"), _listener("c", port=81, protocol="udp")
    )
    problems = _problems(config)
    assert [p.field for p in problems] == [
        "listeners[1].name",
        "listeners[1].port",
        "listeners[0].backend",
    ]


def test_lines_come_from_the_field_or_its_nearest_parent() -> None:
    lines = {"listeners[1]": 7, "listeners[1].port": 9, "listeners[0]": 2}
    problems = _problems(_config(_listener("a", backend="x"), _listener("a")), lines)
    assert [(p.field, p.line) for p in problems] == [
        ("listeners[1].name", 7),  # the item's line: no line for the key itself
        ("listeners[1].port", 9),
        ("listeners[0].backend", 2),
    ]


# --- merge --------------------------------------------------------------------


def test_merge_concatenates_in_source_order() -> None:
    one = _config(_listener("a"), backends=[{"name": "b", "builtin": "echo"}])
    two = _config(
        _listener("c", port=81, backend="d"),
        backends=[{"name": "d", "builtin": "hello"}],
        admin="127.0.0.1:9901",
    )
    merged = merge([("one.yaml", one), ("two.yaml", two)])
    assert [listener.name for listener in merged.listeners] == ["a", "c"]
    assert [backend.name for backend in merged.backends] == ["b", "d"]
    assert merged.admin == "127.0.0.1:9901"
    assert merged.drain_timeout is None


def test_merge_of_nothing_is_empty() -> None:
    assert merge([]) == Config()


def test_identical_backend_in_two_sources_is_kept_once() -> None:
    one = _config(_listener("a"))
    two = _config(_listener("c", port=81))
    merged = merge([("one.yaml", one), ("two.yaml", two)])
    assert [backend.name for backend in merged.backends] == ["b"]


def test_backend_defined_differently_in_two_sources_names_both() -> None:
    one = _config(_listener("a"))
    two = _config(_listener("c", port=81), backends=[{"name": "b", "endpoints": ["10.0.0.2:80"]}])
    with pytest.raises(ConfigError) as caught:
        merge([("one.yaml", one), ("two.yaml", two)])
    [problem] = caught.value.problems
    assert (problem.source, problem.object, problem.field) == (
        "two.yaml",
        "backends[0] (b)",
        "backends[0].name",
    )
    assert (
        problem.reason == "backend 'b' is also defined, differently, in one.yaml (backends[0] (b))"
    )


def test_listener_name_in_two_sources_names_both() -> None:
    with pytest.raises(ConfigError) as caught:
        merge(
            [
                ("one.yaml", _config(_listener("web"))),
                ("two.yaml", _config(_listener("web", port=81))),
            ]
        )
    [problem] = caught.value.problems
    assert problem.source == "two.yaml"
    assert problem.reason == "listener name 'web' is also defined in one.yaml (listeners[0] (web))"


def test_overlapping_listeners_in_two_sources_name_both() -> None:
    one = _config(_listener("a", address="0.0.0.0"))
    two = _config(_listener("x"), _listener("c", port=443))
    with pytest.raises(ConfigError) as caught:
        merge([("--ingress/--egress", one), ("two.yaml", two)])
    [problem] = caught.value.problems
    assert (problem.source, problem.field) == ("two.yaml", "listeners[0].port")
    assert problem.reason == (
        "duplicate listener: tcp port 80 on 127.0.0.1 overlaps "
        "--ingress/--egress listeners[0] (a) on 0.0.0.0"
    )


def test_admin_and_drain_timeout_conflicts_name_both_sources() -> None:
    parts = [
        ("a.yaml", _config(admin="127.0.0.1:9901", drain_timeout=5)),
        ("b.yaml", _config(drain_timeout="5s")),  # same value: fine
        ("c.yaml", _config(admin="0.0.0.0:9901", drain_timeout="1m")),
    ]
    with pytest.raises(ConfigError) as caught:
        merge(parts)
    assert caught.value.problems == (
        ConfigProblem(
            "c.yaml", "", "admin", "admin is '0.0.0.0:9901' here but '127.0.0.1:9901' in a.yaml"
        ),
        ConfigProblem(
            "c.yaml", "", "drain_timeout", "drain_timeout is 60.0 here but 5.0 in a.yaml"
        ),
    )


def test_every_cross_source_conflict_is_reported() -> None:
    one = _config(_listener("a"), admin="127.0.0.1:1")
    two = _config(_listener("a", port=81), _listener("z"), admin="127.0.0.1:2")
    with pytest.raises(ConfigError) as caught:
        merge([("one.yaml", one), ("two.yaml", two)])
    assert [p.field for p in caught.value.problems] == [
        "listeners[0].name",
        "listeners[1].port",
        "admin",
    ]
