"""The Kubernetes API contract meshgate relies on, checked against the fake.

These tests run against ``FakeApiServer`` by default. With ``KUBECONFIG`` set
they run against that cluster instead, in a throwaway namespace deleted at the
end, which is how the fake is kept honest: a test here states what the real
API server does, so it must pass against both.

The last tests (``test_hook_*``, ``test_fake_*``) exercise the fake's own test
hooks and always run against a fresh fake.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import yaml
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap
from lightkube.types import PatchType, on_error_retry

from tests.kube.fake_apiserver import FakeApiServer, query_bool

Obj = dict[str, Any]

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
PAUSE_IMAGE = "registry.k8s.io/pause:3.9"


# --------------------------------------------------------------------------- HTTP helpers


@dataclass
class Response:
    status: int
    headers: Message
    body: Any


class WatchStream:
    """A watch response read one event (line) at a time."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.response = response
        self.status = response.status
        self.headers = response.headers

    def next(self) -> Obj | None:
        """The next event, or None once the server has closed the stream."""
        line = self.response.readline()
        if not line:
            return None
        event: Obj = json.loads(line)
        return event

    def take(self, count: int, *, bookmarks: bool = False) -> list[Obj]:
        """The next ``count`` events (BOOKMARKs skipped unless asked for)."""
        events: list[Obj] = []
        while len(events) < count:
            event = self.next()
            assert event is not None, f"stream closed after {events}"
            if bookmarks or event["type"] != "BOOKMARK":
                events.append(event)
        return events

    def rest(self) -> list[Obj]:
        """Every event until the server closes the stream."""
        events = []
        while (event := self.next()) is not None:
            events.append(event)
        return events


class Api:
    """Plain HTTP calls to an API server (urllib, no client library)."""

    def __init__(
        self, server: str, *, token: str | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.ssl_context = ssl_context

    def _request(
        self,
        method: str,
        path: str,
        body: Any,
        query: Mapping[str, str] | None,
        content_type: str,
    ) -> urllib.request.Request:
        url = self.server + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        return urllib.request.Request(url, data=data, method=method, headers=headers)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Response:
        request = self._request(method, path, body, query, content_type)
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.ssl_context) as response:
                raw = response.read()
                status, headers = response.status, response.headers
        except urllib.error.HTTPError as error:
            raw, status, headers = error.read(), error.code, error.headers
        text = raw.decode()
        parsed = json.loads(text) if headers.get("Content-Type") == "application/json" else text
        return Response(status, headers, parsed)

    def get(self, path: str, **query: str) -> Response:
        return self.call("GET", path, query=query)

    def post(self, path: str, body: Any) -> Response:
        return self.call("POST", path, body)

    def put(self, path: str, body: Any) -> Response:
        return self.call("PUT", path, body)

    def patch(
        self, path: str, body: Any, kind: str = "merge", query: Mapping[str, str] | None = None
    ) -> Response:
        content_type = {
            "merge": "application/merge-patch+json",
            "strategic": "application/strategic-merge-patch+json",
            "json": "application/json-patch+json",
            "apply": "application/apply-patch+yaml",
        }[kind]
        return self.call("PATCH", path, body, query=query, content_type=content_type)

    def delete(self, path: str, body: Any = None) -> Response:
        return self.call("DELETE", path, body)

    @contextlib.contextmanager
    def watch(self, path: str, **query: str) -> Iterator[WatchStream]:
        query.setdefault("watch", "true")
        request = self._request("GET", path, None, query, "application/json")
        with urllib.request.urlopen(request, timeout=10, context=self.ssl_context) as response:
            yield WatchStream(response)


def _named(entries: list[Obj], name: str) -> Obj:
    return next((e for e in entries if e.get("name") == name), {})


def api_from_kubeconfig(path: Path, scratch: Path) -> Api:
    """An ``Api`` for the current context of a kubeconfig (token, certificates, exec)."""
    config = yaml.safe_load(path.read_text())
    context = _named(config.get("contexts") or [], config["current-context"]).get("context", {})
    cluster = _named(config.get("clusters") or [], context["cluster"])["cluster"]
    user: Obj = _named(config.get("users") or [], context.get("user", "")).get("user") or {}

    def data_file(name: str, data: str) -> str:
        target = scratch / name
        target.write_bytes(base64.b64decode(data))
        return str(target)

    def local(name: str) -> str:
        return str((path.parent / name).resolve())

    token = user.get("token")
    if user.get("tokenFile"):
        token = Path(local(user["tokenFile"])).read_text().strip()
    cert = local(user["client-certificate"]) if user.get("client-certificate") else None
    key = local(user["client-key"]) if user.get("client-key") else None
    if user.get("client-certificate-data"):
        cert = data_file("client.crt", user["client-certificate-data"])
    if user.get("client-key-data"):
        key = data_file("client.key", user["client-key-data"])
    if user.get("exec"):
        spec = user["exec"]
        env = {**os.environ, **{e["name"]: e["value"] for e in spec.get("env") or []}}
        output = subprocess.run(
            [spec["command"], *(spec.get("args") or [])],
            env=env,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        status = json.loads(output).get("status", {})
        token = status.get("token", token)
        if status.get("clientCertificateData"):
            (scratch / "exec.crt").write_text(status["clientCertificateData"])
            (scratch / "exec.key").write_text(status["clientKeyData"])
            cert, key = str(scratch / "exec.crt"), str(scratch / "exec.key")

    context_ssl = None
    if cluster["server"].startswith("https:"):
        context_ssl = ssl.create_default_context()
        if cluster.get("insecure-skip-tls-verify"):
            context_ssl.check_hostname = False
            context_ssl.verify_mode = ssl.CERT_NONE
        elif cluster.get("certificate-authority-data"):
            ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
            context_ssl.load_verify_locations(cadata=ca)
        elif cluster.get("certificate-authority"):
            context_ssl.load_verify_locations(cafile=local(cluster["certificate-authority"]))
        if cert and key:
            context_ssl.load_cert_chain(cert, key)
    return Api(cluster["server"], token=token, ssl_context=context_ssl)


# --------------------------------------------------------------------------- fixtures


@dataclass
class Cluster:
    api: Api
    kubeconfig: Path
    namespace: str
    fake: FakeApiServer | None

    def path(self, plural: str, name: str = "", group: str = "") -> str:
        """The REST path of a namespaced collection or object in the test namespace."""
        prefix = f"/apis/{group}" if group else "/api/v1"
        base = f"{prefix}/namespaces/{self.namespace}/{plural}"
        return f"{base}/{name}" if name else base

    def make_history_expire(self) -> str:
        """A resourceVersion the server no longer keeps history for."""
        if self.fake is not None:
            old = str(int(self.fake.resource_version) - 1)
            self.fake.compact()  # keeps nothing: only the latest version is still current
            return old
        return "1"  # a real cluster compacts its etcd history every 5 minutes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    scratch = tmp_path_factory.mktemp("kube")
    namespace = f"meshgate-contract-{uuid.uuid4().hex[:8]}"
    real = os.environ.get("KUBECONFIG")
    fake: FakeApiServer | None = None
    if real:
        kubeconfig = Path(real.split(os.pathsep)[0])
        api = api_from_kubeconfig(kubeconfig, scratch)
    else:
        fake = FakeApiServer(bookmark_interval=1.0).start()
        kubeconfig = fake.write_kubeconfig(scratch / "kubeconfig", namespace=namespace)
        api = Api(fake.url, token="fake-token")
    try:
        created = api.post("/api/v1/namespaces", {"metadata": {"name": namespace}})
        assert created.status == 201, created.body
        yield Cluster(api, kubeconfig, namespace, fake)
    finally:
        api.delete(f"/api/v1/namespaces/{namespace}")
        if fake is not None:
            fake.stop()


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_interval=0.2) as server:
        yield server


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def configmap(name: str, labels: Mapping[str, str] | None = None, /, **data: str) -> Obj:
    meta: Obj = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def deployment(name: str) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "a", "image": PAUSE_IMAGE}]},
            },
        },
    }


def create(cluster: Cluster, plural: str, obj: Obj, group: str = "") -> Obj:
    response = cluster.api.post(cluster.path(plural, group=group), obj)
    assert response.status == 201, response.body
    body: Obj = response.body
    return body


# --------------------------------------------------------------------------- discovery


def test_discovery_documents_list_what_is_served(cluster: Cluster) -> None:
    api = cluster.api
    versions = api.get("/api")
    assert versions.status == 200
    assert versions.body["kind"] == "APIVersions"
    assert "v1" in versions.body["versions"]

    groups = api.get("/apis").body
    assert groups["kind"] == "APIGroupList"
    served = {g["name"]: [v["groupVersion"] for v in g["versions"]] for g in groups["groups"]}
    for group in ("apps", "discovery.k8s.io", "networking.k8s.io", "coordination.k8s.io"):
        assert f"{group}/v1" in served[group]

    core = api.get("/api/v1").body
    assert core["kind"] == "APIResourceList"
    assert core["groupVersion"] == "v1"
    resources = {r["name"]: r for r in core["resources"]}
    assert resources["services"]["namespaced"] is True
    assert resources["services"]["kind"] == "Service"
    assert "svc" in resources["services"]["shortNames"]
    assert {"get", "list", "watch", "create", "update", "patch", "delete"} <= set(
        resources["configmaps"]["verbs"]
    )
    assert resources["namespaces"]["namespaced"] is False
    assert set(resources["services/status"]["verbs"]) == {"get", "patch", "update"}
    for name in ("endpoints", "secrets", "configmaps", "pods", "events"):
        assert name in resources

    apps = api.get("/apis/apps/v1").body
    assert apps["groupVersion"] == "apps/v1"
    assert "deployments/status" in {r["name"] for r in apps["resources"]}
    networking = {r["name"]: r for r in api.get("/apis/networking.k8s.io/v1").body["resources"]}
    assert networking["ingressclasses"]["namespaced"] is False
    assert networking["ingresses"]["namespaced"] is True
    slices = api.get("/apis/discovery.k8s.io/v1").body
    assert "endpointslices" in {r["name"] for r in slices["resources"]}
    leases = api.get("/apis/coordination.k8s.io/v1").body
    assert "leases" in {r["name"] for r in leases["resources"]}

    version = api.get("/version").body
    assert version["major"] == "1"
    assert version["gitVersion"].startswith("v1.")


# --------------------------------------------------------------------------- objects


def test_create_get_and_list_have_the_real_shapes(cluster: Cluster) -> None:
    label = unique("shape")
    names = sorted(unique("cm") for _ in range(3))
    created = [create(cluster, "configmaps", configmap(n, {"suite": label}, k=n)) for n in names]

    first = created[0]
    assert first["kind"] == "ConfigMap"
    assert first["apiVersion"] == "v1"
    meta = first["metadata"]
    assert meta["namespace"] == cluster.namespace
    assert meta["resourceVersion"].isdigit()
    assert re.match(r"^[0-9a-f-]{36}$", meta["uid"])
    assert RFC3339.match(meta["creationTimestamp"])
    assert "generation" not in meta  # ConfigMap's strategy does not track generation
    rvs = [int(c["metadata"]["resourceVersion"]) for c in created]
    assert rvs == sorted(rvs)
    assert len(set(rvs)) == 3

    got = cluster.api.get(cluster.path("configmaps", names[0]))
    assert got.status == 200
    assert got.headers.get("Content-Type") == "application/json"
    assert got.body["metadata"]["uid"] == meta["uid"]
    assert got.body["kind"] == "ConfigMap"

    listed = cluster.api.get(cluster.path("configmaps"), labelSelector=f"suite={label}").body
    assert listed["kind"] == "ConfigMapList"
    assert listed["apiVersion"] == "v1"
    assert int(listed["metadata"]["resourceVersion"]) >= max(rvs)
    assert [i["metadata"]["name"] for i in listed["items"]] == names
    # typed lists do not repeat kind/apiVersion on their items
    assert all("kind" not in i and "apiVersion" not in i for i in listed["items"])

    everywhere = cluster.api.get("/api/v1/configmaps", labelSelector=f"suite={label}").body
    assert {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everywhere["items"]} == {
        (cluster.namespace, n) for n in names
    }


def test_pagination_with_limit_and_continue(cluster: Cluster) -> None:
    label = unique("page")
    names = sorted(unique("cm") for _ in range(3))
    for name in names:
        create(cluster, "configmaps", configmap(name, {"suite": label}))
    first = cluster.api.get(cluster.path("configmaps"), labelSelector=f"suite={label}", limit="2")
    assert [i["metadata"]["name"] for i in first.body["items"]] == names[:2]
    assert first.body["metadata"]["continue"]
    assert first.body["metadata"]["remainingItemCount"] == 1
    second = cluster.api.get(
        cluster.path("configmaps"),
        labelSelector=f"suite={label}",
        limit="2",
        **{"continue": first.body["metadata"]["continue"]},
    )
    assert [i["metadata"]["name"] for i in second.body["items"]] == names[2:]
    assert not second.body["metadata"].get("continue")


def test_not_found_is_a_status_body(cluster: Cluster) -> None:
    missing = cluster.api.get(cluster.path("configmaps", "does-not-exist"))
    assert missing.status == 404
    assert missing.headers.get("Content-Type") == "application/json"
    assert missing.body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'configmaps "does-not-exist" not found',
        "reason": "NotFound",
        "details": {"name": "does-not-exist", "kind": "configmaps"},
        "code": 404,
    }
    grouped = cluster.api.get(cluster.path("deployments", "nope", group="apps/v1"))
    assert grouped.status == 404
    assert grouped.body["message"] == 'deployments.apps "nope" not found'
    assert grouped.body["details"] == {"name": "nope", "group": "apps", "kind": "deployments"}


def test_create_twice_is_already_exists(cluster: Cluster) -> None:
    name = unique("dup")
    create(cluster, "configmaps", configmap(name))
    again = cluster.api.post(cluster.path("configmaps"), configmap(name))
    assert again.status == 409
    assert again.body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'configmaps "{name}" already exists',
        "reason": "AlreadyExists",
        "details": {"name": name, "kind": "configmaps"},
        "code": 409,
    }


def test_create_rules(cluster: Cluster) -> None:
    generated = create(cluster, "configmaps", {"metadata": {"generateName": "gen-"}})
    name = generated["metadata"]["name"]
    assert name.startswith("gen-")
    assert len(name) == len("gen-") + 5
    assert generated["metadata"]["generateName"] == "gen-"

    invalid = cluster.api.post(cluster.path("configmaps"), configmap("Not_Valid"))
    assert invalid.status == 422
    assert invalid.body["reason"] == "Invalid"
    assert invalid.body["details"]["causes"][0]["field"] == "metadata.name"

    with_rv = configmap(unique("rv"))
    with_rv["metadata"]["resourceVersion"] = "12"
    refused = cluster.api.post(cluster.path("configmaps"), with_rv)
    assert refused.status == 500
    assert refused.body["message"] == "resourceVersion should not be set on objects to be created"

    elsewhere = configmap(unique("ns"))
    elsewhere["metadata"]["namespace"] = "some-other-namespace"
    mismatch = cluster.api.post(cluster.path("configmaps"), elsewhere)
    assert mismatch.status == 400
    assert mismatch.body["reason"] == "BadRequest"

    missing_ns = cluster.api.post(
        f"/api/v1/namespaces/{unique('absent')}/configmaps", configmap("x")
    )
    assert missing_ns.status == 404
    assert missing_ns.body["details"]["kind"] == "namespaces"


def test_update_uses_optimistic_concurrency(cluster: Cluster) -> None:
    name = unique("occ")
    created = create(cluster, "configmaps", configmap(name, v="1"))
    path = cluster.path("configmaps", name)

    first = {**created, "data": {"v": "2"}}
    updated = cluster.api.put(path, first)
    assert updated.status == 200
    assert updated.body["data"] == {"v": "2"}
    assert int(updated.body["metadata"]["resourceVersion"]) > int(
        created["metadata"]["resourceVersion"]
    )

    stale = cluster.api.put(path, {**created, "data": {"v": "3"}})
    assert stale.status == 409
    assert stale.body["reason"] == "Conflict"
    assert stale.body["message"] == (
        f'Operation cannot be fulfilled on configmaps "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    assert stale.body["details"] == {"name": name, "kind": "configmaps"}

    # ConfigMaps allow unconditional updates: no resourceVersion, last write wins
    unconditional = configmap(name, v="4")
    assert cluster.api.put(path, unconditional).body["data"] == {"v": "4"}

    # a no-op update does not make a new version
    current = cluster.api.get(path).body
    again = cluster.api.put(path, current).body
    assert again["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]

    renamed = cluster.api.put(path, configmap("another-name"))
    assert renamed.status == 400

    absent = unique("absent")
    missing = cluster.api.put(cluster.path("configmaps", absent), configmap(absent))
    assert missing.status == 404


def test_leases_need_a_resource_version_to_update(cluster: Cluster) -> None:
    name = unique("lease")
    path = cluster.path("leases", name, group="coordination.k8s.io/v1")
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }
    # Leases may be created by PUT
    created = cluster.api.put(path, lease)
    assert created.status == 201, created.body

    unconditional = cluster.api.put(path, {**lease, "spec": {"holderIdentity": "b"}})
    assert unconditional.status == 422
    assert unconditional.body["reason"] == "Invalid"
    assert "must be specified for an update" in unconditional.body["message"]

    taken = dict(created.body)
    taken["spec"] = {"holderIdentity": "b", "leaseDurationSeconds": 15}
    won = cluster.api.put(path, taken)
    assert won.status == 200
    lost = cluster.api.put(path, {**taken, "spec": {"holderIdentity": "c"}})
    assert lost.status == 409
    assert lost.body["details"]["group"] == "coordination.k8s.io"


def test_status_subresource_splits_spec_and_status(cluster: Cluster) -> None:
    name = unique("svc")
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}},
    }
    created = create(cluster, "services", service)
    assert created["status"] == {"loadBalancer": {}}  # status is not writable on create
    port = created["spec"]["ports"][0]
    assert port["protocol"] == "TCP"
    assert port["targetPort"] == 80
    assert created["spec"]["type"] == "ClusterIP"
    assert created["spec"]["clusterIP"]
    assert "generation" not in created["metadata"]

    path = cluster.path("services", name)
    wanted = {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}
    ignored = cluster.api.put(path, {**created, "status": wanted}).body
    assert ignored["status"] == {"loadBalancer": {}}

    current = cluster.api.get(path).body
    spec = {**current["spec"], "sessionAffinity": "ClientIP"}
    written = cluster.api.put(f"{path}/status", {**current, "spec": spec, "status": wanted})
    assert written.status == 200, written.body
    assert written.body["status"] == wanted
    assert written.body["spec"]["sessionAffinity"] == "None"
    assert cluster.api.get(f"{path}/status").body["status"] == wanted

    patched = cluster.api.patch(f"{path}/status", {"status": {"loadBalancer": {"ingress": None}}})
    assert patched.body["status"] == {"loadBalancer": {}}


def test_generation_follows_spec_changes_only(cluster: Cluster) -> None:
    name = unique("deploy")
    created = create(cluster, "deployments", deployment(name), group="apps/v1")
    assert created["metadata"]["generation"] == 1
    path = cluster.path("deployments", name, group="apps/v1")

    status = cluster.api.patch(f"{path}/status", {"status": {"observedGeneration": 1}})
    assert status.status == 200, status.body
    assert status.body["metadata"]["generation"] == 1

    labelled = cluster.api.patch(path, {"metadata": {"labels": {"x": "y"}}})
    assert labelled.body["metadata"]["generation"] == 1
    scaled = cluster.api.patch(path, {"spec": {"revisionHistoryLimit": 3}})
    assert scaled.body["metadata"]["generation"] == 2


def test_patch_types(cluster: Cluster) -> None:
    name = unique("patch")
    create(cluster, "deployments", deployment(name), group="apps/v1")
    path = cluster.path("deployments", name, group="apps/v1")
    second = {"name": "b", "image": PAUSE_IMAGE}

    strategic = cluster.api.patch(
        path, {"spec": {"template": {"spec": {"containers": [second]}}}}, "strategic"
    )
    assert strategic.status == 200, strategic.body
    containers = strategic.body["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["a", "b"]  # merged by name

    merge = cluster.api.patch(path, {"spec": {"template": {"spec": {"containers": [second]}}}})
    containers = merge.body["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["b"]  # lists are replaced

    added = cluster.api.patch(
        path, [{"op": "add", "path": "/metadata/labels", "value": {"via": "json-patch"}}], "json"
    )
    assert added.body["metadata"]["labels"] == {"via": "json-patch"}
    removed = cluster.api.patch(path, {"metadata": {"labels": None}})
    assert not removed.body["metadata"].get("labels")
    failed = cluster.api.patch(path, [{"op": "test", "path": "/spec/replicas", "value": 5}], "json")
    assert failed.status == 422

    stale = cluster.api.patch(path, {"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 0}})
    assert stale.status == 409

    missing = cluster.api.patch(cluster.path("configmaps", unique("absent")), {"data": {}})
    assert missing.status == 404
    unsupported = cluster.api.call("PATCH", path, {}, content_type="text/plain")
    assert unsupported.status == 415


def test_server_side_apply(cluster: Cluster) -> None:
    name = unique("apply")
    path = cluster.path("configmaps", name)

    def apply(manager: str, data: Mapping[str, str], force: bool = False) -> Response:
        query = {"fieldManager": manager}
        if force:
            query["force"] = "true"
        return cluster.api.patch(path, configmap(name, **data), "apply", query)

    created = apply("mgr-a", {"k": "1", "x": "1"})
    assert created.status == 201, created.body
    assert created.body["data"] == {"k": "1", "x": "1"}

    updated = apply("mgr-a", {"k": "1"})  # stops applying "x": it goes
    assert updated.status == 200, updated.body
    assert updated.body["data"] == {"k": "1"}

    conflict = apply("mgr-b", {"k": "2"})
    assert conflict.status == 409
    assert conflict.body["reason"] == "Conflict"
    assert ".data.k" in conflict.body["message"]
    assert conflict.body["message"].startswith("Apply failed with 1 conflict")

    shared = apply("mgr-b", {"other": "3"})
    assert shared.body["data"] == {"k": "1", "other": "3"}
    forced = apply("mgr-b", {"k": "2", "other": "3"}, force=True)
    assert forced.status == 200
    assert forced.body["data"] == {"k": "2", "other": "3"}
    assert apply("mgr-a", {"k": "1"}).status == 409  # mgr-a lost the field

    no_manager = cluster.api.patch(path, configmap(name, k="9"), "apply")
    assert no_manager.status == 422
    assert no_manager.body["details"]["kind"] == "PatchOptions"
    assert "fieldManager: Required value" in no_manager.body["message"]
    forced_merge = cluster.api.patch(path, {"data": {}}, "merge", {"force": "true"})
    assert forced_merge.status == 422


def test_delete_answers_and_finalizers(cluster: Cluster) -> None:
    plain = create(cluster, "configmaps", configmap(unique("del")))
    name = plain["metadata"]["name"]
    deleted = cluster.api.delete(cluster.path("configmaps", name))
    assert deleted.status == 200
    assert deleted.body["kind"] == "Status"
    assert deleted.body["status"] == "Success"
    assert deleted.body["details"] == {
        "name": name,
        "kind": "configmaps",
        "uid": plain["metadata"]["uid"],
    }
    assert cluster.api.delete(cluster.path("configmaps", name)).status == 404

    service = create(
        cluster, "services", {"metadata": {"name": unique("svc")}, "spec": {"ports": [{"port": 1}]}}
    )
    gone = cluster.api.delete(cluster.path("services", service["metadata"]["name"]))
    assert gone.body["kind"] == "Service"  # services answer with the object

    held = configmap(unique("held"), {"suite": "finalizers"})
    held["metadata"]["finalizers"] = ["meshgate.test/hold"]
    start = cluster.api.get(cluster.path("configmaps"), labelSelector="suite=none").body["metadata"]
    created = create(cluster, "configmaps", held)
    path = cluster.path("configmaps", created["metadata"]["name"])

    pending = cluster.api.delete(path)
    assert pending.status == 200
    assert pending.body["kind"] == "ConfigMap"
    assert RFC3339.match(pending.body["metadata"]["deletionTimestamp"])
    assert pending.body["metadata"]["deletionGracePeriodSeconds"] == 0
    assert cluster.api.get(path).status == 200
    again = cluster.api.delete(path)
    assert again.body["metadata"]["resourceVersion"] == pending.body["metadata"]["resourceVersion"]

    more = cluster.api.patch(path, {"metadata": {"finalizers": ["a.test/x", "meshgate.test/hold"]}})
    assert more.status == 422  # no new finalizers once deleting

    released = cluster.api.patch(path, {"metadata": {"finalizers": None}})
    assert released.status == 200
    assert cluster.api.get(path).status == 404

    with cluster.api.watch(
        cluster.path("configmaps"),
        resourceVersion=start["resourceVersion"],
        fieldSelector=f"metadata.name={created['metadata']['name']}",
    ) as stream:
        events = stream.take(3)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert "deletionTimestamp" in events[1]["object"]["metadata"]
    assert int(events[2]["object"]["metadata"]["resourceVersion"]) > int(
        events[1]["object"]["metadata"]["resourceVersion"]
    )


def test_strategic_merge_treats_finalizers_as_a_set(cluster: Cluster) -> None:
    held = configmap(unique("fin"))
    held["metadata"]["finalizers"] = ["meshgate.test/a"]
    path = cluster.path("configmaps", create(cluster, "configmaps", held)["metadata"]["name"])
    merged = cluster.api.patch(path, {"metadata": {"finalizers": ["meshgate.test/b"]}}, "strategic")
    assert merged.body["metadata"]["finalizers"] == ["meshgate.test/a", "meshgate.test/b"]
    dropped = cluster.api.patch(
        path,
        {"metadata": {"$deleteFromPrimitiveList/finalizers": ["meshgate.test/a"]}},
        "strategic",
    )
    assert dropped.body["metadata"]["finalizers"] == ["meshgate.test/b"]
    cluster.api.patch(path, {"metadata": {"finalizers": None}})


def test_owner_references_are_garbage_collected(cluster: Cluster) -> None:
    owner = create(cluster, "configmaps", configmap(unique("owner")))
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }
    dependent = configmap(unique("dependent"))
    dependent["metadata"]["ownerReferences"] = [reference]
    path = cluster.path("configmaps", create(cluster, "configmaps", dependent)["metadata"]["name"])
    cluster.api.delete(cluster.path("configmaps", owner["metadata"]["name"]))
    deadline = time.monotonic() + 15
    while cluster.api.get(path).status != 404:
        assert time.monotonic() < deadline, "the dependent was not garbage collected"
        time.sleep(0.1)


def test_label_and_field_selectors(cluster: Cluster) -> None:
    suite = unique("sel")
    objects = {
        "a": {"suite": suite, "tier": "web"},
        "b": {"suite": suite, "tier": "db"},
        "c": {"suite": suite},
    }
    names = {key: unique(key) for key in objects}
    for key, labels in objects.items():
        create(cluster, "configmaps", configmap(names[key], labels))

    def select(selector: str, fields: str = "") -> set[str]:
        query = {"labelSelector": f"suite={suite},{selector}" if selector else f"suite={suite}"}
        if fields:
            query["fieldSelector"] = fields
        response = cluster.api.get(cluster.path("configmaps"), **query)
        assert response.status == 200, response.body
        found = {i["metadata"]["name"] for i in response.body["items"]}
        return {key for key, name in names.items() if name in found}

    assert select("tier=web") == {"a"}
    assert select("tier==web") == {"a"}
    assert select("tier!=web") == {"b", "c"}
    assert select("tier") == {"a", "b"}
    assert select("!tier") == {"c"}
    assert select("tier in (web, db)") == {"a", "b"}
    assert select("tier notin (web)") == {"b", "c"}
    assert select("", f"metadata.name={names['b']}") == {"b"}
    assert select("", f"metadata.name!={names['b']}") == {"a", "c"}
    assert select("", f"metadata.namespace={cluster.namespace}") == {"a", "b", "c"}

    bad_label = cluster.api.get(cluster.path("configmaps"), labelSelector="tier in web")
    assert bad_label.status == 400
    bad_field = cluster.api.get(cluster.path("configmaps"), fieldSelector="data.k=v")
    assert bad_field.status == 400
    assert bad_field.body["reason"] == "BadRequest"


def test_unknown_paths_and_methods(cluster: Cluster) -> None:
    unknown = cluster.api.get(cluster.path("widgets"))
    assert unknown.status == 404
    assert unknown.body["kind"] == "Status"
    assert unknown.body["reason"] == "NotFound"
    assert cluster.api.get("/apis/widgets.example.com/v1").status == 404
    name = create(cluster, "configmaps", configmap(unique("m")))["metadata"]["name"]
    not_allowed = cluster.api.post(cluster.path("configmaps", name), configmap(name))
    assert not_allowed.status == 405
    assert not_allowed.body["reason"] == "MethodNotAllowed"


# --------------------------------------------------------------------------- watch


def test_watch_replays_from_a_list_resource_version(cluster: Cluster) -> None:
    suite = unique("replay")
    listed = cluster.api.get(cluster.path("configmaps"), labelSelector=f"suite={suite}").body
    since = listed["metadata"]["resourceVersion"]
    name = unique("w")
    created = create(cluster, "configmaps", configmap(name, {"suite": suite}, v="1"))
    path = cluster.path("configmaps", name)
    cluster.api.patch(path, {"data": {"v": "2"}})
    cluster.api.delete(path)

    with cluster.api.watch(
        cluster.path("configmaps"), resourceVersion=since, labelSelector=f"suite={suite}"
    ) as stream:
        assert stream.status == 200
        assert stream.headers.get("Content-Type") == "application/json"
        events = stream.take(3)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert events[0]["object"]["metadata"]["uid"] == created["metadata"]["uid"]
    assert events[1]["object"]["data"] == {"v": "2"}
    assert all(e["object"]["kind"] == "ConfigMap" for e in events)
    assert all(e["object"]["apiVersion"] == "v1" for e in events)
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)
    assert len(set(versions)) == 3


def test_watch_without_version_starts_with_the_current_state(cluster: Cluster) -> None:
    suite = unique("state")
    names = sorted(unique("s") for _ in range(2))
    for name in names:
        create(cluster, "configmaps", configmap(name, {"suite": suite}))
    with cluster.api.watch(cluster.path("configmaps"), labelSelector=f"suite={suite}") as stream:
        initial = stream.take(2)
        assert [e["type"] for e in initial] == ["ADDED", "ADDED"]
        assert sorted(e["object"]["metadata"]["name"] for e in initial) == names
        # leaving the selection is a DELETED, entering it an ADDED (the watch cache's rules)
        path = cluster.path("configmaps", names[0])
        cluster.api.patch(path, {"data": {"v": "1"}})
        cluster.api.patch(path, {"metadata": {"labels": {"suite": "elsewhere"}}})
        cluster.api.patch(path, {"metadata": {"labels": {"suite": suite}}})
        live = stream.take(3)
    assert [e["type"] for e in live] == ["MODIFIED", "DELETED", "ADDED"]
    assert live[1]["object"]["metadata"]["labels"] == {"suite": suite}


def test_watch_from_a_compacted_version_is_an_expired_error_event(cluster: Cluster) -> None:
    create(cluster, "configmaps", configmap(unique("old")))
    since = cluster.make_history_expire()
    with cluster.api.watch(cluster.path("configmaps"), resourceVersion=since) as stream:
        assert stream.status == 200  # the error comes inside the stream
        events = stream.rest()
    assert len(events) == 1
    error = events[0]
    assert error["type"] == "ERROR"
    status = error["object"]
    assert status["kind"] == "Status"
    assert status["code"] == 410
    assert status["reason"] == "Expired"
    assert status["message"].startswith(f"too old resource version: {since} (")


def test_watch_bookmarks_and_server_side_timeout(cluster: Cluster) -> None:
    started = time.monotonic()
    with cluster.api.watch(
        cluster.path("configmaps"),
        fieldSelector="metadata.name=never-created",
        allowWatchBookmarks="true",
        timeoutSeconds="3",
    ) as stream:
        events = stream.rest()
    elapsed = time.monotonic() - started
    assert 2.5 <= elapsed < 8
    assert events
    assert {e["type"] for e in events} == {"BOOKMARK"}
    bookmark = events[-1]["object"]
    assert bookmark["kind"] == "ConfigMap"
    assert bookmark["apiVersion"] == "v1"
    assert bookmark["metadata"]["resourceVersion"].isdigit()
    assert "name" not in bookmark["metadata"]


@pytest.mark.parametrize(
    ("value", "watches"),
    [
        ("true", True),
        ("1", True),
        ("True", True),
        ("TRUE", True),
        ("t", True),
        # not strconv.ParseBool: anything but "0" or "false" (any case) is true
        ("f", True),
        ("yes", True),
        ("", True),
        ("false", False),
        ("False", False),
        ("FALSE", False),
        ("0", False),
    ],
)
def test_query_booleans_parse_like_the_api_server(
    cluster: Cluster, value: str, watches: bool
) -> None:
    assert query_bool(value) is watches
    name = unique("bool")
    create(cluster, "configmaps", configmap(name))
    query = {"watch": value, "fieldSelector": f"metadata.name={name}", "timeoutSeconds": "5"}
    with cluster.api.watch(cluster.path("configmaps"), **query) as stream:
        first = stream.next()
    assert first is not None
    if watches:
        assert first["type"] == "ADDED"
        assert first["object"]["metadata"]["name"] == name
    else:
        assert first["kind"] == "ConfigMapList"


# --------------------------------------------------------------------------- a client library


async def _close(stream: Any) -> None:
    await cast(AsyncGenerator[Any, None], stream).aclose()


async def test_lightkube_works_against_the_api(cluster: Cluster) -> None:
    config = KubeConfig.from_file(str(cluster.kubeconfig))
    client = AsyncClient(config=config, namespace=cluster.namespace, field_manager="meshgate-test")
    suite = unique("lightkube")
    name = unique("lk")
    try:
        created = await client.create(
            ConfigMap(metadata=ObjectMeta(name=name, labels={"suite": suite}), data={"a": "1"})
        )
        assert created.metadata is not None
        assert created.metadata.namespace == cluster.namespace

        got = await client.get(ConfigMap, name)
        assert got.data == {"a": "1"}

        listing = client.list(ConfigMap, labels={"suite": suite})
        names = [cm.metadata.name async for cm in listing if cm.metadata is not None]
        assert names == [name]
        since = listing.resourceVersion

        merged = await client.patch(
            ConfigMap, name, {"data": {"b": "2"}}, patch_type=PatchType.MERGE
        )
        assert merged.data == {"a": "1", "b": "2"}
        strategic = await client.patch(ConfigMap, name, {"metadata": {"labels": {"x": "y"}}})
        assert strategic.metadata is not None
        assert strategic.metadata.labels == {"suite": suite, "x": "y"}
        applied = await client.apply(
            ConfigMap(metadata=ObjectMeta(name=name, labels={"suite": suite}), data={"c": "3"})
        )
        assert applied.data == {"a": "1", "b": "2", "c": "3"}

        seen: list[tuple[str, str]] = []
        stream = client.watch(
            ConfigMap, labels={"suite": suite}, resource_version=since, server_timeout=10
        )
        async for kind, obj in stream:
            assert obj.metadata is not None
            seen.append((kind, obj.data.get("c", "") if obj.data else ""))
            if len(seen) == 3:
                break
        await _close(stream)
        assert seen == [("MODIFIED", ""), ("MODIFIED", ""), ("MODIFIED", "3")]

        with pytest.raises(ApiError) as missing:
            await client.get(ConfigMap, "not-there")
        assert missing.value.status.code == 404
        assert missing.value.status.reason == "NotFound"

        lease = await client.create(
            Lease(metadata=ObjectMeta(name=name), spec=LeaseSpec(holderIdentity="a"))
        )
        assert lease.spec is not None
        lease.spec.holderIdentity = "b"
        await client.replace(lease)
        lease.spec.holderIdentity = "c"
        with pytest.raises(ApiError) as conflict:
            await client.replace(lease)  # stale resourceVersion
        assert conflict.value.status.code == 409

        await client.delete(ConfigMap, name)
        with pytest.raises(ApiError):
            await client.get(ConfigMap, name)
    finally:
        await client.close()


# --------------------------------------------------------------------------- the fake's hooks


def test_hook_writes_emit_watch_events(fake: FakeApiServer) -> None:
    api = Api(fake.url)
    path = "/api/v1/namespaces/team/configmaps"
    obj = configmap("a", {"app": "x"}, v="1")
    obj["metadata"]["namespace"] = "team"
    stored = fake.put(obj)
    assert stored["metadata"]["namespace"] == "team"
    assert fake.get_object("Namespace", None, "team") is not None  # created on demand
    with api.watch(path) as stream:
        assert stream.take(1)[0]["type"] == "ADDED"
        fake.put({**stored, "data": {"v": "2"}})
        fake.delete("configmaps", "team", "a")
        events = stream.take(2)
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]
    assert events[0]["object"]["data"] == {"v": "2"}
    assert fake.get_object("cm", "team", "a") is None
    assert fake.delete("configmaps", "team", "a") is None

    # put() keeps the status it is given: it plays another controller
    service = fake.put(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "lb"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 443}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}},
        }
    )
    assert service["metadata"]["namespace"] == "default"
    assert service["status"]["loadBalancer"]["ingress"] == [{"ip": "192.0.2.9"}]
    assert service["spec"]["ports"][0]["nodePort"] >= 30000
    assert [s["metadata"]["name"] for s in fake.objects("Service")] == ["lb"]


def test_hook_drop_watches(fake: FakeApiServer) -> None:
    api = Api(fake.url)
    with api.watch("/api/v1/configmaps", resourceVersion=fake.resource_version) as stream:
        fake.wait_for_watches(1)
        assert fake.open_watches[0].path == "/api/v1/configmaps"
        assert fake.drop_watches() == 1
        assert stream.rest() == []  # a clean end of stream
    with api.watch("/api/v1/configmaps", resourceVersion=fake.resource_version) as stream:
        fake.wait_for_watches(1)
        fake.drop_watches(abort=True)
        with pytest.raises(http.client.IncompleteRead):  # no last chunk: a reset
            stream.response.read()
    deadline = time.monotonic() + 5
    while fake.open_watches:
        assert time.monotonic() < deadline
        time.sleep(0.01)


async def test_hook_drop_and_compact_seen_through_lightkube(
    fake: FakeApiServer, tmp_path: Path
) -> None:
    config = KubeConfig.from_file(str(fake.write_kubeconfig(tmp_path / "config")))
    client = AsyncClient(config=config, namespace="default")
    first = fake.put(configmap("a"))
    seen: list[tuple[str, str]] = []
    stream = client.watch(ConfigMap, on_error=on_error_retry)
    try:
        async for kind, obj in stream:
            assert obj.metadata is not None
            seen.append((kind, str(obj.metadata.name)))
            if len(seen) == 1:
                # the watch ends, "b" happens, and the history lightkube would resume from goes
                fake.drop_watches()
                fake.put(configmap("b"))
                fake.compact()
            if len(seen) == 3:
                break
    finally:
        await _close(stream)
        await client.close()
    # resumed from "a": 410 Expired; lightkube then restarts from the current state
    assert seen == [("ADDED", "a"), ("ADDED", "a"), ("ADDED", "b")]
    versions = [r.query.get("resourceVersion") for r in fake.requests if r.query.get("watch")]
    assert versions == [None, first["metadata"]["resourceVersion"], None]


def test_fake_max_watch_duration() -> None:
    with FakeApiServer(max_watch_seconds=0.3, bookmark_interval=10) as server:
        started = time.monotonic()
        with Api(server.url).watch("/api/v1/pods", allowWatchBookmarks="1") as stream:
            events = stream.rest()
        assert time.monotonic() - started < 3
        assert [e["type"] for e in events] == ["BOOKMARK"]  # one right before closing


def test_hook_fail_next_and_request_log(fake: FakeApiServer) -> None:
    api = Api(fake.url)
    fake.fail_next(429, retry_after=2, path="/configmaps")
    throttled = api.get("/api/v1/namespaces/default/configmaps")
    assert throttled.status == 429
    assert throttled.headers.get("Retry-After") == "2"
    assert throttled.body["reason"] == "TooManyRequests"
    assert throttled.body["details"] == {"retryAfterSeconds": 2}
    assert api.get("/api/v1/namespaces/default/configmaps").status == 200

    fake.fail_next(500, times=2, method="POST")
    assert api.get("/api/v1/namespaces").status == 200
    for _ in range(2):
        failed = api.post("/api/v1/namespaces/default/configmaps", configmap("x"))
        assert failed.status == 500
        assert failed.body["reason"] == "InternalError"
    assert api.post("/api/v1/namespaces/default/configmaps", configmap("x")).status == 201

    log = fake.requests
    assert log[0] == ("GET", "/api/v1/namespaces/default/configmaps", {})
    assert [r.method for r in log].count("POST") == 3
    fake.clear_requests()
    api.get("/api/v1/pods", labelSelector="a=b")
    assert fake.requests == [("GET", "/api/v1/pods", {"labelSelector": "a=b"})]


def test_hook_compact_keeps_the_recent_history(fake: FakeApiServer) -> None:
    api = Api(fake.url)
    versions = [fake.put(configmap(f"c{i}"))["metadata"]["resourceVersion"] for i in range(3)]
    fake.compact(keep=1)
    with api.watch("/api/v1/configmaps", resourceVersion=versions[1]) as stream:
        replay = stream.take(1)[0]
        assert replay["type"] == "ADDED"
        assert replay["object"]["metadata"]["name"] == "c2"
    with api.watch("/api/v1/configmaps", resourceVersion=versions[0]) as stream:
        error = stream.rest()
    assert error[0]["object"]["code"] == 410
    assert (
        error[0]["object"]["message"] == f"too old resource version: {versions[0]} ({versions[1]})"
    )

    with FakeApiServer(history_size=2) as small:
        kept = [small.put(configmap(f"h{i}"))["metadata"]["resourceVersion"] for i in range(4)]
        small_api = Api(small.url)
        with small_api.watch("/api/v1/configmaps", resourceVersion=kept[1]) as stream:
            assert [e["object"]["metadata"]["name"] for e in stream.take(2)] == ["h2", "h3"]
        with small_api.watch("/api/v1/configmaps", resourceVersion=kept[0]) as stream:
            assert stream.rest()[0]["object"]["reason"] == "Expired"


def test_fake_kubeconfig_and_token(tmp_path: Path) -> None:
    with FakeApiServer(token="s3cret") as server:
        path = server.write_kubeconfig(tmp_path / "config", namespace="team")
        config = yaml.safe_load(path.read_text())
        assert config["clusters"][0]["cluster"]["server"] == server.url
        assert config["users"][0]["user"]["token"] == "s3cret"
        assert config["contexts"][0]["context"]["namespace"] == "team"
        assert config["current-context"] == "fake"
        refused = Api(server.url).get("/api/v1/pods")
        assert refused.status == 401
        assert refused.body["reason"] == "Unauthorized"
        assert Api(server.url, token="s3cret").get("/api/v1/pods").status == 200


def test_fake_namespace_deletion_waits_for_finalizers(fake: FakeApiServer) -> None:
    api = Api(fake.url)
    assert api.post("/api/v1/namespaces", {"metadata": {"name": "doomed"}}).status == 201
    held = configmap("held")
    held["metadata"]["finalizers"] = ["meshgate.test/hold"]
    assert api.post("/api/v1/namespaces/doomed/configmaps", held).status == 201
    assert api.post("/api/v1/namespaces/doomed/configmaps", configmap("free")).status == 201

    terminating = api.delete("/api/v1/namespaces/doomed").body
    assert terminating["status"]["phase"] == "Terminating"
    assert api.get("/api/v1/namespaces/doomed/configmaps/free").status == 404
    refused = api.post("/api/v1/namespaces/doomed/configmaps", configmap("late"))
    assert refused.status == 403
    assert api.get("/api/v1/namespaces/doomed").status == 200

    api.patch("/api/v1/namespaces/doomed/configmaps/held", {"metadata": {"finalizers": None}})
    assert api.get("/api/v1/namespaces/doomed").status == 404


async def test_fake_runs_in_process_on_the_test_loop() -> None:
    async with FakeApiServer(bookmark_interval=0.1) as server, aiohttp.ClientSession() as http:
        server.put(configmap("in-process"))
        async with http.get(f"{server.url}/api/v1/namespaces/default/configmaps") as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/json"
            body = await response.json()
        assert [i["metadata"]["name"] for i in body["items"]] == ["in-process"]

        params = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "1"}
        async with http.get(f"{server.url}/api/v1/configmaps", params=params) as response:
            await server.await_watches(1)
            server.put(configmap("later"))
            types = [json.loads(line)["type"] async for line in response.content]
        assert types[0] == "ADDED"
        assert "BOOKMARK" in types
        assert types.count("ADDED") == 2
