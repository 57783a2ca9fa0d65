"""Kubernetes Ingress on the HTTPS listener: certificates from Secrets, 421,
ssl-passthrough, forwarding headers and certificate rotation.

Certificates come from a trustme CA, put in `kubernetes.io/tls` Secrets;
clients are curl (`--cacert`, `--resolve` for SNI) and Python's ssl to look
at the certificate presented. Manifest builders and the curl wrapper come
from test_ingress.py.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.integration.harness import Meshgate, free_port, wait_for
from tests.integration.http_backend import HttpBackend
from tests.integration.test_ingress import (
    Doc,
    Reply,
    fetch,
    host_rule,
    ingress,
    seen,
    service_for,
    serving,
    start_meshgate,
    tls_secret,
    with_tls,
    write_manifests,
)

DEFAULT_CN = "meshgate default certificate"


def presented(port: int, sni: str | None) -> x509.Certificate:
    """The certificate the server at 127.0.0.1:port presents for `sni`."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return san.value.get_values_for_type(x509.DNSName)


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def leaf(cert: trustme.LeafCert) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())


@dataclass
class TlsGateway:
    mg: Meshgate
    http: int
    https: int
    ca_file: Path
    certs: dict[str, trustme.LeafCert]
    web: HttpBackend
    passthrough: HttpBackend

    def get(self, host: str, path: str = "/", headers: Sequence[str] = ()) -> Reply:
        """HTTPS to `host` (SNI and Host), verified against the test CA."""
        args = ["--cacert", str(self.ca_file)]
        return fetch(self.https, path, host=host, https=True, headers=headers, args=args)


def ingresses() -> list[Doc]:
    return [
        ingress(
            "tls-a",
            host_rule("a.example", "web"),
            tls=[{"hosts": ["a.example"], "secretName": "a-tls"}],
        ),
        ingress(
            "tls-b",
            host_rule("b.example", "web"),
            tls=[{"hosts": ["b.example"], "secretName": "b-tls"}],
        ),
        ingress(
            "tls-both",
            host_rule("both1.example", "web"),
            host_rule("both2.example", "web"),
            tls=[{"hosts": ["both1.example", "both2.example"], "secretName": "both-tls"}],
        ),
        ingress(
            "tls-wild",
            host_rule("*.wild.example", "web"),
            tls=[{"hosts": ["*.wild.example"], "secretName": "wild-tls"}],
        ),
        ingress("plain", host_rule("plain.example", "web")),
        ingress(
            "passthrough",
            host_rule("passthrough.example", "pass"),
            annotations={"meshgate.io/ssl-passthrough": "true"},
        ),
    ]


@pytest.fixture(scope="module")
def tgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsGateway]:
    tmp = tmp_path_factory.mktemp("ingress-tls")
    ca = trustme.CA()
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    certs = {
        "a": ca.issue_cert("a.example"),
        "b": ca.issue_cert("b.example"),
        "both": ca.issue_cert("both1.example", "both2.example"),
        "pass": ca.issue_cert("passthrough.example"),
        "wild": ca.issue_cert("*.wild.example"),
    }
    web = HttpBackend("web", "127.0.0.2")
    passthrough = with_tls(HttpBackend("pass", "127.0.0.3"), certs["pass"])
    with contextlib.ExitStack() as stack:
        stack.enter_context(serving(web, passthrough))
        docs = [
            *service_for(web),
            *service_for(passthrough),
            tls_secret("a-tls", certs["a"]),
            tls_secret("b-tls", certs["b"]),
            tls_secret("both-tls", certs["both"]),
            tls_secret("wild-tls", certs["wild"]),
            *ingresses(),
        ]
        manifests = write_manifests(tmp / "ingress.yaml", docs)
        http, https = free_port(), free_port()
        mg = start_meshgate(manifests, tmp, http, https)
        stack.callback(mg.stop)
        yield TlsGateway(mg, http, https, ca_file, certs, web, passthrough)


def test_tls_hosts_get_the_certificate_of_their_secret(tgw: TlsGateway) -> None:
    assert dns_names(presented(tgw.https, "a.example")) == ["a.example"]
    assert dns_names(presented(tgw.https, "B.Example")) == ["b.example"]
    both = presented(tgw.https, "both2.example")
    assert dns_names(both) == ["both1.example", "both2.example"]
    assert both == leaf(tgw.certs["both"])

    for host in ("a.example", "b.example", "both1.example", "both2.example"):
        reply = tgw.get(host, "/hello")
        assert reply.status == 200, host
        assert reply.service == "web"
        assert reply.json()["headers"]["host"] == f"{host}:{tgw.https}"


def test_wildcard_tls_host(tgw: TlsGateway) -> None:
    assert presented(tgw.https, "x.wild.example") == leaf(tgw.certs["wild"])
    assert common_name(presented(tgw.https, "a.b.wild.example")) == DEFAULT_CN
    reply = tgw.get("x.wild.example", "/wild")
    assert reply.status == 200
    assert reply.service == "web"
    # Another name of the same wildcard certificate on that connection is fine.
    reply = tgw.get("x.wild.example", "/wild", headers=["Host: y.wild.example"])
    assert reply.status == 200
    assert reply.json()["headers"]["host"] == "y.wild.example"


@pytest.mark.parametrize("sni", ["plain.example", "unknown.example", "a.b.wild.example", None])
def test_other_hosts_get_the_default_certificate(tgw: TlsGateway, sni: str | None) -> None:
    cert = presented(tgw.https, sni)
    assert common_name(cert) == DEFAULT_CN
    assert cert.issuer == cert.subject  # self-signed


def test_a_host_without_tls_is_served_with_the_default_certificate(tgw: TlsGateway) -> None:
    reply = fetch(tgw.https, "/plain", host="plain.example", https=True, args=["-k"])
    assert reply.status == 200
    assert reply.service == "web"
    assert reply.json()["headers"]["x-forwarded-proto"] == "https"


def test_misdirected_request_421(tgw: TlsGateway) -> None:
    # SNI a.example (certificate A), Host b.example (certificate B).
    reply = tgw.get("a.example", "/misdirected", headers=["Host: b.example"])
    assert reply.status == 421
    assert not seen(tgw.web, "/misdirected")
    # One certificate covers both names: a client may reuse the connection.
    reply = tgw.get("both1.example", "/coalesced", headers=["Host: both2.example"])
    assert reply.status == 200
    assert reply.json()["headers"]["host"] == "both2.example"
    # SNI a.example, Host of a host without tls (the default certificate).
    assert tgw.get("a.example", "/misdirected", headers=["Host: plain.example"]).status == 421
    # The Host's case and port do not make it another host.
    reply = tgw.get("a.example", "/same", headers=[f"Host: A.EXAMPLE:{tgw.https}"])
    assert reply.status == 200


def test_ssl_passthrough_reaches_the_backend_untouched(tgw: TlsGateway) -> None:
    cert = presented(tgw.https, "passthrough.example")
    assert cert == leaf(tgw.certs["pass"])  # the backend's certificate, not meshgate's
    reply = tgw.get("passthrough.example", "/through")
    assert reply.status == 200
    assert reply.service == "pass"
    headers = reply.json()["headers"]
    assert "x-forwarded-for" not in headers  # no HTTP proxying happened
    assert "x-request-id" not in headers
    assert "x-request-id" not in reply.headers


def test_forwarded_proto_is_https_and_tls_hosts_redirect_on_http(tgw: TlsGateway) -> None:
    reply = tgw.get("a.example", "/proto?x=1")
    assert reply.status == 200  # no redirect on https: no loop
    headers = reply.json()["headers"]
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-port"] == str(tgw.https)
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert reply.json()["path"] == "/proto?x=1"

    reply = fetch(tgw.http, "/proto?x=1", host="a.example")
    assert reply.status == 308
    assert reply.headers["location"] == f"https://a.example:{tgw.https}/proto?x=1"
    # Following the redirect ends on the backend.
    reply = fetch(
        tgw.http,
        "/follow",
        host="a.example",
        args=[
            "-L",
            "--resolve",
            f"a.example:{tgw.https}:127.0.0.1",
            "--cacert",
            str(tgw.ca_file),
        ],
    )
    assert reply.status == 200
    assert reply.service == "web"
    # A host without tls is served on plain HTTP.
    assert fetch(tgw.http, "/plain", host="plain.example").service == "web"


def test_secret_rotation_on_sighup(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    first, second = ca.issue_cert("rot.example"), ca.issue_cert("rot.example")
    web = HttpBackend("web", "127.0.0.2")
    with serving(web):
        rotating = [
            *service_for(web),
            ingress(
                "rot",
                host_rule("rot.example", "web"),
                tls=[{"hosts": ["rot.example"], "secretName": "rot-tls"}],
            ),
        ]
        manifests = write_manifests(
            tmp_path / "rot.yaml", [*rotating, tls_secret("rot-tls", first)]
        )
        http, https = free_port(), free_port()
        mg = start_meshgate(manifests, tmp_path, http, https)
        try:
            assert presented(https, "rot.example") == leaf(first)
            ctx = ssl.create_default_context(cafile=str(ca_file))
            with (
                socket.create_connection(("127.0.0.1", https), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname="rot.example") as kept,
            ):
                write_manifests(manifests, [*rotating, tls_secret("rot-tls", second)])
                mg.signal(signal.SIGHUP)
                wait_for(
                    lambda: presented(https, "rot.example") == leaf(second),
                    "the rotated certificate",
                )
                # The connection made before goes on with its certificate.
                kept.sendall(
                    b"GET /kept HTTP/1.1\r\nHost: rot.example\r\nConnection: close\r\n\r\n"
                )
                answer = b""
                while chunk := kept.recv(65536):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200 "), answer
            reply = fetch(
                https, "/after", host="rot.example", https=True, args=["--cacert", str(ca_file)]
            )
            assert reply.status == 200
            assert reply.service == "web"
        finally:
            mg.stop()
