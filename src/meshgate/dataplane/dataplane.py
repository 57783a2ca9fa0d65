"""The data plane: the set of running listeners, reconciled against a table.

`apply(table)` diffs listeners by key (address, port, protocol): removed ones
stop accepting at once (freeing their port) and drain in the background; new
ones bind; the rest get the new spec for their next connection. A failed bind
is reported and does not stop the others. Upstream pools are reconciled by
backend name, so their health survives the swap.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from meshgate import aio
from meshgate.dataplane.certs import TlsStore
from meshgate.dataplane.http_listener import HttpListener, HttpsListener
from meshgate.dataplane.listener import Context, Listener, State
from meshgate.dataplane.tcp import TcpListener
from meshgate.dataplane.tls_listener import TlsListener
from meshgate.dataplane.udp import UdpListener
from meshgate.obs.metrics import Metrics
from meshgate.routing.table import ListenerKey, ListenerSpec, RouteTable
from meshgate.upstream.pool import PoolRegistry

log = logging.getLogger("meshgate.dataplane")


@dataclass(frozen=True, slots=True)
class BindFailure:
    listener: str
    key: str
    error: str


def _make(spec: ListenerSpec, ctx: Context) -> Listener:
    if spec.key.protocol == "udp":
        return UdpListener(spec, ctx)
    if spec.key.protocol == "tls":
        return TlsListener(spec, ctx)
    if spec.key.protocol == "http":
        return HttpListener(spec, ctx)
    if spec.key.protocol == "https":
        return HttpsListener(spec, ctx)
    return TcpListener(spec, ctx)


class Dataplane:
    def __init__(self, metrics: Metrics, drain_timeout: float) -> None:
        self.ctx = Context(metrics=metrics, pools=PoolRegistry(), tls=TlsStore())
        self.drain_timeout = drain_timeout
        self.table: RouteTable | None = None
        self.listeners: dict[ListenerKey, Listener] = {}
        # Removed listeners still finishing their connections.
        self._retiring: dict[Listener, asyncio.Task[None]] = {}

    async def apply(self, table: RouteTable) -> list[BindFailure]:
        """Make the running listeners match `table`; return the binds that failed.

        Raises CertError, with nothing changed, when a certificate is unusable.
        """
        self.ctx.tls.prepare(table)
        loop = asyncio.get_running_loop()
        wanted = table.keys
        for key in [k for k in self.listeners if k not in wanted]:
            self._retire(self.listeners.pop(key), loop.time() + self.drain_timeout)
        self.ctx.pools.reconcile(table.pools.values())
        failures: list[BindFailure] = []
        for spec in table.listeners:
            listener = self.listeners.get(spec.key)
            if listener is not None and listener.state is not State.FAILED:
                listener.swap(spec)
                continue
            listener = _make(spec, self.ctx)
            self.listeners[spec.key] = listener
            await listener.start()
            if listener.state is State.FAILED:
                failures.append(BindFailure(spec.name, str(spec.key), listener.error or ""))
        self.table = table
        self.ctx.metrics.table_version.set(table.version)
        return failures

    def _retire(self, listener: Listener, deadline: float) -> None:
        listener.begin_drain()
        task = aio.spawn(listener.drain(deadline), name=f"drain {listener.spec.key}")
        self._retiring[listener] = task
        task.add_done_callback(lambda _: self._retiring.pop(listener, None))

    async def shutdown(self) -> None:
        """Drain every listener (SIGTERM): stop accepting everywhere, wait for
        established connections up to the drain deadline, close the rest."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        for listener in self.listeners.values():
            listener.begin_drain()
        waits = [listener.drain(deadline) for listener in self.listeners.values()]
        await asyncio.gather(*waits, *self._retiring.values())
        self.listeners.clear()
        self.ctx.keepalive.close_all()

    def flush(self) -> None:
        """Bring byte counters and endpoint health in /metrics up to date
        (called before a scrape)."""
        for listener in [*self.listeners.values(), *self._retiring]:
            listener.flush()
        healthy = self.ctx.metrics.endpoint_healthy
        healthy.clear()  # endpoints removed by a reload disappear
        now = asyncio.get_running_loop().time()
        for pool in self.ctx.pools:
            for ep in pool.endpoints:
                healthy.labels(pool.spec.name, str(ep.addr)).set(1 if ep.available(now) else 0)

    def ready(self) -> tuple[bool, list[dict[str, Any]]]:
        """Ready when every listener of the table is serving; else which are not."""
        waiting = [
            {
                "listener": lst.spec.name,
                "key": str(key),
                "state": lst.state.value,
                "error": lst.error,
            }
            for key, lst in self.listeners.items()
            if lst.state is not State.SERVING
        ]
        return (self.table is not None and not waiting), waiting

    def status(self) -> dict[str, Any]:
        return {
            "version": self.table.version if self.table else 0,
            "listeners": [lst.to_json() for lst in [*self.listeners.values(), *self._retiring]],
            "backends": [pool.to_json() for pool in self.ctx.pools],
        }
