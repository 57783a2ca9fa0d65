"""The install manifests of the meshgate operator, as plain dicts (and YAML).

`render(namespace, image)` returns, in apply order: the Namespace; the
ServiceAccounts of the operator and of the proxies; the operator's RBAC
(cluster-wide only what it watches and writes in Service namespaces,
everything else confined to its own namespace); the proxies' Role (patch
their own Pod's `meshgate.io/mesh-ip` annotation); the default proxy class
ConfigMap; the `meshgate` IngressClass; the operator Deployment (two
replicas, one leader through a Lease) and its PodDisruptionBudget.

The operator namespace is where proxies run and where the mesh join token
Secrets live: only the operator reads Secrets, and only there. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from meshgate.kube.proxy_spec import (
    ADMIN_PORT,
    DEFAULT_MESHGATE_IMAGE,
    GATEWAY_NAME,
    NAME_LABEL,
    OPERATOR_NAME,
    PROXY_SERVICE_ACCOUNT,
    ProxyClass,
    admin_probe,
    ingress_gateway_deployment,
    meshgate_security_context,
    pod_identity_env,
    proxy_class_configmap_name,
)

DEFAULT_NAMESPACE = "meshgate-system"
INGRESS_CLASS = "meshgate"
INGRESS_CONTROLLER = "meshgate.io/ingress-controller"

_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_ALL_VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]
_READ = ["get", "list", "watch"]

Rule = dict[str, list[str]]


def _rule(group: str, resources: list[str], verbs: list[str]) -> Rule:
    return {"apiGroups": [group], "resources": resources, "verbs": verbs}


# Cluster-wide: the Services it proxies, their status and Events, the egress
# EndpointSlices it manages next to them, and the Ingresses it serves.
OPERATOR_CLUSTER_RULES: tuple[Rule, ...] = (
    _rule("", ["services"], [*_READ, "patch"]),
    _rule("", ["services/status"], ["patch"]),
    _rule("", ["events"], ["create", "patch"]),
    _rule("discovery.k8s.io", ["endpointslices"], _ALL_VERBS),
    _rule("networking.k8s.io", ["ingresses"], _READ),
    _rule("networking.k8s.io", ["ingresses/status"], ["patch"]),
    _rule("networking.k8s.io", ["ingressclasses"], _READ),
)
# In the operator's namespace only: the proxies (Deployments, their Pods'
# mesh addresses), the proxy classes, the mesh tokens, leader election.
OPERATOR_NAMESPACE_RULES: tuple[Rule, ...] = (
    _rule("apps", ["deployments"], _ALL_VERBS),
    _rule("", ["pods"], _READ),
    # Proxy classes are read; the DNS records ConfigMap is written.
    _rule("", ["configmaps"], [*_READ, "create", "patch", "update"]),
    _rule("", ["secrets"], ["get"]),
    _rule("coordination.k8s.io", ["leases"], ["get", "create", "update"]),
)
# A proxy annotates its own Pod with its mesh address.
PROXY_RULES: tuple[Rule, ...] = (_rule("", ["pods"], ["get", "patch"]),)
# The Ingress gateway (`run --watch`): what the translation reads, and the
# Ingress status it writes. Secrets: the TLS certificates Ingresses name.
GATEWAY_CLUSTER_RULES: tuple[Rule, ...] = (
    _rule("networking.k8s.io", ["ingresses", "ingressclasses"], _READ),
    _rule("networking.k8s.io", ["ingresses/status"], ["patch"]),
    _rule("", ["services", "secrets"], _READ),
    _rule("discovery.k8s.io", ["endpointslices"], _READ),
)


def _labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/part-of": "meshgate",
        "app.kubernetes.io/component": component,
    }


def _meta(name: str, namespace: str | None, component: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata["labels"] = _labels(component)
    return metadata


def _role(kind: str, name: str, namespace: str | None, rules: Iterable[Rule]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": _meta(name, namespace, "rbac"),
        "rules": [{key: list(values) for key, values in rule.items()} for rule in rules],
    }


def _binding(
    kind: str,
    name: str,
    namespace: str | None,
    account: str,
    account_namespace: str,
    *,
    role: str | None = None,  # default: the binding's own name
) -> dict[str, Any]:
    role_kind = "ClusterRole" if kind == "ClusterRoleBinding" else "Role"
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": _meta(name, namespace, "rbac"),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": role or name,
        },
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": account_namespace}],
    }


def _service_account(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(name, namespace, "rbac"),
    }


def default_proxy_class_configmap(namespace: str, meshgate_image: str) -> dict[str, Any]:
    """The default proxy class (`meshgate-proxy-class`), spelled out so it can be
    edited in place (and copied under another name for another class)."""
    defaults = ProxyClass()
    resources = defaults.meshgate_resources
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(proxy_class_configmap_name(None), namespace, "proxy-class"),
        "data": {
            "image": defaults.image,
            "containerName": defaults.container_name,
            "tokenEnv": defaults.token_env,
            "capabilities": ",".join(defaults.capabilities),
            "statePath": defaults.state_path,
            "meshgateImage": meshgate_image,
            "meshgateResources": yaml.safe_dump(resources, default_flow_style=True).strip(),
        },
    }


def _operator_deployment(namespace: str, image: str) -> dict[str, Any]:
    selector = {NAME_LABEL: OPERATOR_NAME}

    container = {
        "name": "operator",
        "image": image,
        "command": ["meshgate"],
        "args": ["operator", "--namespace", namespace, "--admin", f"0.0.0.0:{ADMIN_PORT}"],
        "env": pod_identity_env(),  # the Lease holder identity, and where it runs
        "ports": [{"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "livenessProbe": admin_probe("/healthz", 10, 3),
        "readinessProbe": admin_probe("/readyz", 5, 2),
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        },
        "securityContext": meshgate_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_labels = {**_labels("operator"), **selector}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**_meta(OPERATOR_NAME, namespace, "operator")},
        "spec": {
            "replicas": 2,  # one leads (Lease), the other takes over within seconds
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": OPERATOR_NAME,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "labelSelector": {"matchLabels": selector},
                                        "topologyKey": "kubernetes.io/hostname",
                                    },
                                }
                            ]
                        }
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}
                    ],
                },
            },
        },
    }


def _check_namespace(namespace: str) -> str:
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(
            f"not a namespace name (lower case letters, digits and '-', at most 63): {namespace!r}"
        )
    return namespace


def render(
    namespace: str = DEFAULT_NAMESPACE, image: str = DEFAULT_MESHGATE_IMAGE
) -> list[dict[str, Any]]:
    """The operator's install manifests, in apply order (ValueError: bad namespace)."""
    ns = _check_namespace(namespace)
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ns,
                "labels": {
                    **_labels("namespace"),
                    # The mesh client of every proxy needs NET_ADMIN, which the
                    # baseline Pod Security level forbids.
                    "pod-security.kubernetes.io/enforce": "privileged",
                },
            },
        },
        _service_account(OPERATOR_NAME, ns),
        _service_account(PROXY_SERVICE_ACCOUNT, ns),
        _role("ClusterRole", OPERATOR_NAME, None, OPERATOR_CLUSTER_RULES),
        _binding("ClusterRoleBinding", OPERATOR_NAME, None, OPERATOR_NAME, ns),
        _role("Role", OPERATOR_NAME, ns, OPERATOR_NAMESPACE_RULES),
        _binding("RoleBinding", OPERATOR_NAME, ns, OPERATOR_NAME, ns),
        _role("Role", PROXY_SERVICE_ACCOUNT, ns, PROXY_RULES),
        _binding("RoleBinding", PROXY_SERVICE_ACCOUNT, ns, PROXY_SERVICE_ACCOUNT, ns),
        default_proxy_class_configmap(ns, image),
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": {
                **_meta(INGRESS_CLASS, None, "ingress"),
                "annotations": {"ingressclass.kubernetes.io/is-default-class": "false"},
            },
            "spec": {"controller": INGRESS_CONTROLLER},
        },
        _operator_deployment(ns, image),
        # The Ingress gateway: its own identity, allowed to read what it serves.
        _service_account(GATEWAY_NAME, ns),
        _role("ClusterRole", GATEWAY_NAME, None, GATEWAY_CLUSTER_RULES),
        _binding("ClusterRoleBinding", GATEWAY_NAME, None, GATEWAY_NAME, ns),
        _binding("RoleBinding", GATEWAY_NAME, ns, GATEWAY_NAME, ns, role=PROXY_SERVICE_ACCOUNT),
        ingress_gateway_deployment(ns, ProxyClass(meshgate_image=image)),
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _meta(OPERATOR_NAME, ns, "operator"),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {NAME_LABEL: OPERATOR_NAME}}},
        },
    ]


class _Dumper(yaml.SafeDumper):
    """Plain YAML: a value used twice is written twice, never as an &anchor."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(objs: Iterable[Mapping[str, Any]]) -> str:
    """Multi-document YAML, one `---` document per object, keys in build order."""
    return "".join(
        "---\n" + yaml.dump(dict(obj), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
        for obj in objs
    )
