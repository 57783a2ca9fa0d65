"""`meshgate operator` against an API server: what a cluster user notices.

The operator runs as the real CLI (`python -m meshgate operator ...`) against
`FakeApiServer`; the tests play the user (Services, the mesh token Secret)
and the missing controllers (a fake server has no kubelet: a "ready proxy"
is a Pod the test puts, carrying the Deployment's Pod labels and the
`meshgate.io/mesh-ip` annotation the proxy itself writes). One server and
one operator serve most tests, each test in its own namespace; watch
disruption and leader election get their own.

The leader election test with a short Lease runs `Operator` in-process (the
CLI's Lease lasts 15 s), on the test's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightkube
import pytest

from meshgate import aio
from meshgate.kube.client import REQUEST_TIMEOUT, Kind, KubeClient, Retryable
from meshgate.kube.leader import LeaderElector
from meshgate.kube.operator import Operator
from tests.integration.harness import WAIT, Meshgate, free_port, wait_for
from tests.kube.fake_apiserver import FakeApiServer

Doc = dict[str, Any]

OP_NS = "meshgate-system"
TOKEN = "nm-join-token-d1f7c0ffee"  # the mesh token: must appear in no Deployment
MESH_IP = "meshgate.io/mesh-ip"
SPEC_HASH = "meshgate.io/spec-hash"
SVC_NS_LABEL = "meshgate.io/service-namespace"
SVC_NAME_LABEL = "meshgate.io/service-name"
READY = "MeshProxyReady"
LB_CLASS = "meshgate.io/mesh"


# --- objects ----------------------------------------------------------------------------


def token_secret(name: str = "netclient-token", value: str = TOKEN) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": OP_NS},
        "stringData": {"token": value},
    }


def port(number: int, name: str, protocol: str = "TCP") -> Doc:
    return {"name": name, "port": number, "protocol": protocol}


def service(
    ns: str,
    name: str,
    annotations: dict[str, str] | None = None,
    ports: list[Doc] | None = None,
    *,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> Doc:
    meta: Doc = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = annotations
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"ports": ports or [port(80, "http")], **spec},
    }


ENABLED = {"meshgate.io/ingress": "enabled"}


def ingress_service(ns: str, name: str, **more: Any) -> Doc:
    return service(ns, name, ENABLED, **more)


def proxy_pod(deployment: Doc, pod_ip: str, mesh_ip: str | None, *, ready: bool = True) -> Doc:
    """The Pod the Deployment would get, as its proxy reports itself."""
    template = deployment["spec"]["template"]
    annotations = {MESH_IP: mesh_ip} if mesh_ip else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": deployment["metadata"]["name"] + "-7d9f8-x2x4q",
            "namespace": OP_NS,
            "labels": dict(template["metadata"]["labels"]),
            "annotations": annotations,
        },
        "spec": {
            "containers": [
                {"name": c["name"], "image": c["image"]} for c in template["spec"]["containers"]
            ]
        },
        "status": {
            "phase": "Running",
            "podIP": pod_ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


# --- reading the cluster -----------------------------------------------------------------


def deployment_for(api: FakeApiServer, ns: str, name: str) -> Doc | None:
    """The proxy Deployment of Service ns/name, by the labels it carries."""
    found = [
        d
        for d in api.objects("Deployment", OP_NS)
        if (d["metadata"].get("labels") or {}).get(SVC_NS_LABEL) == ns
        and d["metadata"]["labels"].get(SVC_NAME_LABEL) == name
    ]
    assert len(found) <= 1, found
    return found[0] if found else None


def wait_deployment(api: FakeApiServer, ns: str, name: str, timeout: float = WAIT) -> Doc:
    found: list[Doc] = []

    def there() -> bool:
        d = deployment_for(api, ns, name)
        if d is not None:
            found[:] = [d]
        return d is not None

    wait_for(there, f"the proxy Deployment of {ns}/{name}", timeout)
    return found[0]


def container(deployment: Doc, name: str) -> Doc:
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            result: Doc = c
            return result
    raise AssertionError(f"no container {name} in {deployment['metadata']['name']}")


def args(deployment: Doc) -> list[str]:
    return list(container(deployment, "meshgate")["args"])


def pairs(argv: list[str], flag: str) -> list[str]:
    """The values of every `flag VALUE` in argv."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def condition(api: FakeApiServer, ns: str, name: str) -> Doc | None:
    svc = api.get_object("Service", ns, name)
    if svc is None:
        return None
    for cond in (svc.get("status") or {}).get("conditions") or []:
        if cond.get("type") == READY:
            found: Doc = cond
            return found
    return None


def wait_condition(api: FakeApiServer, ns: str, name: str, status: str, message: str) -> Doc:
    """Wait for `MeshProxyReady=status` on the Service, its message containing `message`."""

    def there() -> bool:
        cond = condition(api, ns, name) or {}
        return cond.get("status") == status and message in str(cond.get("message"))

    wait_for(there, f"{READY}={status} ({message!r}) on {ns}/{name}")
    cond = condition(api, ns, name)
    assert cond is not None
    return cond


def svc_annotations(api: FakeApiServer, ns: str, name: str) -> dict[str, str]:
    svc = api.get_object("Service", ns, name) or {}
    return dict(svc.get("metadata", {}).get("annotations") or {})


def slices(api: FakeApiServer, ns: str, name: str) -> list[Doc]:
    """The EndpointSlices of Service ns/name."""
    return [
        s
        for s in api.objects("EndpointSlice", ns)
        if (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == name
    ]


def slice_addresses(api: FakeApiServer, ns: str, name: str) -> list[str]:
    return sorted(
        a for s in slices(api, ns, name) for e in s.get("endpoints") or [] for a in e["addresses"]
    )


def events(api: FakeApiServer, ns: str, name: str, type_: str | None = None) -> list[Doc]:
    return [
        e
        for e in api.objects("Event", ns)
        if e["involvedObject"].get("kind") == "Service"
        and e["involvedObject"].get("name") == name
        and (type_ is None or e.get("type") == type_)
    ]


def secret_gets(api: FakeApiServer, name: str) -> list[str]:
    return [
        r.path for r in api.requests if r.method == "GET" and r.path.endswith(f"/secrets/{name}")
    ]


def has_warning(api: FakeApiServer, ns: str, name: str) -> bool:
    return bool(events(api, ns, name, "Warning"))


def writes(api: FakeApiServer, plural: str, since: int = 0) -> list[tuple[str, str]]:
    """(method, path) of the writes to `plural` the server received after request `since`."""
    return [
        (r.method, r.path)
        for r in api.requests[since:]
        if r.method in ("POST", "PUT", "PATCH", "DELETE") and f"/{plural}" in r.path
    ]


# --- the operator process ----------------------------------------------------------------


class OperatorProcess(Meshgate):
    """`meshgate operator` as a child process with its own admin port."""

    def __init__(self, kubeconfig: Path, tmp: Path, identity: str = "op-0") -> None:
        self.identity = identity
        self.admin_port = free_port()
        self.log_path = tmp / f"operator-{identity}-{self.admin_port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meshgate",
                "operator",
                "--kubeconfig",
                str(kubeconfig),
                "--namespace",
                OP_NS,
                "--identity",
                identity,
                "--admin",
                f"127.0.0.1:{self.admin_port}",
                "--log-format",
                "json",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def operator(self) -> Doc:
        status: Doc = self.json("/status")["operator"]
        return status

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop_gracefully(self, timeout: float = WAIT) -> int:
        """SIGTERM; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code


@contextlib.contextmanager
def operator_running(
    api: FakeApiServer, tmp: Path, identity: str = "op-0"
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(api.write_kubeconfig(tmp / "kubeconfig"), tmp, identity)
    try:
        op.wait_ready()
        yield op
    finally:
        op.stop()


@dataclass
class Cluster:
    api: FakeApiServer
    op: OperatorProcess


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One API server (watches end every 5 s, as real ones do) and one operator."""
    tmp = tmp_path_factory.mktemp("operator")
    with FakeApiServer(max_watch_seconds=5) as api:
        api.put(token_secret())
        with operator_running(api, tmp) as op:
            print(f"operator log: {op.log_path}")
            yield Cluster(api, op)


def barrier(api: FakeApiServer, ns: str) -> None:
    """Return once the operator has reconciled everything written so far.

    A Service created now reaches the operator after every earlier change on
    the same watch, and a reconcile pass covers every Service: once this one
    has its proxy, the earlier changes have been acted on.
    """
    name = f"barrier-{time.monotonic_ns()}"
    api.put(ingress_service(ns, name))
    wait_deployment(api, ns, name)
    api.delete("Service", ns, name)


# --- what a Service asks for ---------------------------------------------------------------


def test_netmaker_annotated_service_gets_a_proxy_deployment(cluster: Cluster) -> None:
    api, ns = cluster.api, "shop"
    api.put(
        service(
            ns,
            "my-app",
            {
                "netmaker.io/ingress": "enabled",
                "netmaker.io/ingress-dns-name": "my-app.netmaker.internal",
            },
            # UDP 5353, not 53: a DNS name's responder owns port 53 of the mesh address.
            [port(80, "http"), port(5353, "mdns", "UDP")],
        )
    )
    d = wait_deployment(api, ns, "my-app")
    argv = args(d)
    host = f"my-app.{ns}.svc.cluster.local"
    assert argv[0] == "run"
    assert pairs(argv, "--ingress") == [f"tcp:80:{host}:80", f"udp:5353:{host}:5353"]
    assert pairs(argv, "--bind") == ["auto"]
    assert pairs(argv, "--dns-name") == ["my-app.netmaker.internal"]
    assert d["metadata"]["namespace"] == OP_NS
    assert d["metadata"]["annotations"][SPEC_HASH]
    # The mesh client sidecar gets the token by reference, never by value.
    mesh_client = container(d, "netclient")
    assert mesh_client["env"] == [
        {
            "name": "TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "netclient-token", "key": "token"}},
        }
    ]
    text = json.dumps(d)
    assert TOKEN not in text
    assert base64.b64encode(TOKEN.encode()).decode() not in text
    # The Service is told its proxy is on the way.
    cond = wait_condition(api, ns, "my-app", "False", "waiting for proxy")
    assert d["metadata"]["name"] in cond["message"]
    wait_for(
        lambda: [e["reason"] for e in events(api, ns, "my-app")] == ["ProxyCreated"],
        "a ProxyCreated Event",
    )


def test_port_change_updates_the_proxy_unrelated_edit_does_not(cluster: Cluster) -> None:
    api, ns = cluster.api, "rollout"
    api.put(ingress_service(ns, "web"))
    first = wait_deployment(api, ns, "web")

    api.put(ingress_service(ns, "web", ports=[port(80, "http"), port(8443, "https")]))
    wait_for(
        lambda: len(pairs(args(deployment_for(api, ns, "web") or first), "--ingress")) == 2,
        "the proxy to forward the new port",
    )
    second = deployment_for(api, ns, "web")
    assert second is not None
    host = f"web.{ns}.svc.cluster.local"
    assert pairs(args(second), "--ingress") == [f"tcp:80:{host}:80", f"tcp:8443:{host}:8443"]
    assert second["metadata"]["name"] == first["metadata"]["name"]  # updated in place
    hash_before = first["metadata"]["annotations"][SPEC_HASH]
    assert second["metadata"]["annotations"][SPEC_HASH] != hash_before

    # A label is nothing the proxy depends on: its Deployment is left alone.
    mark = len(api.requests)
    api.put(
        ingress_service(
            ns, "web", ports=[port(80, "http"), port(8443, "https")], labels={"team": "pay"}
        )
    )
    barrier(api, ns)
    third = deployment_for(api, ns, "web")
    assert third is not None
    assert third["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]
    name = second["metadata"]["name"]
    assert [w for w in writes(api, "deployments", mark) if w[1].endswith(f"/{name}")] == []

    # Back to one port: updated again, and the Service's Event says so twice.
    api.put(ingress_service(ns, "web"))
    wait_for(
        lambda: len(pairs(args(deployment_for(api, ns, "web") or first), "--ingress")) == 1,
        "the proxy to drop the port",
    )
    wait_for(
        lambda: (
            sorted((e["reason"], e["count"]) for e in events(api, ns, "web"))
            == [("ProxyCreated", 1), ("ProxyUpdated", 2)]
        ),
        "one ProxyUpdated Event counted twice",
    )


def test_proxy_goes_with_its_annotation_or_its_service(cluster: Cluster) -> None:
    api, ns = cluster.api, "cleanup"
    api.put(ingress_service(ns, "unannotated"))
    api.put(ingress_service(ns, "deleted"))
    wait_deployment(api, ns, "unannotated")
    wait_deployment(api, ns, "deleted")

    api.put(service(ns, "unannotated"))
    wait_for(lambda: deployment_for(api, ns, "unannotated") is None, "the proxy to go")
    api.delete("Service", ns, "deleted")
    wait_for(lambda: deployment_for(api, ns, "deleted") is None, "the proxy to go")

    # The same Service again: a new proxy, and the new Service told about it.
    api.put(ingress_service(ns, "deleted"))
    wait_deployment(api, ns, "deleted")
    wait_condition(api, ns, "deleted", "False", "waiting for proxy")
    assert deployment_for(api, ns, "unannotated") is None


def test_rejected_services_get_a_warning_and_no_proxy(cluster: Cluster) -> None:
    api, op, ns = cluster.api, cluster.op, "rejects"
    bad_ip = {"meshgate.io/ingress": "enabled", "meshgate.io/ingress-bind-ip": "300.1.1.1"}
    both_ways = {
        "meshgate.io/ingress": "enabled",
        "meshgate.io/egress": "enabled",
        "meshgate.io/egress-target-ip": "100.64.0.9",
    }
    api.put(service(ns, "bad-ip", bad_ip))
    api.put(service(ns, "both-ways", both_ways))
    api.put(ingress_service(ns, "fine"))
    wait_deployment(api, ns, "fine")  # the others do not stop it

    for name, key, detail in (
        ("bad-ip", "meshgate.io/ingress-bind-ip", "300.1.1.1"),
        ("both-ways", "meshgate.io/egress", "ingress and egress"),
    ):
        wait_for(partial(has_warning, api, ns, name), f"a Warning on {name}")
        warning = events(api, ns, name, "Warning")[0]
        assert warning["reason"] == "MeshProxyRejected"
        assert f"metadata.annotations[{key}]" in warning["message"]
        assert detail in warning["message"]
        cond = wait_condition(api, ns, name, "False", key)
        assert detail in cond["message"]
        assert deployment_for(api, ns, name) is None
    assert op.alive()
    rejected = op.json("/status")["rejected"]
    assert {f"{ns}/bad-ip", f"{ns}/both-ways"} <= set(rejected)

    # Explained once, not at every pass.
    barrier(api, ns)
    assert len(events(api, ns, "bad-ip", "Warning")) == 1
    assert len(events(api, ns, "both-ways", "Warning")) == 1

    # Fixed: the proxy follows. Deleted: no longer reported.
    api.put(service(ns, "bad-ip", {**bad_ip, "meshgate.io/ingress-bind-ip": "100.64.0.1"}))
    d = wait_deployment(api, ns, "bad-ip")
    assert pairs(args(d), "--bind") == ["100.64.0.1"]
    wait_condition(api, ns, "bad-ip", "False", "waiting for proxy")
    api.delete("Service", ns, "both-ways")
    wait_for(
        lambda: not {f"{ns}/bad-ip", f"{ns}/both-ways"} & set(op.json("/status")["rejected"]),
        "the fixed and the deleted Service no longer reported as rejected",
    )


def test_missing_secret_is_explained_and_its_creation_noticed(cluster: Cluster) -> None:
    api, ns = cluster.api, "late"
    api.put(
        service(ns, "web", {"meshgate.io/ingress": "enabled", "meshgate.io/secret-name": "late"})
    )
    wait_for(lambda: bool(events(api, ns, "web", "Warning")), "a Warning about the Secret")
    message = events(api, ns, "web", "Warning")[0]["message"]
    assert f"{OP_NS}/late" in message
    assert "does not exist" in message
    wait_condition(api, ns, "web", "False", "does not exist")
    assert deployment_for(api, ns, "web") is None
    # The condition written comes back as a change to the Service, and the
    # pass it runs looks for the Secret again: after that nothing is pending.
    wait_for(lambda: len(secret_gets(api, "late")) >= 2, "a second look for the Secret")

    # The operator does not watch Secrets; it must still notice this one.
    api.put(token_secret("late"))
    d = wait_deployment(api, ns, "web")
    assert container(d, "netclient")["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "late"
    wait_condition(api, ns, "web", "False", "waiting for proxy")


def test_proxy_class_configmap_is_waited_for_and_followed(cluster: Cluster) -> None:
    api, ns = cluster.api, "classes"
    api.put(service(ns, "web", {**ENABLED, "meshgate.io/proxy-class": "nexodus"}))
    wait_for(partial(has_warning, api, ns, "web"), "a Warning about the proxy class")
    assert f"no proxy class ConfigMap {OP_NS}/nexodus" in events(api, ns, "web")[0]["message"]
    assert deployment_for(api, ns, "web") is None

    data = {"image": "quay.io/nexodus/nexd:0.1", "containerName": "nexd", "tokenEnv": "NEXD_TOKEN"}
    configmap: Doc = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "nexodus", "namespace": OP_NS},
        "data": {**data, "meshInterfaces": "wg0"},
    }
    api.put(configmap)
    d = wait_deployment(api, ns, "web")
    nexd = container(d, "nexd")
    assert nexd["image"] == "quay.io/nexodus/nexd:0.1"
    assert nexd["env"][0]["name"] == "NEXD_TOKEN"
    assert pairs(args(d), "--mesh-interface") == ["wg0"]

    # A new image in the class rolls the proxy.
    configmap["data"]["image"] = "quay.io/nexodus/nexd:0.2"
    api.put(configmap)
    wait_for(
        lambda: container(deployment_for(api, ns, "web") or d, "nexd")["image"].endswith(":0.2"),
        "the proxy to run the class's new image",
    )


def test_ready_proxy_reports_its_mesh_address_to_the_service(cluster: Cluster) -> None:
    api, ns = cluster.api, "lb"
    api.put(
        service(
            ns, "web", None, [port(443, "https")], type="LoadBalancer", loadBalancerClass=LB_CLASS
        )
    )
    d = wait_deployment(api, ns, "web")
    assert pairs(args(d), "--ingress") == [f"tcp:443:web.{ns}.svc.cluster.local:443"]
    wait_condition(api, ns, "web", "False", "waiting for proxy")

    api.put(proxy_pod(d, "10.244.0.7", "100.64.0.5"))
    cond = wait_condition(api, ns, "web", "True", "100.64.0.5")
    assert cond["reason"] == "ProxyReady"
    wait_for(
        lambda: svc_annotations(api, ns, "web").get(MESH_IP) == "100.64.0.5",
        "the mesh-ip annotation",
    )
    svc = api.get_object("Service", ns, "web")
    assert svc is not None
    assert svc["status"]["loadBalancer"]["ingress"][0]["ip"] == "100.64.0.5"

    # The proxy stops being ready: so does the Service.
    api.put(proxy_pod(d, "10.244.0.7", "100.64.0.5", ready=False))
    wait_condition(api, ns, "web", "False", "waiting for proxy")

    # No longer for the mesh: the proxy goes, and so does what the Service says of it.
    api.put(proxy_pod(d, "10.244.0.7", "100.64.0.5"))
    wait_condition(api, ns, "web", "True", "100.64.0.5")
    api.put(service(ns, "web", None, [port(443, "https")]))
    wait_for(
        lambda: (
            deployment_for(api, ns, "web") is None
            and condition(api, ns, "web") is None
            and MESH_IP not in svc_annotations(api, ns, "web")
        ),
        "the proxy, its condition and its mesh-ip annotation to go",
    )


def test_dns_names_of_ready_proxies_go_to_the_records_configmap(cluster: Cluster) -> None:
    api, ns = cluster.api, "dns"
    names = {**ENABLED, "meshgate.io/ingress-dns-name": "db.mesh.internal"}
    api.put(service(ns, "db", names, [port(5432, "pg")]))
    d = wait_deployment(api, ns, "db")
    assert pairs(args(d), "--dns-records") == ["/etc/meshgate/dns/hosts"]

    def hosts() -> str:
        cm = api.get_object("ConfigMap", OP_NS, "meshgate-dns-records")
        return str((cm or {}).get("data", {}).get("hosts", ""))

    api.put(proxy_pod(d, "10.244.0.9", "100.64.0.9"))
    wait_for(lambda: "100.64.0.9 db.mesh.internal\n" in hosts(), "the DNS record")
    api.delete("Service", ns, "db")
    wait_for(lambda: "db.mesh.internal" not in hosts(), "the DNS record to go")


def test_egress_service_is_pointed_at_its_ready_proxy_pods(cluster: Cluster) -> None:
    api, ns = cluster.api, "egress"
    api.put(
        service(
            ns,
            "db",
            {"meshgate.io/egress": "enabled", "meshgate.io/egress-target-ip": "100.64.0.9"},
            [port(5432, "pg")],
        )
    )
    d = wait_deployment(api, ns, "db")
    argv = args(d)
    assert pairs(argv, "--egress") == ["tcp:5432:100.64.0.9:5432"]
    assert "--ingress" not in argv
    # No ready proxy yet: the Service has an EndpointSlice with no endpoints.
    wait_condition(api, ns, "db", "False", "waiting for proxy")
    wait_for(lambda: len(slices(api, ns, "db")) == 1, "the egress EndpointSlice")
    assert slice_addresses(api, ns, "db") == []

    api.put(proxy_pod(d, "10.244.1.5", None))
    wait_for(lambda: slice_addresses(api, ns, "db") == ["10.244.1.5"], "the egress EndpointSlice")
    (piece,) = slices(api, ns, "db")
    assert piece["ports"] == [{"name": "pg", "port": 5432, "protocol": "TCP"}]
    assert piece["addressType"] == "IPv4"
    wait_condition(api, ns, "db", "True", "ready")

    api.delete("Service", ns, "db")
    wait_for(
        lambda: deployment_for(api, ns, "db") is None and not slices(api, ns, "db"),
        "the proxy and its EndpointSlice to go",
    )


def test_probes_status_and_metrics(cluster: Cluster) -> None:
    op = cluster.op
    code, body = op.get("/readyz")
    assert code == 200
    assert json.loads(body) == {"ready": True, "leader": True}
    status = op.operator()
    assert status["leader"] is True
    assert status["identity"] == status["lease_holder"] == "op-0"
    assert status["namespace"] == OP_NS
    assert op.metric("meshgate_operator_leader") == 1
    assert op.metric("meshgate_operator_reconciles") >= 1
    lease = cluster.api.get_object("Lease", OP_NS, "meshgate-operator")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "op-0"


# --- watch disruption --------------------------------------------------------------------


def test_converges_through_dropped_watches_and_compaction(tmp_path: Path) -> None:
    ns = "churn"
    names = [f"svc-{i:02d}" for i in range(12)]
    # (Service, its annotations; None: delete it)
    ops: list[tuple[str, dict[str, str] | None]] = [(n, ENABLED) for n in names]
    ops += [(n, None) for n in ("svc-00", "svc-03", "svc-06", "svc-09")]
    ops += [("svc-01", {}), ("svc-03", ENABLED), ("svc-12", ENABLED), ("svc-12", None)]
    expected = {"svc-02", "svc-03", "svc-04", "svc-05", "svc-07", "svc-08", "svc-10", "svc-11"}

    with FakeApiServer(max_watch_seconds=2, history_size=100) as api:
        api.put(token_secret())
        with operator_running(api, tmp_path) as op:
            stop, tick = threading.Event(), threading.Event()

            def disrupt() -> None:
                while not stop.wait(0.3):
                    api.drop_watches()
                    api.compact()
                    tick.set()

            thread = threading.Thread(target=disrupt, daemon=True)
            thread.start()
            try:
                for i in range(0, len(ops), 2):  # two changes per disruption
                    for name, wanted in ops[i : i + 2]:
                        if wanted is None:
                            api.delete("Service", ns, name)
                        else:
                            api.put(service(ns, name, wanted))
                    tick.clear()
                    assert tick.wait(5)
            finally:
                stop.set()
                thread.join(5)

            def proxied() -> set[str]:
                return {
                    d["metadata"]["labels"][SVC_NAME_LABEL]
                    for d in api.objects("Deployment", OP_NS)
                }

            wait_for(lambda: proxied() == expected, f"proxies for exactly {sorted(expected)}", 30)
            assert len(api.objects("Deployment", OP_NS)) == len(expected)
            assert op.alive()
            assert op.metric("meshgate_operator_watch_relists") >= 1


def test_proxies_the_deployment_watch_has_not_shown_yet_block_nothing(tmp_path: Path) -> None:
    """While the Deployment watch is down, the operator's own new Deployments are
    missing from its store: creating one again must not stop the others."""
    ns = "stale"
    with FakeApiServer() as api:
        api.put(token_secret())
        with operator_running(api, tmp_path) as op:
            api.fail_next(500, times=10_000, method="GET", path=f"/namespaces/{OP_NS}/deployments")
            api.drop_watches()
            api.put(ingress_service(ns, "a-first"))
            wait_deployment(api, ns, "a-first")
            # Its status change runs another pass, which finds no a-first in the store.
            wait_condition(api, ns, "a-first", "False", "waiting for proxy")
            api.put(ingress_service(ns, "b-second"))
            wait_deployment(api, ns, "b-second")
            wait_condition(api, ns, "b-second", "False", "waiting for proxy")
            assert len(events(api, ns, "a-first")) == 1  # created once
            assert op.alive()


# --- leader election ---------------------------------------------------------------------


def test_one_replica_writes_and_the_other_takes_over_on_sigterm(tmp_path: Path) -> None:
    with FakeApiServer() as api:
        api.put(token_secret())
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        replicas = [OperatorProcess(kubeconfig, tmp_path, f"replica-{x}") for x in "ab"]
        try:
            for replica in replicas:
                replica.wait_ready()

            def leaders() -> list[OperatorProcess]:
                return [r for r in replicas if r.operator()["leader"]]

            wait_for(lambda: len(leaders()) == 1, "one leader")
            (leader,) = leaders()
            (follower,) = [r for r in replicas if r is not leader]
            lease = api.get_object("Lease", OP_NS, "meshgate-operator")
            assert lease is not None
            assert lease["spec"]["holderIdentity"] == leader.identity
            wait_for(
                lambda: follower.operator()["lease_holder"] == leader.identity,
                "the follower to see the holder",
            )

            api.put(ingress_service("team", "one"))
            wait_deployment(api, "team", "one")
            wait_condition(api, "team", "one", "False", "waiting for proxy")
            assert [m for m, _ in writes(api, "deployments")] == ["POST"]  # once, not twice
            assert follower.operator()["reconciles"] == 0  # it never got to write
            assert leader.metric("meshgate_operator_leader") == 1
            assert follower.metric("meshgate_operator_leader") == 0
            assert follower.get("/readyz")[0] == 200  # ready to take over

            # SIGTERM: the leader releases the Lease, the follower takes it.
            mark = len(api.requests)
            assert leader.stop_gracefully() == 0
            stopped = time.monotonic()
            wait_for(lambda: follower.operator()["leader"], "the follower to take over", 15)
            assert time.monotonic() - stopped < 15  # within the Lease duration
            lease = api.get_object("Lease", OP_NS, "meshgate-operator")
            assert lease is not None
            assert lease["spec"]["holderIdentity"] == follower.identity
            assert lease["spec"]["leaseTransitions"] == 1

            api.put(ingress_service("team", "two"))
            wait_deployment(api, "team", "two")
            assert [m for m, _ in writes(api, "deployments", mark)] == ["POST"]
            assert deployment_for(api, "team", "one") is not None  # adopted, not recreated
        finally:
            for replica in replicas:
                replica.stop()


class Replica(KubeClient):
    """A KubeClient that records its writes and can be cut off from the server.

    Cut off, every request/response call hangs as on a black-holed connection
    until the request timeout; watch streams already open keep reading
    (reads cannot make two writers).
    """

    def __init__(self, kubeconfig: Path, identity: str) -> None:
        super().__init__(lightkube.KubeConfig.from_file(kubeconfig))
        self.identity = identity
        self.cut = False
        self.wrote: list[tuple[str, str]] = []  # (verb, resource)

    async def _call(self, verb: str, kind: Kind) -> None:
        if self.cut:
            await asyncio.sleep(REQUEST_TIMEOUT)
            raise Retryable(0, "ReadTimeout", f"{self.identity} is cut off")
        if verb != "get":
            self.wrote.append((verb, kind.plural))

    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> dict[str, Any]:
        await self._call("get", kind)
        return await super().get(kind, name, namespace)

    async def create(
        self, kind: Kind, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        await self._call("create", kind)
        return await super().create(kind, obj, namespace)

    async def replace(
        self, kind: Kind, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        await self._call("replace", kind)
        return await super().replace(kind, obj, namespace)

    async def patch(
        self,
        kind: Kind,
        name: str,
        patch: dict[str, Any],
        namespace: str | None = None,
        *,
        patch_type: Literal["merge", "apply"] = "merge",
        subresource: Literal["status"] | None = None,
        field_manager: str = "meshgate",
        force: bool = False,
    ) -> dict[str, Any]:
        await self._call("patch", kind)
        return await super().patch(
            kind,
            name,
            patch,
            namespace,
            patch_type=patch_type,
            subresource=subresource,
            field_manager=field_manager,
            force=force,
        )

    async def delete(self, kind: Kind, name: str, namespace: str | None = None) -> None:
        await self._call("delete", kind)
        await super().delete(kind, name, namespace)


LEASE_SECONDS = 2.0
RENEW_SECONDS = 0.25


def short_lease_operator(client: Replica) -> Operator:
    op = Operator(client, OP_NS, client.identity)
    op.elector = LeaderElector(
        client,
        OP_NS,
        client.identity,
        lease_duration=LEASE_SECONDS,
        renew_every=RENEW_SECONDS,
        on_change=lambda _: op.kick(),
    )
    return op


async def until(condition: Callable[[], bool], what: str, within: float = WAIT) -> None:
    """`wait_for` without blocking the event loop."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def fake_api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as api:
        yield api


async def test_a_cut_off_leader_steps_down_before_the_other_takes_over(
    fake_api: FakeApiServer, tmp_path: Path
) -> None:
    api = fake_api
    api.put(token_secret())
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    a_client, b_client = Replica(kubeconfig, "a"), Replica(kubeconfig, "b")
    a, b = short_lease_operator(a_client), short_lease_operator(b_client)
    tasks = [aio.spawn(a.run(), name="operator a")]
    try:
        await until(lambda: a.elector.leading, "a to lead")
        tasks.append(aio.spawn(b.run(), name="operator b"))
        await until(lambda: b.ready()[0] and b.elector.holder == "a", "b to follow a")

        api.put(ingress_service("team", "one"))
        await until(lambda: deployment_for(api, "team", "one") is not None, "a's proxy")
        assert ("create", "deployments") in a_client.wrote
        assert b_client.wrote == []  # not even the Lease: a renews it
        assert not b.elector.leading

        # a loses the API server. It must stop leading before b may start.
        a_client.cut = True
        cut = time.monotonic()
        both = 0
        while not b.elector.leading:
            both += a.elector.leading and b.elector.leading
            assert time.monotonic() - cut < LEASE_SECONDS + 5, "b never took over"
            await asyncio.sleep(0.005)
        took = time.monotonic() - cut
        assert not a.elector.leading, "two leaders at once"
        assert both == 0
        assert took >= LEASE_SECONDS - RENEW_SECONDS  # not before the Lease ran out
        lease = api.get_object("Lease", OP_NS, "meshgate-operator")
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == "b"

        api.put(ingress_service("team", "two"))
        await until(lambda: deployment_for(api, "team", "two") is not None, "b's proxy")
        assert ("create", "deployments") in b_client.wrote
    finally:
        await aio.cancel_and_wait(tasks)
        a_client.cut = False
        await a_client.close()
        await b_client.close()
