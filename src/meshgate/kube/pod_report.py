"""A proxy Pod tells the operator its mesh address.

Run by the operator, `meshgate run` has POD_NAME and POD_NAMESPACE from the
downward API and a service account allowed to patch its own Pod. After each
apply (and each mesh address change) it writes the address into its Pod's
`meshgate.io/mesh-ip` annotation; the operator reads it from there into the
Service's status. Written only when it changed; a failure is logged and
tried again at the next apply.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from meshgate.kube.client import POD, KubeClient, KubeError

log = logging.getLogger("meshgate.kube")

MESH_IP = "meshgate.io/mesh-ip"


class PodReporter:
    def __init__(self, client: KubeClient, namespace: str, name: str) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self._written: str | None = None

    @classmethod
    def from_environment(
        cls, kubeconfig: str | None, env: Mapping[str, str] = os.environ
    ) -> PodReporter | None:
        """A reporter when running in a Pod that knows its name, else None."""
        name, namespace = env.get("POD_NAME"), env.get("POD_NAMESPACE")
        if not name or not namespace:
            return None
        return cls(KubeClient.from_config(kubeconfig), namespace, name)

    async def publish(self, addresses: Sequence[str]) -> None:
        value = ",".join(addresses)
        if not value or value == self._written:
            return
        patch = {"metadata": {"annotations": {MESH_IP: value}}}
        try:
            await self.client.patch(POD, self.name, patch, self.namespace)
        except KubeError as exc:
            log.warning(
                "mesh address not reported to the pod",
                extra={"fields": {"pod": f"{self.namespace}/{self.name}", "error": str(exc)}},
            )
            return
        self._written = value
        log.info("mesh address reported", extra={"fields": {"pod": self.name, "mesh_ip": value}})

    async def close(self) -> None:
        await self.client.close()
