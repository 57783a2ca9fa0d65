"""tls listeners with real TLS peers: SNI passthrough, termination,
re-origination with a new SNI, and the PROXY header to nginx.

Certificates come from trustme; servers are `openssl s_server`, a Python
http.server and nginx; clients are curl, `openssl s_client` and Python's ssl.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from meshgate.protocols.proxy_protocol import parse_proxy_header
from meshgate.protocols.result import NEED_MORE
from tests.integration.harness import (
    Meshgate,
    Peer,
    free_port,
    port_open,
    require,
    running,
    terminating_config,
    wait_for,
)

NAMES = ["a.example.com", "b.wild.example.com", "c.example.com", "default.example.com"]


class Pki:
    """A test CA and certificate files written into a directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca = trustme.CA()
        self.ca_file = tmp / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def issue(self, label: str, *names: str) -> tuple[str, str]:
        cert = self.ca.issue_cert(*names)
        cert_path, key_path = self.tmp / f"{label}.crt", self.tmp / f"{label}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(cert_path), append=True)
        cert.private_key_pem.write_to_path(str(key_path))
        return str(cert_path), str(key_path)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def s_server(peers: Callable[..., Peer], pki: Pki) -> Callable[..., int]:
    """`openssl s_server -www` presenting a certificate for `names`."""

    def start(label: str, *names: str, extra: list[str] | None = None) -> int:
        require("openssl")
        cert, key = pki.issue(label, *names)
        port = free_port()
        argv = [
            "openssl",
            "s_server",
            "-quiet",
            "-accept",
            str(port),
            "-cert",
            cert,
            "-key",
            key,
            "-www",
            *(extra or []),
        ]
        peers(argv, port)
        return port

    return start


def peer_names(port: int, sni: str | None, ca: Path) -> list[str]:
    """Connect with Python's ssl, return the DNS names of the presented certificate."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        cert = tls.getpeercert()
    assert cert is not None
    names: list[str] = []
    for entry in cert.get("subjectAltName", ()):
        kind, value = entry[0], entry[1]
        if kind == "DNS" and isinstance(value, str):
            names.append(value)
    return names


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    require("curl")
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, check=False
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_sni_passthrough_routes_exact_wildcard_and_default(
    s_server: Callable[..., int], pki: Pki, tmp_path: Path
) -> None:
    a = s_server("a", "a.example.com")
    wild = s_server("wild", "*.wild.example.com")
    c = s_server("c", "c.example.com")
    default = s_server("default", "default.example.com")
    port = free_port()
    config = write(
        tmp_path / "tls.yaml",
        f"""
listeners:
  - name: edge
    address: 127.0.0.1
    port: {port}
    protocol: tls
    routes:
      - {{sni: [a.example.com], backend: a}}
      - {{sni: ["*.wild.example.com"], backend: wild}}
      - {{sni: [C.Example.com], backend: c}}
      - {{default: true, backend: default}}
backends:
  - {{name: a, endpoints: ["127.0.0.1:{a}"]}}
  - {{name: wild, endpoints: ["127.0.0.1:{wild}"]}}
  - {{name: c, endpoints: ["127.0.0.1:{c}"]}}
  - {{name: default, endpoints: ["127.0.0.1:{default}"]}}
""",
    )
    with running(["-c", str(config)], tmp_path) as mg:
        assert peer_names(port, "a.example.com", pki.ca_file) == ["a.example.com"]
        assert peer_names(port, "C.EXAMPLE.COM", pki.ca_file) == ["c.example.com"]
        assert peer_names(port, "x.wild.example.com", pki.ca_file) == ["*.wild.example.com"]
        # A wildcard covers exactly one label: these fall through to the default.
        for name in ("y.x.wild.example.com", "wild.example.com", "other.org"):
            assert peer_names(port, name, pki.ca_file) == ["default.example.com"]
        # No SNI at all: the default route.
        assert peer_names(port, None, pki.ca_file) == ["default.example.com"]
        # A real client verifying the name end to end.
        out = curl(
            "--cacert",
            str(pki.ca_file),
            "--resolve",
            f"a.example.com:{port}:127.0.0.1",
            f"https://a.example.com:{port}/",
        )
        assert out.returncode == 0, out.stderr
        assert "s_server" in out.stdout
        assert mg.metric("meshgate_connections_total", listener="edge") >= 7


def test_unknown_sni_without_default_and_bad_hellos_are_closed_and_counted(
    s_server: Callable[..., int], pki: Pki, tmp_path: Path
) -> None:
    a = s_server("a", "a.example.com")
    port = free_port()
    config = write(
        tmp_path / "tls.yaml",
        f"""
listeners:
  - name: edge
    address: 127.0.0.1
    port: {port}
    protocol: tls
    tls: {{hello_timeout: 500ms}}
    routes:
      - {{sni: [a.example.com], backend: a}}
backends:
  - {{name: a, endpoints: ["127.0.0.1:{a}"]}}
""",
    )
    with running(["-c", str(config)], tmp_path) as mg:
        for sni in ("nope.example.com", None):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                peer_names(port, sni, pki.ca_file)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100) == b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"\x16\x03\x01")  # a hello that never completes
            assert s.recv(100) == b""  # closed at the hello deadline
        wait_for(
            lambda: mg.metric("meshgate_tls_rejected_total", reason="hello_timeout") == 1,
            "hello_timeout counted",
        )
        assert mg.metric("meshgate_tls_rejected_total", reason="unknown_sni") == 1
        assert mg.metric("meshgate_tls_rejected_total", reason="no_sni") == 1
        assert mg.metric("meshgate_tls_rejected_total", reason="not_tls") == 1
        # The listener is unharmed.
        assert peer_names(port, "a.example.com", pki.ca_file) == ["a.example.com"]


def http_server(peers: Callable[..., Peer], root: Path) -> int:
    port = free_port()
    (root / "index.html").write_text("plaintext backend\n")
    peers(
        [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(root),
            str(port),
        ],
        port,
    )
    return port


def test_terminate_serves_the_route_certificate_and_sends_plaintext(
    peers: Callable[..., Peer], pki: Pki, tmp_path: Path
) -> None:
    (tmp_path / "www").mkdir()
    backend = http_server(peers, tmp_path / "www")
    cert, key = pki.issue("term", "term.example.com")
    dcert, dkey = pki.issue("fallback", "fallback.example.com")
    port = free_port()
    config = write(
        tmp_path / "tls.yaml",
        f"""
listeners:
  - name: edge
    address: 127.0.0.1
    port: {port}
    protocol: tls
    tls: {{default_certificate: {{cert: {dcert}, key: {dkey}}}}}
    routes:
      - sni: [term.example.com]
        mode: terminate
        certificate: {{cert: {cert}, key: {key}}}
        alpn: [http/1.1]
        backend: web
      - {{default: true, mode: terminate, backend: web}}
backends:
  - {{name: web, endpoints: ["127.0.0.1:{backend}"]}}
""",
    )
    with running(["-c", str(config)], tmp_path) as mg:
        out = curl(
            "--cacert",
            str(pki.ca_file),
            "--resolve",
            f"term.example.com:{port}:127.0.0.1",
            f"https://term.example.com:{port}/",
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == "plaintext backend\n"
        assert peer_names(port, "other.example.com", pki.ca_file) == ["fallback.example.com"]
        assert mg.metric("meshgate_tls_handshakes_total", listener="edge") >= 2
        # TLS 1.1 is refused (Mozilla intermediate: 1.2 minimum), 1.2 accepted.
        for version, accepted in (("-tls1_1", False), ("-tls1_2", True)):
            hello = subprocess.run(
                [
                    "openssl",
                    "s_client",
                    "-connect",
                    f"127.0.0.1:{port}",
                    version,
                    "-servername",
                    "term.example.com",
                    "-cipher",
                    "DEFAULT:@SECLEVEL=0",
                ],
                input="",
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            assert (hello.returncode == 0) is accepted, hello.stdout + hello.stderr


def test_reoriginate_with_configured_sni_and_verified_upstream(
    s_server: Callable[..., int], pki: Pki, tmp_path: Path
) -> None:
    tenant = "tenant-01.k8s.example.com"
    cert2, key2 = pki.issue("tenant", tenant)
    # The upstream answers only a client that asks for the tenant's name.
    upstream = s_server(
        "shared",
        "ingress.example.com",
        extra=["-servername", tenant, "-cert2", cert2, "-key2", key2, "-servername_fatal"],
    )
    front_cert, front_key = pki.issue("front", "kubernetes.default.svc", "127.0.0.1")
    (tmp_path / "other").mkdir()
    other_ca = Pki(tmp_path / "other")
    port, bad_port = free_port(), free_port()

    def listener(name: str, listen: int, backend: str) -> str:
        return f"""
  - name: {name}
    address: 127.0.0.1
    port: {listen}
    protocol: tls
    routes:
      - default: true
        mode: terminate
        certificate: {{cert: {front_cert}, key: {front_key}}}
        backend: {backend}"""

    config = write(
        tmp_path / "tls.yaml",
        f"""
listeners:{listener("bridge", port, "tenant")}{listener("wrong-ca", bad_port, "tenant-bad")}
backends:
  - name: tenant
    endpoints: ["{tenant}:{upstream}"]
    tls: {{sni: {tenant}, ca: {pki.ca_file}}}
  - name: tenant-bad
    endpoints: ["{tenant}:{upstream}"]
    tls: {{ca: {other_ca.ca_file}}}
resolve:
  {tenant}: 127.0.0.1
""",
    )
    with running(["-c", str(config)], tmp_path) as mg:
        # The client connects by IP and sends no SNI, as kubectl to an IP does.
        out = curl("--cacert", str(pki.ca_file), f"https://127.0.0.1:{port}/")
        assert out.returncode == 0, out.stderr
        assert "s_server" in out.stdout
        # Against a CA that did not sign the upstream: fail closed, counted.
        bad = curl("--cacert", str(pki.ca_file), f"https://127.0.0.1:{bad_port}/")
        assert bad.returncode != 0
        assert "s_server" not in bad.stdout
        wait_for(
            lambda: mg.metric("meshgate_connect_failures_total", reason="tls_verify") >= 1,
            "tls_verify failure counted",
        )


def test_bad_certificate_rejected_at_start_and_on_reload(pki: Pki, tmp_path: Path) -> None:
    cert, key = pki.issue("good", "good.example.com")
    port = free_port()
    config = tmp_path / "tls.yaml"

    def write_config(cert_path: str) -> None:
        config.write_text(terminating_config(port, cert_path, key, 9))

    broken = tmp_path / "broken.crt"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot a cert\n-----END CERTIFICATE-----\n")
    write_config(str(broken))
    result = subprocess.run(
        [sys.executable, "-m", "meshgate", "run", "-c", str(config), "--admin", "off"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert str(broken) in result.stderr
    assert not port_open(port)

    write_config(cert)
    mg = Meshgate(["-c", str(config)], tmp_path).wait_ready()
    try:
        write_config(str(tmp_path / "missing.crt"))
        mg.signal(signal.SIGHUP)
        wait_for(lambda: mg.json("/status")["last_reload"]["result"] == "rejected", "rejection")
        assert "missing.crt" in mg.json("/status")["last_reload"]["error"]
        assert peer_names(port, "good.example.com", pki.ca_file) == ["good.example.com"]
    finally:
        mg.stop()


NGINX_CONF = """
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{ return 200 "client=$proxy_protocol_addr:$proxy_protocol_port\\n"; }}
    }}
}}
"""


@pytest.fixture
def nginx_pp(peers: Callable[..., Peer], tmp_path: Path) -> int:
    nginx = require("nginx")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp_path, port=port))
    peers([nginx, "-p", str(tmp_path), "-c", str(conf)], port)
    return port


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_header_reaches_nginx(nginx_pp: int, version: str, tmp_path: Path) -> None:
    port = free_port()
    config = write(
        tmp_path / "pp.yaml",
        f"""
listeners:
  - {{name: pp, address: 127.0.0.1, port: {port}, backend: nginx}}
backends:
  - {{name: nginx, endpoints: ["127.0.0.1:{nginx_pp}"], proxy_protocol: {version}}}
""",
    )
    with running(["-c", str(config)], tmp_path):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            local_port = s.getsockname()[1]
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        # nginx saw the mesh client's own address and port, not meshgate's.
        assert reply.endswith(f"client=127.0.0.1:{local_port}\n".encode())


def test_proxy_header_accepted_from_trusted_sources_only(nginx_pp: int, tmp_path: Path) -> None:
    # front -> (PROXY v2) -> back (accepts from 127.0.0.1) -> (PROXY v1) -> nginx:
    # nginx must see the original client, two hops away.
    front, back, closed = free_port(), free_port(), free_port()
    config = write(
        tmp_path / "pp.yaml",
        f"""
listeners:
  - {{name: front, address: 127.0.0.1, port: {front}, backend: back}}
  - name: back
    address: 127.0.0.1
    port: {back}
    backend: nginx
    proxy_protocol: {{trusted: [127.0.0.1/32], timeout: 500ms}}
  - name: closed
    address: 127.0.0.1
    port: {closed}
    backend: nginx
    proxy_protocol: {{trusted: [10.0.0.0/8]}}
backends:
  - {{name: back, endpoints: ["127.0.0.1:{back}"], proxy_protocol: v2}}
  - {{name: nginx, endpoints: ["127.0.0.1:{nginx_pp}"], proxy_protocol: v1}}
""",
    )

    def ask(port: int, prefix: bytes = b"") -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(prefix + b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            reply = b""
            # Closing with our request unread makes the kernel send a reset.
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(4096):
                    reply += chunk
            return s.getsockname()[1], reply

    with running(["-c", str(config)], tmp_path) as mg:
        local_port, reply = ask(front)
        assert reply.endswith(f"client=127.0.0.1:{local_port}\n".encode())
        # A header announcing another client is believed from a trusted source.
        _, reply = ask(back, b"PROXY TCP4 192.0.2.7 127.0.0.1 4321 80\r\n")
        assert reply.endswith(b"client=192.0.2.7:4321\n")
        # No header, or a source outside the trusted ranges: closed, counted.
        assert ask(back)[1] == b""
        assert ask(closed, b"PROXY TCP4 192.0.2.7 127.0.0.1 4321 80\r\n")[1] == b""
        with socket.create_connection(("127.0.0.1", back), timeout=10) as s:
            assert s.recv(10) == b""  # header deadline
        assert mg.metric("meshgate_proxy_protocol_rejected_total", reason="no_proxy_header") == 1
        assert mg.metric("meshgate_proxy_protocol_rejected_total", reason="untrusted_source") == 1
        assert (
            mg.metric("meshgate_proxy_protocol_rejected_total", reason="proxy_header_timeout") == 1
        )


def test_renewed_certificate_files_are_picked_up_without_dropping_connections(
    peers: Callable[..., Peer], pki: Pki, tmp_path: Path
) -> None:
    (tmp_path / "www").mkdir()
    backend = http_server(peers, tmp_path / "www")
    old_cert, old_key = pki.issue("old", "svc.example.com", "old.example.com")
    new_cert, new_key = pki.issue("new", "svc.example.com", "new.example.com")
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    live_cert.write_bytes(Path(old_cert).read_bytes())
    live_key.write_bytes(Path(old_key).read_bytes())
    port = free_port()
    config = write(tmp_path / "tls.yaml", terminating_config(port, live_cert, live_key, backend))
    with running(["-c", str(config)], tmp_path) as mg:
        ctx = ssl.create_default_context(cafile=str(pki.ca_file))
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        held = ctx.wrap_socket(raw, server_hostname="svc.example.com")
        assert "old.example.com" in str(held.getpeercert())
        # Renew, as cert-manager would: new files in place.
        live_key.write_bytes(Path(new_key).read_bytes())
        live_cert.write_bytes(Path(new_cert).read_bytes())
        wait_for(
            lambda: "new.example.com" in peer_names(port, "svc.example.com", pki.ca_file),
            "renewed certificate served",
        )
        assert mg.json("/config")["version"] >= 2
        # The connection made before the renewal still works.
        held.sendall(b"GET /index.html HTTP/1.0\r\nHost: svc\r\n\r\n")
        reply = b""
        while chunk := held.recv(4096):
            reply += chunk
        assert reply.endswith(b"plaintext backend\n")
        held.close()


async def test_proxy_v2_carries_the_sni_of_a_passthrough_route(tmp_path: Path) -> None:
    # The backend reads meshgate's PROXY v2 header itself and reports the
    # authority (the client's SNI) and the client address it carries.
    seen: list[tuple[str | None, tuple[str, int] | None]] = []

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        while (header := parse_proxy_header(buf)) is NEED_MORE:
            buf += await reader.read(1024)
        seen.append((header.authority, header.source))
        writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    upstream = server.sockets[0].getsockname()[1]
    port = free_port()
    config = write(
        tmp_path / "tls.yaml",
        f"""
listeners:
  - name: edge
    address: 127.0.0.1
    port: {port}
    protocol: tls
    routes:
      - {{sni: ["*.tenants.example.com"], backend: tenants}}
backends:
  - {{name: tenants, endpoints: ["127.0.0.1:{upstream}"], proxy_protocol: v2}}
""",
    )
    with running(["-c", str(config)], tmp_path):
        ctx = ssl.create_default_context()
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        local = writer.get_extra_info("sockname")
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await asyncio.wait_for(
                writer.start_tls(ctx, server_hostname="t7.tenants.example.com"), 10
            )
        writer.close()
    server.close()
    await server.wait_closed()
    assert seen == [("t7.tenants.example.com", ("127.0.0.1", local[1]))]
