"""The README's examples work as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import trustme
import yaml

README = Path(__file__).parents[2] / "README.md"


def _make_tls_files(config: dict[str, Any], root: Path) -> None:
    """Create the certificate files an example names, so `check` can load them."""
    ca = trustme.CA()
    for listener in config.get("listeners", []):
        for route in listener.get("routes", []):
            cert = route.get("certificate")
            if cert:
                issued = ca.issue_cert(*route.get("sni", ["example.com"]))
                (root / cert["cert"]).parent.mkdir(parents=True, exist_ok=True)
                issued.cert_chain_pems[0].write_to_path(str(root / cert["cert"]))
                issued.private_key_pem.write_to_path(str(root / cert["key"]))
    for backend in config.get("backends", []):
        ca_file = (backend.get("tls") or {}).get("ca")
        if ca_file:
            (root / ca_file).parent.mkdir(parents=True, exist_ok=True)
            ca.cert_pem.write_to_path(str(root / ca_file))


def test_readme_yaml_examples_are_valid_configs(tmp_path: Path) -> None:
    blocks = [
        b
        for b in re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
        if "apiVersion:" not in b  # Kubernetes objects: see the Ingress test below
    ]
    assert len(blocks) >= 2, "README lost its YAML examples"
    for i, block in enumerate(blocks):
        root = tmp_path / f"example{i}"
        root.mkdir()
        (root / "meshgate.yaml").write_text(block)
        _make_tls_files(yaml.safe_load(block), root)
        result = subprocess.run(
            [sys.executable, "-m", "meshgate", "check", "-c", "meshgate.yaml"],
            capture_output=True,
            text=True,
            check=False,
            cwd=root,
        )
        assert result.returncode == 0, result.stderr


def test_readme_error_example_matches_the_real_output() -> None:
    text = README.read_text()
    shown = re.search(r"\$ meshgate check --ingress tcp:99999:web:80\n(.*?)```", text, re.S)
    assert shown is not None
    result = subprocess.run(
        [sys.executable, "-m", "meshgate", "check", "--ingress", "tcp:99999:web:80"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == shown.group(1).strip()


EXAMPLES = Path(__file__).parents[2] / "examples" / "ingress"


def test_readme_ingress_example_is_served_with_the_example_objects(tmp_path: Path) -> None:
    [block] = [
        b
        for b in re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
        if "kind: Ingress" in b
    ]
    for path in EXAMPLES.iterdir():
        if "ingress" not in path.name:  # Services, EndpointSlices, Secret
            (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "readme-ingress.yaml").write_text(block)
    args = ["check", "--manifests", str(tmp_path), "--bind", "127.0.0.1", "--json"]
    result = subprocess.run(
        [sys.executable, "-m", "meshgate", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "api.example.test" in result.stdout
    assert "/v1(/|$)(.*)" in result.stdout


def test_readme_annotation_table_is_the_supported_list() -> None:
    from meshgate.config.annotations import markdown_table

    assert markdown_table() in README.read_text()


def test_readme_service_annotation_table_is_the_supported_list() -> None:
    from meshgate.kube.service_annotations import markdown_table

    assert markdown_table() in README.read_text()


def test_readme_netmaker_example_is_accepted_as_is() -> None:
    from meshgate.kube.service_annotations import IngressIntent, parse_service

    text = README.read_text().split("## Kubernetes: the operator", 1)[1]
    [block] = re.findall(r"```\n(apiVersion: v1\nkind: Service.*?)```", text, re.S)
    intent = parse_service(yaml.safe_load(block))
    assert isinstance(intent, IngressIntent)
    assert intent.dns_name == "my-app.netmaker.internal"
    assert [(p.protocol, p.port) for p in intent.ports] == [("TCP", 8080)]
