"""Leader election with a coordination.k8s.io/v1 Lease, as client-go does it.

Several operator replicas run; only the holder of the Lease writes. The
holder renews `spec.renewTime` every `renew_every` seconds; another replica
takes the Lease over when it has not been renewed for `lease_duration`
seconds (by its own clock: it measures how long the Lease's resourceVersion
has stayed the same, so clock skew between nodes does not matter). Every
write is an update with the resourceVersion read before it, so two
candidates racing for the Lease cannot both win: the loser gets a Conflict.

A leader that fails to renew for `lease_duration` steps down at once (its
writes could otherwise overlap with the next leader's).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from typing import Any

from meshgate.kube.client import LEASE, Conflict, KubeClient, KubeError, NotFound

log = logging.getLogger("meshgate.kube")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        identity: str,
        *,
        name: str = "meshgate-operator",
        lease_duration: float = 15.0,
        renew_every: float = 5.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.identity = identity
        self.name = name
        self.lease_duration = lease_duration
        self.renew_every = renew_every
        self.on_change = on_change
        self.leading = False
        self.holder: str | None = None
        self._observed: tuple[str, float] | None = None  # (resourceVersion, when first seen)
        self._renewed = 0.0

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.info(
                "leadership " + ("acquired" if leading else "lost"),
                extra={"fields": {"identity": self.identity, "lease": self.name}},
            )
            if self.on_change is not None:
                self.on_change(leading)

    async def run(self) -> None:
        """Try to acquire, then renew, forever (until cancelled)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                # A leader's deadline holds even while a request hangs (a
                # black-holed connection takes the request timeout to fail).
                deadline = self._renewed + self.lease_duration if self.leading else None
                try:
                    async with asyncio.timeout_at(deadline):
                        await self.try_once()
                except (KubeError, TimeoutError) as exc:
                    log.warning(
                        "lease update failed",
                        extra={"fields": {"lease": self.name, "error": str(exc) or "timeout"}},
                    )
                if self.leading and loop.time() - self._renewed >= self.lease_duration:
                    self._set(False)  # could not renew in time: someone else may lead now
                pause = self.renew_every
                if self.leading:  # wake up for the deadline, should this renewal have failed
                    pause = min(pause, max(0.0, self._renewed + self.lease_duration - loop.time()))
                await asyncio.sleep(pause)
        finally:
            if self.leading:
                await self._release()

    async def try_once(self) -> bool:
        """One round: acquire or renew the Lease; returns whether we lead."""
        loop = asyncio.get_running_loop()
        try:
            lease = await self.client.get(LEASE, self.name, self.namespace)
        except NotFound:
            try:
                await self.client.create(LEASE, self._lease(None, 0), self.namespace)
            except Conflict:
                return self.leading
            self._renewed = loop.time()
            self.holder = self.identity
            self._set(True)
            return True
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        self.holder = holder
        version = str(lease.get("metadata", {}).get("resourceVersion", ""))
        now = loop.time()
        if self._observed is None or self._observed[0] != version:
            self._observed = (version, now)
        expired = now - self._observed[1] >= float(
            spec.get("leaseDurationSeconds") or self.lease_duration
        )
        if holder not in (None, "", self.identity) and not expired:
            self._set(False)
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder != self.identity:
            transitions += 1
        try:
            updated = await self.client.replace(
                LEASE, self._lease(lease, transitions), self.namespace
            )
        except Conflict:
            return self.leading  # someone else wrote first; look again next round
        self._observed = (str(updated.get("metadata", {}).get("resourceVersion", "")), now)
        self._renewed = now
        self.holder = self.identity
        self._set(True)
        return True

    def _lease(self, current: dict[str, Any] | None, transitions: int) -> dict[str, Any]:
        now = _now()
        spec = dict((current or {}).get("spec") or {})
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=int(self.lease_duration),
            renewTime=now,
            leaseTransitions=transitions,
        )
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if current is not None:
            metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec,
        }

    async def _release(self) -> None:
        """Give the Lease up on a clean stop, so the next leader need not wait."""
        try:
            lease = await self.client.get(LEASE, self.name, self.namespace)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                released = dict(lease)
                released["spec"] = {**lease["spec"], "holderIdentity": None}
                await self.client.replace(LEASE, released, self.namespace)
        except (KubeError, OSError):
            pass  # the Lease runs out by itself
        self._set(False)
