"""The objects the operator writes for a proxied Service, as plain dicts.

For each Service `service_annotations.parse_service` accepts, the operator
runs one proxy Deployment in its own namespace: a mesh client container (the
Netmaker netclient by default; a *proxy class* says which image and how to
run it) and a `meshgate run` container, which share the Pod's network
namespace and so the mesh interface. The mesh join token comes from a
Secret in the operator's namespace through `secretKeyRef`: its value never
appears in a spec.

- Ingress: `meshgate run --ingress PROTO:PORT:<svc>.<ns>.svc.cluster.local:PORT`
  per Service port, listening on the mesh address (`--bind auto`).
- Egress: `meshgate run --egress PROTO:PORT:TARGET:TARGET_PORT` per Service port,
  listening on the Pod address; `egress_endpointslice` points the Service at
  the proxy Pods.

Every Deployment carries `meshgate.io/spec-hash`, the hash of what it was
built from: the operator replaces a Deployment whose hash differs from the
desired one (a rolling update, the old proxy serving until the new one is
ready), and leaves it alone otherwise. Pure: no I/O.
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from meshgate import __version__, settings
from meshgate.config.model import format_hostport
from meshgate.kube.service_annotations import (
    MESH_IP_ANNOTATION,
    EgressIntent,
    IngressIntent,
    PortSpec,
    Rejection,
)

DEFAULT_MESH_CLIENT_IMAGE = "gravitl/netclient:latest"
DEFAULT_MESHGATE_IMAGE = f"ghcr.io/meshgate/meshgate:{__version__}"
# The proxy class Services get without `meshgate.io/proxy-class`: a ConfigMap
# of this name in the operator's namespace (built-in defaults when absent).
DEFAULT_CLASS = "meshgate-proxy-class"
PROXY_SERVICE_ACCOUNT = "meshgate-proxy"
OPERATOR_NAME = "meshgate-operator"

SPEC_HASH_ANNOTATION = "meshgate.io/spec-hash"
SERVICE_NAMESPACE_LABEL = "meshgate.io/service-namespace"
SERVICE_NAME_LABEL = "meshgate.io/service-name"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PROXY_APP = "meshgate-proxy"
SLICE_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SLICE_SERVICE_NAME = "kubernetes.io/service-name"
# A label value (no "/"), like the built-in controller's endpointslice-controller.k8s.io.
SLICE_MANAGER = "operator.meshgate.io"

READY_CONDITION = "MeshProxyReady"
ADMIN_PORT = 9901
MESHGATE_CONTAINER = "meshgate"
MESHGATE_UID = 10001
# meshgate stays ready-less but serving for PROXY_SHUTDOWN_GRACE, then drains
# for 30 s by default on SIGTERM; give it that and a margin.
TERMINATION_GRACE_SECONDS = 45

_CLUSTER_DOMAIN = "cluster.local"
_STATE_VOLUME = "mesh-state"
_DNS_VOLUME = "dns-records"
# The operator's name -> mesh IP records of every proxy, mounted into each
# ingress proxy so its DNS responder answers for all of them.
DNS_RECORDS_CONFIGMAP = "meshgate-dns-records"
DNS_RECORDS_KEY = "hosts"
DNS_RECORDS_DIR = "/etc/meshgate/dns"
_TMP_VOLUME = "tmp"


def proxy_class_configmap_name(proxy_class: str | None) -> str:
    """The ConfigMap (in the operator's namespace) holding a proxy class.

    A class is named after its ConfigMap; `meshgate.io/proxy-class: NAME` asks
    for ConfigMap NAME, and no annotation for `DEFAULT_CLASS`. A named class
    whose ConfigMap is missing is the operator's to reject; a missing default
    class means the built-in defaults (`proxy_class_from_configmap(None)`).
    """
    return proxy_class or DEFAULT_CLASS


# --- proxy classes ------------------------------------------------------------

PullPolicy = Literal["Always", "IfNotPresent", "Never"]
Resources = dict[str, dict[str, str]]


@dataclass(frozen=True)
class ProxyClass:
    """How proxy Pods run: the mesh client, and the meshgate container's image."""

    name: str = DEFAULT_CLASS
    image: str = DEFAULT_MESH_CLIENT_IMAGE  # the mesh client (netclient, nexd, ...)
    image_pull_policy: PullPolicy | None = None
    container_name: str = "netclient"
    token_env: str = "TOKEN"  # the variable the mesh client reads its join token from
    env: tuple[tuple[str, str], ...] = ()
    capabilities: tuple[str, ...] = ("NET_ADMIN",)
    privileged: bool = False
    resources: Resources = field(default_factory=dict)
    state_path: str = "/etc/netclient"  # an emptyDir for the mesh client's state
    meshgate_image: str = DEFAULT_MESHGATE_IMAGE
    meshgate_resources: Resources = field(
        default_factory=lambda: {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        }
    )
    mesh_interfaces: tuple[str, ...] = ()  # extra --mesh-interface names (e.g. nexodus0)
    bind_wait: float | None = None  # --bind-wait seconds


@dataclass(frozen=True, slots=True)
class ConfigMapKey:
    """One key of a proxy class ConfigMap's `data`, for the documentation."""

    key: str
    value: str
    description: str


PROXY_CLASS_KEYS: tuple[ConfigMapKey, ...] = (
    ConfigMapKey("image", "image", f"Mesh client image. Default `{DEFAULT_MESH_CLIENT_IMAGE}`."),
    ConfigMapKey(
        "imagePullPolicy", "`Always` / `IfNotPresent` / `Never`", "Pull policy of both images."
    ),
    ConfigMapKey("containerName", "name", "Mesh client container name. Default `netclient`."),
    ConfigMapKey(
        "tokenEnv",
        "variable name",
        "Variable the mesh client reads the join token from (set from the Service's "
        "Secret). Default `TOKEN`.",
    ),
    ConfigMapKey("env", "`NAME=value` lines", "More environment for the mesh client."),
    ConfigMapKey(
        "capabilities",
        "comma-separated",
        "Capabilities added to the mesh client. Default `NET_ADMIN` (add `SYS_MODULE` "
        "if the WireGuard module must be loaded).",
    ),
    ConfigMapKey("privileged", '`"true"` / `"false"`', "Run the mesh client privileged."),
    ConfigMapKey(
        "resources",
        "YAML `{requests: {...}, limits: {...}}`",
        "Mesh client resources.",
    ),
    ConfigMapKey(
        "statePath",
        "absolute path",
        "Where the mesh client keeps its state (an emptyDir). Default `/etc/netclient`.",
    ),
    ConfigMapKey("meshgateImage", "image", f"meshgate image. Default `{DEFAULT_MESHGATE_IMAGE}`."),
    ConfigMapKey("meshgateResources", "YAML, as `resources`", "meshgate container resources."),
    ConfigMapKey(
        "meshInterfaces",
        "comma-separated",
        "Interface names meshgate also takes as the mesh (`--mesh-interface`), e.g. `nexodus0`.",
    ),
    ConfigMapKey(
        "bindWait", "seconds", "How long meshgate waits for the mesh interface (`--bind-wait`)."
    ),
)

_KEYS = {k.key for k in PROXY_CLASS_KEYS}
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_CAPABILITY = re.compile(r"[A-Z][A-Z_]*")
_IMAGE = re.compile(r"[^\s]{1,512}")
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_IFNAME = re.compile(r"[^/:\s,]{1,15}")
_QUANTITY = re.compile(r"(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE]\d+)?")
_PULL_POLICIES: tuple[PullPolicy, ...] = ("Always", "IfNotPresent", "Never")


def _image(value: str) -> str:
    text = value.strip()
    if not _IMAGE.fullmatch(text):
        raise ValueError(f"expected an image reference, got {value!r}")
    return text


def _pull_policy(value: str) -> PullPolicy:
    for policy in _PULL_POLICIES:
        if value.strip() == policy:
            return policy
    raise ValueError(f"expected Always, IfNotPresent or Never, got {value!r}")


def _container_name(value: str) -> str:
    text = value.strip()
    if not _LABEL.fullmatch(text):
        raise ValueError(f"expected a container name (a DNS label), got {value!r}")
    if text == MESHGATE_CONTAINER:
        raise ValueError(f"{MESHGATE_CONTAINER!r} is the proxy container's name; choose another")
    return text


def _env_name(value: str) -> str:
    text = value.strip()
    if not _ENV_NAME.fullmatch(text):
        raise ValueError(f"expected an environment variable name, got {value!r}")
    return text


def _env(value: str) -> tuple[tuple[str, str], ...]:
    pairs: dict[str, str] = {}
    for number, line in enumerate(value.splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, sep, rest = text.partition("=")
        if not sep:
            raise ValueError(f"line {number}: expected NAME=value, got {text!r}")
        try:
            name = _env_name(name)
        except ValueError as err:
            raise ValueError(f"line {number}: {err}") from None
        if name in pairs:
            raise ValueError(f"line {number}: {name} is set twice")
        pairs[name] = rest
    return tuple(pairs.items())


def _names(value: str) -> list[str]:
    return [item for item in re.split(r"[,\s]+", value.strip()) if item]


def _capabilities(value: str) -> tuple[str, ...]:
    caps: list[str] = []
    for item in _names(value):
        cap = item.upper().removeprefix("CAP_")
        if not _CAPABILITY.fullmatch(cap):
            raise ValueError(f"not a capability name: {item!r}")
        caps.append(cap)
    return tuple(dict.fromkeys(caps))


def _bool(value: str) -> bool:
    text = value.strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise ValueError(f'expected "true" or "false", got {value!r}')


def _resources(value: str) -> Resources:
    try:
        loaded = yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ValueError(f"not YAML: {str(err).splitlines()[0]}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError("expected a mapping like {requests: {cpu: 50m}, limits: {memory: 128Mi}}")
    resources: Resources = {}
    for section, amounts in loaded.items():
        if section not in ("requests", "limits"):
            raise ValueError(f"unknown section {section!r}; expected requests and limits")
        if not isinstance(amounts, dict):
            raise ValueError(f"{section}: expected a mapping like {{cpu: 50m, memory: 64Mi}}")
        checked: dict[str, str] = {}
        for name, amount in amounts.items():
            text = str(amount).strip()
            if isinstance(amount, bool) or not _QUANTITY.fullmatch(text):
                raise ValueError(f"{section}.{name}: not a quantity: {amount!r}")
            checked[str(name)] = text
        resources[section] = checked
    return resources


def _state_path(value: str) -> str:
    text = value.strip()
    if not text.startswith("/") or any(c.isspace() for c in text) or ":" in text:
        raise ValueError(f"expected an absolute path, got {value!r}")
    return text


def _interfaces(value: str) -> tuple[str, ...]:
    names = _names(value)
    for name in names:
        if not _IFNAME.fullmatch(name) or name in (".", ".."):
            raise ValueError(f"not an interface name: {name!r}")
    return tuple(dict.fromkeys(names))


def _seconds(value: str) -> float:
    try:
        seconds = float(value.strip())
    except ValueError:
        raise ValueError(f"expected seconds, got {value!r}") from None
    if not 0 <= seconds <= 3600:
        raise ValueError(f"expected 0 to 3600 seconds, got {value!r}")
    return seconds


_PARSERS: dict[str, tuple[str, Any]] = {
    "image": ("image", _image),
    "imagePullPolicy": ("image_pull_policy", _pull_policy),
    "containerName": ("container_name", _container_name),
    "tokenEnv": ("token_env", _env_name),
    "env": ("env", _env),
    "capabilities": ("capabilities", _capabilities),
    "privileged": ("privileged", _bool),
    "resources": ("resources", _resources),
    "statePath": ("state_path", _state_path),
    "meshgateImage": ("meshgate_image", _image),
    "meshgateResources": ("meshgate_resources", _resources),
    "meshInterfaces": ("mesh_interfaces", _interfaces),
    "bindWait": ("bind_wait", _seconds),
}


def proxy_class_from_configmap(cm: Mapping[str, Any] | None) -> ProxyClass | Rejection:
    """A proxy class from its ConfigMap (see `PROXY_CLASS_KEYS`); None: the defaults.

    The class is named after its ConfigMap. Unknown keys and bad values are
    rejected, the first problem reported (field `data[KEY]`).
    """
    if cm is None:
        return ProxyClass()
    metadata = cm.get("metadata") or {}
    name = str(metadata.get("name") or "") or DEFAULT_CLASS
    data = cm.get("data") or {}
    if not isinstance(data, Mapping):
        return Rejection("data", "expected a mapping of keys to strings")
    kwargs: dict[str, Any] = {"name": name}
    for key in sorted(data, key=str):
        where = f"data[{key}]"
        if key not in _PARSERS:
            return Rejection(where, _unknown_key(str(key)))
        raw = data[key]
        if not isinstance(raw, str):
            return Rejection(where, "ConfigMap values are strings")
        attr, parse = _PARSERS[key]
        try:
            kwargs[attr] = parse(raw)
        except ValueError as err:
            return Rejection(where, str(err))
    pclass = ProxyClass(**kwargs)
    if any(env_name == pclass.token_env for env_name, _ in pclass.env):
        return Rejection(
            "data[env]",
            f"{pclass.token_env} is the token variable (tokenEnv), set from the Secret; "
            f"remove it from env",
        )
    return pclass


def _unknown_key(key: str) -> str:
    close = difflib.get_close_matches(key, sorted(_KEYS), n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(sorted(_KEYS))}"
    return "unknown proxy class key" + hint


# --- names and hashes ---------------------------------------------------------


def _meta(svc: Mapping[str, Any]) -> tuple[str, str]:
    metadata = svc.get("metadata") or {}
    return str(metadata.get("namespace") or "default"), str(metadata.get("name") or "")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def proxy_name(svc: Mapping[str, Any]) -> str:
    """The proxy Deployment's name: `mg-<ns>-<name>-<hash>`, a DNS label.

    The hash of (namespace, name) keeps it unique where the readable part is
    ambiguous (`a-b`/`c` and `a`/`b-c`) or truncated to fit 63 characters.
    """
    namespace, name = _meta(svc)
    suffix = _digest(f"{namespace}/{name}")[:8]
    readable = re.sub(r"[^a-z0-9-]", "-", f"mg-{namespace}-{name}".lower())
    readable = readable[: 63 - len(suffix) - 1].rstrip("-")
    return f"{readable}-{suffix}"


def endpointslice_name(svc: Mapping[str, Any]) -> str:
    """The egress EndpointSlice's name, in the Service's namespace."""
    return f"{_meta(svc)[1]}-meshgate"


def spec_hash(obj: object) -> str:
    """A stable hash of a JSON-like value (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return _digest(text)[:16]


# --- Deployments --------------------------------------------------------------


def admin_port(ports: Sequence[PortSpec]) -> int:
    """The admin port (probes, metrics): 9901, or the next one no Service port uses."""
    used = {p.port for p in ports if p.protocol == "TCP"}
    port = ADMIN_PORT
    while port in used:
        port += 1
    return port


def _labels(svc: Mapping[str, Any], direction: str) -> dict[str, str]:
    namespace, name = _meta(svc)
    return {
        NAME_LABEL: PROXY_APP,
        INSTANCE_LABEL: proxy_name(svc),
        COMPONENT_LABEL: direction,
        MANAGED_BY_LABEL: OPERATOR_NAME,
        SERVICE_NAMESPACE_LABEL: namespace,
        SERVICE_NAME_LABEL: name,
    }


def _mesh_client(pclass: ProxyClass, secret_name: str, secret_key: str) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {
            "name": pclass.token_env,
            "valueFrom": {"secretKeyRef": {"name": secret_name, "key": secret_key}},
        }
    ]
    env += [{"name": name, "value": value} for name, value in pclass.env]
    security: dict[str, Any] = {"capabilities": {"add": list(pclass.capabilities)}}
    if pclass.privileged:
        security["privileged"] = True
    container: dict[str, Any] = {
        "name": pclass.container_name,
        "image": pclass.image,
        "env": env,
        "securityContext": security,
        "volumeMounts": [{"name": _STATE_VOLUME, "mountPath": pclass.state_path}],
    }
    if pclass.image_pull_policy:
        container["imagePullPolicy"] = pclass.image_pull_policy
    if pclass.resources:
        container["resources"] = pclass.resources
    return container


def admin_probe(path: str, period: int, failures: int) -> dict[str, Any]:
    """An HTTP probe on meshgate's admin port (named `admin`)."""
    return {
        "httpGet": {"path": path, "port": "admin"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def pod_identity_env() -> list[dict[str, Any]]:
    """POD_NAME and POD_NAMESPACE from the downward API: a proxy patches its
    own Pod with them, the operator uses them as its Lease identity."""
    return [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]


def meshgate_security_context() -> dict[str, Any]:
    """meshgate runs non-root, read-only, without capabilities."""
    return {
        "runAsNonRoot": True,
        "runAsUser": MESHGATE_UID,
        "runAsGroup": MESHGATE_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _meshgate(pclass: ProxyClass, args: list[str], port: int) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": MESHGATE_CONTAINER,
        "image": pclass.meshgate_image,
        "command": ["meshgate"],
        "args": [
            *args,
            "--admin",
            f"0.0.0.0:{port}",
            "--log-format",
            "json",
            "--shutdown-grace",
            f"{settings.PROXY_SHUTDOWN_GRACE:g}",
        ],
        "env": pod_identity_env(),
        "ports": [{"name": "admin", "containerPort": port, "protocol": "TCP"}],
        # The mesh may take a while to come up (--bind-wait): allow 5 minutes.
        "startupProbe": admin_probe("/healthz", 5, 60),
        "livenessProbe": admin_probe("/healthz", 10, 3),
        "readinessProbe": admin_probe("/readyz", 5, 2),
        "securityContext": meshgate_security_context(),
        "volumeMounts": [
            {"name": _TMP_VOLUME, "mountPath": "/tmp"},
            {"name": _DNS_VOLUME, "mountPath": DNS_RECORDS_DIR, "readOnly": True},
        ],
    }
    if pclass.image_pull_policy:
        container["imagePullPolicy"] = pclass.image_pull_policy
    if pclass.meshgate_resources:
        container["resources"] = pclass.meshgate_resources
    return container


def _mesh_args(pclass: ProxyClass) -> list[str]:
    args: list[str] = []
    for name in pclass.mesh_interfaces:
        args += ["--mesh-interface", name]
    if pclass.bind_wait is not None:
        args += ["--bind-wait", f"{pclass.bind_wait:g}"]
    return args


def _pod_spec(
    pclass: ProxyClass,
    secret: tuple[str, str],
    args: list[str],
    port: int,
    service_account: str,
) -> dict[str, Any]:
    """A proxy Pod: the mesh client beside `meshgate` (sharing its network)."""
    return {
        "serviceAccountName": service_account,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "seccompProfile": {"type": "RuntimeDefault"},
            # A safe sysctl: the non-root proxy may listen on ports below 1024.
            "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
        },
        "containers": [
            _mesh_client(pclass, *secret),
            _meshgate(pclass, args + _mesh_args(pclass), port),
        ],
        "volumes": [
            {"name": _STATE_VOLUME, "emptyDir": {}},
            {"name": _TMP_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            {
                "name": _DNS_VOLUME,
                "configMap": {"name": DNS_RECORDS_CONFIGMAP, "optional": True},
            },
        ],
    }


GATEWAY_NAME = "meshgate-ingress"


def ingress_gateway_deployment(
    namespace: str,
    pclass: ProxyClass,
    *,
    ingress_class: str = "meshgate",
    secret: tuple[str, str] = ("netclient-token", "token"),
) -> dict[str, Any]:
    """The mesh-side Ingress gateway: `meshgate run --watch` on the mesh
    address, serving the Ingresses of `ingress_class` and writing their
    status. One replica: the status names one address (two would take turns
    overwriting it). Not labelled as the operator's, which would remove it."""
    labels = {
        NAME_LABEL: GATEWAY_NAME,
        INSTANCE_LABEL: GATEWAY_NAME,
        COMPONENT_LABEL: "ingress-gateway",
        MANAGED_BY_LABEL: "meshgate-render",
    }
    args = ["run", "--watch", "--ingress-class", ingress_class, "--bind", "auto"]
    args += ["--dns-records", f"{DNS_RECORDS_DIR}/{DNS_RECORDS_KEY}"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": GATEWAY_NAME, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": {NAME_LABEL: GATEWAY_NAME}},
            # One holder of the mesh address at a time: replace, do not overlap.
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"kubectl.kubernetes.io/default-container": MESHGATE_CONTAINER},
                },
                "spec": _pod_spec(pclass, secret, args, ADMIN_PORT, GATEWAY_NAME),
            },
        },
    }


def _deployment(
    svc: Mapping[str, Any],
    direction: str,
    *,
    pclass: ProxyClass,
    namespace: str,
    secret: tuple[str, str],
    args: list[str],
    port: int,
) -> dict[str, Any]:
    labels = _labels(svc, direction)
    selector = {NAME_LABEL: PROXY_APP, INSTANCE_LABEL: labels[INSTANCE_LABEL]}
    svc_namespace, svc_name = _meta(svc)
    spec: dict[str, Any] = {
        "replicas": 1,
        "revisionHistoryLimit": 3,
        "selector": {"matchLabels": selector},
        # The old proxy serves until the new one is ready.
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        },
        "template": {
            "metadata": {
                "labels": labels,
                "annotations": {"kubectl.kubernetes.io/default-container": MESHGATE_CONTAINER},
            },
            "spec": _pod_spec(pclass, secret, args, port, PROXY_SERVICE_ACCOUNT),
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": labels[INSTANCE_LABEL],
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                SPEC_HASH_ANNOTATION: spec_hash({"labels": labels, "spec": spec}),
                "meshgate.io/service": f"{svc_namespace}/{svc_name}",
            },
        },
        "spec": spec,
    }


def _rule(port: PortSpec, host: str) -> str:
    return f"{port.protocol.lower()}:{port.port}:{format_hostport(host, port.target_port)}"


def ingress_deployment(
    svc: Mapping[str, Any],
    intent: IngressIntent,
    pclass: ProxyClass,
    namespace: str,
    *,
    cluster_domain: str = _CLUSTER_DOMAIN,
) -> dict[str, Any]:
    """The proxy exposing a Service on the mesh, one `--ingress` rule per port."""
    svc_namespace, svc_name = _meta(svc)
    host = f"{svc_name}.{svc_namespace}.svc.{cluster_domain}"
    args = ["run"]
    for port in intent.ports:
        args += ["--ingress", _rule(port, host)]
    args += ["--bind", intent.bind]
    if intent.dns_name:
        args += ["--dns-name", intent.dns_name]
    args += ["--dns-records", f"{DNS_RECORDS_DIR}/{DNS_RECORDS_KEY}"]
    return _deployment(
        svc,
        "ingress",
        pclass=pclass,
        namespace=namespace,
        secret=(intent.secret_name, intent.secret_key),
        args=args,
        port=admin_port(intent.ports),
    )


def egress_deployment(
    svc: Mapping[str, Any], intent: EgressIntent, pclass: ProxyClass, namespace: str
) -> dict[str, Any]:
    """The proxy routing a Service to a mesh device, one `--egress` rule per port."""
    args = ["run"]
    for port in intent.ports:
        args += ["--egress", _rule(port, intent.target)]
    args += ["--cluster-bind", "0.0.0.0"]
    return _deployment(
        svc,
        "egress",
        pclass=pclass,
        namespace=namespace,
        secret=(intent.secret_name, intent.secret_key),
        args=args,
        port=admin_port(intent.ports),
    )


# --- the Service side ---------------------------------------------------------


def _owner(svc: Mapping[str, Any]) -> list[dict[str, Any]]:
    metadata = svc.get("metadata") or {}
    uid = metadata.get("uid")
    if not uid:
        return []
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "name": str(metadata.get("name") or ""),
            "uid": str(uid),
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def _family(svc: Mapping[str, Any], ips: Sequence[str]) -> Literal["IPv4", "IPv6"]:
    families = (svc.get("spec") or {}).get("ipFamilies") or []
    if families and families[0] in ("IPv4", "IPv6"):
        return "IPv6" if families[0] == "IPv6" else "IPv4"
    for ip in ips:
        try:
            return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"
        except ValueError:
            continue
    return "IPv4"


def egress_endpointslice(
    svc: Mapping[str, Any], proxy_pod_ips: Sequence[str], intent: EgressIntent
) -> dict[str, Any]:
    """The EndpointSlice routing an egress Service to its proxy Pods (ready ones).

    Its ports carry the Service ports' names, so kube-proxy matches them, and
    the port the proxy listens on: the Service port. Addresses of the other
    IP family than the Service's (and anything not an IP) are left out.
    """
    namespace, name = _meta(svc)
    family = _family(svc, proxy_pod_ips)
    version = 6 if family == "IPv6" else 4
    addresses: list[str] = []
    for ip in proxy_pod_ips:
        try:
            parsed = ipaddress.ip_address(ip)
        except ValueError:
            continue
        if parsed.version == version and str(parsed) not in addresses:
            addresses.append(str(parsed))
    metadata: dict[str, Any] = {
        "name": endpointslice_name(svc),
        "namespace": namespace,
        "labels": {
            SLICE_SERVICE_NAME: name,
            SLICE_MANAGED_BY: SLICE_MANAGER,
            MANAGED_BY_LABEL: OPERATOR_NAME,
        },
    }
    owners = _owner(svc)
    if owners:
        metadata["ownerReferences"] = owners
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": family,
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True, "serving": True}} for ip in addresses
        ],
        "ports": [
            {"name": port.name or "", "port": port.port, "protocol": port.protocol}
            for port in intent.ports
        ],
    }


def service_status_patch(
    svc: Mapping[str, Any],
    mesh_ips: Sequence[str],
    ready: bool,
    message: str,
    *,
    now: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """A merge patch for the Service's status subresource.

    Sets the `MeshProxyReady` condition (keeping the Service's other
    conditions, and keeping lastTransitionTime when the status is unchanged)
    and, for `type: LoadBalancer`, `status.loadBalancer.ingress` to the mesh
    addresses (`ipMode: Proxy`: traffic must reach the proxy, not be
    short-cut by kube-proxy). `now` is the transition time (default: the
    current UTC time, to the second).
    """
    now = now or _utc_now()
    status_text = "True" if ready else "False"
    metadata = svc.get("metadata") or {}
    existing = [
        c for c in ((svc.get("status") or {}).get("conditions") or []) if isinstance(c, Mapping)
    ]
    previous = next((c for c in existing if c.get("type") == READY_CONDITION), None)
    since = now
    if previous is not None and previous.get("status") == status_text:
        since = str(previous.get("lastTransitionTime") or now)
    condition: dict[str, Any] = {
        "type": READY_CONDITION,
        "status": status_text,
        "reason": reason or ("ProxyReady" if ready else "ProxyNotReady"),
        "message": message[:32768],
        "lastTransitionTime": since,
    }
    generation = metadata.get("generation")
    if isinstance(generation, int) and not isinstance(generation, bool):
        condition["observedGeneration"] = generation
    conditions = [dict(c) for c in existing if c.get("type") != READY_CONDITION]
    status: dict[str, Any] = {"conditions": [*conditions, condition]}
    if (svc.get("spec") or {}).get("type") == "LoadBalancer":
        status["loadBalancer"] = {"ingress": [{"ip": ip, "ipMode": "Proxy"} for ip in mesh_ips]}
    return {"status": status}


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def mesh_ip_annotation_patch(mesh_ips: Sequence[str]) -> dict[str, Any]:
    """A merge patch setting `meshgate.io/mesh-ip` (removing it when there is none)."""
    value = ",".join(mesh_ips) if mesh_ips else None
    return {"metadata": {"annotations": {MESH_IP_ANNOTATION: value}}}


EVENT_TYPES = ("Normal", "Warning")


def event(
    svc: Mapping[str, Any], reason: str, message: str, type_: str, now: str
) -> dict[str, Any]:
    """A core/v1 Event about the Service.

    Its name is derived from the Service, reason and message, so the same
    event twice has the same name: create it, and on AlreadyExists patch
    `count` and `lastTimestamp` instead. `type_` is "Normal" or "Warning"
    (anything else is a ValueError).
    """
    if type_ not in EVENT_TYPES:
        raise ValueError(f"an Event's type is Normal or Warning, not {type_!r}")
    namespace, name = _meta(svc)
    metadata = svc.get("metadata") or {}
    involved: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "name": name,
        "namespace": namespace,
    }
    if metadata.get("uid"):
        involved["uid"] = str(metadata["uid"])
    key = spec_hash([metadata.get("uid") or f"{namespace}/{name}", reason, message, type_])
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{key}", "namespace": namespace},
        "involvedObject": involved,
        "reason": reason[:128],
        "message": message[:1024],
        "type": type_,
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": OPERATOR_NAME},
        "reportingComponent": "meshgate.io/operator",
        "reportingInstance": OPERATOR_NAME,
    }


def dns_records_configmap(records: Mapping[str, Sequence[str]], namespace: str) -> dict[str, Any]:
    """The ConfigMap of every proxy's mesh DNS name and addresses, as hosts
    lines (what `meshgate run --dns-records` reads), sorted for stable diffs."""
    lines = [f"{address} {name}" for name in sorted(records) for address in sorted(records[name])]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": DNS_RECORDS_CONFIGMAP,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: OPERATOR_NAME},
        },
        "data": {DNS_RECORDS_KEY: "".join(line + "\n" for line in lines)},
    }
