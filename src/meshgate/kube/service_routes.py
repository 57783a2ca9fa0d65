"""Annotated Services served by one `meshgate run --watch --watch-services` (pure).

The single-gateway alternative to the operator's proxy per Service: every
Service whose annotations ask for mesh ingress (`kube/service_annotations`)
becomes one listener per port on the ingress bind address (TCP or UDP as the
port says), forwarding to the Service's cluster DNS name, with its
`ingress-dns-name` answered by the mesh DNS responder. Two Services wanting
the same port: the older keeps it and the other is reported, as Ingress
conflicts are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import ValidationError

from meshgate.config.model import Backend, Endpoint, Listener
from meshgate.errors import ConfigProblem
from meshgate.kube.service_annotations import IngressIntent, Rejection, parse_service

SOURCE = "kubernetes"


def _age(svc: dict[str, Any]) -> tuple[bool, str, str, str]:
    meta = svc.get("metadata") or {}
    stamp = str(meta.get("creationTimestamp") or "")
    return (not stamp, stamp, str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def services_config(
    services: Iterable[dict[str, Any]],
    bind: str,
    taken: Sequence[tuple[str, int, bool]] = (),
    *,
    cluster_domain: str = "cluster.local",
) -> tuple[list[Listener], list[Backend], list[ConfigProblem]]:
    """Listeners and backends for the annotated Services; `taken` are the
    (address, port, udp) sockets other listeners hold already."""
    used: dict[tuple[str, int, bool], str] = dict.fromkeys(taken, "another listener")
    listeners: list[Listener] = []
    backends: list[Backend] = []
    problems: list[ConfigProblem] = []
    for svc in sorted(services, key=_age):
        meta = svc.get("metadata") or {}
        ns, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
        label = f"Service {ns}/{name}"
        intent = parse_service(svc)
        if intent is None or not isinstance(intent, IngressIntent | Rejection):
            continue  # not for mesh ingress (egress needs the operator's EndpointSlice)
        if isinstance(intent, Rejection):
            problems.append(ConfigProblem(SOURCE, label, intent.field, intent.reason))
            continue
        address = bind if intent.bind == "auto" else intent.bind
        host = f"{name}.{ns}.svc.{cluster_domain}"
        for port in intent.ports:
            udp = port.protocol == "UDP"
            key = (address, port.port, udp)
            holder = used.get(key)
            if holder is not None:
                problems.append(
                    ConfigProblem(
                        SOURCE,
                        label,
                        "spec.ports",
                        f"{port.protocol} port {port.port} is served for {holder} already",
                    )
                )
                continue
            proto: Literal["tcp", "udp"] = "udp" if udp else "tcp"
            ident = f"svc.{ns}.{name}.{proto}.{port.port}"
            try:
                backend = Backend(
                    name=ident, endpoints=(Endpoint(host=host, port=port.target_port),)
                )
                listener = Listener(
                    name=ident,
                    address=address,
                    port=port.port,
                    protocol=proto,
                    backend=ident,
                    dns_name=intent.dns_name,
                )
            except ValidationError as exc:
                reason = "; ".join(str(e["msg"]) for e in exc.errors())
                problems.append(ConfigProblem(SOURCE, label, "spec.ports", reason))
                continue
            used[key] = label
            listeners.append(listener)
            backends.append(backend)
    return listeners, backends, problems
