"""Kubernetes Ingress end to end on plain HTTP: what a user of the Ingress notices.

`meshgate run --manifests DIR` serves Ingress, Service, EndpointSlice and
Secret objects written here from Python dicts. Backends are real HTTP/1.1
servers (`HttpBackend`) on 127.0.0.x addresses; each says which Service
answered and what request it saw. The client is curl (raw sockets where curl
cannot shape the request). One meshgate serves most tests of this module
(`gw`); reloads and the no-default-backend 404 get their own.

The helpers at the top (manifest builders, `fetch`, `with_tls`, `serving`) are
used by test_ingress_tls.py too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from tests.integration.harness import Meshgate, free_port, require, wait_for
from tests.integration.http_backend import HttpBackend

Doc = dict[str, Any]
NS = "default"
SERVICE_PORT = 80  # every test Service exposes port 80, named "http"

# --- manifest builders ------------------------------------------------------------------


def service(name: str) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "web"}]},
    }


def endpoint_slice(svc: str, address: str, port: int, *, ready: bool = True) -> Doc:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc}-abcde",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": ready}}],
    }


def service_at(svc: str, address: str, port: int, *, ready: bool = True) -> list[Doc]:
    """A Service and the EndpointSlice that puts it at address:port."""
    return [service(svc), endpoint_slice(svc, address, port, ready=ready)]


def service_for(backend: HttpBackend) -> list[Doc]:
    """A Service named like `backend`, at its address and port."""
    return service_at(backend.server.name, backend.host, backend.port)


def backend_ref(svc: str, by_name: bool = False) -> Doc:
    port = {"name": "http"} if by_name else {"number": SERVICE_PORT}
    return {"service": {"name": svc, "port": port}}


def http_path(path: str, svc: str, path_type: str = "Prefix") -> Doc:
    return {"path": path, "pathType": path_type, "backend": backend_ref(svc)}


def rule(host: str | None, *paths: Doc) -> Doc:
    out: Doc = {"http": {"paths": list(paths)}}
    if host is not None:
        out["host"] = host
    return out


def host_rule(host: str, svc: str) -> Doc:
    """`host` with one `/` Prefix path to `svc`."""
    return rule(host, http_path("/", svc))


def ingress(
    name: str,
    *rules: Doc,
    annotations: dict[str, str] | None = None,
    tls: list[Doc] | None = None,
    default: str | None = None,
    created: str | None = None,
    cls: str = "meshgate",
) -> Doc:
    meta: Doc = {"name": name, "namespace": NS}
    if annotations:
        meta["annotations"] = annotations
    if created is not None:
        meta["creationTimestamp"] = created
    spec: Doc = {"ingressClassName": cls}
    if rules:
        spec["rules"] = list(rules)
    if tls is not None:
        spec["tls"] = tls
    if default is not None:
        spec["defaultBackend"] = backend_ref(default)
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec}


def tls_secret(name: str, cert: trustme.LeafCert) -> Doc:
    chain = "".join(pem.bytes().decode() for pem in cert.cert_chain_pems)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": chain, "tls.key": cert.private_key_pem.bytes().decode()},
    }


def ca_secret(name: str, ca: trustme.CA) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "type": "Opaque",
        "stringData": {"ca.crt": ca.cert_pem.bytes().decode()},
    }


def write_manifests(path: Path, docs: Sequence[Doc]) -> Path:
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return path


def run_check(manifests: Path) -> subprocess.CompletedProcess[str]:
    """`meshgate check` on `manifests`: exit code, table on stdout, notes on stderr."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "meshgate",
            "check",
            "--manifests",
            str(manifests),
            "--http-listen",
            "127.0.0.1:8080",
            "--https-listen",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def start_meshgate(manifests: Path, tmp: Path, http: int, https: int | None) -> Meshgate:
    args = [
        "--manifests",
        str(manifests),
        "--http-listen",
        f"127.0.0.1:{http}",
        "--https-listen",
        f"127.0.0.1:{https}" if https is not None else "off",
    ]
    mg = Meshgate(args, tmp)
    try:
        return mg.wait_ready()
    except BaseException:
        mg.stop()
        raise


# --- the client ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names, the last value of each
    body: bytes

    def json(self) -> dict[str, Any]:
        data = json.loads(self.body)
        assert isinstance(data, dict), data
        return data

    @property
    def service(self) -> str:
        """Which backend answered ("" when meshgate answered itself)."""
        if self.headers.get("content-type") != "application/json":
            return ""
        return str(self.json()["service"])


def _last_head(raw: str) -> dict[str, str]:
    """The headers of the last response in a curl -D dump (after any 1xx)."""
    blocks = [b for b in raw.replace("\r\n", "\n").split("\n\n") if b.strip()]
    headers: dict[str, str] = {}
    if not blocks:
        return headers
    for line in blocks[-1].split("\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def fetch(
    port: int,
    path: str = "/",
    *,
    host: str | None = None,
    https: bool = False,
    headers: Sequence[str] = (),
    args: Sequence[str] = (),
) -> Reply:
    """One request with curl. Plain HTTP goes to 127.0.0.1 with `Host: host`;
    HTTPS goes to https://host:port (resolved to 127.0.0.1, so SNI is `host`)."""
    require("curl")
    extra: list[str] = []
    if https:
        assert host is not None
        url = f"https://{host}:{port}{path}"
        extra += ["--resolve", f"{host}:{port}:127.0.0.1"]
    else:
        url = f"http://127.0.0.1:{port}{path}"
        if host is not None:
            extra += ["-H", f"Host: {host}"]
    for header in headers:
        extra += ["-H", header]
    with tempfile.TemporaryDirectory(prefix="curl-") as tmp:
        head_file, body_file = Path(tmp) / "head", Path(tmp) / "body"
        done = subprocess.run(
            [
                "curl",
                "-sS",
                "--max-time",
                "10",
                "-D",
                str(head_file),
                "-o",
                str(body_file),
                "-w",
                "%{http_code}",
                *extra,
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"curl {url} failed: {done.stderr}"
        return Reply(
            int(done.stdout),
            _last_head(head_file.read_text(errors="replace")),
            body_file.read_bytes() if body_file.exists() else b"",
        )


def fetch_many(port: int, host: str, paths: Sequence[str]) -> list[tuple[int, int]]:
    """Several URLs in one curl run (one connection if kept alive):
    (status, new connections) per request."""
    require("curl")
    outputs = [
        arg for path in paths for arg in ("-o", "/dev/null", f"http://127.0.0.1:{port}{path}")
    ]
    done = subprocess.run(
        [
            *("curl", "-sS", "--max-time", "10", "-H", f"Host: {host}"),
            *("-w", "%{http_code} %{num_connects}\n", *outputs),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [(int(code), int(n)) for code, n in (line.split() for line in done.stdout.splitlines())]


# Bytes read past the end of a response (a pipelined answer arriving in the
# same segment), kept for the next read_response on that socket.
_LEFTOVER: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body from `sock`."""
    data = _LEFTOVER.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed inside a response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside a response body"
        body += chunk
    if len(body) > length:
        _LEFTOVER[sock] = body[length:]
    return head + b"\r\n\r\n" + body[:length]


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data`, read until the server closes (fails if it does not)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks: list[bytes] = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def quiet(backend: HttpBackend) -> HttpBackend:
    """No tracebacks from a backend whose client (meshgate) went away on purpose."""
    backend.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    return backend


def with_tls(backend: HttpBackend, cert: trustme.LeafCert) -> HttpBackend:
    """`backend`, not started yet, made to speak HTTPS with `cert`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    backend.server.socket = ctx.wrap_socket(backend.server.socket, server_side=True)
    return quiet(backend)


@contextlib.contextmanager
def serving(*backends: HttpBackend) -> Iterator[None]:
    """Run `backends`; stop them all at once (each stop waits up to 0.5 s)."""
    started: list[HttpBackend] = []
    try:
        for backend in backends:
            backend.__enter__()
            started.append(backend)
        yield
    finally:
        with ThreadPoolExecutor(max(1, len(started))) as pool:
            list(pool.map(lambda b: b.__exit__(None, None, None), started))


def seen(backend: HttpBackend, path_prefix: str) -> list[dict[str, Any]]:
    """The requests `backend` received whose path starts with `path_prefix`."""
    return [r for r in backend.requests if str(r["path"]).startswith(path_prefix)]


# --- one meshgate for most tests ----------------------------------------------------------

PLAIN = [
    "alpha",
    "beta",
    "wild",
    "fallback",
    "exact",
    "prefix",
    "longest",
    "impl",
    "regex",
    "rewrite",
    "older",
    "newer",
    "other",
    "misc",
]
BACKEND_CERT_NAME = "backend.internal"


def merge_ingresses() -> list[Doc]:
    """Two Ingresses on merge.example, the newer listed first; both route /shared."""
    return [
        ingress(
            "merge-new",
            rule(
                "merge.example",
                http_path("/new", "newer"),
                http_path("/shared", "newer"),
            ),
            created="2024-02-01T00:00:00Z",
        ),
        ingress(
            "merge-old",
            rule(
                "merge.example",
                http_path("/old", "older"),
                http_path("/shared", "older"),
            ),
            created="2023-01-01T00:00:00Z",
        ),
    ]


def other_class_ingress() -> Doc:
    return ingress("other-class", host_rule("other.example", "other"), cls="nginx")


def typo_ingress() -> Doc:
    return ingress(
        "typo",
        host_rule("typo.example", "misc"),
        annotations={"meshgate.io/foo": "bar"},
    )


def ingresses() -> list[Doc]:
    return [
        ingress(
            "hosts",
            host_rule("alpha.example", "alpha"),
            rule(
                "beta.example",
                {"path": "/", "pathType": "Prefix", "backend": backend_ref("beta", by_name=True)},
            ),
            host_rule("*.apps.example", "wild"),
        ),
        ingress("fallback", default="fallback"),
        ingress("pair", host_rule("pair.example", "pair")),
        ingress(
            "paths",
            rule(
                "paths.example",
                http_path("/foo", "exact", "Exact"),
                http_path("/foo", "prefix"),
                http_path("/foo/bar/baz", "longest"),
                http_path("/impl", "impl", "ImplementationSpecific"),
            ),
        ),
        ingress(
            "regex",
            rule("regex.example", http_path("/api/v[0-9]+/items", "regex")),
            annotations={"meshgate.io/use-regex": "true"},
        ),
        ingress(
            "rewrite",
            rule(
                "rewrite.example",
                http_path("/something(/|$)(.*)", "rewrite", "ImplementationSpecific"),
            ),
            annotations={"nginx.ingress.kubernetes.io/rewrite-target": "/$2"},
        ),
        *merge_ingresses(),
        other_class_ingress(),
        ingress(
            "redirect",
            host_rule("redirect.example", "misc"),
            tls=[{"hosts": ["redirect.example"]}],
        ),
        ingress(
            "no-redirect",
            host_rule("noredirect.example", "misc"),
            tls=[{"hosts": ["noredirect.example"]}],
            annotations={"meshgate.io/ssl-redirect": "false"},
        ),
        ingress(
            "force",
            host_rule("force.example", "misc"),
            annotations={"nginx.ingress.kubernetes.io/force-ssl-redirect": "true"},
        ),
        ingress(
            "approot",
            host_rule("approot.example", "misc"),
            annotations={"meshgate.io/app-root": "/app"},
        ),
        ingress(
            "allow",
            host_rule("allow.example", "misc"),
            annotations={"meshgate.io/whitelist-source-range": "10.0.0.0/8, 127.0.0.1/32"},
        ),
        ingress(
            "deny",
            host_rule("deny.example", "misc"),
            annotations={
                "nginx.ingress.kubernetes.io/whitelist-source-range": "10.0.0.0/8,192.168.0.0/16"
            },
        ),
        ingress(
            "body",
            host_rule("body.example", "misc"),
            annotations={"meshgate.io/proxy-body-size": "1k"},
        ),
        ingress(
            "slow",
            host_rule("slow.example", "misc"),
            annotations={"meshgate.io/proxy-read-timeout": "1"},
        ),
        ingress(
            "blackhole",
            host_rule("blackhole.example", "blackhole"),
            annotations={"meshgate.io/proxy-connect-timeout": "1"},
        ),
        typo_ingress(),
        ingress(
            "errors",
            host_rule("empty.example", "empty"),
            host_rule("dead.example", "dead"),
        ),
        ingress(
            "secure",
            host_rule("secure.example", "tlsback"),
            annotations={
                "meshgate.io/backend-protocol": "HTTPS",
                "meshgate.io/proxy-ssl-secret": f"{NS}/backend-ca",
                "meshgate.io/proxy-ssl-name": BACKEND_CERT_NAME,
            },
        ),
        ingress(
            "wrong-ca",
            host_rule("wrongca.example", "tlsback"),
            annotations={
                "nginx.ingress.kubernetes.io/backend-protocol": "HTTPS",
                "nginx.ingress.kubernetes.io/proxy-ssl-secret": f"{NS}/other-ca",
                "nginx.ingress.kubernetes.io/proxy-ssl-name": BACKEND_CERT_NAME,
            },
        ),
    ]


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A port whose accept queue is full: new connects hang (SYNs are dropped)."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)

        def hangs() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
            except TimeoutError:
                return True
            except OSError:
                return False
            return False

        wait_for(hangs, "a full accept queue")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@dataclass
class Gateway:
    mg: Meshgate
    http: int
    https: int
    backends: dict[str, HttpBackend] = field(default_factory=dict)

    def get(
        self,
        host: str | None,
        path: str = "/",
        *,
        headers: Sequence[str] = (),
        args: Sequence[str] = (),
    ) -> Reply:
        """Plain HTTP with `Host: host` (none: curl's own, 127.0.0.1:port)."""
        return fetch(self.http, path, host=host, headers=headers, args=args)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("ingress")
    backend_ca, other_ca = trustme.CA(), trustme.CA()
    backends = {name: quiet(HttpBackend(name, f"127.0.0.{i}")) for i, name in enumerate(PLAIN, 2)}
    pair_port = free_port()
    for name, address in (("pair-1", "127.0.0.20"), ("pair-2", "127.0.0.21")):
        backends[name] = HttpBackend(name, address, pair_port)
    backends["tlsback"] = with_tls(
        HttpBackend("tlsback", "127.0.0.40"), backend_ca.issue_cert(BACKEND_CERT_NAME)
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(serving(*backends.values()))
        hole = stack.enter_context(blackhole())
        docs: list[Doc] = []
        for backend in backends.values():
            if not backend.server.name.startswith("pair"):
                docs += service_for(backend)
        # One Service, two ready endpoints and one that is not ready (nothing there).
        pair = endpoint_slice("pair", "127.0.0.20", pair_port)
        pair["endpoints"] = [
            {"addresses": ["127.0.0.20"], "conditions": {"ready": True}},
            {"addresses": ["127.0.0.21"]},
            {"addresses": ["127.0.0.22"], "conditions": {"ready": False}},
        ]
        docs += [service("pair"), pair]
        docs += service_at("empty", "127.0.0.41", 8080, ready=False)
        docs += service_at("dead", "127.0.0.42", free_port())
        docs += service_at("blackhole", "127.0.0.1", hole)
        docs += [ca_secret("backend-ca", backend_ca), ca_secret("other-ca", other_ca)]
        docs += ingresses()
        manifests = write_manifests(tmp / "ingress.yaml", docs)
        http, https = free_port(), free_port()
        mg = start_meshgate(manifests, tmp, http, https)
        stack.callback(mg.stop)
        yield Gateway(mg, http, https, backends)


# --- routing ------------------------------------------------------------------------------


def test_hosts_route_to_their_services_case_and_port_ignored(gw: Gateway) -> None:
    assert gw.get("alpha.example").service == "alpha"
    assert gw.get("beta.example").service == "beta"
    assert gw.get("ALPHA.Example:8080").service == "alpha"
    assert gw.get("Beta.EXAMPLE.").service == "beta"


def test_wildcard_host_covers_exactly_one_label(gw: Gateway) -> None:
    assert gw.get("a.apps.example").service == "wild"
    assert gw.get("A.Apps.Example:81").service == "wild"
    assert gw.get("b.a.apps.example").service == "fallback"
    assert gw.get("apps.example").service == "fallback"


def test_requests_are_balanced_over_the_ready_endpoints(gw: Gateway) -> None:
    replies = [gw.get("pair.example", f"/balance/{i}") for i in range(6)]
    assert [r.status for r in replies] == [200] * 6
    for name in ("pair-1", "pair-2"):
        assert len(seen(gw.backends[name], "/balance/")) >= 2, name


def test_default_backend_takes_unmatched_requests(gw: Gateway) -> None:
    reply = gw.get("nobody.example", "/what?ever=1")
    assert reply.status == 200
    assert reply.service == "fallback"
    assert reply.json()["path"] == "/what?ever=1"
    # An HTTP/1.0 request without Host is unmatched too.
    assert gw.get(None, args=["--http1.0", "-H", "Host:"]).service == "fallback"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/foo", "exact"),  # Exact beats the Prefix rule of the same path
        ("/foo/", "prefix"),  # Exact is exact: not /foo/
        ("/foo/bar", "prefix"),  # Prefix is element-wise...
        ("/foobar", "fallback"),  # ...so /foo does not take /foobar
        ("/foo/bar/baz", "longest"),  # the longest prefix wins
        ("/foo/bar/baz/qux", "longest"),
        ("/foo/bar/bazz", "prefix"),
        ("/impl", "impl"),  # ImplementationSpecific is a prefix
        ("/impl/deeper/path", "impl"),
        ("/", "fallback"),  # the host has no "/" rule: the default backend
    ],
)
def test_path_types_and_precedence(gw: Gateway, path: str, expected: str) -> None:
    reply = gw.get("paths.example", path)
    assert reply.status == 200
    assert reply.service == expected
    assert reply.json()["path"] == path  # forwarded as sent


def test_use_regex_paths(gw: Gateway) -> None:
    reply = gw.get("regex.example", "/api/v2/items/7")
    assert reply.service == "regex"
    assert reply.json()["path"] == "/api/v2/items/7"
    assert gw.get("regex.example", "/API/V10/Items").service == "regex"  # case-insensitive
    assert gw.get("regex.example", "/api/vx/items").service == "fallback"
    assert gw.get("regex.example", "/x/api/v2/items").service == "fallback"  # anchored


@pytest.mark.parametrize(
    ("path", "backend_path"),
    [
        ("/something", "/"),
        ("/something/", "/"),
        ("/something/new", "/new"),
        ("/something/new?x=1", "/new?x=1"),
        ("/something/a/b/c?x=1&y=2", "/a/b/c?x=1&y=2"),
    ],
)
def test_rewrite_target_with_capture_groups(gw: Gateway, path: str, backend_path: str) -> None:
    reply = gw.get("rewrite.example", path)
    assert reply.status == 200
    assert reply.service == "rewrite"
    assert reply.json()["path"] == backend_path


def test_ingresses_merge_on_one_host_and_the_older_keeps_a_conflicting_path(
    gw: Gateway, tmp_path: Path
) -> None:
    assert gw.get("merge.example", "/old/x").service == "older"
    assert gw.get("merge.example", "/new/x").service == "newer"
    assert gw.get("merge.example", "/shared/x").service == "older"

    docs = [*service_at("older", "127.0.0.2", 8080), *service_at("newer", "127.0.0.3", 8080)]
    done = run_check(write_manifests(tmp_path / "merge.yaml", [*docs, *merge_ingresses()]))
    assert done.returncode == 1, done.stderr
    problems = [line for line in done.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1, done.stderr
    assert "Ingress default/merge-new" in problems[0]
    assert "Ingress default/merge-old" in problems[0]
    assert "/shared" in problems[0]


def test_ingress_of_another_class_is_ignored(gw: Gateway, tmp_path: Path) -> None:
    reply = gw.get("other.example", "/other-class")
    assert reply.service == "fallback"
    assert not seen(gw.backends["other"], "/")

    docs = [*service_at("other", "127.0.0.2", 8080), other_class_ingress()]
    done = run_check(write_manifests(tmp_path / "other.yaml", docs))
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("note:")]
    assert any("Ingress default/other-class" in n and "nginx" in n for n in notes), done.stderr


# --- annotations --------------------------------------------------------------------------


def test_ssl_redirect_for_tls_hosts_and_force_ssl_redirect(gw: Gateway) -> None:
    reply = gw.get("redirect.example", "/x/y?q=1")
    assert reply.status == 308
    assert reply.headers["location"] == f"https://redirect.example:{gw.https}/x/y?q=1"
    reply = gw.get("Force.Example:8080", "/p")
    assert reply.status == 308
    assert reply.headers["location"] == f"https://force.example:{gw.https}/p"
    # A POST keeps its method and body through a 308: nothing reached the backend.
    reply = gw.get("force.example", "/post-redirect", args=["--data-binary", "abc"])
    assert reply.status == 308
    assert not seen(gw.backends["misc"], "/post-redirect")
    # ssl-redirect "false": the tls host is served on plain HTTP.
    assert gw.get("noredirect.example", "/plain").service == "misc"


def test_app_root_redirects_only_the_root(gw: Gateway) -> None:
    reply = gw.get("approot.example", "/")
    assert reply.status == 302
    assert reply.headers["location"] == "/app"
    assert gw.get("approot.example", "/app").service == "misc"
    assert gw.get("approot.example", "/other").service == "misc"


def test_source_range_allow_list(gw: Gateway) -> None:
    assert gw.get("allow.example", "/allowed").service == "misc"
    reply = gw.get("deny.example", "/denied")
    assert reply.status == 403
    assert reply.service == ""
    assert not seen(gw.backends["misc"], "/denied")


def test_proxy_body_size(gw: Gateway, tmp_path: Path) -> None:
    limit, over = tmp_path / "limit", tmp_path / "over"
    limit.write_bytes(b"l" * 1024)
    over.write_bytes(b"o" * 1025)
    assert gw.get("body.example", "/limit", args=["--data-binary", f"@{limit}"]).status == 200
    assert gw.get("body.example", "/large-over", args=["--data-binary", f"@{over}"]).status == 413
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(b"s" * 1000)
    large.write_bytes(b"L" * 2048)
    reply = gw.get("body.example", "/small", args=["--data-binary", f"@{small}"])
    assert reply.status == 200
    assert reply.json()["body_length"] == 1000

    reply = gw.get("body.example", "/large-length", args=["--data-binary", f"@{large}"])
    assert reply.status == 413
    chunked = ["-H", "Transfer-Encoding: chunked", "--data-binary", f"@{large}"]
    reply = gw.get("body.example", "/large-chunked", args=chunked)
    assert reply.status == 413
    reply = gw.get(
        "body.example", "/small-chunked", args=[*chunked[:2], "--data-binary", "@" + str(small)]
    )
    assert reply.status == 200
    assert reply.json()["body_length"] == 1000
    assert not seen(gw.backends["misc"], "/large")


def test_proxy_read_timeout_answers_504(gw: Gateway) -> None:
    started = time.monotonic()
    reply = gw.get("slow.example", "/sleep/3")
    elapsed = time.monotonic() - started
    assert reply.status == 504
    assert 0.9 <= elapsed < 2.5, elapsed
    errors = gw.mg.metric(
        "meshgate_http_upstream_errors_total", backend=f"{NS}.misc.{SERVICE_PORT}", reason="timeout"
    )
    assert errors >= 1


def test_proxy_connect_timeout(gw: Gateway) -> None:
    started = time.monotonic()
    reply = gw.get("blackhole.example", "/connect")
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5, elapsed  # the route's 1 s, not the backend's default 5 s
    # The README: 502 for a connect failure, 504 for a read timeout.
    # (ingress-nginx answers a connect timeout with 504.)
    assert reply.status == 502


def test_unknown_meshgate_annotation_skips_the_ingress(gw: Gateway, tmp_path: Path) -> None:
    reply = gw.get("typo.example", "/typo")
    assert reply.service == "fallback"
    assert not seen(gw.backends["misc"], "/typo")

    docs = [*service_at("misc", "127.0.0.2", 8080), typo_ingress()]
    done = run_check(write_manifests(tmp_path / "typo.yaml", docs))
    assert done.returncode == 1, done.stderr
    problems = [line for line in done.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1, done.stderr
    assert "Ingress default/typo" in problems[0]
    assert "meshgate.io/foo" in problems[0]
    # The running meshgate reports it too: in /status and in its log.
    skipped = gw.mg.json("/status")["skipped"]["problems"]
    assert any("Ingress default/typo" in p and "meshgate.io/foo" in p for p in skipped)
    logged = [e["problem"] for e in gw.mg.events("object skipped")]
    assert any("Ingress default/typo" in p for p in logged)
    # ... and counts it, for an alert.
    assert gw.mg.metric("meshgate_config_objects_skipped") == len(skipped)


# --- errors -------------------------------------------------------------------------------


def test_service_without_ready_endpoints_answers_503(gw: Gateway) -> None:
    reply = gw.get("empty.example", "/")
    assert reply.status == 503
    assert reply.headers.get("x-request-id")


def test_endpoint_with_nothing_listening_answers_502(gw: Gateway) -> None:
    for _ in range(3):  # also once the endpoint counts as failing
        assert gw.get("dead.example", "/").status == 502
    errors = gw.mg.metric(
        "meshgate_http_upstream_errors_total", backend=f"{NS}.dead.{SERVICE_PORT}", reason="connect"
    )
    assert errors >= 3


def test_bad_request_line_answers_400_and_closes(gw: Gateway) -> None:
    before = gw.mg.metric("meshgate_http_rejected_total", listener="ingress-http")
    answer = raw_exchange(gw.http, b"THIS IS NOT HTTP\r\nHost: alpha.example\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"connection: close" in answer.lower()
    after = gw.mg.metric("meshgate_http_rejected_total", listener="ingress-http")
    assert after == before + 1


def test_bad_request_after_a_good_one_on_a_kept_alive_connection(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.http), timeout=5) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: alpha.example\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /x y z HTTP/1.1\r\nHost: alpha.example\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 400 ")
        assert sock.recv(100) == b""  # closed


def test_pipelined_good_request_is_answered_before_the_400(gw: Gateway) -> None:
    good = b"GET /pipelined HTTP/1.1\r\nHost: alpha.example\r\n\r\n"
    bad = b"GET /x y z HTTP/1.1\r\nHost: alpha.example\r\n\r\n"
    answer = raw_exchange(gw.http, good + bad)
    first, _, rest = answer.partition(b"HTTP/1.1 400 ")
    assert first.startswith(b"HTTP/1.1 200 "), answer
    assert rest, answer


# --- what the backend sees -------------------------------------------------------------------


def test_forwarding_headers(gw: Gateway) -> None:
    reply = gw.get(
        "alpha.example",
        "/fwd",
        headers=[
            "X-Forwarded-For: 1.2.3.4",
            "X-Real-IP: 1.2.3.4",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Host: evil.example",
            "X-Forwarded-Port: 1",
        ],
    )
    assert reply.status == 200
    got = reply.json()["headers"]
    assert got["x-forwarded-for"] == "127.0.0.1"  # the client's own value is not trusted
    assert got["x-real-ip"] == "127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-forwarded-host"] == "alpha.example"
    assert got["x-forwarded-port"] == str(gw.http)
    assert got["host"] == "alpha.example"
    request_id = got["x-request-id"]
    assert len(request_id) >= 16
    assert reply.headers["x-request-id"] == request_id

    other = gw.get("alpha.example", "/fwd").json()["headers"]["x-request-id"]
    assert other != request_id

    # The access log line of the request carries the same id.
    def logged() -> list[dict[str, Any]]:
        return [e for e in gw.mg.events("http request") if e.get("request_id") == request_id]

    wait_for(lambda: bool(logged()), "the access log line")
    line = logged()[0]
    assert (line["status"], line["path"], line["host"]) == (200, "/fwd", "alpha.example")
    assert line["route"] == "alpha.example/"
    assert line["backend"] == f"{NS}.alpha.{SERVICE_PORT}"
    requests = gw.mg.metric(
        "meshgate_http_requests_total", listener="ingress-http", route="alpha.example/", code="200"
    )
    assert requests >= 2


def test_hop_by_hop_headers_do_not_reach_the_backend(gw: Gateway) -> None:
    reply = gw.get(
        "alpha.example",
        "/hop",
        headers=[
            "Connection: keep-alive, foo",
            "Foo: bar",
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Proxy-Connection: keep-alive",
            "X-Kept: yes",
        ],
    )
    got = reply.json()["headers"]
    assert got["x-kept"] == "yes"
    for name in ("foo", "keep-alive", "te", "proxy-connection"):
        assert name not in got, (name, got)
    assert "foo" not in got.get("connection", "").lower()


def test_keep_alive_both_sides(gw: Gateway) -> None:
    reused = "meshgate_http_upstream_connections_total"
    backend = f"{NS}.alpha.{SERVICE_PORT}"
    before = gw.mg.metric(reused, backend=backend, kind="reused")
    results = fetch_many(gw.http, "alpha.example", [f"/ka/{i}" for i in range(5)])
    assert [code for code, _ in results] == [200] * 5
    assert sum(n for _, n in results) == 1  # one client connection for five requests
    requests = seen(gw.backends["alpha"], "/ka/")
    assert len(requests) == 5
    assert len({r["connection"] for r in requests}) <= 2
    assert gw.mg.metric(reused, backend=backend, kind="reused") >= before + 3


def test_meshgate_answers_keep_the_client_connection(gw: Gateway) -> None:
    results = fetch_many(gw.http, "deny.example", [f"/denied-ka/{i}" for i in range(3)])
    assert results == [(403, 1), (403, 0), (403, 0)]


def test_head_then_get_on_one_connection(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.http), timeout=5) as sock:
        sock.sendall(b"HEAD /head HTTP/1.1\r\nHost: alpha.example\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert head.endswith(b"\r\n\r\n"), head  # no body after a HEAD answer
        assert b"content-length: " in head.lower()
        sock.sendall(b"GET /after-head HTTP/1.1\r\nHost: alpha.example\r\n\r\n")
        answer = read_response(sock)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert b'"path": "/after-head"' in answer


def test_pipelined_requests_are_answered_in_order(gw: Gateway) -> None:
    requests = b"".join(
        b"GET /pipe/%d HTTP/1.1\r\nHost: alpha.example\r\n\r\n" % i for i in range(3)
    )
    with socket.create_connection(("127.0.0.1", gw.http), timeout=5) as sock:
        sock.sendall(requests + b"GET /pipe/3 HTTP/1.1\r\nHost: beta.example\r\n\r\n")
        for i, service in enumerate(["alpha", "alpha", "alpha", "beta"]):
            answer = read_response(sock)
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            body = json.loads(answer.partition(b"\r\n\r\n")[2])
            assert (body["service"], body["path"]) == (service, f"/pipe/{i}")


def test_client_half_close_after_the_request_still_gets_the_answer(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.http), timeout=5) as sock:
        sock.sendall(b"GET /half-close HTTP/1.1\r\nHost: alpha.example\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert b'"path": "/half-close"' in answer


def test_expect_100_continue(gw: Gateway) -> None:
    reply = gw.get(
        "alpha.example",
        "/expect",
        headers=["Expect: 100-continue"],
        args=["--data-binary", "hello", "--expect100-timeout", "5"],
    )
    assert reply.status == 200
    got = reply.json()
    assert got["body_length"] == 5
    assert "expect" not in got["headers"]  # meshgate answered it


def test_absolute_form_target_wins_over_host(gw: Gateway) -> None:
    answer = raw_exchange(
        gw.http,
        b"GET http://alpha.example/absolute?q=1 HTTP/1.1\r\nHost: beta.example\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["service"] == "alpha"
    assert body["path"] == "/absolute?q=1"  # origin-form to the backend


def test_paths_match_after_normalisation_and_are_forwarded_as_sent(gw: Gateway) -> None:
    reply = gw.get("paths.example", "/%66oo", args=["--path-as-is"])
    assert reply.service == "exact"
    assert reply.json()["path"] == "/%66oo"
    reply = gw.get("paths.example", "/impl/../foo/bar", args=["--path-as-is"])
    assert reply.service == "prefix"
    reply = gw.get("paths.example", "//foo//bar//baz/x", args=["--path-as-is"])
    assert reply.service == "longest"


def test_bodies_stream_intact_both_ways(gw: Gateway, tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    data = bytes(range(256)) * 1200  # 300 KiB, more than meshgate buffers
    upload.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    reply = gw.get("alpha.example", "/upload", args=["--data-binary", f"@{upload}"])
    assert (reply.json()["body_length"], reply.json()["body_sha256"]) == (len(data), digest)
    chunked = ["-H", "Transfer-Encoding: chunked", "--data-binary", f"@{upload}"]
    reply = gw.get("alpha.example", "/upload-chunked", args=chunked)
    assert (reply.json()["body_length"], reply.json()["body_sha256"]) == (len(data), digest)

    reply = gw.get("alpha.example", "/bytes/3000000")
    assert reply.status == 200
    assert reply.headers["content-length"] == "3000000"
    assert len(reply.body) == 3_000_000
    reply = gw.get("alpha.example", "/chunked/200000")
    assert reply.headers["transfer-encoding"] == "chunked"
    assert len(reply.body) == 200_000
    # A body that runs until the backend closes reaches an HTTP/1.1 client chunked...
    reply = gw.get("alpha.example", "/close")
    assert reply.status == 200
    assert reply.json()["path"] == "/close"
    assert reply.headers.get("transfer-encoding") == "chunked"
    # ...and an HTTP/1.0 client unchunked, ending with the connection.
    reply = gw.get("alpha.example", "/chunked/5000", args=["--http1.0"])
    assert reply.body == b"x" * 5000
    assert "transfer-encoding" not in reply.headers


@pytest.mark.parametrize("code", [404, 500, 503])
def test_backend_status_codes_pass_through(gw: Gateway, code: int) -> None:
    reply = gw.get("alpha.example", f"/status/{code}")
    assert reply.status == code
    assert reply.service == "alpha"  # the backend's answer, not meshgate's


@pytest.mark.parametrize(
    ("head", "status"),
    [
        pytest.param(b"GET /malformed HTTP/1.1\r\n\r\n", 400, id="http11-without-host"),
        pytest.param(
            b"GET /malformed HTTP/1.1\r\nHost: alpha.example\r\nHost: beta.example\r\n\r\n",
            400,
            id="two-hosts",
        ),
        pytest.param(
            b"POST /malformed HTTP/1.1\r\nHost: alpha.example\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            id="length-and-chunked",
        ),
        pytest.param(
            b"POST /malformed HTTP/1.1\r\nHost: alpha.example\r\nContent-Length: 3, 4\r\n\r\n",
            400,
            id="bad-length",
        ),
        pytest.param(
            b"GET /malformed/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: alpha.example\r\n\r\n",
            414,
            id="long-request-line",
        ),
        pytest.param(
            b"GET /malformed HTTP/1.1\r\nHost: alpha.example\r\n"
            + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(40))
            + b"\r\n",
            431,
            id="large-header-block",
        ),
    ],
)
def test_malformed_requests_are_rejected_and_closed(gw: Gateway, head: bytes, status: int) -> None:
    answer = raw_exchange(gw.http, head)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer
    assert not seen(gw.backends["alpha"], "/malformed")
    assert not seen(gw.backends["fallback"], "/malformed")


# --- HTTPS backends -----------------------------------------------------------------------


def test_https_backend_verified_with_the_secret_ca(gw: Gateway) -> None:
    reply = gw.get("secure.example", "/tls-ok")
    assert reply.status == 200
    assert reply.service == "tlsback"
    assert reply.json()["headers"]["x-forwarded-proto"] == "http"


def test_https_backend_with_a_wrong_ca_answers_502(gw: Gateway) -> None:
    reply = gw.get("wrongca.example", "/tls-bad")
    assert reply.status == 502
    assert not seen(gw.backends["tlsback"], "/tls-bad")


# --- reloads and no default backend -----------------------------------------------------------


@dataclass
class Reloadable:
    mg: Meshgate
    http: int
    ingress_file: Path

    def edit(self, docs: Sequence[Doc] | str) -> None:
        """Rewrite the Ingress file and send SIGHUP; wait until the reload is done."""
        done = self.mg.metric("meshgate_reloads_total")
        if isinstance(docs, str):
            self.ingress_file.write_text(docs)
        else:
            write_manifests(self.ingress_file, docs)
        self.mg.signal(signal.SIGHUP)
        wait_for(lambda: self.mg.metric("meshgate_reloads_total") > done, "the reload")

    def service(self, host: str) -> str:
        return fetch(self.http, "/", host=host).service


@pytest.fixture
def reloadable(tmp_path: Path) -> Iterator[Reloadable]:
    """meshgate serving one.example only, from a directory of manifests; no defaultBackend."""
    one, two = HttpBackend("one", "127.0.0.2"), HttpBackend("two", "127.0.0.3")
    with serving(one, two):
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        write_manifests(manifests / "10-services.yaml", [*service_for(one), *service_for(two)])
        ingress_file = write_manifests(
            manifests / "20-ingress.yaml", [ingress("web", host_rule("one.example", "one"))]
        )
        http = free_port()
        mg = start_meshgate(manifests, tmp_path, http, None)
        try:
            yield Reloadable(mg, http, ingress_file)
        finally:
            mg.stop()


def test_without_default_backend_unmatched_requests_get_404(reloadable: Reloadable) -> None:
    assert reloadable.service("one.example") == "one"
    reply = fetch(reloadable.http, "/x", host="two.example")
    assert reply.status == 404
    assert reply.service == ""
    reply = fetch(reloadable.http, "/x", host="ONE.example.:99")
    assert reply.service == "one"


def test_reload_serves_a_new_host(reloadable: Reloadable) -> None:
    assert fetch(reloadable.http, host="two.example").status == 404
    reloadable.edit(
        [ingress("web", host_rule("one.example", "one"), host_rule("two.example", "two"))]
    )
    assert reloadable.service("two.example") == "two"
    assert reloadable.service("one.example") == "one"
    assert reloadable.mg.metric("meshgate_reloads_total", result="ok") == 1


def test_reload_of_a_broken_edit_keeps_the_old_routes(reloadable: Reloadable) -> None:
    # A half-written edit: invalid YAML from the first document on.
    reloadable.edit("apiVersion: networking.k8s.io/v1\nkind: Ingress\n  bad: [\n")
    assert reloadable.service("one.example") == "one"
    assert reloadable.mg.metric("meshgate_reloads_total", result="rejected") == 1


def test_reload_of_an_invalid_ingress_keeps_the_other_ingresses(reloadable: Reloadable) -> None:
    two = ingress("two", host_rule("two.example", "two"))
    reloadable.edit([ingress("web", host_rule("one.example", "one")), two])
    assert reloadable.service("two.example") == "two"
    bad = ingress("two", host_rule("two.example", "two"), annotations={"meshgate.io/nope": "x"})
    reloadable.edit([ingress("web", host_rule("one.example", "one")), bad])
    assert reloadable.service("one.example") == "one"
    assert fetch(reloadable.http, host="two.example").status == 404
    assert reloadable.mg.events("object skipped")


def test_reload_removing_every_ingress_still_answers_404(reloadable: Reloadable) -> None:
    reloadable.edit([])
    reply = fetch(reloadable.http, host="one.example")
    assert reply.status == 404
