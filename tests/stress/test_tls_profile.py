"""sslyze `--mozilla_config=intermediate` against both kinds of terminating
listener at once: a tls listener's terminating default route (ECDSA P-256
certificate) and an https listener (RSA 2048), each scanned by its own sslyze
process, in parallel.

The certificates and the scan come from tests/integration/test_tls_sslyze.py
(a leaf the profile's certificate checks accept, trusted through
`--certinfo_ca_file`; sslyze's JSON report and its compliance verdict). The
JSON is checked here for what the profile asks of a server: TLS 1.2 and 1.3
only, the profile's cipher suites, forward secrecy, a trusted certificate, no
known vulnerability.

sslyze exits 0 when the server is compliant: every check passes, the
key-exchange groups included (X25519, P-256 and P-384 only: see
dataplane/tls_groups.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import free_port
from tests.integration.test_tls_sslyze import (
    KEX_GROUPS,
    SCANS,
    TLS12_SUITES,
    TLS13_SUITES,
    Issued,
    Scan,
    mozilla_leaf,
    require_sslyze,
    sslyze,
    suites,
)
from tests.stress.conftest import Procs
from tests.stress.kit import Figures, Gate, start_gate, start_server, terminating_listener

pytestmark = [pytest.mark.stress, pytest.mark.timeout(300)]


def config(ports: dict[str, int], edge: Issued, secure: Issued) -> dict[str, Any]:
    return {
        "listeners": [
            terminating_listener("edge", ports["edge"], edge.cert, edge.key, "echo"),
            {
                "name": "secure",
                "port": ports["secure"],
                "protocol": "https",
                "tls": {"default_certificate": {"cert": str(secure.cert), "key": str(secure.key)}},
                "http": {"default_backend": "hello", "access_log": False},
            },
        ],
        "backends": [
            {"name": "echo", "endpoints": [f"127.0.0.1:{ports['echo']}"]},
            {"name": "hello", "builtin": "hello"},
        ],
    }


def problems(scan: Scan) -> list[str]:
    """What in sslyze's JSON is outside the intermediate profile."""
    found: list[str] = []
    if scan.report["connectivity_status"] != "COMPLETED":
        return [f"sslyze could not connect: {scan.report.get('connectivity_error_trace')}"]
    found += [
        f"{name} did not complete: {attempt['error_reason']}"
        for name in SCANS
        if (attempt := scan.report["scan_result"][name])["status"] != "COMPLETED"
    ]
    if found:
        return found
    old, new = ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"), ("tls_1_2", "tls_1_3")
    supported = {
        version: scan.result(f"{version}_cipher_suites")["is_tls_version_supported"]
        for version in (*old, *new)
    }
    found += [f"{v} is accepted" for v in old if supported[v]]
    found += [f"{v} is not accepted" for v in new if not supported[v]]
    if extra := suites(scan, "tls_1_2") - TLS12_SUITES:
        found.append(f"TLS 1.2 suites outside the profile: {sorted(extra)}")
    if extra := suites(scan, "tls_1_3") - TLS13_SUITES:
        found.append(f"TLS 1.3 suites outside the profile: {sorted(extra)}")
    found += [
        f"no forward secrecy: {accepted['cipher_suite']['name']}"
        for version in ("tls_1_2", "tls_1_3")
        for accepted in scan.result(f"{version}_cipher_suites")["accepted_cipher_suites"]
        if accepted["ephemeral_key"] is None
    ]
    (deployment,) = scan.result("certificate_info")["certificate_deployments"]
    if not any(p["was_validation_successful"] for p in deployment["path_validation_results"]):
        found.append("the certificate is not trusted through the test CA")
    checks = {
        "compression": scan.result("tls_compression")["supports_compression"],
        "CCS injection": scan.result("openssl_ccs_injection")["is_vulnerable_to_ccs_injection"],
        "heartbleed": scan.result("heartbleed")["is_vulnerable_to_heartbleed"],
        "no fallback SCSV": not scan.result("tls_fallback_scsv")["supports_fallback_scsv"],
        "no extended master secret": not scan.result("tls_extended_master_secret")[
            "supports_ems_extension"
        ],
        "ROBOT": scan.result("robot")["robot_result"].startswith("VULNERABLE"),
        "client renegotiation DoS": scan.result("session_renegotiation")[
            "is_vulnerable_to_client_renegotiation_dos"
        ],
    }
    found += [name for name, bad in checks.items() if bad]
    return found


def groups(scan: Scan) -> set[str]:
    return {c["name"] for c in scan.result("elliptic_curves")["supported_curves"] or []}


def test_terminating_listeners_meet_mozilla_intermediate(
    tmp_path: Path, procs: Procs, figures: Figures
) -> None:
    require_sslyze()
    edge_leaf = mozilla_leaf(tmp_path, "ecdsa")
    secure_leaf = mozilla_leaf(tmp_path, "rsa")
    echo, echo_port = start_server("echo")
    procs.add(echo)
    ports = {"edge": free_port(), "secure": free_port(), "echo": echo_port}
    gate: Gate = procs.add(
        start_gate(tmp_path / "meshgate.yaml", config(ports, edge_leaf, secure_leaf), tmp_path)
    )
    targets = {"tls terminate (ECDSA)": ("edge", edge_leaf), "https (RSA)": ("secure", secure_leaf)}
    for listener, _ in targets.values():
        (tmp_path / listener).mkdir()  # each sslyze writes its report there
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        futures = {
            name: pool.submit(sslyze, ports[listener], leaf.ca_file, tmp_path / listener)
            for name, (listener, leaf) in targets.items()
        }
        scans = {name: future.result() for name, future in futures.items()}

    verdicts: dict[str, dict[str, Any]] = {}
    for name, scan in scans.items():
        verdicts[name] = {
            "exit": scan.returncode,
            "failed_checks": scan.issues,
            "problems": problems(scan),
            "extra_groups": sorted(groups(scan) - KEX_GROUPS)
            if scan.report["connectivity_status"] == "COMPLETED"
            else None,
        }
    figures.update(scans=verdicts)
    assert gate.proc.poll() is None, f"meshgate exited {gate.proc.returncode} during the scans"

    for name, verdict in verdicts.items():
        assert not verdict["problems"], f"{name}: outside the profile: {verdict['problems']}"
        assert verdict["extra_groups"] == [], f"{name}: groups beyond the profile"
        assert verdict["exit"] == 0, (
            f"{name}: sslyze found the listener out of the intermediate profile: "
            f"{verdict['failed_checks']}"
        )
        assert verdict["failed_checks"] == {}, (name, verdict)
