"""`--manifests`: files and directories of Kubernetes objects, read again on every load.

The fixtures in tests/fixtures/manifests are copied into tmp_path, so a test
can add, edit or break files the way a user would.
"""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from meshgate.config.manifests import IngressOptions
from meshgate.config.merge import validate
from meshgate.config.model import Config
from meshgate.errors import ConfigError
from meshgate.sources import ConfigSource
from meshgate.sources.manifests import ManifestSource, parse_documents

FIXTURES = Path(__file__).parents[2] / "fixtures" / "manifests"
EXAMPLE = Path(__file__).parents[3] / "examples" / "ingress"


def copy(directory: Path, *names: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(FIXTURES / name, directory / name)
    return directory


def hosts(config: Config) -> list[tuple[str | None, str, str | None]]:
    listener = next(x for x in config.listeners if x.name == "ingress-http")
    assert listener.http is not None
    return [(r.host, r.path, r.backend) for r in listener.http.routes]


def test_source_name_lists_the_paths() -> None:
    source: ConfigSource = ManifestSource(["deploy/a", Path("deploy/b.yaml")], IngressOptions())
    assert source.name == "--manifests deploy/a,deploy/b.yaml"


def test_directory_of_multi_document_files(tmp_path: Path) -> None:
    directory = copy(tmp_path / "m", "web.yaml", "api-list.json")
    source = ManifestSource([directory], IngressOptions())
    config = source.load()
    validate(config, source.name)
    assert hosts(config) == [("web.example.test", "/", "default.web.80")]
    assert [str(e) for e in config.backends[0].endpoints] == ["10.0.0.1:8080"]
    # The List's Ingress names a port its Service lacks: a problem at that item's line.
    [problem] = source.problems
    assert problem.source == str(directory / "api-list.json")
    assert problem.line == 23
    assert problem.object == "Ingress shop/api"
    assert problem.field == "spec.rules[0].http.paths[0].backend.service.port.number"
    assert "Deployment web: ignored, meshgate does not use Deployment objects" in source.notes


def test_kind_list_items_are_objects(tmp_path: Path) -> None:
    path = copy(tmp_path, "api-list.json") / "api-list.json"
    fixed = path.read_text().replace("9999", "8080")
    path.write_text(fixed)
    source = ManifestSource([path], IngressOptions())
    config = source.load()
    assert source.problems == ()
    assert hosts(config) == [("api.example.test", "/v1", "shop.api.8080")]
    assert str(config.backends[0].endpoints[0]) == "[fd00::10]:8080"


def test_document_lines_are_where_each_object_starts() -> None:
    text = (FIXTURES / "web.yaml").read_text()
    objects, problems = parse_documents(text, "web.yaml")
    assert problems == []
    assert [(o.doc["kind"], o.line, o.source) for o in objects] == [
        ("Service", 2, "web.yaml"),
        ("EndpointSlice", 10, "web.yaml"),
        ("Deployment", 21, "web.yaml"),
        ("Ingress", 27, "web.yaml"),
    ]


def test_invalid_object_problem_points_at_its_document(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    text = (FIXTURES / "web.yaml").read_text().replace("pathType: Prefix", "pathType: Glob")
    path.write_text(text)
    source = ManifestSource([path])
    source.load()
    [problem] = source.problems
    assert (problem.source, problem.line, problem.object) == (str(path), 27, "Ingress default/web")
    assert problem.field == "spec.rules[0].http.paths[0].pathType"


def test_yaml_syntax_error_rejects_the_load_naming_file_and_line(tmp_path: Path) -> None:
    # A half-saved edit must not withdraw the routes the file still had.
    directory = copy(tmp_path, "web.yaml", "broken.yaml")
    source = ManifestSource([directory])
    with pytest.raises(ConfigError) as caught:
        source.load()
    [problem] = caught.value.problems
    assert problem.source == str(directory / "broken.yaml")
    assert problem.line == 12
    assert problem.reason.startswith("invalid YAML: expected ',' or '}'")


def test_directory_reads_yaml_yml_and_json_sorted_not_hidden_not_recursive(
    tmp_path: Path,
) -> None:
    service = (FIXTURES / "web.yaml").read_text().split("---\n")[0]
    (tmp_path / "b.yml").write_text(service)
    (tmp_path / "a.YAML").write_text(service)  # defined twice: the first file read wins
    (tmp_path / "notes.txt").write_text("not: [yaml")
    (tmp_path / ".hidden.yaml").write_text("not: [yaml")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.yaml").write_text("not: [yaml")
    source = ManifestSource([tmp_path])
    source.load()
    [problem] = source.problems
    assert problem.source == str(tmp_path / "b.yml")
    assert f"defined again (first at {tmp_path / 'a.YAML'}:2)" in problem.reason
    assert f"{tmp_path / 'sub'}: subdirectory not read (--manifests is not recursive)" in (
        source.notes
    )


def test_file_named_directly_is_read_whatever_its_suffix(tmp_path: Path) -> None:
    path = tmp_path / "web.manifest"
    shutil.copy(FIXTURES / "web.yaml", path)
    assert hosts(ManifestSource([path]).load()) == [("web.example.test", "/", "default.web.80")]


def test_several_paths_are_read_together(tmp_path: Path) -> None:
    # The Ingress in one directory, its Service and slice in another.
    parts = (FIXTURES / "web.yaml").read_text().split("---\n")
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "ingress.yaml").write_text(parts[3])
    (tmp_path / "svc.yaml").write_text("---\n".join(parts[:2]))
    source = ManifestSource([tmp_path / "apps", tmp_path / "svc.yaml"])
    assert hosts(source.load()) == [("web.example.test", "/", "default.web.80")]
    assert source.problems == ()


def test_reload_reads_the_edited_files(tmp_path: Path) -> None:
    directory = copy(tmp_path, "web.yaml")
    source = ManifestSource([directory])
    assert hosts(source.load()) == [("web.example.test", "/", "default.web.80")]
    path = directory / "web.yaml"
    path.write_text(path.read_text().replace("web.example.test", "www.example.test"))
    assert hosts(source.load()) == [("www.example.test", "/", "default.web.80")]


def test_problems_and_notes_are_those_of_the_last_load(tmp_path: Path) -> None:
    directory = copy(tmp_path, "web.yaml")
    bad = (FIXTURES / "web.yaml").read_text().replace("pathType: Prefix", "pathType: Glob")
    (directory / "bad.yaml").write_text(bad.replace("name: web", "name: web2"))
    source = ManifestSource([directory])
    source.load()
    before = source.problems
    assert len(before) == 1
    (directory / "bad.yaml").unlink()
    source.load()
    assert source.problems == ()
    assert len(source.notes) == 1  # the Deployment, once


def test_missing_path_raises(tmp_path: Path) -> None:
    source = ManifestSource([copy(tmp_path, "web.yaml"), tmp_path / "nope"])
    with pytest.raises(ConfigError) as caught:
        source.load()
    [problem] = caught.value.problems
    assert problem.source == str(tmp_path / "nope")
    assert problem.reason == "no such file or directory"


def test_unreadable_file_in_a_directory_raises(tmp_path: Path) -> None:
    directory = copy(tmp_path, "web.yaml")
    (directory / "gone.yaml").symlink_to(tmp_path / "missing-target.yaml")
    with pytest.raises(ConfigError) as caught:
        ManifestSource([directory]).load()
    [problem] = caught.value.problems
    assert problem.source == str(directory / "gone.yaml")


def test_a_file_that_is_not_utf8_rejects_the_load(tmp_path: Path) -> None:
    directory = copy(tmp_path, "web.yaml")
    (directory / "latin1.yaml").write_bytes(b"kind: Service\nmetadata: {name: caf\xe9}\n")
    source = ManifestSource([directory])
    with pytest.raises(ConfigError) as caught:
        source.load()
    [problem] = caught.value.problems
    assert problem.source == str(directory / "latin1.yaml")
    assert "not UTF-8" in problem.reason


def test_empty_directory_is_no_ingress(tmp_path: Path) -> None:
    source = ManifestSource([tmp_path])
    assert hosts(source.load()) == []
    assert source.notes == (f"{tmp_path}: no .yaml, .yml or .json files",)


def test_a_document_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text("---\n- just\n- a list\n---\nplain text\n")
    source = ManifestSource([path])
    source.load()
    assert [(p.line, p.reason) for p in source.problems] == [
        (2, "expected a Kubernetes object (a mapping with kind), got a list"),
        (5, "expected a Kubernetes object (a mapping with kind), got str 'plain text'"),
    ]


def test_the_example_directory_loads_cleanly() -> None:
    source = ManifestSource([EXAMPLE])
    config = source.load()
    validate(config, source.name)
    assert source.problems == ()
    assert source.notes == ()
    assert sorted(hosts(config)) == [
        ("api.example.test", "/v1(/|$)(.*)", "default.api.8080"),
        ("app.example.test", "/", "default.app.80"),
    ]
    http = config.listeners[0].http
    assert http is not None
    assert http.default_backend == "default.fallback.80"
    assert {b.name: [str(e) for e in b.endpoints] for b in config.backends} == {
        "default.api.8080": ["127.0.0.3:8080"],
        "default.app.80": ["127.0.0.2:8081"],
        "default.fallback.80": ["127.0.0.4:9000"],
    }


def test_the_example_certificate_is_a_usable_pair(tmp_path: Path) -> None:
    config = ManifestSource([EXAMPLE]).load()
    https = next(x for x in config.listeners if x.name == "ingress-https")
    [entry] = https.tls.certificates
    assert set(entry.hosts) == {"app.example.test", "api.example.test"}
    assert entry.certificate.cert == "secret:default/example-tls"
    assert entry.certificate.cert_pem is not None
    assert entry.certificate.key_pem is not None
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text(entry.certificate.cert_pem)
    key.write_text(entry.certificate.key_pem)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
