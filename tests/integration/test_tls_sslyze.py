"""A terminating tls listener scanned by sslyze against Mozilla's "intermediate"
server-side TLS profile (https://ssl-config.mozilla.org/, v5.7 in sslyze 6).

sslyze runs as a real client (`python -m sslyze --mozilla_config=intermediate`);
the test reads its JSON report and its compliance verdict. Each key type the
profile allows is scanned: ECDSA P-256 and RSA 2048.

The certificate is made to pass the profile's certificate checks:
- Trust: sslyze validates the chain against its bundled public stores *and*
  the file given with `--certinfo_ca_file`; one successful store is enough,
  so the test CA (from trustme) makes `certificate_path_validation` pass.
- The leaf is built here with `cryptography`, signed by the trustme CA's key,
  not with `CA.issue_cert`: trustme gives its leaves a non-empty subject and a
  *critical* subjectAltName, which the RFC 5280 verifier sslyze uses rejects
  ("EE subjectAltName MUST NOT be critical when subject is nonempty"). It also
  lives 90 days (the profile's recommendation; its maximum is 366).
"""

from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.harness import Peer, free_port, running, terminating_config

# Mozilla Server Side TLS v5.7, "intermediate" (as shipped in sslyze's
# mozilla_tls_profile/5.7.json), in the names sslyze reports.
TLS12_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
KEX_GROUPS = {"X25519", "secp256r1", "secp384r1"}  # "tls_curves" (prime256v1 = secp256r1)
SIGNATURES = {"sha256WithRSAEncryption", "ecdsa-with-SHA256", "ecdsa-with-SHA384"}
MAX_LIFESPAN_DAYS = 366
MIN_ECDH_BITS = 256  # sslyze adds 3 to X25519's 253 bits before comparing
MIN_DH_BITS = 2048

# What `--mozilla_config` schedules; each must have completed for a verdict.
SCANS = (
    "certificate_info",
    "ssl_2_0_cipher_suites",
    "ssl_3_0_cipher_suites",
    "tls_1_0_cipher_suites",
    "tls_1_1_cipher_suites",
    "tls_1_2_cipher_suites",
    "tls_1_3_cipher_suites",
    "tls_compression",
    "openssl_ccs_injection",
    "tls_fallback_scsv",
    "heartbleed",
    "robot",
    "session_renegotiation",
    "elliptic_curves",
    "tls_extended_master_secret",
)

SSLYZE_TIMEOUT = 90.0
# sslyze's console lists each failed check as "  * <check>: <why>".
_ISSUE = re.compile(r"^\s+\* (\w+): (.*)$", re.M)


def require_sslyze() -> None:
    if importlib.util.find_spec("sslyze") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("sslyze is not installed; it is a dev dependency")
        pytest.skip("sslyze is not installed (pip install sslyze)")


@dataclass(frozen=True, slots=True)
class Issued:
    ca_file: Path
    cert: Path
    key: Path


def mozilla_leaf(tmp: Path, key_type: str, days: int = 90) -> Issued:
    """A CA from trustme and a leaf for localhost/127.0.0.1 that it signed."""
    ca = trustme.CA(key_type=trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA)
    ca_file = tmp / f"ca-{key_type}.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if key_type == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(
        digital_signature=True,
        key_encipherment=key_type == "rsa",
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp / f"leaf-{key_type}.crt", tmp / f"leaf-{key_type}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Issued(ca_file, cert_path, key_path)


@dataclass(frozen=True, slots=True)
class Scan:
    returncode: int
    stdout: str
    report: dict[str, Any]  # the one server's entry in sslyze's JSON
    issues: dict[str, str]  # failed compliance checks, from the console

    def result(self, scan: str) -> dict[str, Any]:
        attempt: dict[str, Any] = self.report["scan_result"][scan]
        assert attempt["status"] == "COMPLETED", (scan, attempt["error_reason"])
        out: dict[str, Any] = attempt["result"]
        return out


def sslyze(port: int, ca_file: Path, tmp: Path) -> Scan:
    out = tmp / "sslyze.json"
    # --json_out to a file: with `-` sslyze skips the compliance check.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sslyze",
            "--mozilla_config=intermediate",
            f"--certinfo_ca_file={ca_file}",
            f"--json_out={out}",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=SSLYZE_TIMEOUT,
        check=False,
    )
    assert out.exists(), done.stdout + done.stderr
    servers = json.loads(out.read_text())["server_scan_results"]
    assert len(servers) == 1, done.stdout
    _, _, verdict = done.stdout.partition("COMPLIANCE AGAINST TLS CONFIGURATION")
    issues = {m[1]: m[2] for m in _ISSUE.finditer(verdict)}
    return Scan(done.returncode, done.stdout, servers[0], issues)


def suites(scan: Scan, version: str) -> set[str]:
    result = scan.result(f"{version}_cipher_suites")
    return {s["cipher_suite"]["name"] for s in result["accepted_cipher_suites"]}


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_terminating_listener_meets_mozilla_intermediate(
    key_type: str, peers: Callable[..., Peer], tmp_path: Path
) -> None:
    require_sslyze()
    issued = mozilla_leaf(tmp_path, key_type)
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("plaintext backend\n")
    backend = free_port()
    peers(
        [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(www),
            str(backend),
        ],
        backend,
    )
    port = free_port()
    config = tmp_path / "tls.yaml"
    config.write_text(terminating_config(port, issued.cert, issued.key, backend))
    with running(["-c", str(config)], tmp_path):
        # The route terminates and relays, for a client that checks the name.
        ctx = ssl.create_default_context(cafile=str(issued.ca_file))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            reply = b""
            while chunk := tls.recv(4096):
                reply += chunk
        assert reply.endswith(b"plaintext backend\n")

        scan = sslyze(port, issued.ca_file, tmp_path)

    # The scan reached the server and every check the profile needs ran.
    assert scan.report["connectivity_status"] == "COMPLETED", scan.stdout
    assert scan.report["scan_status"] == "COMPLETED", scan.stdout
    for name in SCANS:
        scan.result(name)

    # Protocol versions: TLS 1.2 and 1.3 only.
    for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        result = scan.result(f"{old}_cipher_suites")
        assert not result["is_tls_version_supported"], old
        assert result["accepted_cipher_suites"] == [], old
    for new in ("tls_1_2", "tls_1_3"):
        assert scan.result(f"{new}_cipher_suites")["is_tls_version_supported"], new

    # Cipher suites: only the profile's, all forward secret and AEAD.
    tls12, tls13 = suites(scan, "tls_1_2"), suites(scan, "tls_1_3")
    assert tls12 <= TLS12_SUITES, tls12 - TLS12_SUITES
    assert tls13 <= TLS13_SUITES, tls13 - TLS13_SUITES
    # The suites for the certificate's key type are all there.
    auth = "RSA" if key_type == "rsa" else "ECDSA"
    assert {s for s in TLS12_SUITES if f"ECDHE_{auth}_" in s} <= tls12, tls12
    assert tls13 == TLS13_SUITES
    for version in ("tls_1_2", "tls_1_3"):
        for accepted in scan.result(f"{version}_cipher_suites")["accepted_cipher_suites"]:
            suite, ephemeral = accepted["cipher_suite"], accepted["ephemeral_key"]
            assert not suite["is_anonymous"], suite
            assert suite["key_size"] >= 128, suite
            assert ephemeral is not None, suite  # forward secrecy
            if ephemeral["type_name"] == "ECDH":
                assert ephemeral["size"] + 3 >= MIN_ECDH_BITS, (suite, ephemeral)
                assert ephemeral["curve_name"] in KEX_GROUPS, (suite, ephemeral)
            else:
                assert ephemeral["size"] >= MIN_DH_BITS, (suite, ephemeral)

    # The certificate: trusted through the test CA, allowed key, signature, lifespan.
    (deployment,) = scan.result("certificate_info")["certificate_deployments"]
    trusted_by = {
        p["trust_store"]["name"]
        for p in deployment["path_validation_results"]
        if p["was_validation_successful"]
    }
    assert trusted_by == {"Supplied CA file"}, deployment["path_validation_results"]
    leaf = deployment["received_certificate_chain"][0]
    if key_type == "rsa":
        assert leaf["public_key"]["algorithm"] == "RSAPublicKey"
        assert leaf["public_key"]["key_size"] >= 2048
    else:
        assert leaf["public_key"]["ec_curve_name"] == "secp256r1"
    assert leaf["signature_algorithm_oid"]["name"] in SIGNATURES
    lifespan = datetime.datetime.fromisoformat(
        leaf["not_valid_after"]
    ) - datetime.datetime.fromisoformat(leaf["not_valid_before"])
    assert lifespan.days <= MAX_LIFESPAN_DAYS

    # The vulnerability and hygiene checks of the profile.
    assert scan.result("tls_compression")["supports_compression"] is False
    assert scan.result("openssl_ccs_injection")["is_vulnerable_to_ccs_injection"] is False
    assert scan.result("heartbleed")["is_vulnerable_to_heartbleed"] is False
    assert scan.result("tls_fallback_scsv")["supports_fallback_scsv"] is True
    assert scan.result("tls_extended_master_secret")["supports_ems_extension"] is True
    assert not scan.result("robot")["robot_result"].startswith("VULNERABLE")
    reneg = scan.result("session_renegotiation")
    assert reneg["supports_secure_renegotiation"] is True
    assert reneg["is_vulnerable_to_client_renegotiation_dos"] is False

    # Key-exchange groups ("tls_curves"): only the profile's (tls_groups.py).
    groups = {c["name"] for c in scan.result("elliptic_curves")["supported_curves"] or []}
    assert groups <= KEX_GROUPS, sorted(groups - KEX_GROUPS)
    assert "X25519" in groups

    # sslyze's verdict: exit 0 means compliant. (It also exits 0 when it
    # could not connect at all, hence the completeness checks above.)
    assert scan.returncode == 0, scan.issues
    assert scan.issues == {}
