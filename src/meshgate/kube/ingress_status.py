"""Ingress status: where the Ingresses meshgate serves can be reached.

`meshgate run --watch` writes its mesh address into
`status.loadBalancer.ingress` of every Ingress of its class (as
ingress-nginx's `--publish-status-address` does), so external-dns and
cert-manager's HTTP-01 solver find it. Only Ingresses whose status differs
are patched, so a reload that changed nothing writes nothing.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from meshgate.kube.client import INGRESS, KubeClient, KubeError

log = logging.getLogger("meshgate.kube")


def load_balancer(addresses: Iterable[str]) -> list[dict[str, str]]:
    """`status.loadBalancer.ingress` entries: IPs as `ip`, names as `hostname`."""
    out = []
    for address in addresses:
        try:
            out.append({"ip": str(ipaddress.ip_address(address))})
        except ValueError:
            out.append({"hostname": address})
    return out


async def publish(
    client: KubeClient,
    ingresses: Sequence[dict[str, Any]],
    served: Collection[tuple[str, str]],
    addresses: Sequence[str],
) -> int:
    """Patch the status of every `served` Ingress (the translation decides
    which are ours, default class included) whose addresses differ; return
    how many were patched. Errors are logged, not raised (the next reload
    tries again)."""
    wanted = load_balancer(addresses)
    patched = 0
    for ingress in ingresses:
        meta = ingress.get("metadata") or {}
        if (meta.get("namespace") or "default", meta.get("name")) not in served:
            continue  # not ours: another class's
        current = ((ingress.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if current == wanted:
            continue
        patch = {"status": {"loadBalancer": {"ingress": wanted}}}
        try:
            await client.patch(
                INGRESS, meta["name"], patch, meta.get("namespace"), subresource="status"
            )
        except KubeError as exc:
            log.warning(
                "ingress status not written",
                extra={
                    "fields": {
                        "ingress": f"{meta.get('namespace')}/{meta.get('name')}",
                        "error": str(exc),
                    }
                },
            )
            continue
        patched += 1
    return patched
