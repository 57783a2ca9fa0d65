"""kube/client.py: every call's request, its answer as dicts, and the error mapping.

A small scripted aiohttp server (`Stub`) answers what each test tells it to
and records what it was asked, so the exact URLs, parameters, headers and
bodies lightkube sends are asserted, and odd answers (no Content-Type, a cut
stream) can be played; the fake API server (tests/kube/fake_apiserver.py)
checks the calls' semantics end to end.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from aiohttp import web

from meshgate.kube.client import (
    CONFIGMAP,
    INGRESS,
    INGRESSCLASS,
    NAMESPACE,
    SERVICE,
    Conflict,
    Forbidden,
    Gone,
    Kind,
    KubeClient,
    KubeConfigError,
    KubeError,
    NotFound,
    Retryable,
    WatchEvent,
    error_for,
)
from tests.kube.fake_apiserver import FakeApiServer

STATUS_JSON = "application/json"


def status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    if details:
        body["details"] = details
    return body


def service(name: str, rv: str = "1", namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv},
        "spec": {"ports": [{"port": 80}]},
    }


@dataclass
class Answer:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = STATUS_JSON
    lines: list[Any] | None = None  # a watch stream: one JSON line each
    cut: bool = False  # end the stream by dropping the connection
    hold: asyncio.Event | None = None  # keep the stream open until set


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


class Stub:
    """Answers (method, path) from a script; the last answer repeats."""

    def __init__(self) -> None:
        self.script: dict[tuple[str, str], list[Answer]] = {}
        self.seen: list[Seen] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    def on(self, method: str, path: str, *answers: Answer) -> None:
        self.script[(method, path)] = list(answers)

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                await request.read(),
            )
        )
        answers = self.script.get((request.method, request.path))
        if not answers:
            return json_response(404, status(404, "NotFound", f"no script for {request.path}"))
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer.lines is None:
            return json_response(answer.status, answer.body, answer.headers, answer.content_type)
        stream = web.StreamResponse(status=answer.status, headers=answer.headers)
        stream.content_type = STATUS_JSON
        await stream.prepare(request)
        for line in answer.lines:
            await stream.write(json.dumps(line).encode() + b"\n")
        if answer.hold is not None:
            await answer.hold.wait()
        if answer.cut:
            assert request.transport is not None
            request.transport.abort()
            return stream
        await stream.write_eof()
        return stream


def json_response(
    code: int, body: Any, headers: dict[str, str] | None = None, content_type: str = STATUS_JSON
) -> web.Response:
    text = body if isinstance(body, str) else json.dumps(body)
    return web.Response(status=code, text=text, headers=headers, content_type=content_type)


def write_kubeconfig(path: Path, server: str, *, token: str = "t0ken", **cluster: Any) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "test", "user": {"token": token}}],
        "contexts": [
            {"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "team"}}
        ],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    server = Stub()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(stub: Stub, tmp_path: Path) -> AsyncIterator[KubeClient]:
    kube = KubeClient.from_config(str(write_kubeconfig(tmp_path / "config", stub.url)))
    yield kube
    await kube.close()


# ---------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (400, KubeError),
        (401, Forbidden),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (410, Gone),
        (422, KubeError),
        (429, Retryable),
        (500, Retryable),
        (503, Retryable),
        (504, Retryable),
        (0, Retryable),
    ],
)
def test_error_for_maps_status_codes(code: int, cls: type[KubeError]) -> None:
    err = error_for(code, "Reason", "what happened", 1.5)
    assert type(err) is cls
    assert (err.status, err.reason, err.message) == (code, "Reason", "what happened")
    if isinstance(err, Retryable):
        assert err.retry_after == 1.5
    assert str(err) == f"{code} Reason: what happened"


# ---------------------------------------------------------------- configuration


async def test_from_config_uses_the_kubeconfig_token_and_namespace(
    stub: Stub, client: KubeClient
) -> None:
    stub.on("GET", "/api/v1/namespaces/team/services/web", Answer(body=service("web")))
    assert client.namespace == "team"
    assert client.server == stub.url
    got = await client.get(SERVICE, "web")  # no namespace: the context's
    assert got["metadata"]["name"] == "web"
    assert stub.seen[0].headers["Authorization"] == "Bearer t0ken"


async def test_from_config_without_a_file_reads_kubeconfig_env(
    stub: Stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_kubeconfig(tmp_path / "env-config", stub.url, token="from-env")
    monkeypatch.setenv("KUBECONFIG", str(path))
    # No in-cluster service account here, so lightkube falls back to $KUBECONFIG.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    stub.on("GET", "/api/v1/namespaces/x/configmaps/c", Answer(body={"metadata": {"name": "c"}}))
    kube = KubeClient.from_config()
    try:
        await kube.get(CONFIGMAP, "c", "x")
    finally:
        await kube.close()
    assert stub.seen[0].headers["Authorization"] == "Bearer from-env"


def test_from_config_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="not found"):
        KubeClient.from_config(str(tmp_path / "absent"))


def test_from_config_unreadable_ca_is_a_config_error(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "config", "https://127.0.0.1:1", **{"certificate-authority": "missing.pem"}
    )
    with pytest.raises(KubeConfigError):
        KubeClient.from_config(str(path))


def test_from_config_without_current_context_is_a_config_error(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", "http://127.0.0.1:1")
    config = yaml.safe_load(path.read_text())
    del config["current-context"]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(KubeConfigError, match="context"):
        KubeClient.from_config(str(path))


async def test_tls_trusts_the_kubeconfig_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ssl)
    tls = Stub()
    await tls.start(ssl_context=server_ssl)
    try:
        tls.on("GET", "/api/v1/namespaces/a/services/s", Answer(body=service("s")))
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        # A relative path is relative to the kubeconfig file, as kubectl reads it.
        path = write_kubeconfig(tmp_path / "config", tls.url, **{"certificate-authority": "ca.pem"})
        kube = KubeClient.from_config(str(path))
        try:
            assert (await kube.get(SERVICE, "s", "a"))["metadata"]["name"] == "s"
        finally:
            await kube.close()
        # Without the CA the same server is refused (an error, but not a crash).
        other = write_kubeconfig(tmp_path / "config2", tls.url)
        kube = KubeClient.from_config(str(other))
        try:
            with pytest.raises(Retryable) as caught:
                await kube.get(SERVICE, "s", "a")
            assert caught.value.status == 0
        finally:
            await kube.close()
    finally:
        await tls.stop()


# ---------------------------------------------------------------- calls


async def test_get_returns_a_plain_dict(stub: Stub, client: KubeClient) -> None:
    obj = service("web", rv="42") | {"extra": {"unknown": ["kept"]}}
    stub.on("GET", "/api/v1/namespaces/default/services/web", Answer(body=obj))
    got = await client.get(SERVICE, "web", "default")
    assert type(got) is dict
    assert got == obj


async def test_get_cluster_scoped_kind(stub: Stub, client: KubeClient) -> None:
    obj = {"metadata": {"name": "meshgate"}, "spec": {"controller": "x"}}
    stub.on("GET", "/apis/networking.k8s.io/v1/ingressclasses/meshgate", Answer(body=obj))
    assert (await client.get(INGRESSCLASS, "meshgate", "ignored"))["spec"] == {"controller": "x"}


async def test_list_all_namespaces_pages_and_keeps_the_list_rv(
    stub: Stub, client: KubeClient
) -> None:
    page1 = {
        "kind": "ServiceList",
        "metadata": {"resourceVersion": "100", "continue": "tok"},
        "items": [{"metadata": {"name": "a", "namespace": "n1", "resourceVersion": "7"}}],
    }
    page2 = {
        "kind": "ServiceList",
        "metadata": {"resourceVersion": "100"},
        "items": [{"metadata": {"name": "b", "namespace": "n2", "resourceVersion": "9"}}],
    }
    stub.on("GET", "/api/v1/services", Answer(body=page1), Answer(body=page2))
    items, rv = await client.list(SERVICE, label_selector="app=web,tier!=db")
    assert rv == "100"
    assert [i["metadata"]["name"] for i in items] == ["a", "b"]
    # LIST items get the kind and apiVersion that watch objects carry.
    assert all(i["kind"] == "Service" and i["apiVersion"] == "v1" for i in items)
    assert all(type(i) is dict for i in items)
    first, second = stub.seen
    assert first.query == {"limit": "500", "labelSelector": "app=web,tier!=db"}
    assert second.query["continue"] == "tok"


async def test_list_one_namespace_with_field_selector(stub: Stub, client: KubeClient) -> None:
    body = {"metadata": {"resourceVersion": "5"}, "items": []}
    stub.on("GET", "/apis/networking.k8s.io/v1/namespaces/web/ingresses", Answer(body=body))
    assert await client.list(INGRESS, "web", field_selector="metadata.name=x") == ([], "5")
    assert stub.seen[0].query["fieldSelector"] == "metadata.name=x"


async def test_create_posts_the_object(stub: Stub, client: KubeClient) -> None:
    path = "/api/v1/namespaces/web/configmaps"
    stub.on("POST", path, Answer(status=201, body={"metadata": {"name": "c", "uid": "u1"}}))
    made = await client.create(CONFIGMAP, {"metadata": {"name": "c"}, "data": {"k": "v"}}, "web")
    assert made["metadata"]["uid"] == "u1"
    seen = stub.seen[0]
    assert seen.query == {"fieldManager": "meshgate"}
    assert json.loads(seen.body) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "web"},
        "data": {"k": "v"},
    }


async def test_create_takes_the_namespace_from_the_object(stub: Stub, client: KubeClient) -> None:
    stub.on("POST", "/api/v1/namespaces/obj-ns/configmaps", Answer(status=201, body={}))
    await client.create(CONFIGMAP, {"metadata": {"name": "c", "namespace": "obj-ns"}})
    assert stub.seen[0].path == "/api/v1/namespaces/obj-ns/configmaps"


async def test_create_refuses_bad_input(client: KubeClient) -> None:
    with pytest.raises(ValueError, match=r"metadata\.name"):
        await client.create(CONFIGMAP, {"data": {}}, "a")
    with pytest.raises(ValueError, match="differs"):
        await client.create(CONFIGMAP, {"metadata": {"name": "c", "namespace": "b"}}, "a")


async def test_create_existing_is_conflict(stub: Stub, client: KubeClient) -> None:
    body = status(409, "AlreadyExists", 'configmaps "c" already exists')
    stub.on("POST", "/api/v1/namespaces/a/configmaps", Answer(status=409, body=body))
    with pytest.raises(Conflict) as caught:
        await client.create(CONFIGMAP, {"metadata": {"name": "c"}}, "a")
    assert caught.value.reason == "AlreadyExists"
    assert caught.value.message == 'configmaps "c" already exists'


async def test_replace_puts_and_maps_a_stale_rv_to_conflict(stub: Stub, client: KubeClient) -> None:
    path = "/api/v1/namespaces/a/services/web"
    stale = status(409, "Conflict", "the object has been modified")
    stub.on("PUT", path, Answer(body=service("web", "8", "a")), Answer(status=409, body=stale))
    done = await client.replace(SERVICE, service("web", "7", "a"))
    assert done["metadata"]["resourceVersion"] == "8"
    assert json.loads(stub.seen[0].body)["metadata"]["resourceVersion"] == "7"
    with pytest.raises(Conflict):
        await client.replace(SERVICE, service("web", "7", "a"))


async def test_patch_merge(stub: Stub, client: KubeClient) -> None:
    path = "/api/v1/namespaces/a/services/web"
    stub.on("PATCH", path, Answer(body=service("web", "9", "a")))
    patch = {"metadata": {"annotations": {"x": "1"}}}
    got = await client.patch(SERVICE, "web", patch, "a")
    assert got["metadata"]["resourceVersion"] == "9"
    seen = stub.seen[0]
    assert seen.headers["Content-Type"] == "application/merge-patch+json"
    assert seen.query == {"fieldManager": "meshgate"}
    assert json.loads(seen.body) == patch


async def test_patch_status_subresource(stub: Stub, client: KubeClient) -> None:
    path = "/apis/networking.k8s.io/v1/namespaces/a/ingresses/web/status"
    stub.on("PATCH", path, Answer(body={"metadata": {"name": "web"}, "status": {"x": 1}}))
    lb = {"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}}
    got = await client.patch(INGRESS, "web", lb, "a", subresource="status")
    assert got["status"] == {"x": 1}
    assert stub.seen[0].path == path


async def test_patch_server_side_apply(stub: Stub, client: KubeClient) -> None:
    path = "/api/v1/namespaces/a/configmaps/c"
    stub.on("PATCH", path, Answer(body={"metadata": {"name": "c"}}))
    await client.patch(
        CONFIGMAP,
        "c",
        {"data": {"k": "v"}},
        "a",
        patch_type="apply",
        field_manager="meshgate-operator",
        force=True,
    )
    seen = stub.seen[0]
    assert seen.headers["Content-Type"] == "application/apply-patch+yaml"
    assert seen.query == {"fieldManager": "meshgate-operator", "force": "true"}
    assert json.loads(seen.body) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c"},
        "data": {"k": "v"},
    }


async def test_delete_and_not_found(stub: Stub, client: KubeClient) -> None:
    path = "/api/v1/namespaces/a/services/web"
    gone = status(404, "NotFound", 'services "web" not found')
    stub.on("DELETE", path, Answer(body=status(200, "", "")), Answer(status=404, body=gone))
    await client.delete(SERVICE, "web", "a")
    with pytest.raises(NotFound) as caught:
        await client.delete(SERVICE, "web", "a")
    assert caught.value.message == 'services "web" not found'


@pytest.mark.parametrize(
    ("answer", "cls", "retry_after"),
    [
        (Answer(403, status(403, "Forbidden", "no")), Forbidden, None),
        (Answer(401, status(401, "Unauthorized", "who")), Forbidden, None),
        (Answer(422, status(422, "Invalid", "bad spec")), KubeError, None),
        (
            Answer(429, status(429, "TooManyRequests", "slow down"), {"Retry-After": "3"}),
            Retryable,
            3.0,
        ),
        (
            Answer(429, status(429, "TooManyRequests", "x", retryAfterSeconds=2)),
            Retryable,
            2.0,
        ),
        (Answer(500, status(500, "InternalError", "boom")), Retryable, None),
        (Answer(503, "upstream down", content_type="text/plain"), Retryable, None),
        (
            Answer(503, "later", {"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"}, "text/plain"),
            Retryable,
            0.0,  # an HTTP date in the past: retry now
        ),
        (Answer(504, "{not json", content_type="application/json"), Retryable, None),
    ],
)
async def test_error_answers_are_mapped(
    stub: Stub,
    client: KubeClient,
    answer: Answer,
    cls: type[KubeError],
    retry_after: float | None,
) -> None:
    stub.on("GET", "/api/v1/namespaces/a/services/web", answer)
    with pytest.raises(KubeError) as caught:
        await client.get(SERVICE, "web", "a")
    assert type(caught.value) is cls
    assert caught.value.status == answer.status
    if isinstance(caught.value, Retryable):
        assert caught.value.retry_after == retry_after


async def test_retry_after_as_a_future_http_date(stub: Stub, client: KubeClient) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    stub.on("GET", "/api/v1/services", Answer(503, "x", {"Retry-After": when}, "text/plain"))
    with pytest.raises(Retryable) as caught:
        await client.list(SERVICE)
    assert caught.value.retry_after is not None
    assert 25 < caught.value.retry_after <= 30


async def test_error_without_content_type_from_a_proxy(tmp_path: Path) -> None:
    """lightkube trips over an error answer with no Content-Type; still a Retryable."""

    async def bare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(bare, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    kube = KubeClient.from_config(str(write_kubeconfig(tmp_path / "c", f"http://127.0.0.1:{port}")))
    try:
        with pytest.raises(Retryable) as caught:
            await kube.get(SERVICE, "web", "a")
        assert (caught.value.status, caught.value.reason) == (502, "Bad Gateway")
    finally:
        await kube.close()
        server.close()
        await server.wait_closed()


async def test_connection_refused_is_retryable_status_0(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    kube = KubeClient.from_config(str(write_kubeconfig(tmp_path / "c", f"http://127.0.0.1:{port}")))
    try:
        for call in (
            kube.get(SERVICE, "web", "a"),
            kube.list(SERVICE),
            kube.delete(SERVICE, "web", "a"),
            anext(kube.watch(SERVICE, resource_version="1")),
        ):
            with pytest.raises(Retryable) as caught:
                await call
            assert caught.value.status == 0
    finally:
        await kube.close()


# ---------------------------------------------------------------- watch


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


async def collect(stream: AsyncIterator[WatchEvent]) -> list[WatchEvent]:
    return [e async for e in stream]


async def until_error(
    stream: AsyncIterator[WatchEvent],
) -> tuple[list[WatchEvent], KubeError | None]:
    """The events a stream gave before it failed, and the failure."""
    got: list[WatchEvent] = []
    while True:
        try:
            got.append(await anext(stream))
        except StopAsyncIteration:
            return got, None
        except KubeError as exc:
            return got, exc


async def test_watch_streams_events_until_the_server_ends(stub: Stub, client: KubeClient) -> None:
    bookmark = {"kind": "Service", "metadata": {"resourceVersion": "12"}}
    lines = [
        event("ADDED", service("a", "10")),
        event("MODIFIED", service("a", "11")),
        event("BOOKMARK", bookmark),
        event("DELETED", service("a", "13")),
    ]
    stub.on("GET", "/api/v1/namespaces/web/services", Answer(lines=lines))
    got = await collect(
        client.watch(SERVICE, "web", resource_version="9", timeout_seconds=60, label_selector="a=b")
    )
    assert [(e.type, e.resource_version) for e in got] == [
        ("ADDED", "10"),
        ("MODIFIED", "11"),
        ("BOOKMARK", "12"),
        ("DELETED", "13"),
    ]
    assert got[0].object == service("a", "10")
    assert stub.seen[0].query == {
        "watch": "true",
        "resourceVersion": "9",
        "timeoutSeconds": "60",
        "allowWatchBookmarks": "true",
        "labelSelector": "a=b",
    }


async def test_watch_all_namespaces_without_bookmarks(stub: Stub, client: KubeClient) -> None:
    stub.on("GET", "/apis/networking.k8s.io/v1/ingresses", Answer(lines=[]))
    assert await collect(client.watch(INGRESS, resource_version="3", bookmarks=False)) == []
    assert "allowWatchBookmarks" not in stub.seen[0].query


async def test_watch_error_event_410_is_gone(stub: Stub, client: KubeClient) -> None:
    expired = status(410, "Expired", "too old resource version: 1 (50)")
    lines = [event("ADDED", service("a", "60")), event("ERROR", expired)]
    stub.on("GET", "/api/v1/services", Answer(lines=lines))
    seen, error = await until_error(client.watch(SERVICE, resource_version="1"))
    assert [e.type for e in seen] == ["ADDED"]
    assert isinstance(error, Gone)
    assert error.reason == "Expired"


async def test_watch_error_event_other_code(stub: Stub, client: KubeClient) -> None:
    lines = [event("ERROR", status(500, "InternalError", "etcd"))]
    stub.on("GET", "/api/v1/services", Answer(lines=lines))
    with pytest.raises(Retryable):
        await collect(client.watch(SERVICE, resource_version="1"))


@pytest.mark.parametrize(
    ("answer", "cls", "retry_after"),
    [
        (Answer(410, status(410, "Gone", "too old")), Gone, None),
        (Answer(429, status(429, "TooManyRequests", "x"), {"Retry-After": "7"}), Retryable, 7.0),
        (Answer(503, "down", content_type="text/plain"), Retryable, None),
        (Answer(403, status(403, "Forbidden", "rbac")), Forbidden, None),
    ],
)
async def test_watch_error_answers(
    stub: Stub,
    client: KubeClient,
    answer: Answer,
    cls: type[KubeError],
    retry_after: float | None,
) -> None:
    stub.on("GET", "/api/v1/services", answer)
    with pytest.raises(KubeError) as caught:
        await collect(client.watch(SERVICE, resource_version="1"))
    assert type(caught.value) is cls
    if isinstance(caught.value, Retryable):
        assert caught.value.retry_after == retry_after


async def test_watch_connection_cut_mid_stream_is_retryable(stub: Stub, client: KubeClient) -> None:
    stub.on("GET", "/api/v1/services", Answer(lines=[event("ADDED", service("a"))], cut=True))
    got, error = await until_error(client.watch(SERVICE, resource_version="1"))
    assert len(got) == 1
    assert isinstance(error, Retryable)
    assert error.status == 0


async def test_watch_closed_early_releases_the_stream(stub: Stub, client: KubeClient) -> None:
    hold = asyncio.Event()
    stub.on("GET", "/api/v1/services", Answer(lines=[event("ADDED", service("a"))], hold=hold))
    stream = client.watch(SERVICE, resource_version="1")
    first = await anext(stream)
    assert first.type == "ADDED"
    await stream.aclose()
    hold.set()


async def test_watch_bad_line_is_an_error(stub: Stub, client: KubeClient) -> None:
    stub.on("GET", "/api/v1/services", Answer(lines=[["not", "an", "event"]]))
    with pytest.raises(KubeError, match="not an event"):
        await collect(client.watch(SERVICE, resource_version="1"))


def test_kind_names() -> None:
    assert SERVICE.api_version == "v1"
    assert INGRESS.api_version == "networking.k8s.io/v1"
    assert str(INGRESS) == "ingresses.networking.k8s.io"
    assert str(SERVICE) == "services"
    custom = Kind("example.com", "v1", "widgets", "Widget", namespaced=True)
    assert custom.api_version == "example.com/v1"


@pytest.fixture
def no_lightkube_registry_side_effect() -> Iterator[None]:
    from lightkube.core.resource_registry import resource_registry

    before = dict(resource_registry._registry)
    yield
    assert resource_registry._registry == before


async def test_generic_classes_stay_out_of_lightkubes_registry(
    stub: Stub, client: KubeClient, no_lightkube_registry_side_effect: None
) -> None:
    widget = Kind("example.com", "v1", "widgets", "Widget", namespaced=True)
    stub.on("GET", "/apis/example.com/v1/namespaces/a/widgets/w", Answer(body={"x": 1}))
    assert await client.get(widget, "w", "a") == {"x": 1}


# ---------------------------------------------------------------- the fake API server


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer(namespaces=("default", "web")) as server:
        yield server


@pytest.fixture
async def kube(api: FakeApiServer, tmp_path: Path) -> AsyncIterator[KubeClient]:
    client = KubeClient.from_config(str(api.write_kubeconfig(tmp_path / "kubeconfig")))
    yield client
    await client.close()


async def test_fake_create_get_replace_patch_delete(api: FakeApiServer, kube: KubeClient) -> None:
    made = await kube.create(CONFIGMAP, {"metadata": {"name": "c"}, "data": {"k": "1"}}, "web")
    meta = made["metadata"]
    assert meta["namespace"] == "web"
    assert meta["uid"]
    assert await kube.get(CONFIGMAP, "c", "web") == made

    with pytest.raises(Conflict) as exists:
        await kube.create(CONFIGMAP, {"metadata": {"name": "c"}}, "web")
    assert exists.value.reason == "AlreadyExists"

    newer = await kube.replace(CONFIGMAP, made | {"data": {"k": "2"}})
    assert int(newer["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    with pytest.raises(Conflict) as stale:  # `made` carries the old resourceVersion
        await kube.replace(CONFIGMAP, made | {"data": {"k": "3"}})
    assert stale.value.reason == "Conflict"

    patched = await kube.patch(CONFIGMAP, "c", {"data": {"extra": "x"}}, "web")
    assert patched["data"] == {"k": "2", "extra": "x"}
    stored = api.get_object("ConfigMap", "web", "c")
    assert stored is not None
    assert stored["data"] == {"k": "2", "extra": "x"}

    await kube.delete(CONFIGMAP, "c", "web")
    assert api.get_object("ConfigMap", "web", "c") is None
    with pytest.raises(NotFound):
        await kube.get(CONFIGMAP, "c", "web")
    with pytest.raises(NotFound):
        await kube.delete(CONFIGMAP, "c", "web")
    with pytest.raises(NotFound):
        await kube.patch(CONFIGMAP, "c", {"data": {}}, "web")


async def test_fake_default_namespace_and_cluster_scope(
    api: FakeApiServer, kube: KubeClient
) -> None:
    await kube.create(CONFIGMAP, {"metadata": {"name": "here"}})
    assert api.get_object("ConfigMap", "default", "here") is not None
    await kube.create(NAMESPACE, {"metadata": {"name": "team"}})
    await kube.create(
        INGRESSCLASS, {"metadata": {"name": "meshgate"}, "spec": {"controller": "m/x"}}
    )
    got = await kube.get(INGRESSCLASS, "meshgate")
    assert got["spec"]["controller"] == "m/x"
    assert "namespace" not in got["metadata"]
    namespaces, _ = await kube.list(NAMESPACE)
    assert "team" in {n["metadata"]["name"] for n in namespaces}


async def test_fake_list_selectors_and_resource_version(
    api: FakeApiServer, kube: KubeClient
) -> None:
    for ns, name, app in [("a", "web", "web"), ("b", "web", "web"), ("a", "db", "db")]:
        api.put(svc_manifest(ns, name, {"app": app}))
    items, rv = await kube.list(SERVICE, label_selector="app=web")
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items] == [
        ("a", "web"),
        ("b", "web"),
    ]
    assert rv == api.resource_version
    only_a, _ = await kube.list(SERVICE, "a", field_selector="metadata.name=db")
    assert [i["metadata"]["name"] for i in only_a] == ["db"]


async def test_fake_server_side_apply_and_status(api: FakeApiServer, kube: KubeClient) -> None:
    cm = {"metadata": {"name": "applied"}, "data": {"owner": "one"}}
    await kube.patch(CONFIGMAP, "applied", cm, "web", patch_type="apply", field_manager="one")
    other = {"metadata": {"name": "applied"}, "data": {"owner": "two"}}
    with pytest.raises(Conflict):
        await kube.patch(
            CONFIGMAP, "applied", other, "web", patch_type="apply", field_manager="two"
        )
    taken = await kube.patch(
        CONFIGMAP, "applied", other, "web", patch_type="apply", field_manager="two", force=True
    )
    assert taken["data"] == {"owner": "two"}

    api.put(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "site", "namespace": "web"},
            "spec": {"defaultBackend": {"service": {"name": "s", "port": {"number": 80}}}},
        }
    )
    lb = {"status": {"loadBalancer": {"ingress": [{"ip": "10.1.2.3"}]}}}
    await kube.patch(INGRESS, "site", lb, "web", subresource="status")
    stored = api.get_object("Ingress", "web", "site")
    assert stored is not None
    assert stored["status"] == lb["status"]


async def test_fake_watch_events_and_410(api: FakeApiServer, kube: KubeClient) -> None:
    _, rv = await kube.list(SERVICE, "web")
    api.put(svc_manifest("web", "one", {}))
    api.delete("Service", "web", "one")
    events = await collect(kube.watch(SERVICE, "web", resource_version=rv, timeout_seconds=1))
    # Ended by the server at timeoutSeconds, with a last bookmark.
    assert [e.type for e in events] == ["ADDED", "DELETED", "BOOKMARK"]
    assert events[-1].resource_version == api.resource_version
    assert api.requests[-1].query["allowWatchBookmarks"] == "true"

    api.put(svc_manifest("web", "two", {}))
    api.compact()
    with pytest.raises(Gone):
        await collect(kube.watch(SERVICE, "web", resource_version=rv))


async def test_fake_injected_faults(api: FakeApiServer, kube: KubeClient) -> None:
    api.fail_next(429, retry_after=2)
    with pytest.raises(Retryable) as throttled:
        await kube.list(SERVICE)
    assert (throttled.value.status, throttled.value.retry_after) == (429, 2.0)
    api.fail_next(503, method="POST")
    with pytest.raises(Retryable) as unavailable:
        await kube.create(CONFIGMAP, {"metadata": {"name": "x"}}, "web")
    assert unavailable.value.status == 503
    api.fail_next(500)
    with pytest.raises(Retryable):
        await collect(kube.watch(SERVICE, resource_version=api.resource_version))


async def test_fake_wrong_token_is_forbidden(tmp_path: Path) -> None:
    with FakeApiServer(token="secret") as api:
        path = write_kubeconfig(tmp_path / "config", api.url, token="wrong")
        kube = KubeClient.from_config(str(path))
        try:
            with pytest.raises(Forbidden) as caught:
                await kube.list(SERVICE)
            assert caught.value.status == 401
        finally:
            await kube.close()


def svc_manifest(namespace: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"ports": [{"port": 80}]},
    }
