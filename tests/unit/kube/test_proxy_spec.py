"""Proxy Deployments, EndpointSlices, status patches and Events, validated as Kubernetes objects."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import kubernetes_validate
import pytest
import typer.main
import yaml

from meshgate.cli import app
from meshgate.config.rules import rules_to_config
from meshgate.kube import proxy_spec
from meshgate.kube.proxy_spec import (
    DEFAULT_MESH_CLIENT_IMAGE,
    PROXY_CLASS_KEYS,
    SPEC_HASH_ANNOTATION,
    ProxyClass,
    admin_port,
    dns_records_configmap,
    egress_deployment,
    egress_endpointslice,
    event,
    ingress_deployment,
    mesh_ip_annotation_patch,
    proxy_class_configmap_name,
    proxy_class_from_configmap,
    proxy_name,
    service_status_patch,
    spec_hash,
)
from meshgate.kube.service_annotations import (
    EgressIntent,
    IngressIntent,
    PortSpec,
    Rejection,
    parse_service,
)
from tests.unit.kube.netmaker_guide import GUIDE_EXAMPLE_3

K8S = "1.33"
NS = "meshgate-system"
NOW = "2025-01-02T03:04:05Z"


EGRESS_GUIDE = """
apiVersion: v1
kind: Service
metadata:
  name: netmaker-app
  namespace: default
  uid: 0d9e8f7a-2222-4c1e-9d57-0a1b2c3d4e5f
  annotations:
    netmaker.io/egress: "enabled"
    netmaker.io/egress-target-ip: "10.0.0.200"
    netmaker.io/secret-name: "custom-netclient-token"
spec:
  ports:
  - name: http
    port: 80
    targetPort: 8080
    protocol: TCP
  - name: dns
    port: 53
    protocol: UDP
  type: ClusterIP
"""


def load(text: str) -> dict[str, Any]:
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


def valid(obj: dict[str, Any]) -> dict[str, Any]:
    kubernetes_validate.validate(obj, K8S, strict=True)
    return obj


def ingress_of(svc: dict[str, Any]) -> IngressIntent:
    intent = parse_service(svc)
    assert isinstance(intent, IngressIntent), intent
    return intent


def egress_of(svc: dict[str, Any]) -> EgressIntent:
    intent = parse_service(svc)
    assert isinstance(intent, EgressIntent), intent
    return intent


def containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def args(deployment: dict[str, Any]) -> list[str]:
    found = containers(deployment)["meshgate"]["args"]
    assert isinstance(found, list)
    return found


def values(arguments: list[str], flag: str) -> list[str]:
    return [arguments[i + 1] for i, a in enumerate(arguments) if a == flag]


def run_options() -> set[str]:
    command = typer.main.get_command(app)
    run = command.commands["run"]  # type: ignore[attr-defined]
    return {opt for param in run.params for opt in param.opts}


def assert_runnable(arguments: list[str]) -> None:
    """Every flag is a `meshgate run` option, and the rules compile."""
    assert arguments[0] == "run"
    options = run_options()
    flags = [a for a in arguments[1:] if a.startswith("--")]
    assert set(flags) <= options, set(flags) - options
    rules_to_config(
        values(arguments, "--ingress"),
        values(arguments, "--egress"),
        bind=(values(arguments, "--bind") or ["auto"])[0],
        cluster_bind=(values(arguments, "--cluster-bind") or ["0.0.0.0"])[0],
        dns_name=next(iter(values(arguments, "--dns-name")), None),
    )


# --- ingress Deployments ------------------------------------------------------


def test_guide_example_ingress_deployment() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    deployment = valid(ingress_deployment(svc, ingress_of(svc), ProxyClass(), NS))
    assert deployment["metadata"]["namespace"] == NS
    assert deployment["metadata"]["name"] == proxy_name(svc)
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "meshgate-proxy"
    assert labels["app.kubernetes.io/managed-by"] == "meshgate-operator"
    assert labels["meshgate.io/service-namespace"] == "default"
    assert labels["meshgate.io/service-name"] == "my-app-service"
    assert re.fullmatch(
        r"[0-9a-f]{16}", deployment["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    )
    # the selector matches the Pods
    template = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert template["spec"]["serviceAccountName"] == "meshgate-proxy"

    arguments = args(deployment)
    assert arguments == [
        "run",
        "--ingress",
        "tcp:80:my-app-service.default.svc.cluster.local:80",
        "--ingress",
        "tcp:443:my-app-service.default.svc.cluster.local:443",
        "--bind",
        "auto",
        "--dns-name",
        "app.netmaker.internal",
        # Every proxy's name, from the operator's ConfigMap (mounted, optional).
        "--dns-records",
        "/etc/meshgate/dns/hosts",
        "--admin",
        "0.0.0.0:9901",
        "--log-format",
        "json",
        "--shutdown-grace",
        "5",
    ]
    assert_runnable(arguments)
    pod = deployment["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "dns-records"]
    assert volume["configMap"] == {"name": "meshgate-dns-records", "optional": True}


def test_dns_records_configmap_is_hosts_lines() -> None:
    cm = dns_records_configmap({"b.mesh": ["100.64.0.9"], "a.mesh": ["100.64.0.5", "fd00::5"]}, NS)
    assert cm["data"]["hosts"] == "100.64.0.5 a.mesh\nfd00::5 a.mesh\n100.64.0.9 b.mesh\n"
    assert cm["metadata"] == {
        "name": "meshgate-dns-records",
        "namespace": NS,
        "labels": {"app.kubernetes.io/managed-by": "meshgate-operator"},
    }


def test_mesh_client_gets_the_token_by_reference_only() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    deployment = ingress_deployment(svc, ingress_of(svc), ProxyClass(), NS)
    client = containers(deployment)["netclient"]
    assert client["image"] == DEFAULT_MESH_CLIENT_IMAGE
    assert client["env"][0] == {
        "name": "TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "netclient-token", "key": "token"}},
    }
    assert client["securityContext"]["capabilities"] == {"add": ["NET_ADMIN"]}
    assert not any("value" in env for env in client["env"] if env["name"] == "TOKEN")


def test_meshgate_container() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    meshgate = containers(ingress_deployment(svc, ingress_of(svc), ProxyClass(), NS))["meshgate"]
    assert meshgate["command"] == ["meshgate"]
    assert meshgate["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert meshgate["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert meshgate["ports"] == [{"name": "admin", "containerPort": 9901, "protocol": "TCP"}]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in meshgate["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert meshgate["securityContext"]["runAsNonRoot"] is True


def test_udp_ports_get_udp_rules() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    svc["metadata"]["annotations"].pop("netmaker.io/ingress-dns-name")
    svc["spec"]["ports"] = [
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        {"name": "syslog", "port": 514, "targetPort": 5514, "protocol": "UDP"},
    ]
    deployment = valid(ingress_deployment(svc, ingress_of(svc), ProxyClass(), NS))
    rules = values(args(deployment), "--ingress")
    host = "my-app-service.default.svc.cluster.local"
    assert rules == [f"udp:53:{host}:53", f"tcp:53:{host}:53", f"udp:514:{host}:514"]
    assert_runnable(args(deployment))


def test_bind_ip_and_no_dns_name() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    annotations = svc["metadata"]["annotations"]
    annotations.pop("netmaker.io/ingress-dns-name")
    annotations["netmaker.io/ingress-bind-ip"] = "10.0.0.50"
    arguments = args(ingress_deployment(svc, ingress_of(svc), ProxyClass(), NS))
    assert values(arguments, "--bind") == ["10.0.0.50"]
    assert "--dns-name" not in arguments
    assert_runnable(arguments)


def test_custom_secret_and_cluster_domain() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    svc["metadata"]["annotations"]["meshgate.io/secret-name"] = "mesh-b"
    svc["metadata"]["annotations"]["meshgate.io/secret-key"] = "join"
    deployment = ingress_deployment(
        svc, ingress_of(svc), ProxyClass(), NS, cluster_domain="corp.example"
    )
    client = containers(deployment)["netclient"]
    assert client["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "mesh-b", "key": "join"}
    assert (
        values(args(deployment), "--ingress")[0]
        == "tcp:80:my-app-service.default.svc.corp.example:80"
    )


def test_headless_service_rules_use_the_target_port() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    svc["spec"]["clusterIP"] = "None"
    rules = values(args(ingress_deployment(svc, ingress_of(svc), ProxyClass(), NS)), "--ingress")
    assert [r.rsplit(":", 1)[1] for r in rules] == ["8080", "8443"]


def test_admin_port_moves_off_service_ports() -> None:
    assert admin_port([PortSpec(None, "TCP", 80, 80)]) == 9901
    assert admin_port([PortSpec(None, "UDP", 9901, 9901)]) == 9901
    taken = [PortSpec(None, "TCP", 9901, 9901), PortSpec(None, "TCP", 9902, 1)]
    assert admin_port(taken) == 9903
    svc = load(GUIDE_EXAMPLE_3)
    svc["spec"]["ports"] = [{"port": 9901}]
    deployment = ingress_deployment(svc, ingress_of(svc), ProxyClass(), NS)
    assert values(args(deployment), "--admin") == ["0.0.0.0:9902"]
    assert containers(deployment)["meshgate"]["ports"][0]["containerPort"] == 9902


def test_proxy_class_shapes_the_pod() -> None:
    pclass = ProxyClass(
        name="nexodus",
        image="quay.io/nexodus/nexd:latest",
        image_pull_policy="IfNotPresent",
        container_name="nexd",
        token_env="NEXD_TOKEN",
        env=(("NEXD_SERVICE_URL", "https://try.nexodus.io"),),
        capabilities=("NET_ADMIN", "SYS_MODULE"),
        privileged=True,
        resources={"requests": {"cpu": "10m"}},
        state_path="/var/lib/nexd",
        meshgate_image="registry.local/meshgate:dev",
        mesh_interfaces=("wg0", "nexodus0"),
        bind_wait=30,
    )
    svc = load(GUIDE_EXAMPLE_3)
    deployment = valid(ingress_deployment(svc, ingress_of(svc), pclass, NS))
    client = containers(deployment)["nexd"]
    assert client["image"] == "quay.io/nexodus/nexd:latest"
    assert client["imagePullPolicy"] == "IfNotPresent"
    assert client["env"][0]["name"] == "NEXD_TOKEN"
    assert client["env"][1] == {"name": "NEXD_SERVICE_URL", "value": "https://try.nexodus.io"}
    assert client["securityContext"] == {
        "capabilities": {"add": ["NET_ADMIN", "SYS_MODULE"]},
        "privileged": True,
    }
    assert client["resources"] == {"requests": {"cpu": "10m"}}
    assert client["volumeMounts"][0]["mountPath"] == "/var/lib/nexd"
    arguments = args(deployment)
    assert containers(deployment)["meshgate"]["image"] == "registry.local/meshgate:dev"
    assert values(arguments, "--mesh-interface") == ["wg0", "nexodus0"]
    assert values(arguments, "--bind-wait") == ["30"]
    assert_runnable(arguments)


# --- egress -------------------------------------------------------------------


def test_egress_deployment() -> None:
    svc = load(EGRESS_GUIDE)
    intent = egress_of(svc)
    deployment = valid(egress_deployment(svc, intent, ProxyClass(), NS))
    arguments = args(deployment)
    assert values(arguments, "--egress") == ["tcp:80:10.0.0.200:8080", "udp:53:10.0.0.200:53"]
    assert values(arguments, "--cluster-bind") == ["0.0.0.0"]
    assert "--ingress" not in arguments
    assert deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "egress"
    secret = containers(deployment)["netclient"]["env"][0]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "custom-netclient-token", "key": "token"}
    assert_runnable(arguments)


def test_egress_to_ipv6_and_dns_targets() -> None:
    svc = load(EGRESS_GUIDE)
    intent = EgressIntent(target="fd00::7", ports=(PortSpec(None, "TCP", 80, 8080),))
    assert values(args(egress_deployment(svc, intent, ProxyClass(), NS)), "--egress") == [
        "tcp:80:[fd00::7]:8080"
    ]
    intent = EgressIntent(target="db.netmaker.internal", ports=(PortSpec(None, "UDP", 5, 6),))
    arguments = args(egress_deployment(svc, intent, ProxyClass(), NS))
    assert values(arguments, "--egress") == ["udp:5:db.netmaker.internal:6"]
    assert_runnable(arguments)


def test_egress_endpointslice() -> None:
    svc = load(EGRESS_GUIDE)
    intent = egress_of(svc)
    slice_ = valid(egress_endpointslice(svc, ["10.244.1.7", "fd00::1", "junk"], intent))
    assert slice_["metadata"]["namespace"] == "default"
    labels = slice_["metadata"]["labels"]
    assert labels["kubernetes.io/service-name"] == "netmaker-app"
    assert labels["endpointslice.kubernetes.io/managed-by"] == "operator.meshgate.io"
    assert labels["app.kubernetes.io/managed-by"] == "meshgate-operator"
    assert slice_["addressType"] == "IPv4"
    assert [e["addresses"] for e in slice_["endpoints"]] == [["10.244.1.7"]]
    assert slice_["ports"] == [
        {"name": "http", "port": 80, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP"},
    ]
    [owner] = slice_["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Service",
        "netmaker-app",
        svc["metadata"]["uid"],
    )
    # every label value is a valid label value (the schema does not check them)
    assert all(
        re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", v) for v in labels.values()
    )


def test_egress_endpointslice_ipv6_and_empty() -> None:
    svc = load(EGRESS_GUIDE)
    svc["spec"]["ipFamilies"] = ["IPv6"]
    intent = egress_of(svc)
    slice_ = valid(egress_endpointslice(svc, ["10.0.0.1", "fd00:0::1"], intent))
    assert slice_["addressType"] == "IPv6"
    assert [e["addresses"] for e in slice_["endpoints"]] == [["fd00::1"]]
    empty = valid(egress_endpointslice(load(EGRESS_GUIDE), [], intent))
    assert empty["endpoints"] == []


def test_unnamed_single_port_slice() -> None:
    svc = load(EGRESS_GUIDE)
    svc["spec"]["ports"] = [{"port": 80, "targetPort": 8080}]
    slice_ = valid(egress_endpointslice(svc, ["10.1.1.1"], egress_of(svc)))
    assert slice_["ports"] == [{"name": "", "port": 80, "protocol": "TCP"}]


# --- spec hash ----------------------------------------------------------------


def deployment_hash(svc: dict[str, Any], pclass: ProxyClass | None = None) -> str:
    intent = parse_service(svc)
    pclass = pclass or ProxyClass()
    if isinstance(intent, IngressIntent):
        deployment = ingress_deployment(svc, intent, pclass, NS)
    else:
        assert isinstance(intent, EgressIntent)
        deployment = egress_deployment(svc, intent, pclass, NS)
    value = deployment["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    assert isinstance(value, str)
    return value


def test_spec_hash_is_stable() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    assert deployment_hash(svc) == deployment_hash(copy.deepcopy(svc))
    assert spec_hash({"a": 1, "b": [1, 2]}) == spec_hash({"b": [1, 2], "a": 1})
    assert spec_hash({"a": 1}) != spec_hash({"a": 2})


def test_spec_hash_ignores_what_does_not_change_the_proxy() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    before = deployment_hash(svc)
    other = copy.deepcopy(svc)
    other["metadata"]["annotations"]["example.com/owner"] = "team-a"
    other["metadata"]["labels"] = {"tier": "web"}
    other["metadata"]["resourceVersion"] = "12345"
    other["spec"]["selector"] = {"app": "other"}
    other["spec"]["ports"][0]["targetPort"] = 9999  # ingress goes to the Service port
    other["status"] = {"loadBalancer": {}}
    assert deployment_hash(other) == before


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["spec"]["ports"].append({"name": "x", "port": 8081}),
        lambda s: s["spec"]["ports"][0].update(port=81),
        lambda s: s["spec"]["ports"][0].update(protocol="UDP"),
        lambda s: s["metadata"]["annotations"].update({"netmaker.io/ingress-dns-name": "b.mesh"}),
        lambda s: s["metadata"]["annotations"].update({"meshgate.io/ingress-bind-ip": "10.1.1.1"}),
        lambda s: s["metadata"]["annotations"].update({"meshgate.io/secret-name": "other"}),
    ],
)
def test_spec_hash_changes_with_ports_and_annotations(change: Any) -> None:
    svc = load(GUIDE_EXAMPLE_3)
    before = deployment_hash(svc)
    change(svc)
    assert deployment_hash(svc) != before


def test_spec_hash_changes_with_the_proxy_class() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    assert deployment_hash(svc, ProxyClass()) != deployment_hash(
        svc, ProxyClass(image="gravitl/netclient:v0.90.0")
    )
    assert deployment_hash(svc, ProxyClass()) == deployment_hash(svc, ProxyClass())


def test_spec_hash_of_egress_follows_target_and_target_port() -> None:
    svc = load(EGRESS_GUIDE)
    before = deployment_hash(svc)
    svc["spec"]["ports"][0]["targetPort"] = 8081  # egress: the device's port
    after = deployment_hash(svc)
    assert after != before
    svc["metadata"]["annotations"]["netmaker.io/egress-target-ip"] = "10.0.0.201"
    assert deployment_hash(svc) not in (before, after)


# --- names --------------------------------------------------------------------


def service_named(namespace: str, name: str) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name}}


def test_proxy_name_is_stable_readable_and_unique() -> None:
    name = proxy_name(service_named("default", "my-api-service"))
    assert name == proxy_name(service_named("default", "my-api-service"))
    assert name.startswith("mg-default-my-api-service-")
    # a-b/c and a/b-c read the same; the hash tells them apart
    assert proxy_name(service_named("a-b", "c")) != proxy_name(service_named("a", "b-c"))


@pytest.mark.parametrize(
    ("namespace", "name"),
    [
        ("n" * 63, "s" * 63),
        ("default", "a" * 63),
        ("a" * 50, "b-" * 20 + "c"),
        ("ns", "x"),
    ],
)
def test_proxy_name_is_a_dns_label(namespace: str, name: str) -> None:
    found = proxy_name(service_named(namespace, name))
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", found), found
    assert "--" not in found[-10:]


def test_long_names_stay_unique() -> None:
    long_ns = "n" * 63
    names = {proxy_name(service_named(long_ns, "s" * 62 + c)) for c in "abcdef"}
    assert len(names) == 6


def test_long_name_deployment_validates() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    svc["metadata"]["namespace"] = "n" * 63
    svc["metadata"]["name"] = "s" * 63
    deployment = valid(ingress_deployment(svc, ingress_of(svc), ProxyClass(), NS))
    assert len(deployment["metadata"]["name"]) <= 63
    assert all(len(v) <= 63 for v in deployment["metadata"]["labels"].values())


# --- proxy classes ------------------------------------------------------------


def configmap(data: dict[str, Any], name: str = "nexodus") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def test_no_configmap_is_the_default_class() -> None:
    assert proxy_class_from_configmap(None) == ProxyClass()
    assert proxy_class_configmap_name(None) == "meshgate-proxy-class"
    assert proxy_class_configmap_name("nexodus") == "nexodus"
    assert ProxyClass().name == "meshgate-proxy-class"


def test_configmap_keys() -> None:
    pclass = proxy_class_from_configmap(
        configmap(
            {
                "image": "quay.io/nexodus/nexd:latest",
                "imagePullPolicy": "Always",
                "containerName": "nexd",
                "tokenEnv": "NEXD_TOKEN",
                "env": "# comment\nNEXD_SERVICE_URL=https://try.nexodus.io\n\nA=b=c\n",
                "capabilities": "net_admin, CAP_SYS_MODULE NET_ADMIN",
                "privileged": "true",
                "resources": "{requests: {cpu: 10m, memory: 32Mi}, limits: {memory: 1}}",
                "statePath": "/var/lib/nexd",
                "meshgateImage": "registry.local/meshgate:dev",
                "meshgateResources": "requests:\n  cpu: 0.5\n",
                "meshInterfaces": "wg0,nexodus0",
                "bindWait": "12.5",
            }
        )
    )
    assert pclass == ProxyClass(
        name="nexodus",
        image="quay.io/nexodus/nexd:latest",
        image_pull_policy="Always",
        container_name="nexd",
        token_env="NEXD_TOKEN",
        env=(("NEXD_SERVICE_URL", "https://try.nexodus.io"), ("A", "b=c")),
        capabilities=("NET_ADMIN", "SYS_MODULE"),
        privileged=True,
        resources={"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "1"}},
        state_path="/var/lib/nexd",
        meshgate_image="registry.local/meshgate:dev",
        meshgate_resources={"requests": {"cpu": "0.5"}},
        mesh_interfaces=("wg0", "nexodus0"),
        bind_wait=12.5,
    )
    svc = load(GUIDE_EXAMPLE_3)
    valid(ingress_deployment(svc, ingress_of(svc), pclass, NS))


def test_documented_keys_are_the_parsed_keys() -> None:
    assert {k.key for k in PROXY_CLASS_KEYS} == set(proxy_spec._PARSERS)


def test_empty_configmap_is_the_defaults_under_its_name() -> None:
    assert proxy_class_from_configmap(configmap({})) == ProxyClass(name="nexodus")
    assert proxy_class_from_configmap({"metadata": {}, "data": None}) == ProxyClass()
    assert proxy_class_from_configmap({"data": {"image": "x"}}) == ProxyClass(image="x")


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"imgae": "x"}, "data[imgae]", ["did you mean image?"]),
        ({"image": "has space"}, "data[image]", ["image reference"]),
        ({"imagePullPolicy": "sometimes"}, "data[imagePullPolicy]", ["IfNotPresent"]),
        ({"containerName": "meshgate"}, "data[containerName]", ["proxy container"]),
        ({"containerName": "Net_Client"}, "data[containerName]", ["DNS label"]),
        ({"tokenEnv": "1 TOKEN"}, "data[tokenEnv]", ["variable name"]),
        ({"env": "NOEQUALS"}, "data[env]", ["line 1", "NAME=value"]),
        ({"env": "A=1\nA=2"}, "data[env]", ["line 2", "twice"]),
        ({"env": "TOKEN=leak"}, "data[env]", ["TOKEN", "Secret"]),
        ({"capabilities": "NET-ADMIN"}, "data[capabilities]", ["capability"]),
        ({"privileged": "yes"}, "data[privileged]", ['"true"']),
        ({"resources": "[1, 2]"}, "data[resources]", ["mapping"]),
        ({"resources": "{requests: {cpu: lots}}"}, "data[resources]", ["quantity"]),
        ({"resources": "{wants: {cpu: 1}}"}, "data[resources]", ["requests and limits"]),
        ({"resources": "{requests: ["}, "data[resources]", ["not YAML"]),
        ({"meshgateResources": "{limits: 5}"}, "data[meshgateResources]", ["mapping"]),
        ({"statePath": "relative/path"}, "data[statePath]", ["absolute"]),
        ({"meshInterfaces": "a-very-long-interface-name"}, "data[meshInterfaces]", ["interface"]),
        ({"bindWait": "soon"}, "data[bindWait]", ["seconds"]),
        ({"bindWait": "-1"}, "data[bindWait]", ["0 to 3600"]),
        ({"image": 5}, "data[image]", ["strings"]),
    ],
)
def test_configmap_rejections(data: dict[str, Any], field: str, words: list[str]) -> None:
    found = proxy_class_from_configmap(configmap(data))
    assert isinstance(found, Rejection), found
    assert found.field == field
    for word in words:
        assert word in found.reason


# --- the Service side ---------------------------------------------------------


def merged_status(svc: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    updated = copy.deepcopy(svc)
    updated["status"] = {**updated.get("status", {}), **patch["status"]}
    return updated


def test_status_patch_for_a_load_balancer() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    svc["spec"]["type"] = "LoadBalancer"
    svc["spec"]["loadBalancerClass"] = "meshgate.io/mesh"
    svc["metadata"]["generation"] = 3
    patch = service_status_patch(svc, ["100.64.0.5", "fd00::5"], True, "serving", now=NOW)
    status = patch["status"]
    assert status["loadBalancer"] == {
        "ingress": [{"ip": "100.64.0.5", "ipMode": "Proxy"}, {"ip": "fd00::5", "ipMode": "Proxy"}]
    }
    assert status["conditions"] == [
        {
            "type": "MeshProxyReady",
            "status": "True",
            "reason": "ProxyReady",
            "message": "serving",
            "lastTransitionTime": NOW,
            "observedGeneration": 3,
        }
    ]
    valid(merged_status(svc, patch))


def test_status_patch_for_cluster_ip_has_no_load_balancer() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    patch = service_status_patch(svc, [], False, "waiting for the mesh", now=NOW)
    assert "loadBalancer" not in patch["status"]
    [condition] = patch["status"]["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "ProxyNotReady")
    valid(merged_status(svc, patch))


def test_status_patch_keeps_other_conditions_and_transition_time() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    earlier = "2024-12-31T00:00:00Z"
    svc["status"] = {
        "conditions": [
            {
                "type": "Other",
                "status": "True",
                "reason": "X",
                "message": "",
                "lastTransitionTime": earlier,
            },
            {
                "type": "MeshProxyReady",
                "status": "True",
                "reason": "ProxyReady",
                "message": "old",
                "lastTransitionTime": earlier,
            },
        ]
    }
    same = service_status_patch(svc, ["100.64.0.5"], True, "still serving", now=NOW)
    types = [c["type"] for c in same["status"]["conditions"]]
    assert types == ["Other", "MeshProxyReady"]
    assert same["status"]["conditions"][1]["lastTransitionTime"] == earlier
    assert same["status"]["conditions"][1]["message"] == "still serving"
    flipped = service_status_patch(svc, [], False, "down", now=NOW, reason="MeshDown")
    assert flipped["status"]["conditions"][1]["lastTransitionTime"] == NOW
    assert flipped["status"]["conditions"][1]["reason"] == "MeshDown"
    valid(merged_status(svc, flipped))


def test_status_patch_defaults_to_the_clock() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    patch = service_status_patch(svc, [], True, "ok")
    [condition] = patch["status"]["conditions"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", condition["lastTransitionTime"])
    valid(merged_status(svc, patch))


def test_mesh_ip_annotation_patch() -> None:
    assert mesh_ip_annotation_patch(["100.64.0.5", "fd00::5"]) == {
        "metadata": {"annotations": {"meshgate.io/mesh-ip": "100.64.0.5,fd00::5"}}
    }
    # a JSON merge patch removes a key set to null
    assert mesh_ip_annotation_patch([]) == {
        "metadata": {"annotations": {"meshgate.io/mesh-ip": None}}
    }


def test_event() -> None:
    svc = load(GUIDE_EXAMPLE_3)
    found = valid(event(svc, "ProxyRejected", "spec.ports[0].protocol: SCTP", "Warning", NOW))
    assert found["metadata"]["namespace"] == "default"
    assert found["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Service",
        "name": "my-app-service",
        "namespace": "default",
        "uid": svc["metadata"]["uid"],
    }
    assert (found["type"], found["reason"], found["count"]) == ("Warning", "ProxyRejected", 1)
    assert found["firstTimestamp"] == found["lastTimestamp"] == NOW
    # the same event has the same name (patch its count), another one another name
    again = event(svc, "ProxyRejected", "spec.ports[0].protocol: SCTP", "Warning", "later")
    assert again["metadata"]["name"] == found["metadata"]["name"]
    other = event(svc, "ProxyReady", "serving", "Normal", NOW)
    assert other["metadata"]["name"] != found["metadata"]["name"]
    assert len(event(svc, "R", "x" * 5000, "Normal", NOW)["message"]) == 1024


def test_event_type_is_normal_or_warning() -> None:
    with pytest.raises(ValueError, match="Normal or Warning"):
        event(load(GUIDE_EXAMPLE_3), "R", "m", "Error", NOW)


def test_event_without_uid_validates() -> None:
    svc = {"metadata": {"name": "web", "namespace": "shop"}}
    found = valid(event(svc, "ProxyCreated", "created", "Normal", NOW))
    assert "uid" not in found["involvedObject"]


def test_outputs_are_json_serialisable() -> None:
    svc = load(EGRESS_GUIDE)
    intent = egress_of(svc)
    for obj in (
        egress_deployment(svc, intent, ProxyClass(), NS),
        egress_endpointslice(svc, ["10.0.0.1"], intent),
        service_status_patch(svc, [], True, "ok", now=NOW),
        event(svc, "R", "m", "Normal", NOW),
    ):
        assert json.loads(json.dumps(obj)) == obj
