"""Which Services the operator proxies, and how: a Service dict in, an intent out.

A Service asks for an **ingress** proxy (mesh devices reach the Service at a
mesh address) with `meshgate.io/ingress: "enabled"`, or by being a
`type: LoadBalancer` Service with `spec.loadBalancerClass: meshgate.io/mesh`.
It asks for an **egress** proxy (cluster workloads reach a mesh device
through the Service) with `meshgate.io/egress: "enabled"` and a target,
`meshgate.io/egress-target-ip` or `meshgate.io/egress-target-dns`.

The Netmaker operator's annotations (`netmaker.io/<name>`) are aliases of
`meshgate.io/<name>`, so Services written for it work unchanged, and so are
the Tailscale operator's (`tailscale.com/expose`, `tailscale.com/hostname`,
`tailscale.com/tailnet-ip`, `tailscale.com/tailnet-fqdn`, ...). `ANNOTATIONS`
is the table; `markdown_table` renders it for the README.

`parse_service` never raises: a Service that is ours but cannot be served
gives a `Rejection` naming the field and the reason (the operator turns it
into a Warning Event on the Service); `service_rejections` lists every
problem at once. Unknown `meshgate.io/...` keys are problems (most likely a
typo); unknown keys under the other operators' prefixes are theirs and are
ignored. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from meshgate.config.annotations import not_a_string, unknown_reason
from meshgate.config.model import check_exact_name

PREFIX = "meshgate.io/"
NETMAKER_PREFIX = "netmaker.io/"
TAILSCALE_PREFIX = "tailscale.com/"

# `type: LoadBalancer` Services of this class are exposed on the mesh.
LOAD_BALANCER_CLASS = "meshgate.io/mesh"
# Written by the operator (and by each proxy on its own Pod): the mesh addresses.
MESH_IP_ANNOTATION = "meshgate.io/mesh-ip"
DEFAULT_SECRET_NAME = "netclient-token"
DEFAULT_SECRET_KEY = "token"

Protocol = Literal["TCP", "UDP"]
Direction = Literal["ingress", "egress"]

# meshgate.io keys the operator itself writes: known, never a typo.
_OWN_KEYS = frozenset({MESH_IP_ANNOTATION})


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One Service port to forward.

    Ingress: the proxy listens on `port` at the mesh address and connects to
    the Service at `target_port` (the Service port itself; for a headless
    Service, whose name resolves to Pod IPs, the numeric targetPort).
    Egress: the proxy listens on `port` and connects to the mesh target at
    `target_port` (the Service port's targetPort when numeric, else `port`).
    """

    name: str | None
    protocol: Protocol
    port: int
    target_port: int


@dataclass(frozen=True, slots=True)
class IngressIntent:
    """Expose a Service on the mesh."""

    bind: str = "auto"  # "auto" (detect the mesh address) or an IP literal
    dns_name: str | None = None
    proxy_class: str | None = None  # a ConfigMap name; None: the default class
    secret_name: str = DEFAULT_SECRET_NAME
    secret_key: str = DEFAULT_SECRET_KEY
    ports: tuple[PortSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class EgressIntent:
    """Route a Service to a device on the mesh."""

    target: str  # IP literal or DNS name of the mesh device
    ports: tuple[PortSpec, ...] = ()
    proxy_class: str | None = None
    secret_name: str = DEFAULT_SECRET_NAME
    secret_key: str = DEFAULT_SECRET_KEY


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a Service that asks for a proxy cannot get one."""

    field: str  # e.g. "metadata.annotations[meshgate.io/ingress-bind-ip]", "spec.ports[1]"
    reason: str

    @property
    def message(self) -> str:
        """One line for an Event: the field, then the reason."""
        return f"{self.field}: {self.reason}"


# --- value parsers: each returns the value or raises ValueError with the reason.

_ON = frozenset({"enabled", "true"})
_OFF = frozenset({"disabled", "false"})


def _switch(value: str) -> bool:
    text = value.strip().lower()
    if text in _ON:
        return True
    if text in _OFF:
        return False
    raise ValueError(
        f'expected "enabled" (or "true") to turn it on, "disabled" (or "false") to turn '
        f"it off, got {value!r}"
    )


def _bind(value: str) -> str:
    text = value.strip()
    if text.lower() == "auto":
        return "auto"
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(
            f'expected an IP address (or "auto": detect the mesh address), got {value!r}'
        ) from None
    if ip.is_multicast:
        raise ValueError(f"a multicast address cannot be listened on: {value!r}")
    return str(ip)


def _target_ip(value: str) -> str:
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"expected the IP address of a mesh device, got {value!r}") from None
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"not the address of a device: {value!r}")
    return str(ip)


def _dns_name(value: str) -> str:
    try:
        return check_exact_name(value)
    except ValueError:
        raise ValueError(
            f"expected a DNS name such as my-app.mesh.internal, got {value!r}"
        ) from None


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")


def _secret_name(value: str) -> str:
    text = value.strip()
    if not _DNS_SUBDOMAIN.fullmatch(text) or ".." in text:
        raise ValueError(
            f"expected the name of a Secret in the operator's namespace (lower case "
            f"letters, digits, '-' and '.'), got {value!r}"
        )
    return text


def _secret_key(value: str) -> str:
    text = value.strip()
    if not _SECRET_KEY.fullmatch(text) or text in (".", ".."):
        raise ValueError(
            f"expected a key of the Secret's data (letters, digits, '-', '_' and '.'), "
            f"got {value!r}"
        )
    return text


def _proxy_class(value: str) -> str:
    text = value.strip()
    if not _DNS_SUBDOMAIN.fullmatch(text) or ".." in text:
        raise ValueError(
            f"expected the name of a proxy class ConfigMap (lower case letters, digits, "
            f"'-' and '.'), got {value!r}"
        )
    return text


Applies = Literal["ingress", "egress", "both"]


@dataclass(frozen=True, slots=True)
class ServiceAnnotation:
    """One supported annotation: its keys, how its value reads, what it does."""

    name: str  # meshgate.io/<name>
    value: str  # the accepted values, for the documentation table
    description: str
    parse: Callable[[str], object]
    applies: Applies
    aliases: tuple[str, ...] = ()  # other keys, in full (netmaker.io/..., tailscale.com/...)

    @property
    def key(self) -> str:
        return PREFIX + self.name

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key that sets it, the preferred one first."""
        return (self.key, *self.aliases)


ANNOTATIONS: tuple[ServiceAnnotation, ...] = (
    ServiceAnnotation(
        "ingress",
        '`"enabled"` / `"disabled"` (or `"true"` / `"false"`)',
        "Expose the Service on the mesh: a proxy joins the mesh and forwards every "
        "Service port to the Service. `type: LoadBalancer` with "
        "`spec.loadBalancerClass: meshgate.io/mesh` does the same.",
        _switch,
        "ingress",
        (NETMAKER_PREFIX + "ingress", TAILSCALE_PREFIX + "expose"),
    ),
    ServiceAnnotation(
        "ingress-bind-ip",
        'IP address, or `"auto"`',
        "The mesh address to listen on. Default: detect the mesh interface's address "
        "(and follow it when it changes).",
        _bind,
        "ingress",
        (NETMAKER_PREFIX + "ingress-bind-ip",),
    ),
    ServiceAnnotation(
        "ingress-dns-name",
        "DNS name",
        "A mesh DNS name for the Service, answered with the proxy's mesh address by "
        "its DNS responder (port 53 on the mesh address).",
        _dns_name,
        "ingress",
        (NETMAKER_PREFIX + "ingress-dns-name", TAILSCALE_PREFIX + "hostname"),
    ),
    ServiceAnnotation(
        "egress",
        '`"enabled"` / `"disabled"` (or `"true"` / `"false"`)',
        "Route the Service to a mesh device (give `egress-target-ip` or "
        "`egress-target-dns`): a proxy listens on the Service's ports and the operator "
        "points the Service at it with an EndpointSlice. The Service should have no "
        "selector.",
        _switch,
        "egress",
        (NETMAKER_PREFIX + "egress",),
    ),
    ServiceAnnotation(
        "egress-target-ip",
        "IP address",
        "The mesh device egress traffic goes to; its port is each Service port's "
        "`targetPort` (the Service `port` when `targetPort` is a name). The Tailscale "
        "keys enable egress by themselves.",
        _target_ip,
        "egress",
        (
            NETMAKER_PREFIX + "egress-target-ip",
            TAILSCALE_PREFIX + "tailnet-ip",
            TAILSCALE_PREFIX + "ts-tailnet-target-ip",
        ),
    ),
    ServiceAnnotation(
        "egress-target-dns",
        "DNS name",
        "As `egress-target-ip`, by name (resolved by the proxy at connect time).",
        _dns_name,
        "egress",
        (NETMAKER_PREFIX + "egress-target-dns", TAILSCALE_PREFIX + "tailnet-fqdn"),
    ),
    ServiceAnnotation(
        "secret-name",
        "Secret name",
        f"The Secret, in the operator's namespace, holding the mesh join token. "
        f"Default `{DEFAULT_SECRET_NAME}`.",
        _secret_name,
        "both",
        (NETMAKER_PREFIX + "secret-name",),
    ),
    ServiceAnnotation(
        "secret-key",
        "key",
        f"The key of that Secret holding the token. Default `{DEFAULT_SECRET_KEY}`.",
        _secret_key,
        "both",
        (NETMAKER_PREFIX + "secret-key",),
    ),
    ServiceAnnotation(
        "proxy-class",
        "name",
        "The proxy class: the name of a ConfigMap in the operator's namespace saying how "
        "proxies run (mesh client image, capabilities, resources). Default "
        "`meshgate-proxy-class`.",
        _proxy_class,
        "both",
        (TAILSCALE_PREFIX + "proxy-class",),
    ),
)

_BY_KEY: dict[str, ServiceAnnotation] = {key: a for a in ANNOTATIONS for key in a.keys}
# Keys that turn egress on by themselves (the Tailscale operator has no switch).
_EGRESS_ENABLING = frozenset(
    key
    for a in ANNOTATIONS
    if a.name in ("egress-target-ip", "egress-target-dns")
    for key in a.aliases
    if key.startswith(TAILSCALE_PREFIX)
)
_SWITCHES = frozenset({"ingress", "egress"})
_TARGET_FIELDS = frozenset(
    f"metadata.annotations[{key}]"
    for a in ANNOTATIONS
    if a.name in ("egress-target-ip", "egress-target-dns")
    for key in a.keys
)
_SUPPORTED_PROTOCOLS: tuple[Protocol, ...] = ("TCP", "UDP")
_DNS_PORT = 53


_OUR_FIELDS = f"metadata.annotations[{PREFIX}"


def _field(key: str) -> str:
    return f"metadata.annotations[{key}]"


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass
class _Read:
    """The annotations read so far: name -> (key, value), and the problems."""

    values: dict[str, tuple[str, object]]
    problems: list[Rejection]
    switch_problems: list[Rejection]  # bad values of ingress/egress themselves


def _read_annotations(annotations: Mapping[str, Any]) -> _Read:
    read = _Read({}, [], [])
    for key in sorted((k for k in annotations if isinstance(k, str)), key=str):
        raw = annotations[key]
        spec = _BY_KEY.get(key)
        if spec is None:
            if key.startswith(PREFIX) and key not in _OWN_KEYS:
                read.problems.append(Rejection(_field(key), _unknown(key)))
            continue
        problems = read.switch_problems if spec.name in _SWITCHES else read.problems
        if not isinstance(raw, str):
            problems.append(Rejection(_field(key), not_a_string(key, raw)))
            continue
        try:
            value = spec.parse(raw)
        except ValueError as err:
            problems.append(Rejection(_field(key), str(err)))
            continue
        earlier = read.values.get(spec.name)
        if earlier is None:
            read.values[spec.name] = (key, value)
        elif earlier[1] != value:
            problems.append(
                Rejection(
                    _field(key),
                    f"contradicts {earlier[0]} (both set {spec.key}, to different values)",
                )
            )
    return read


def _unknown(key: str) -> str:
    return unknown_reason(key, {a.key for a in ANNOTATIONS} | _OWN_KEYS, "Service annotations")


def _direction(
    svc: Mapping[str, Any], annotations: Mapping[str, Any], read: _Read
) -> tuple[Direction | None, list[Rejection]]:
    """Ingress, egress or neither, and the problems deciding it."""
    spec = _mapping(svc.get("spec"))
    problems: list[Rejection] = []
    ingress_key, ingress_on = read.values.get("ingress", ("", None))
    egress_key, egress_on = read.values.get("egress", ("", None))
    load_balancer = (
        spec.get("type") == "LoadBalancer" and spec.get("loadBalancerClass") == LOAD_BALANCER_CLASS
    )
    if load_balancer and ingress_on is False:
        problems.append(
            Rejection(
                _field(ingress_key),
                f"turns ingress off, but spec.loadBalancerClass {LOAD_BALANCER_CLASS} asks "
                f"for it; remove one of them",
            )
        )
    ingress = ingress_on is True or load_balancer
    tailscale_targets = sorted(k for k in annotations if k in _EGRESS_ENABLING)
    egress = egress_on is True or (egress_on is None and bool(tailscale_targets))
    if ingress and egress:
        key = egress_key or tailscale_targets[0]
        why = f"{ingress_key} is {annotations.get(ingress_key)!r}" if ingress_key else ""
        why = why or f"spec.loadBalancerClass is {LOAD_BALANCER_CLASS}"
        problems.append(
            Rejection(
                _field(key),
                f"ingress and egress on one Service ({why}): a Service is either exposed "
                f"on the mesh or routed to it; use two Services",
            )
        )
        return None, problems
    if ingress:
        return "ingress", problems
    if egress:
        return "egress", problems
    return None, problems


def _port_number(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 1 <= value <= 65535 else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5:
        number = int(value)
        return number if 1 <= number <= 65535 else None
    return None


def _ports(svc: Mapping[str, Any], direction: Direction) -> tuple[list[PortSpec], list[Rejection]]:
    spec = _mapping(svc.get("spec"))
    raw_ports = spec.get("ports")
    if not isinstance(raw_ports, list) or not raw_ports:
        what = "exposed on the mesh" if direction == "ingress" else "routed to the mesh"
        return [], [
            Rejection("spec.ports", f"the Service has no ports; list the ports to be {what}")
        ]
    headless = spec.get("clusterIP") == "None"
    ports: list[PortSpec] = []
    problems: list[Rejection] = []
    for index, raw in enumerate(raw_ports):
        where = f"spec.ports[{index}]"
        item = _mapping(raw)
        protocol = str(item.get("protocol") or "TCP").upper()
        if protocol == "SCTP":
            problems.append(
                Rejection(
                    f"{where}.protocol",
                    "SCTP is not supported: meshgate forwards TCP and UDP",
                )
            )
            continue
        if protocol not in _SUPPORTED_PROTOCOLS:
            problems.append(
                Rejection(f"{where}.protocol", f"expected TCP or UDP, got {item.get('protocol')!r}")
            )
            continue
        port = _port_number(item.get("port"))
        if port is None:
            problems.append(
                Rejection(f"{where}.port", f"expected a port 1-65535, got {item.get('port')!r}")
            )
            continue
        raw_target = item.get("targetPort")
        numeric_target = _port_number(raw_target) if raw_target is not None else port
        if direction == "egress":
            target = numeric_target or port
        elif headless:
            if numeric_target is None:
                problems.append(
                    Rejection(
                        f"{where}.targetPort",
                        f"a headless Service's name resolves to Pod addresses, so the proxy "
                        f"connects to the targetPort, which must then be a number, not "
                        f"{raw_target!r}",
                    )
                )
                continue
            target = numeric_target
        else:
            target = port
        name = item.get("name")
        ports.append(
            PortSpec(
                name=name if isinstance(name, str) and name else None,
                protocol="UDP" if protocol == "UDP" else "TCP",
                port=port,
                target_port=target,
            )
        )
    return ports, problems


def _misplaced(read: _Read, direction: Direction) -> list[Rejection]:
    """Options for the other direction: they would be silently ignored."""
    problems: list[Rejection] = []
    for name, (key, _) in sorted(read.values.items()):
        spec = _BY_KEY[key]
        if spec.applies in ("both", direction) or name in _SWITCHES:
            continue
        if key.startswith(TAILSCALE_PREFIX):
            continue  # the Tailscale operator reads them for both directions
        problems.append(
            Rejection(
                _field(key),
                f"applies to {spec.applies} Services only, and this Service asks for "
                f"{direction}; remove it",
            )
        )
    return problems


def _get(read: _Read, name: str) -> Any:
    found = read.values.get(name)
    return None if found is None else found[1]


def _check(svc: object) -> tuple[IngressIntent | EgressIntent | None, list[Rejection]]:
    """The intent (None: not ours, or rejected) and every problem found."""
    if not isinstance(svc, Mapping):
        return None, [Rejection("", "not a Service object")]
    metadata = _mapping(svc.get("metadata"))
    annotations = _mapping(metadata.get("annotations"))
    read = _read_annotations(annotations)
    direction, problems = _direction(svc, annotations, read)
    if direction is None:
        # Not ours, or undecidable. Report what is certainly meant for meshgate:
        # bad switch values (whatever their prefix), meshgate.io keys, and
        # meshgate.io options set without a switch; other operators' options
        # on their own Services are not our business.
        ours = [p for p in read.problems if p.field.startswith(_OUR_FIELDS)]
        if problems:  # ingress and egress both, or a switch contradicting the class
            return None, read.switch_problems + problems + ours
        return None, read.switch_problems + ours + _stray(read)
    problems = read.switch_problems + problems + read.problems + _misplaced(read, direction)
    ports, port_problems = _ports(svc, direction)
    problems += port_problems
    spec = _mapping(svc.get("spec"))
    common: dict[str, Any] = {
        "proxy_class": _get(read, "proxy-class"),
        "secret_name": _get(read, "secret-name") or DEFAULT_SECRET_NAME,
        "secret_key": _get(read, "secret-key") or DEFAULT_SECRET_KEY,
    }
    if direction == "ingress":
        dns_name = _get(read, "ingress-dns-name")
        if dns_name is not None and any(p.port == _DNS_PORT for p in ports):
            problems.append(
                Rejection(
                    _field(read.values["ingress-dns-name"][0]),
                    f"the mesh DNS responder answering for {dns_name} listens on port 53 "
                    f"of the mesh address, which this Service also exposes; drop the DNS "
                    f"name or the port",
                )
            )
        if problems:
            return None, problems
        return (
            IngressIntent(
                bind=_get(read, "ingress-bind-ip") or "auto",
                dns_name=dns_name,
                ports=tuple(ports),
                **common,
            ),
            [],
        )
    if spec.get("type") == "ExternalName":
        problems.append(
            Rejection(
                "spec.type",
                "an ExternalName Service has no endpoints to route to the proxy; use "
                "type ClusterIP without a selector (and drop spec.externalName)",
            )
        )
    target_ip = read.values.get("egress-target-ip")
    target_dns = read.values.get("egress-target-dns")
    target: str | None = None
    if target_ip is not None and target_dns is not None:
        problems.append(
            Rejection(
                _field(target_dns[0]),
                f"give one egress target: {target_ip[0]} is also set",
            )
        )
    elif target_ip is not None or target_dns is not None:
        target = str((target_ip or target_dns or ("", ""))[1])
    elif not any(p.field in _TARGET_FIELDS for p in problems):
        egress_key = read.values.get("egress", (PREFIX + "egress", None))[0]
        # Answer in the user's own spelling (netmaker.io/... or meshgate.io/...).
        prefix = NETMAKER_PREFIX if egress_key.startswith(NETMAKER_PREFIX) else PREFIX
        problems.append(
            Rejection(
                _field(egress_key),
                f"egress needs a target: add {prefix}egress-target-ip (the mesh device's "
                f"address) or {prefix}egress-target-dns (its name)",
            )
        )
    if problems or target is None:
        return None, problems
    return EgressIntent(target=target, ports=tuple(ports), **common), []


def _stray(read: _Read) -> list[Rejection]:
    """meshgate.io options on a Service that enables neither direction."""
    return [
        Rejection(
            _field(key),
            f"has no effect: the Service enables neither {PREFIX}ingress nor "
            f'{PREFIX}egress (set one of them to "enabled")',
        )
        for name, (key, _) in sorted(read.values.items())
        if key.startswith(PREFIX) and name not in _SWITCHES
    ]


def parse_service(svc: Mapping[str, Any]) -> IngressIntent | EgressIntent | Rejection | None:
    """What a Service asks of the operator: an intent, the first problem, or None (not ours)."""
    intent, problems = _check(svc)
    if problems:
        return problems[0]
    return intent


def service_rejections(svc: Mapping[str, Any]) -> tuple[Rejection, ...]:
    """Every problem with a Service's request (empty: fine, or not ours)."""
    return tuple(_check(svc)[1])


def markdown_table() -> str:
    """The README's Service annotation table, one row per annotation."""
    lines = [
        "| Annotation | Aliases | Value | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for spec in ANNOTATIONS:
        aliases = ", ".join(f"`{k}`" for k in spec.aliases) or "-"
        lines.append(f"| `{spec.key}` | {aliases} | {spec.value} | {spec.description} |")
    lines.append(
        f"| `{MESH_IP_ANNOTATION}` | - | written by the operator | The proxy's mesh "
        f"address(es), comma-separated. |"
    )
    return "\n".join(lines) + "\n"
