"""Configuration sources: rules and files, loaded together with all problems reported."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from meshgate.config.model import Config
from meshgate.errors import ConfigError
from meshgate.sources import ConfigSource, FileSource, RulesSource, load_all

FILE = """\
listeners:
  - {name: hello, port: 8080, backend: hello}
backends:
  - {name: hello, builtin: hello}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_rules_source_builds_the_rules_config() -> None:
    source = RulesSource(["tcp:80:web:80"], ["udp:53:100.100.0.1:53"], bind="100.100.0.2")
    assert source.name == "--ingress/--egress"
    config = source.load()
    assert [(x.name, x.address) for x in config.listeners] == [
        ("ingress-tcp-80", "100.100.0.2"),
        ("egress-udp-53", "0.0.0.0"),
    ]


def test_rules_source_keeps_its_own_copy_of_the_rules() -> None:
    rules = ["tcp:80:web:80"]
    source = RulesSource(rules)
    rules.append("tcp:81:web:81")
    assert len(source.load().listeners) == 1


def test_file_source_rereads_the_file_on_each_load(tmp_path: Path) -> None:
    path = _write(tmp_path / "mesh.yaml", FILE)
    source = FileSource(path)
    assert source.name == str(path)
    assert source.load().listeners[0].port == 8080
    _write(path, FILE.replace("8080", "9090"))
    assert source.load().listeners[0].port == 9090


def test_file_source_reports_a_file_that_became_invalid(tmp_path: Path) -> None:
    path = _write(tmp_path / "mesh.yaml", FILE)
    source = FileSource(str(path))
    source.load()
    _write(path, FILE.replace("port: 8080", "port: 80800"))
    with pytest.raises(ConfigError) as caught:
        source.load()
    [problem] = caught.value.problems
    assert (problem.source, problem.field, problem.line) == (str(path), "listeners[0].port", 2)


def test_load_all_merges_every_source(tmp_path: Path) -> None:
    path = _write(tmp_path / "mesh.yaml", FILE)
    config = load_all([RulesSource(["tcp:80:web:80"]), FileSource(path)])
    assert [x.name for x in config.listeners] == ["ingress-tcp-80", "hello"]
    assert [x.name for x in config.backends] == ["ingress-tcp-80", "hello"]


def test_load_all_reports_problems_of_every_source_together(tmp_path: Path) -> None:
    bad_file = _write(
        tmp_path / "bad.yaml", "listeners:\n  - {name: a, port: 80, backend: b, prot: tcp}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_all(
            [
                RulesSource(["tcp:99999:web:80"]),
                FileSource(bad_file),
                FileSource(tmp_path / "absent.yaml"),
            ]
        )
    assert [(p.source, p.field) for p in caught.value.problems] == [
        ("--ingress", "listen_port"),
        (str(bad_file), "listeners[0].prot"),
        (str(tmp_path / "absent.yaml"), ""),
    ]


def test_load_all_reports_conflicts_between_sources(tmp_path: Path) -> None:
    path = _write(tmp_path / "mesh.yaml", FILE.replace("8080", "80"))
    with pytest.raises(ConfigError) as caught:
        load_all([RulesSource(["tcp:80:web:80"]), FileSource(path)])
    [problem] = caught.value.problems
    assert problem.source == str(path)
    assert "duplicate listener" in problem.reason
    assert "--ingress/--egress" in problem.reason


@dataclass
class _Fixed:
    """Any object with a name and load() is a source (the Protocol is structural)."""

    name: str
    config: Config

    def load(self) -> Config:
        return self.config


def test_any_object_with_name_and_load_is_a_source() -> None:
    sources: list[ConfigSource] = [_Fixed("fixed", Config(admin="127.0.0.1:1"))]
    assert load_all(sources).admin == "127.0.0.1:1"
    assert load_all([]) == Config()
