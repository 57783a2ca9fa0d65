"""A live Kubernetes API server as a configuration source (`meshgate run --watch`).

Informers (kube/watch.py) keep a store of the latest Ingresses,
IngressClasses, Services, EndpointSlices and Secrets. `load()` hands the
stores to the same translation as `--manifests` (config/manifests.py), so a
cluster and a directory of the same objects give the same table. It is
level-triggered: every change rebuilds the whole config from the stores;
`changed` is set after a burst of changes has settled, and the runtime
reloads then, by the same path as SIGHUP.
"""

from __future__ import annotations

import asyncio
from typing import Any

from meshgate import aio
from meshgate.config.manifests import IngressOptions, KubeObject, translate
from meshgate.config.model import Config
from meshgate.errors import ConfigProblem
from meshgate.kube.client import (
    ENDPOINTSLICE,
    INGRESS,
    INGRESSCLASS,
    SECRET,
    SERVICE,
    Kind,
    KubeClient,
)
from meshgate.kube.ingress_status import publish as publish_ingress_status
from meshgate.kube.service_routes import services_config
from meshgate.kube.watch import Informer

KINDS = (INGRESSCLASS, INGRESS, SERVICE, ENDPOINTSLICE, SECRET)
SETTLE = 0.2  # seconds without a change before the burst is applied
MAX_DELAY = 2.0  # ... but never later than this after its first change


def _api_version(kind: Kind) -> str:
    return f"{kind.group}/{kind.version}" if kind.group else kind.version


class KubeWatchSource:
    def __init__(
        self,
        client: KubeClient,
        options: IngressOptions,
        namespace: str | None = None,
        *,
        services_bind: str | None = None,
    ) -> None:
        self.client = client
        self.options = options
        self.namespace = namespace
        # Also serve annotated Services (L4, one listener per port) on this
        # address: the single-gateway alternative to the operator's proxies.
        self.services_bind = services_bind
        self.informers = {
            kind: Informer(
                client,
                kind,
                namespace if kind.namespaced else None,
                on_change=self._changed,
            )
            for kind in KINDS
        }
        self.changed = asyncio.Event()  # set when the stores changed (settled)
        self.problems: tuple[ConfigProblem, ...] = ()
        self.served: frozenset[tuple[str, str]] = frozenset()  # Ingresses of our class
        self.notes: tuple[str, ...] = ()
        self._tasks: list[asyncio.Task[None]] = []
        self._dirty = asyncio.Event()

    @property
    def name(self) -> str:
        where = f"namespace {self.namespace}" if self.namespace else "all namespaces"
        return f"kubernetes ({where})"

    async def start(self) -> None:
        """Start every informer and wait until each has listed once."""
        for kind, informer in self.informers.items():
            self._tasks.append(aio.spawn(informer.run(), name=f"watch {kind.plural}"))
        self._tasks.append(aio.spawn(self._settle(), name="kubernetes changes"))
        await asyncio.gather(*(i.synced.wait() for i in self.informers.values()))

    async def stop(self) -> None:
        await aio.cancel_and_wait(self._tasks)
        self._tasks.clear()
        await self.client.close()

    def _changed(self) -> None:
        self._dirty.set()

    async def _settle(self) -> None:
        """Coalesce a burst of changes into one `changed` signal."""
        loop = asyncio.get_running_loop()
        while True:
            await self._dirty.wait()
            first = loop.time()
            while True:
                self._dirty.clear()
                left = min(SETTLE, first + MAX_DELAY - loop.time())
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(self._dirty.wait(), left)
                except TimeoutError:
                    break
            self.changed.set()

    def objects(self) -> list[KubeObject]:
        out: list[KubeObject] = []
        for kind, informer in self.informers.items():
            for obj in informer.store.items():
                doc: dict[str, Any] = dict(obj)
                # LIST items carry no kind; the translation dispatches on it.
                doc.setdefault("kind", kind.kind)
                doc.setdefault("apiVersion", _api_version(kind))
                out.append(KubeObject(doc, "kubernetes"))
        return out

    def load(self) -> Config:
        translation = translate(self.objects(), self.options)
        self.problems, self.notes = translation.problems, translation.notes
        self.served = translation.served
        config = translation.config
        if self.services_bind is None:
            return config
        taken = [(x.address, x.port, x.protocol == "udp") for x in config.listeners]
        listeners, backends, problems = services_config(
            self.informers[SERVICE].store.items(), self.services_bind, taken
        )
        self.problems = (*self.problems, *problems)
        return config.model_copy(
            update={
                "listeners": (*config.listeners, *listeners),
                "backends": (*config.backends, *backends),
            }
        )

    async def publish(self, addresses: list[str]) -> None:
        """Write where we serve into the status of the Ingresses of our class."""
        ingresses = self.informers[INGRESS].store.items()
        await publish_ingress_status(self.client, ingresses, self.served, addresses)
