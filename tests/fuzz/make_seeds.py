"""Regenerate the seed inputs of tests/fuzz/corpus/<harness>/ (files named seed-*).

    .venv/bin/python -m tests.fuzz.make_seeds            # all harnesses
    .venv/bin/python -m tests.fuzz.make_seeds tls_hello  # one

Seeds are real inputs: ClientHellos captured from `openssl s_client` and
Python's ssl module (the first bytes each sends to a socket listening on
127.0.0.1), PROXY headers from our encoders and the spec's examples, HTTP
messages including the smuggling shapes of tests/integration/test_http_proxy.py,
DNS queries built with dnslib, and the YAML of examples/ and
tests/fixtures/manifests. Files the fuzzer found (named by their SHA-1) are
left alone; stale seed-* files are replaced. Each file stays under
`contracts.MAX_INPUT` bytes.

The hello captures need the `openssl` binary (Debian package openssl); without
it those seeds are skipped with a message and the others still written.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from dnslib import EDNS0, QTYPE, DNSHeader, DNSQuestion, DNSRecord

from meshgate.config.annotations import ANNOTATIONS, NGINX_PREFIX, PREFIX
from meshgate.protocols.proxy_protocol import encode_v1, encode_v2
from meshgate.protocols.result import NEED_MORE
from meshgate.protocols.tls_hello import ClientHello, parse_client_hello
from tests.fuzz.contracts import HTTP_CONTROL, MAX_INPUT

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
CAPTURE_TIMEOUT = 5.0

Seeds = dict[str, bytes]


# --- TLS ClientHellos, captured -----------------------------------------------------


@contextlib.contextmanager
def _listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(CAPTURE_TIMEOUT)
        yield server


def _read_hello(server: socket.socket) -> bytes:
    """Accept one connection and read until a whole ClientHello has arrived."""
    conn, _ = server.accept()
    with conn:
        conn.settimeout(CAPTURE_TIMEOUT)
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                raise RuntimeError(f"client closed after {len(buf)} bytes")
            buf += data
            result = parse_client_hello(buf)
            if isinstance(result, ClientHello):
                return result.raw
            assert result is NEED_MORE


def _capture(client: Callable[[int], None]) -> bytes:
    """The hello `client(port)` sends; the client is cut off right after it."""
    with _listener() as server:
        port = server.getsockname()[1]
        thread = threading.Thread(target=client, args=(port,), daemon=True)
        thread.start()
        try:
            return _read_hello(server)
        finally:
            thread.join(CAPTURE_TIMEOUT)


def _openssl(*args: str) -> Callable[[int], None]:
    def client(port: int) -> None:
        command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args]
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=CAPTURE_TIMEOUT,
                check=False,
            )

    return client


def _python_ssl(
    server_hostname: str | None,
    alpn: list[str] | None = None,
    version: ssl.TLSVersion | None = None,
) -> Callable[[int], None]:
    def client(port: int) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if alpn:
            context.set_alpn_protocols(alpn)
        if version is not None:
            context.minimum_version = context.maximum_version = version
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=CAPTURE_TIMEOUT) as sock,
            context.wrap_socket(sock, server_hostname=server_hostname),
        ):
            pass  # the handshake fails when the capturing side closes

    return client


LONG_NAME = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters


def tls_hello_seeds() -> Seeds:
    seeds: Seeds = {}
    clients: dict[str, Callable[[int], None]] = {
        "python-sni-alpn": _python_ssl("app.example.test", ["h2", "http/1.1"]),
        "python-no-sni": _python_ssl(None),
        "python-tls12": _python_ssl("web.example.test", None, ssl.TLSVersion.TLSv1_2),
        "python-tls13": _python_ssl("MiXeD.Example.Test.", ["http/1.1"], ssl.TLSVersion.TLSv1_3),
        "python-long-name": _python_ssl(LONG_NAME),
    }
    if shutil.which("openssl"):
        clients |= {
            "openssl-sni-alpn": _openssl("-servername", "app.example.test", "-alpn", "h2,http/1.1"),
            "openssl-no-sni": _openssl("-noservername"),
            "openssl-tls12": _openssl("-servername", "api.example.test", "-tls1_2"),
            "openssl-tls13": _openssl("-servername", "x.test", "-tls1_3", "-alpn", "acme-tls/1"),
            "openssl-underscore": _openssl("-servername", "_svc.my_host.test"),
        }
    else:
        print("make_seeds: no openssl binary, only Python ssl hellos", file=sys.stderr)
    for name, client in clients.items():
        seeds[name] = _capture(client)
    # Shapes real clients produce less often, from a captured hello.
    hello = seeds["python-sni-alpn"]
    message = hello[5:]
    cut = len(message) // 3
    seeds["fragmented"] = b"".join(
        b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part
        for part in (message[:cut], message[cut : 2 * cut], message[2 * cut :])
    )
    seeds["hello-then-data"] = hello + b"\x14\x03\x03\x00\x01\x01\x17\x03\x03\x00\x05hello"
    seeds["prefix"] = hello[: len(hello) // 2]
    seeds["sslv2"] = b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10" + bytes(37)
    seeds["http-not-tls"] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    return seeds


# --- PROXY protocol -----------------------------------------------------------------


def _tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def _v2(ver_cmd: int, family: int, block: bytes) -> bytes:
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    return signature + bytes([ver_cmd, family]) + len(block).to_bytes(2, "big") + block


def proxy_protocol_seeds() -> Seeds:
    http = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    v4 = (("192.168.0.1", 56324), ("192.168.0.11", 443))
    v6 = (("fd00::1", 1234), ("2001:db8::2", 80))
    seeds: Seeds = {
        "v1-spec-example": b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n" + http,
        "v1-tcp4": encode_v1(*v4),
        "v1-tcp6": encode_v1(*v6),
        "v1-mapped": encode_v1(("10.0.0.1", 1), ("fd00::2", 2)),
        "v1-tcp6-dotted": b"PROXY TCP6 ::ffff:1.2.3.4 ::1 65535 0\r\n",
        "v1-unknown": b"PROXY UNKNOWN\r\n" + http,
        "v1-unknown-worst": b"PROXY UNKNOWN "
        + b"ffff:" * 7
        + b"ffff "
        + b"ffff:" * 7
        + b"ffff 65535 65535\r\n",
        "v1-prefix": b"PROXY TCP4 192.168.",
        "v2-local": encode_v2(None, None),
        "v2-tcp4": encode_v2(*v4) + b"\x16\x03\x01\x00\x05hello",
        "v2-tcp6-authority": encode_v2(*v6, authority="app.example.test"),
        "v2-authority-utf8": encode_v2(*v4, authority="bücher.example"),
        "v2-udp4": _v2(0x21, 0x12, bytes(12)),
        "v2-unix": _v2(0x21, 0x31, bytes(216)),
        "v2-unspec-tlvs": _v2(
            0x21,
            0x00,
            _tlv(0x01, b"h2") + _tlv(0x04, bytes(3)) + _tlv(0x03, bytes(4)) + _tlv(0x20, bytes(5)),
        ),
        "v2-prefix": encode_v2(*v6, authority="a.test")[:30],
        "not-proxy": http,
    }
    return seeds


# --- HTTP/1.1 -----------------------------------------------------------------------

# Control bytes (contracts.HTTP_CONTROL): flags (1 small limits, 2 EOF, 4 byte-wise),
# then three split points as fractions of the payload.
CONTROLS = {
    "whole": b"\x00\x00\x00\x00",
    "split": b"\x02\x40\x80\xc0",
    "small": b"\x05\x11\x77\xee",
}
assert all(len(c) == HTTP_CONTROL for c in CONTROLS.values())

POST = b"POST /smuggle HTTP/1.1\r\nHost: a.example\r\n"
GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
REQUESTS: Seeds = {
    "get": GET,
    "get-query-headers": b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: example.com:8080\r\n"
    b"User-Agent: curl/8.5.0\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
    "post-length": b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    "post-chunked": b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    "pipelined": GET + b"POST /2 HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\n\r\nabc" + GET,
    "http10-keepalive": b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + GET,
    "http10-close": b"GET /old HTTP/1.0\r\n\r\nGET /ignored HTTP/1.0\r\n\r\n",
    "close-then-more": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + GET,
    "absolute-form": b"GET http://example.com:81/p?q HTTP/1.1\r\nHost: other\r\n\r\n",
    "options-asterisk": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "websocket": b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
    "expect-continue": b"PUT /big HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
    b"Content-Length: 4\r\n\r\nbody",
    "empty-lines-first": b"\r\n\r\n" + GET,
    "connect": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "truncated-body": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
    # The smuggling shapes of tests/integration/test_http_proxy.py.
    "cl-and-te": POST + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    "two-content-lengths": POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "content-length-list": POST + b"Content-Length: 5, 5\r\n\r\nhello",
    "content-length-plus": POST + b"Content-Length: +5\r\n\r\nhello",
    "te-chunked-identity": POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-gzip-chunked": POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te-xchunked": POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-obs-fold": POST + b"Transfer-Encoding: identity\r\n chunked\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "nul-in-value": POST + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "bare-cr-in-value": POST + b"X-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    "bare-lf-in-value": POST + b"X-A: a\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "non-token-name": POST + b"X[A]: b\r\nContent-Length: 0\r\n\r\n",
    "missing-host": b"GET /smuggle HTTP/1.1\r\nX-A: b\r\n\r\n",
    "two-hosts": b"GET /smuggle HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    "chunk-size-overflow": POST + b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
    "chunk-bad-crlf": POST + b"Transfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n",
    "upgrade-chunked": b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}

RESPONSES: dict[str, tuple[int, bytes]] = {
    # name: (methods byte, upstream bytes); methods byte: count-1, then 2 bits per
    # method (0 GET, 1 HEAD, 2 POST).
    "ok-length": (0x00, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    "chunked-trailers": (
        0x00,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;x=y\r\nabc\r\n1\r\nd\r\n0\r\nEtag: 1\r\n\r\n",
    ),
    "until-close": (0x00, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"),
    "http10": (0x00, b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc"),
    "no-content-then-ok": (
        0x01,
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    ),
    "not-modified-length": (0x00, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n"),
    "head-with-length": (
        0x05,
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nHTTP/1.1 404 Not Found\r\n"
        b"Content-Length: 0\r\n\r\n",
    ),
    "continue-then-ok": (
        0x08,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    ),
    "switching": (
        0x00,
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"\x81\x02hi",
    ),
    "reason-obs-text": (0x00, b"HTTP/1.1 200 Fine\tand \xe9\r\nContent-Length: 0\r\n\r\n"),
    "no-reason": (0x00, b"HTTP/1.1 204\r\n\r\n"),
    "three-pipelined": (
        0x02,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nc",
    ),
    "garbage": (0x00, b"SSH-2.0-OpenSSH_9.6\r\n"),
    "te-and-cl": (
        0x00,
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    ),
    "status-999": (0x00, b"HTTP/1.1 999 Nope\r\n\r\n"),
}


def http_request_seeds() -> Seeds:
    """Each message once, the split control bytes taking turns (the fuzzer varies them)."""
    controls = list(CONTROLS.items())
    seeds: Seeds = {}
    for index, (name, raw) in enumerate(REQUESTS.items()):
        control_name, control = controls[index % len(controls)]
        seeds[f"{name}-{control_name}"] = control + raw
    return seeds


def http_response_seeds() -> Seeds:
    controls = list(CONTROLS.items())
    seeds: Seeds = {}
    for index, (name, (methods, raw)) in enumerate(RESPONSES.items()):
        control_name, control = controls[index % len(controls)]
        seeds[f"{name}-{control_name}"] = control + bytes([methods]) + raw
    return seeds


# --- DNS ----------------------------------------------------------------------------


def _query(name: str, qtype: str = "A", **header: int) -> DNSRecord:
    record = DNSRecord(DNSHeader(id=0x1234, rd=1, **header))
    record.add_question(DNSQuestion(name, getattr(QTYPE, qtype)))
    return record


def dns_seeds() -> Seeds:
    queries: dict[str, DNSRecord] = {
        "a": _query("my-app.mesh.internal"),
        "aaaa": _query("dual.mesh.internal", "AAAA"),
        "any": _query("dual.mesh.internal", "ANY"),
        "soa-apex": _query("mesh.internal", "SOA"),
        "nodata": _query("team.mesh.internal", "TXT"),
        "nxdomain": _query("nope.mesh.internal"),
        "refused": _query("example.com"),
        "mixed-case": _query("My-App.MESH.internal"),
        "many-truncated": _query("many.mesh.internal"),
        "notify": _query("mesh.internal", "SOA", opcode=4),
        "response": _query("my-app.mesh.internal", qr=1),
        "nested-zone": _query("deep.a.b.svc.test"),
    }
    edns = _query("many.mesh.internal")
    edns.add_ar(EDNS0(udp_len=4096))
    queries["edns"] = edns
    badvers = _query("my-app.mesh.internal")
    badvers.add_ar(EDNS0(version=1))
    queries["edns-badvers"] = badvers
    two_opts = _query("my-app.mesh.internal")
    two_opts.add_ar(EDNS0())
    two_opts.add_ar(EDNS0())
    queries["two-opts"] = two_opts
    two_questions = _query("my-app.mesh.internal")
    two_questions.add_question(DNSQuestion("dual.mesh.internal"))
    queries["two-questions"] = two_questions
    queries["no-question"] = DNSRecord(DNSHeader(id=7))
    chaos = DNSRecord(DNSHeader(id=9))
    chaos.add_question(DNSQuestion("version.bind", QTYPE.TXT, 3))
    queries["chaos"] = chaos
    seeds: Seeds = {name: bytes(query.pack()) for name, query in queries.items()}
    for name in ("a", "edns"):
        seeds[f"{name}-tcp-frame"] = len(seeds[name]).to_bytes(2, "big") + seeds[name]
    seeds["compression-loop"] = bytes.fromhex("12340100000100000000000003616263c00c00010001")
    return seeds


# --- YAML ---------------------------------------------------------------------------

CONFIGS: dict[str, str] = {
    "tcp-udp": """\
listeners:
  - name: web
    address: 100.100.0.2
    port: 80
    backend: web
    dns_name: web.mesh.internal
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
    proxy_protocol: v2
  - name: dns
    endpoints: ["100.100.0.1:53"]
admin: 127.0.0.1:9901
drain_timeout: 10s
""",
    "tls-routes": """\
listeners:
  - name: tls
    port: 443
    protocol: tls
    proxy_protocol: {trusted: [10.0.0.0/8, "fd00::/8"], timeout: 2s}
    tls: {hello_timeout: 3s, max_hello: 8192}
    routes:
      - {sni: [app.example.test, "*.apps.example.test"], backend: app}
      - {default: true, backend: app}
backends:
  - {name: app, endpoints: ["127.0.0.1:8443"], allow_empty: true}
""",
    "http-routes": """\
listeners:
  - name: web
    port: 8080
    protocol: http
    http:
      max_request_line: 4096
      routes:
        - {host: a.example, path: /exact, path_type: Exact, backend: a}
        - {host: "*.b.example", path: "/api(/|$)(.*)", path_type: Regex,
           rewrite_target: /$2, backend: a, read_timeout: 30s, max_body: 1048576}
        - {path: /, app_root: /app, ssl_redirect: true, allow: [10.0.0.0/8]}
      default_backend: a
backends:
  - {name: a, builtin: hello}
""",
    "anchors": """\
backends:
  - {name: a, builtin: echo, timeouts: &t {connect: 1s}}
  - {name: b, builtin: echo, timeouts: {<<: *t, idle: 2s}}
""",
    "duplicate-key": "listeners: []\nlisteners: []\nbackends: []\n",
    "typo": "listeners:\n  - name: x\n    prot: 80\n    backend: y\nbackend: []\n",
    "not-a-mapping": "- a\n- b\n",
    "bad-syntax": "listeners: [\n  {name: x, port: 80\n",
    "tab": "listeners:\n\t- name: x\n",
    "empty": "",
    "tags": "listeners: !!python/object:os.system [echo]\n",
}

RULES: dict[str, str] = {
    "basic": "127.0.0.1\ntcp:80:web:8080\nudp:53:100.100.0.1:53",
    "ipv6": "auto\nTCP:443:[fd00::1]:443\ntcp:8443:10.0.0.1:443\ntcp:443:[fd00::2]:443",
    "interface": "wg0\ntcp:80:web.default.svc:80\ntcp:80:web.default.svc:80",
    "bad": "::1\ntcp:0:web:80\nsctp:80:web:80\ntcp:80:fd00::1:80\ntcp:80:web\n:::",
    "overlap": "0.0.0.0\ntcp:80:a:80\ntcp:80:b:80",
}


def _read(path: Path) -> bytes:
    return path.read_bytes()


def config_seeds() -> Seeds:
    seeds: Seeds = {name: text.encode() for name, text in CONFIGS.items()}
    seeds["quickstart"] = _read(ROOT / "examples" / "quickstart.yaml")
    return seeds


def rules_seeds() -> Seeds:
    return {name: text.encode() for name, text in RULES.items()}


def manifests_seeds() -> Seeds:
    ingress = ROOT / "examples" / "ingress"
    fixtures = ROOT / "tests" / "fixtures" / "manifests"
    seeds: Seeds = {path.stem: _read(path) for path in sorted(fixtures.iterdir())}
    parts = {path.stem[3:]: _read(path) for path in sorted(ingress.glob("*.yaml"))}
    seeds["example-services-ingress"] = parts["services"] + b"---\n" + parts["ingress"]
    seeds["example-slices-ingress"] = parts["endpointslices"] + b"---\n" + parts["ingress"]
    seeds["example-secret-ingress"] = parts["secret"] + b"---\n" + parts["ingress"]
    seeds["example-services-slices"] = parts["services"] + b"---\n" + parts["endpointslices"]
    seeds["https-backend"] = b"""\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: secure
  namespace: prod
  creationTimestamp: "2024-01-02T03:04:05Z"
  annotations:
    meshgate.io/backend-protocol: HTTPS
    meshgate.io/proxy-ssl-name: api.prod.svc
    meshgate.io/proxy-ssl-secret: prod/ca
    nginx.ingress.kubernetes.io/ssl-passthrough: "false"
    nginx.ingress.kubernetes.io/whitelist-source-range: 10.0.0.0/8, fd00::/8
    meshgate.io/app-root: /home
spec:
  ingressClassName: meshgate
  defaultBackend: {service: {name: api, port: {number: 443}}}
  rules:
    - host: "*.prod.example"
      http:
        paths:
          - {path: /v1, pathType: Exact, backend: {service: {name: api, port: {number: 443}}}}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: prod}
spec:
  type: ExternalName
  externalName: api.internal.example
  ports: [{port: 443, name: https}]
---
apiVersion: v1
kind: Secret
metadata: {name: ca, namespace: prod}
type: Opaque
data: {ca.crt: bm90IGEgY2VydA==}
"""
    return seeds


def annotations_seeds() -> Seeds:
    valid = {
        "rewrite-target": "/$2",
        "use-regex": "true",
        "ssl-redirect": "false",
        "force-ssl-redirect": "true",
        "backend-protocol": "HTTPS",
        "ssl-passthrough": "false",
        "proxy-connect-timeout": "5s",
        "proxy-read-timeout": "60",
        "proxy-body-size": "8m",
        "whitelist-source-range": "10.0.0.0/8, 192.168.0.1, fd00::/8",
        "app-root": "/app",
        "proxy-ssl-name": "api.prod.svc",
        "proxy-ssl-verify": "off",
        "proxy-ssl-secret": "prod/ca",
    }
    assert set(valid) == {a.name for a in ANNOTATIONS}, "a new annotation needs a seed value"
    lines = [f"{PREFIX}{name}={value}" for name, value in valid.items()]
    return {
        "meshgate-all": "\n".join(lines).encode(),
        "nginx-all": "\n".join(f"{NGINX_PREFIX}{n}={v}" for n, v in valid.items()).encode(),
        "aliases": (
            f"{PREFIX}allowlist-source-range=10.0.0.0/8\n"
            f"{NGINX_PREFIX}whitelist-source-range=10.0.0.0/8\n"
            f"{PREFIX}proxy-body-size=0"
        ).encode(),
        "contradiction": f"{PREFIX}use-regex=true\n{NGINX_PREFIX}use-regex=false".encode(),
        "bad-values": (
            f"{PREFIX}proxy-body-size=1x\n{PREFIX}proxy-read-timeout=-1\n"
            f"{PREFIX}backend-protocol=GRPC\n{PREFIX}whitelist-source-range= , \n"
            f"{PREFIX}rewrite-target=/a b\n{PREFIX}proxy-ssl-secret=noslash"
        ).encode(),
        "typo-and-non-string": (
            f"{PREFIX}rewrite-targt=/x\n{PREFIX}use-regex\n{NGINX_PREFIX}limit-rps=5\n"
            "kubectl.kubernetes.io/last-applied-configuration={}"
        ).encode(),
    }


HARNESSES: dict[str, Callable[[], Seeds]] = {
    "tls_hello": tls_hello_seeds,
    "proxy_protocol": proxy_protocol_seeds,
    "http_request": http_request_seeds,
    "http_response": http_response_seeds,
    "dns": dns_seeds,
    "config": config_seeds,
    "rules": rules_seeds,
    "manifests": manifests_seeds,
    "annotations": annotations_seeds,
}


def write(harness: str, seeds: Seeds) -> None:
    directory = CORPUS / harness
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("seed-*"):
        stale.unlink()
    for name, data in seeds.items():
        if len(data) > MAX_INPUT:
            raise ValueError(f"{harness}/{name} is {len(data)} bytes, over {MAX_INPUT}")
        (directory / f"seed-{name}").write_bytes(data)
    print(f"{harness}: {len(seeds)} seeds in {directory.relative_to(ROOT)}")


def main(names: list[str]) -> None:
    for name in names or list(HARNESSES):
        write(name, HARNESSES[name]())


if __name__ == "__main__":
    main(sys.argv[1:])
