"""Keep `default/kubernetes` pointed at meshgate (tenant API-server bridge).

A tenant cluster whose API server sits behind an SNI-routing ingress cannot
reach it through `kubernetes.default.svc`: in-cluster clients connect to an
IP, so no SNI names the tenant. With `meshgate operator
--kubernetes-endpoint-takeover ADDR:PORT` (repeatable, IPv4 and IPv6), the
EndpointSlices of the `default/kubernetes` Service point at meshgate's
re-originating listener instead (a `tls` listener that terminates and
connects on with the right SNI), and are put back whenever something else
(the API server's own endpoint reconciler) rewrites them. Only the leader
writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import Any

from meshgate import aio
from meshgate.kube.client import ENDPOINTSLICE, Conflict, KubeClient, KubeError, NotFound
from meshgate.kube.watch import Informer

log = logging.getLogger("meshgate.kube")

SERVICE_LABEL = "kubernetes.io/service-name"
NAMESPACE = "default"
SERVICE = "kubernetes"


def parse_targets(texts: Sequence[str]) -> list[tuple[str, int]]:
    """ADDR:PORT or [v6]:PORT, checked; raises ValueError naming the bad one."""
    out = []
    for text in texts:
        host, sep, port = text.rpartition(":")
        host = host.strip("[]")
        try:
            address = str(ipaddress.ip_address(host))
        except ValueError:
            raise ValueError(f"not IP:PORT: {text!r}") from None
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"not IP:PORT: {text!r}")
        out.append((address, int(port)))
    return out


def desired_slice(
    current: dict[str, Any], targets: Sequence[tuple[str, int]]
) -> dict[str, Any] | None:
    """`current` with its endpoints and port replaced by the targets of its
    address family; None when it already matches (or no target fits)."""
    family = current.get("addressType", "IPv4")
    version = 6 if family == "IPv6" else 4
    mine = [(a, p) for a, p in targets if ipaddress.ip_address(a).version == version]
    if not mine:
        return None
    port = mine[0][1]
    endpoints = [{"addresses": [a], "conditions": {"ready": True}} for a, _ in mine]
    ports = [{"name": "https", "port": port, "protocol": "TCP"}]
    if current.get("endpoints") == endpoints and current.get("ports") == ports:
        return None
    updated = dict(current)
    updated["endpoints"] = endpoints
    updated["ports"] = ports
    return updated


class EndpointTakeover:
    def __init__(
        self,
        client: KubeClient,
        targets: Sequence[tuple[str, int]],
        leading: Callable[[], bool],
    ) -> None:
        self.client = client
        self.targets = list(targets)
        self.leading = leading
        self.rewrites = 0
        self._changed = asyncio.Event()
        self.informer = Informer(
            client,
            ENDPOINTSLICE,
            NAMESPACE,
            label_selector=f"{SERVICE_LABEL}={SERVICE}",
            on_change=self._changed.set,
        )

    async def run(self, recheck: float = 5.0) -> None:
        """Watch the slices and rewrite them on every change; also every
        `recheck` seconds (leadership may have moved here meanwhile)."""
        task = aio.spawn(self.informer.run(), name="watch default/kubernetes")
        try:
            await self.informer.synced.wait()
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), recheck)
                self._changed.clear()
                try:
                    await self.reconcile()
                except KubeError as exc:
                    log.warning("endpoint takeover failed", extra={"fields": {"error": str(exc)}})
        finally:
            await aio.cancel_and_wait([task])

    async def reconcile(self) -> None:
        """Put every `default/kubernetes` slice back on the targets."""
        if not self.leading():
            return
        for piece in self.informer.store.items():
            wanted = desired_slice(piece, self.targets)
            if wanted is None:
                continue
            name = piece["metadata"]["name"]
            try:
                await self.client.replace(ENDPOINTSLICE, wanted, NAMESPACE)
            except (Conflict, NotFound):
                continue  # changed under us: the next event brings the new one
            self.rewrites += 1
            log.info(
                "kubernetes endpoints taken over",
                extra={"fields": {"slice": name, "targets": [f"{a}:{p}" for a, p in self.targets]}},
            )
