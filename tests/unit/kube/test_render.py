"""The install manifests: valid objects, least-privilege RBAC, round-trip YAML."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from meshgate.kube.proxy_spec import ProxyClass, proxy_class_from_configmap
from meshgate.kube.render import (
    DEFAULT_NAMESPACE,
    OPERATOR_CLUSTER_RULES,
    render,
    to_yaml,
)

K8S = "1.33"


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in by_kind(objs, kind) if o["metadata"]["name"] == name]
    return found


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize("namespace", [DEFAULT_NAMESPACE, "mesh"])
def test_every_object_validates(namespace: str) -> None:
    objs = render(namespace, image="registry.local/meshgate:1.2.3")
    for obj in objs:
        kubernetes_validate.validate(obj, K8S, strict=True)
        assert obj["metadata"].get("namespace", namespace) == namespace


def test_objects_in_apply_order() -> None:
    kinds = [o["kind"] for o in render()]
    assert kinds[0] == "Namespace"
    assert kinds.index("ServiceAccount") < kinds.index("Deployment")
    assert kinds.index("ClusterRoleBinding") < kinds.index("Deployment")
    assert kinds.count("Role") == 2
    assert kinds.count("RoleBinding") == 3  # operator, proxy, gateway (the proxy's Role)


def test_ingress_gateway_serves_ingresses_from_the_mesh() -> None:
    objs = render("mesh", "registry.local/meshgate:9")
    gateway = one(objs, "Deployment", "meshgate-ingress")
    assert gateway["spec"]["replicas"] == 1  # one address in the Ingress status
    pod = gateway["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "meshgate-ingress"
    mesh, meshgate = pod["containers"]
    assert mesh["env"][0]["valueFrom"]["secretKeyRef"] == {
        "name": "netclient-token",
        "key": "token",
    }
    assert meshgate["image"] == "registry.local/meshgate:9"
    assert meshgate["args"][:6] == [
        "run",
        "--watch",
        "--ingress-class",
        "meshgate",
        "--bind",
        "auto",
    ]
    # Not labelled as the operator's: the operator would remove it.
    labels = gateway["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] != "meshgate-operator"
    found = grants(one(objs, "ClusterRole", "meshgate-ingress"))
    assert ("networking.k8s.io", "ingresses/status", "patch") in found
    assert ("", "secrets", "watch") in found
    assert not any(verb in {"create", "delete", "update"} for _, _, verb in found)
    binding = one(objs, "RoleBinding", "meshgate-ingress")
    assert binding["roleRef"]["name"] == "meshgate-proxy"  # patches its own Pod


def test_names_are_unique_per_kind() -> None:
    objs = render()
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys))


def test_cluster_role_is_least_privilege() -> None:
    role = one(render(), "ClusterRole", "meshgate-operator")
    found = grants(role)
    read = {"get", "list", "watch"}
    for verb in (*read, "patch"):
        assert ("", "services", verb) in found
    assert ("", "services/status", "patch") in found
    for verb in (*read, "create", "update", "patch", "delete"):
        assert ("discovery.k8s.io", "endpointslices", verb) in found
    for verb in read:
        assert ("networking.k8s.io", "ingresses", verb) in found
        assert ("networking.k8s.io", "ingressclasses", verb) in found
    assert ("networking.k8s.io", "ingresses/status", "patch") in found
    assert ("", "events", "create") in found
    # nothing cluster-wide beyond that: no secrets, no deployments, no wildcards
    resources = {resource for _, resource, _ in found}
    assert resources == {
        "services",
        "services/status",
        "events",
        "endpointslices",
        "ingresses",
        "ingresses/status",
        "ingressclasses",
    }
    assert not any("*" in part for grant in found for part in grant)
    assert ("", "services", "delete") not in found
    assert ("", "services", "create") not in found


def test_namespaced_roles() -> None:
    objs = render("mesh")
    operator = one(objs, "Role", "meshgate-operator")
    assert operator["metadata"]["namespace"] == "mesh"
    found = grants(operator)
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert ("apps", "deployments", verb) in found
    secrets = {verb for group, resource, verb in found if resource == "secrets"}
    assert secrets == {"get"}  # the mesh tokens, read in this namespace only
    leases = {verb for group, resource, verb in found if resource == "leases"}
    assert leases == {"get", "create", "update"}
    assert ("", "configmaps", "watch") in found
    assert ("", "pods", "list") in found
    proxy = one(objs, "Role", "meshgate-proxy")
    assert grants(proxy) == {("", "pods", "get"), ("", "pods", "patch")}


def test_bindings_point_at_the_service_accounts() -> None:
    objs = render("mesh")
    for kind, name, account in [
        ("ClusterRoleBinding", "meshgate-operator", "meshgate-operator"),
        ("RoleBinding", "meshgate-operator", "meshgate-operator"),
        ("RoleBinding", "meshgate-proxy", "meshgate-proxy"),
    ]:
        binding = one(objs, kind, name)
        role_kind = "ClusterRole" if kind == "ClusterRoleBinding" else "Role"
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": name,
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": "mesh"}
        ]
        one(objs, role_kind, name)
        one(objs, "ServiceAccount", account)


def test_operator_deployment() -> None:
    deployment = one(render("mesh", "registry.local/meshgate:9"), "Deployment", "meshgate-operator")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "meshgate-operator"
    [container] = pod["containers"]
    assert container["image"] == "registry.local/meshgate:9"
    assert [*container["command"], *container["args"]] == [
        "meshgate",
        "operator",
        "--namespace",
        "mesh",
        "--admin",
        "0.0.0.0:9901",  # the probes reach it on the pod IP
    ]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {e["name"] for e in container["env"]} == {"POD_NAME", "POD_NAMESPACE"}
    assert container["securityContext"]["runAsNonRoot"] is True
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_ingress_class() -> None:
    ingress_class = one(render(), "IngressClass", "meshgate")
    assert ingress_class["spec"] == {"controller": "meshgate.io/ingress-controller"}
    assert "namespace" not in ingress_class["metadata"]


def test_default_proxy_class_configmap_parses_to_the_defaults() -> None:
    cm = one(render("mesh", "registry.local/meshgate:9"), "ConfigMap", "meshgate-proxy-class")
    pclass = proxy_class_from_configmap(cm)
    assert pclass == ProxyClass(meshgate_image="registry.local/meshgate:9")


def test_namespace_allows_the_mesh_client() -> None:
    namespace = one(render(), "Namespace", DEFAULT_NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


@pytest.mark.parametrize("bad", ["", "Mesh", "a_b", "-a", "x" * 64])
def test_bad_namespace(bad: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        render(bad)


def test_yaml_round_trip() -> None:
    objs = render()
    text = to_yaml(objs)
    assert text.startswith("---\n")
    assert text.count("\n---\n") == len(objs) - 1
    assert "&id" not in text  # no anchors ...
    assert "*id" not in text  # ... nor aliases
    assert list(yaml.safe_load_all(text)) == objs
    # keys in build order: apiVersion, kind, metadata first
    assert text.splitlines()[1:3] == ["apiVersion: v1", "kind: Namespace"]


def test_render_returns_fresh_objects() -> None:
    first = render()
    one(first, "ClusterRole", "meshgate-operator")["rules"][0]["verbs"].append("delete")
    assert ("", "services", "delete") not in grants(
        one(render(), "ClusterRole", "meshgate-operator")
    )
    assert "delete" not in OPERATOR_CLUSTER_RULES[0]["verbs"]
