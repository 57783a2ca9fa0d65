"""`meshgate operator`: Services annotated for the mesh get proxies, live.

Level-triggered: informers keep stores of Services (all namespaces), the
operator's proxy Deployments, their Pods, proxy-class ConfigMaps and the
EndpointSlices it manages; any change (coalesced) runs `reconcile()`, which
compares what every Service asks for with what exists and makes the
difference, whatever happened in between (a missed event cannot leave
anything behind). Only the leader (kube/leader.py) writes.

For each Service `kube/service_annotations.parse_service` accepts:
- a proxy Deployment in the operator's namespace (`kube/proxy_spec.py`),
  created, replaced when its spec hash changes (annotations, ports, proxy
  class: a rolling update, the old proxy serves until the new one is ready),
  deleted when the Service or its annotation goes;
- for egress, an EndpointSlice in the Service's namespace pointing at the
  ready proxy Pods, so the user's Service object is otherwise left alone;
- status: the mesh IPs the proxy Pods report (their `meshgate.io/mesh-ip`
  annotation) go to the Service's `meshgate.io/mesh-ip` annotation, to
  `status.loadBalancer.ingress` for LoadBalancer Services, and into a
  `MeshProxyReady` condition.
A rejected Service (bad annotation, ingress and egress at once, missing mesh
token Secret) gets a Warning Event explaining why, once per distinct
reason, a `MeshProxyReady=False` condition, and no proxy: nothing crash-loops.
Secrets are not watched (the operator may only get them): a missing one is
looked for every `SECRET_POLL` seconds. A Service that no longer asks for a
proxy loses the condition and the `meshgate.io/mesh-ip` annotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.metrics_core import Metric

from meshgate import aio
from meshgate.kube.client import (
    CONFIGMAP,
    DEPLOYMENT,
    ENDPOINTSLICE,
    EVENT,
    POD,
    SECRET,
    SERVICE,
    Conflict,
    KubeClient,
    KubeError,
    NotFound,
)
from meshgate.kube.leader import LeaderElector
from meshgate.kube.proxy_spec import (
    DNS_RECORDS_CONFIGMAP,
    READY_CONDITION,
    ProxyClass,
    dns_records_configmap,
    egress_deployment,
    egress_endpointslice,
    event,
    ingress_deployment,
    mesh_ip_annotation_patch,
    proxy_class_from_configmap,
    service_status_patch,
    spec_hash,
)
from meshgate.kube.service_annotations import EgressIntent, IngressIntent, Rejection, parse_service
from meshgate.kube.watch import Informer
from meshgate.obs.recent import RecentErrors

log = logging.getLogger("meshgate.kube")

MANAGED = "app.kubernetes.io/managed-by=meshgate-operator"
HASH = "meshgate.io/spec-hash"
SVC_NS = "meshgate.io/service-namespace"
SVC_NAME = "meshgate.io/service-name"
MESH_IP = "meshgate.io/mesh-ip"
DEFAULT_CLASS = "meshgate-proxy-class"
SETTLE = 0.2
SECRET_POLL = 2.0  # seconds between looks for a missing mesh token Secret


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _uid(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def _mesh_ips(pods: list[dict[str, Any]]) -> tuple[str, ...]:
    """The mesh addresses ready proxy Pods report (their own annotation)."""
    return tuple(
        sorted(
            {
                ip.strip()
                for pod in pods
                for ip in (_annotations(pod).get(MESH_IP) or "").split(",")
                if ip.strip()
            }
        )
    )


def _ready(pod: dict[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


class Operator:
    def __init__(
        self, client: KubeClient, namespace: str, identity: str, *, lease_duration: float = 15.0
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.services = Informer(client, SERVICE, None, on_change=self.kick)
        self.deployments = Informer(
            client, DEPLOYMENT, namespace, label_selector=MANAGED, on_change=self.kick
        )
        self.pods = Informer(client, POD, namespace, label_selector=MANAGED, on_change=self.kick)
        self.configmaps = Informer(client, CONFIGMAP, namespace, on_change=self.kick)
        self.slices = Informer(
            client, ENDPOINTSLICE, None, label_selector=MANAGED, on_change=self.kick
        )
        self.informers = [self.services, self.deployments, self.pods, self.configmaps, self.slices]
        self.elector = LeaderElector(
            client,
            namespace,
            identity,
            lease_duration=lease_duration,
            renew_every=lease_duration / 3,
            on_change=lambda _: self.kick(),
        )
        self.reconciles = 0
        self.errors = 0
        self.recent = RecentErrors()  # for the dashboard, collected while run() runs
        self._kicked = asyncio.Event()
        # What was last written per Service, by uid: a Service deleted and
        # created again under its name is a new one, to be told again.
        self._reported: dict[tuple[str, str], tuple[str, str]] = {}  # (uid, rejection)
        self._status: dict[tuple[str, str], tuple[str, tuple[str, ...], bool, str]] = {}
        # The mesh token Secrets Services wait for; nothing watches Secrets
        # (the operator may only get them), so they are polled.
        self._missing_secrets: set[str] = set()
        self.registry = CollectorRegistry()
        self._gauges = {
            name: Gauge(f"meshgate_operator_{name}", text, registry=self.registry)
            for name, text in (
                ("leader", "1 while this replica holds the Lease and writes"),
                ("reconciles", "Reconcile passes run"),
                ("reconcile_errors", "Reconcile passes that failed (retried)"),
                ("proxies", "Proxy Deployments managed"),
                ("rejected_services", "Services rejected (see their Events)"),
                ("watch_relists", "Informer relists (410 Gone or first list)"),
            )
        }

    def kick(self) -> None:
        self._kicked.set()

    async def run(self) -> None:
        with self.recent.attached(logging.getLogger("meshgate")):
            await self._run()

    async def _run(self) -> None:
        tasks = [aio.spawn(i.run(), name=f"watch {i.kind.plural}") for i in self.informers]
        tasks.append(aio.spawn(self.elector.run(), name="leader election"))
        tasks.append(aio.spawn(self._poll_secrets(), name="missing secrets"))
        try:
            await asyncio.gather(*(i.synced.wait() for i in self.informers))
            self.kick()
            while True:
                await self._kicked.wait()
                await asyncio.sleep(SETTLE)  # let a burst of events settle
                self._kicked.clear()
                if not self.elector.leading:
                    continue
                try:
                    await self.reconcile()
                except KubeError as exc:
                    self.errors += 1
                    log.warning("reconcile failed", extra={"fields": {"error": str(exc)}})
                    await asyncio.sleep(1.0)
                    self.kick()  # level-triggered: try the whole thing again
        finally:
            await aio.cancel_and_wait(tasks)

    async def _poll_secrets(self) -> None:
        """Reconcile again once a Secret some Service waits for exists."""
        while True:
            await asyncio.sleep(SECRET_POLL)
            if not self.elector.leading:
                continue
            for name in sorted(self._missing_secrets):
                try:
                    await self.client.get(SECRET, name, self.namespace)
                except KubeError:
                    continue  # still missing (or unreachable): next round
                self.kick()
                break

    # -- the whole reconcile ---------------------------------------------------
    async def reconcile(self) -> None:
        self.reconciles += 1
        desired: dict[str, tuple[dict[str, Any], dict[str, Any], IngressIntent | EgressIntent]] = {}
        ours: set[tuple[str, str]] = set()
        self._missing_secrets = set()
        for svc in self.services.store.items():
            intent = parse_service(svc)
            if intent is None:
                await self._forget(svc)
                continue
            ours.add(_key(svc))
            if isinstance(intent, Rejection):
                await self._reject(svc, f"{intent.field}: {intent.reason}")
                continue
            deployment = await self._deployment_for(svc, intent)
            if deployment is None:
                continue
            desired[deployment["metadata"]["name"]] = (svc, deployment, intent)
        existing = {d["metadata"]["name"]: d for d in self.deployments.store.items()}
        for name, (svc, deployment, intent) in desired.items():
            current = existing.get(name)
            if current is None:
                try:
                    await self.client.create(DEPLOYMENT, deployment, self.namespace)
                except Conflict:  # made already, not yet in the store (a watch lags)
                    await self.client.patch(
                        DEPLOYMENT, name, deployment, self.namespace, patch_type="apply", force=True
                    )
                else:
                    await self._event(svc, "ProxyCreated", f"proxy Deployment {name} created")
            elif _annotations(current).get(HASH) != _annotations(deployment).get(HASH):
                await self.client.patch(
                    DEPLOYMENT, name, deployment, self.namespace, patch_type="apply", force=True
                )
                await self._event(svc, "ProxyUpdated", f"proxy Deployment {name} updated")
            await self._report(svc, name, intent)
        for name, current in existing.items():
            if name not in desired:
                await self._remove(current)
        await self._collect_slices(desired)
        await self._sync_dns_records(desired)
        for key in (self._reported.keys() | self._status.keys()) - ours:
            self._reported.pop(key, None)  # gone, or no longer asks for a proxy
            self._status.pop(key, None)

    async def _sync_dns_records(
        self,
        desired: dict[str, tuple[dict[str, Any], dict[str, Any], IngressIntent | EgressIntent]],
    ) -> None:
        """Every ready ingress proxy's DNS name and mesh IPs, in the ConfigMap
        all ingress proxies mount: each answers for all of them."""
        records: dict[str, list[str]] = {}
        for svc, _, intent in desired.values():
            if isinstance(intent, IngressIntent) and intent.dns_name:
                ips = _mesh_ips([p for p in self._proxy_pods(svc) if _ready(p)])
                if ips:
                    records.setdefault(intent.dns_name, []).extend(ips)
        wanted = dns_records_configmap(records, self.namespace)
        current = self.configmaps.store.get(self.namespace, DNS_RECORDS_CONFIGMAP)
        if current is not None and current.get("data") == wanted["data"]:
            return
        if current is None:
            try:
                await self.client.create(CONFIGMAP, wanted, self.namespace)
                return
            except Conflict:
                pass  # made already, not yet in the store: apply below
        await self.client.patch(
            CONFIGMAP, DNS_RECORDS_CONFIGMAP, wanted, self.namespace, patch_type="apply", force=True
        )

    async def _deployment_for(
        self, svc: dict[str, Any], intent: IngressIntent | EgressIntent
    ) -> dict[str, Any] | None:
        pclass = self._proxy_class(intent.proxy_class)
        if isinstance(pclass, Rejection):
            await self._reject(svc, f"{pclass.field}: {pclass.reason}")
            return None
        try:
            await self.client.get(SECRET, intent.secret_name, self.namespace)
        except NotFound:
            self._missing_secrets.add(intent.secret_name)
            await self._reject(
                svc,
                f"the mesh token Secret {self.namespace}/{intent.secret_name} does not exist "
                f"(key {intent.secret_key!r}); create it, or name another with "
                "meshgate.io/secret-name",
            )
            return None
        if isinstance(intent, IngressIntent):
            deployment = ingress_deployment(svc, intent, pclass, self.namespace)
        else:
            deployment = egress_deployment(svc, intent, pclass, self.namespace)
        annotations = deployment["metadata"].setdefault("annotations", {})
        annotations.setdefault(HASH, spec_hash(deployment))
        return deployment

    def _proxy_class(self, name: str | None) -> ProxyClass | Rejection:
        cm = self.configmaps.store.get(self.namespace, name or DEFAULT_CLASS)
        if cm is None and name is not None:
            return Rejection(
                "metadata.annotations[meshgate.io/proxy-class]",
                f"no proxy class ConfigMap {self.namespace}/{name}",
            )
        return proxy_class_from_configmap(cm)

    # -- status ----------------------------------------------------------------
    def _proxy_pods(self, svc: dict[str, Any]) -> list[dict[str, Any]]:
        ns, name = _key(svc)
        return [
            pod
            for pod in self.pods.store.items()
            if _labels(pod).get(SVC_NS) == ns and _labels(pod).get(SVC_NAME) == name
        ]

    async def _report(
        self, svc: dict[str, Any], deployment: str, intent: IngressIntent | EgressIntent
    ) -> None:
        pods = [p for p in self._proxy_pods(svc) if _ready(p)]
        ips = _mesh_ips(pods)
        ready = bool(pods) and (bool(ips) or isinstance(intent, EgressIntent))
        message = (
            f"proxy {deployment} ready" + (f" at {', '.join(ips)}" if ips else "")
            if ready
            else f"waiting for proxy {deployment}"
        )
        key = _key(svc)
        ns, name = key
        self._reported.pop(key, None)
        state = (_uid(svc), ips, ready, message)
        if self._status.get(key) != state:
            await self.client.patch(
                SERVICE, name, service_status_patch(svc, list(ips), ready, message), ns,
                subresource="status",
            )  # fmt: skip
            self._status[key] = state
        if ips and _annotations(svc).get(MESH_IP) != ",".join(ips):
            await self.client.patch(SERVICE, name, mesh_ip_annotation_patch(list(ips)), ns)

    async def _reject(self, svc: dict[str, Any], reason: str) -> None:
        key = _key(svc)
        if self._reported.get(key) == (_uid(svc), reason):
            return  # explained already; do not flood Events
        self._status.pop(key, None)
        ns, name = key
        log.warning(
            "service rejected", extra={"fields": {"service": f"{ns}/{name}", "reason": reason}}
        )
        await self._event(svc, "MeshProxyRejected", reason, "Warning")
        await self.client.patch(
            SERVICE, name, service_status_patch(svc, [], False, reason), ns, subresource="status"
        )
        self._reported[key] = (_uid(svc), reason)  # once the status says so

    async def _forget(self, svc: dict[str, Any]) -> None:
        """A Service that no longer asks for a proxy loses what was written on it
        (its proxy is gone: it must not still read ready at a mesh address)."""
        ns, name = _key(svc)
        conditions = (svc.get("status") or {}).get("conditions") or []
        if any(c.get("type") == READY_CONDITION for c in conditions):
            kept = [c for c in conditions if c.get("type") != READY_CONDITION]
            await self.client.patch(
                SERVICE, name, {"status": {"conditions": kept}}, ns, subresource="status"
            )
        if MESH_IP in _annotations(svc):
            await self.client.patch(SERVICE, name, mesh_ip_annotation_patch([]), ns)

    async def _event(
        self, svc: dict[str, Any], reason: str, message: str, type_: str = "Normal"
    ) -> None:
        ns = _key(svc)[0]
        body = event(svc, reason, message, type_, _now())
        try:
            try:
                await self.client.create(EVENT, body, ns)
            except Conflict:  # the same Event again: count it (patch is all RBAC allows)
                name = body["metadata"]["name"]
                seen = await self.client.patch(
                    EVENT, name, {"lastTimestamp": body["lastTimestamp"]}, ns
                )
                count = int(seen.get("count") or 1) + 1
                await self.client.patch(EVENT, name, {"count": count}, ns)
        except KubeError as exc:  # an Event is worth a try, not a failed reconcile
            log.info("event not recorded", extra={"fields": {"error": str(exc)}})

    # -- cleanup and egress slices ------------------------------------------------
    async def _remove(self, deployment: dict[str, Any]) -> None:
        name = deployment["metadata"]["name"]
        labels = _labels(deployment)
        with contextlib.suppress(NotFound):
            await self.client.delete(DEPLOYMENT, name, self.namespace)
        log.info(
            "proxy removed",
            extra={
                "fields": {
                    "deployment": name,
                    "service": f"{labels.get(SVC_NS)}/{labels.get(SVC_NAME)}",
                }
            },
        )

    async def _collect_slices(
        self,
        desired: dict[str, tuple[dict[str, Any], dict[str, Any], IngressIntent | EgressIntent]],
    ) -> None:
        wanted: dict[tuple[str, str], dict[str, Any]] = {}
        for svc, _, intent in desired.values():
            if not isinstance(intent, EgressIntent):
                continue
            ips = [
                str((pod.get("status") or {}).get("podIP"))
                for pod in self._proxy_pods(svc)
                if _ready(pod) and (pod.get("status") or {}).get("podIP")
            ]
            piece = egress_endpointslice(svc, ips, intent)
            wanted[_key(piece)] = piece
        existing = {_key(s): s for s in self.slices.store.items()}
        for key, piece in wanted.items():
            current = existing.get(key)
            if current is None:
                try:
                    await self.client.create(ENDPOINTSLICE, piece, key[0])
                except Conflict:  # made already, not yet in the store
                    await self.client.patch(
                        ENDPOINTSLICE, key[1], piece, key[0], patch_type="apply", force=True
                    )
            elif current.get("endpoints") != piece.get("endpoints") or current.get(
                "ports"
            ) != piece.get("ports"):
                await self.client.patch(
                    ENDPOINTSLICE, key[1], piece, key[0], patch_type="apply", force=True
                )
        for key in existing.keys() - wanted.keys():
            with contextlib.suppress(NotFound):
                await self.client.delete(ENDPOINTSLICE, key[1], key[0])

    # -- admin (AdminState): probes, /status and /metrics ---------------------
    def ready(self) -> tuple[bool, dict[str, Any]]:
        waiting = [i.kind.plural for i in self.informers if not i.synced.is_set()]
        if waiting:
            return False, {"ready": False, "reason": "informers not synced", "waiting": waiting}
        return True, {"ready": True, "leader": self.elector.leading}

    def status(self) -> dict[str, Any]:
        return {
            "operator": {
                "namespace": self.namespace,
                "identity": self.elector.identity,
                "leader": self.elector.leading,
                "lease_holder": self.elector.holder,
                "reconciles": self.reconciles,
                "errors": self.errors,
            },
            "proxies": [
                {
                    "deployment": d["metadata"]["name"],
                    "service": f"{_labels(d).get(SVC_NS)}/{_labels(d).get(SVC_NAME)}",
                    "ready_replicas": (d.get("status") or {}).get("readyReplicas", 0),
                }
                for d in self.deployments.store.items()
            ],
            "rejected": {f"{ns}/{name}": why for (ns, name), (_, why) in self._reported.items()},
        }

    def config(self) -> dict[str, Any]:
        return {}

    def metrics(self) -> bytes:
        self._set_gauges()
        return bytes(generate_latest(self.registry))

    def metric_families(self) -> Iterable[Metric]:
        self._set_gauges()
        return list(self.registry.collect())

    def _set_gauges(self) -> None:
        values = {
            "leader": 1 if self.elector.leading else 0,
            "reconciles": self.reconciles,
            "reconcile_errors": self.errors,
            "proxies": len(self.deployments.store.items()),
            "rejected_services": len(self._reported),
            "watch_relists": sum(getattr(i, "relists", 0) for i in self.informers),
        }
        for name, value in values.items():
            self._gauges[name].set(value)

    def recent_errors(self) -> dict[str, Any]:
        return self.recent.to_json()
