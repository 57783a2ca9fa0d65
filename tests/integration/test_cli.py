"""The command line: invalid input exits 2 naming the field, check and status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import free_port, port_open, running


def meshgate(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshgate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


BAD_FILE_UNKNOWN_KEY = """\
listeners:
  - name: web
    port: 8080
    prot: tcp
    backend: web
backends:
  - {name: web, endpoints: ["127.0.0.1:80"]}
"""


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--ingress", "tcp:99999:web:80"],
            ["--ingress", "tcp:99999:web:80", "listen_port", "out of range"],
        ),
        (["--ingress", "sctp:80:web:80"], ["--ingress", "protocol", "sctp"]),
        (["--egress", "tcp:80:web"], ["--egress", "tcp:80:web"]),
        (["--ingress", "tcp:80:web:0"], ["port"]),
        (["--ingress", "tcp:80:bad host!:80"], ["host"]),
        (
            [
                "--ingress",
                "tcp:7001:a:80",
                "--egress",
                "tcp:7001:b:80",
                "--bind",
                "0.0.0.0",
                "--cluster-bind",
                "127.0.0.1",
            ],
            ["duplicate listener"],
        ),
    ],
)
@pytest.mark.parametrize("command", ["check", "run"])
def test_invalid_rules_exit_2_and_name_the_field(
    command: str, args: list[str], expected: list[str]
) -> None:
    result = (
        meshgate(command, *args, "--admin", "off") if command == "run" else meshgate(command, *args)
    )
    assert result.returncode == 2, result.stderr
    for text in expected:
        assert text in result.stderr


@pytest.mark.parametrize("command", ["check", "run"])
def test_unknown_key_in_file_names_its_line(command: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_FILE_UNKNOWN_KEY)
    result = meshgate(command, "-c", str(path))
    assert result.returncode == 2
    assert f"{path}:4" in result.stderr
    assert "prot" in result.stderr
    assert not port_open(8080) or command == "check"


def test_duplicate_listener_in_file(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(
        "listeners:\n"
        "  - {name: a, port: 7002, backend: h}\n"
        "  - {name: b, port: 7002, backend: h}\n"
        "backends:\n  - {name: h, builtin: hello}\n"
    )
    result = meshgate("check", "-c", str(path))
    assert result.returncode == 2
    assert "duplicate listener" in result.stderr
    assert f"{path}:3" in result.stderr


def test_run_with_invalid_input_starts_nothing(tmp_path: Path) -> None:
    good = free_port()
    result = meshgate(
        "run",
        "--ingress",
        f"tcp:{good}:127.0.0.1:80",
        "--ingress",
        "tcp:99999:web:80",
        "--admin",
        "off",
    )
    assert result.returncode == 2
    assert not port_open(good)


def test_no_configuration_is_an_error() -> None:
    result = meshgate("check")
    assert result.returncode == 2
    assert "no configuration" in result.stderr


def test_check_prints_resolved_table(tmp_path: Path) -> None:
    result = meshgate(
        "check",
        "--ingress",
        "tcp:8443:web.default.svc.cluster.local:443",
        "--ingress",
        "TCP:8443:[fd00::1]:443",
        "--egress",
        "udp:53:100.100.0.1:53",
    )
    assert result.returncode == 0, result.stderr
    for text in ("ingress-tcp-8443", "egress-udp-53", "[fd00::1]:443", "100.100.0.1:53"):
        assert text in result.stdout
    data = json.loads(meshgate("check", "--json", "--ingress", "tcp:80:web:80").stdout)
    assert data["listeners"][0]["port"] == 80
    assert data["backends"][0]["endpoints"] == ["web:80"]


def test_quickstart_serves_and_status_shows_it(tmp_path: Path) -> None:
    quickstart = Path(__file__).parents[2] / "examples" / "quickstart.yaml"
    with running(["-c", str(quickstart)], tmp_path) as mg:
        for port in (8080, 8082):
            out = subprocess.run(
                ["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{port}/"],
                capture_output=True,
                text=True,
                check=True,
            )
            assert out.stdout == "hello from meshgate (hello)\n"
        # The HTTP listener: host + regex path, rewritten, to a built-in backend;
        # anything else to the default backend.
        url = "http://127.0.0.1:8083/api/v1/users"
        routed = subprocess.run(
            ["curl", "-sS", "--max-time", "5", "-H", "Host: app.example", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "backend: api" in routed
        assert "route: app.example/api(/|$)(.*)" in routed
        other = subprocess.run(
            ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:8083/elsewhere"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "backend: hello" in other
        shown = meshgate("status", "--admin", f"127.0.0.1:{mg.admin_port}")
        assert shown.returncode == 0, shown.stderr
        for text in ("hello", "echo", "relay", "serving", "127.0.0.1:8080"):
            assert text in shown.stdout
        assert mg.metric("meshgate_connections_total", listener="relay") == 1


def test_status_without_server_says_so() -> None:
    result = meshgate("status", "--admin", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr


@pytest.mark.parametrize("value", ["bogus", "auto:0", "[::1]:99999", "mesh:53"])
def test_bad_dns_listen_exits_2_and_starts_nothing(value: str) -> None:
    port = free_port()
    result = meshgate(
        "run", "--ingress", f"tcp:{port}:127.0.0.1:80", "--dns-listen", value, "--admin", "off"
    )
    assert result.returncode == 2
    assert "--dns-listen" in result.stderr
    assert not port_open(port)


EXAMPLE_INGRESS = Path(__file__).parents[2] / "examples" / "ingress"


def test_ingress_listen_addresses_from_the_yaml_file(tmp_path: Path) -> None:
    cfg = tmp_path / "meshgate.yaml"
    # A bare `off` is YAML's false: meant as "off", and taken so.
    cfg.write_text("ingress:\n  http_listen: 127.0.0.1:18080\n  https_listen: off\n")
    out = meshgate("check", "--json", "-c", str(cfg), "--manifests", str(EXAMPLE_INGRESS))
    assert out.returncode == 0, out.stderr
    listeners = json.loads(out.stdout)["listeners"]
    assert [(lst["name"], lst["port"]) for lst in listeners] == [("ingress-http", 18080)]
    # A flag beats the file.
    out = meshgate(
        "check", "--json", "-c", str(cfg), "--manifests", str(EXAMPLE_INGRESS),
        "--http-listen", "127.0.0.1:18081",
    )  # fmt: skip
    assert [lst["port"] for lst in json.loads(out.stdout)["listeners"]] == [18081]


def test_check_exits_1_and_names_skipped_objects(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\n"
        "metadata: {name: web, annotations: {meshgate.io/frobnicate: 'yes'}}\n"
        "spec:\n  ingressClassName: meshgate\n"
        "  defaultBackend: {service: {name: web, port: {number: 80}}}\n"
    )
    out = meshgate("check", "--manifests", str(tmp_path), "--bind", "127.0.0.1")
    assert out.returncode == 1
    assert "Ingress default/web" in out.stderr
    assert "meshgate.io/frobnicate" in out.stderr
