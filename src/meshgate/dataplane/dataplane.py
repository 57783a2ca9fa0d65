"""The data plane: the set of running listeners, reconciled against a table.

`apply(table)` diffs listeners by key (address, port, protocol): removed ones
stop accepting at once (freeing their port) and drain in the background; new
ones bind; the rest get the new spec for their next connection. A failed bind
is reported and does not stop the others. Upstream pools are reconciled by
backend name, so their health survives the swap.

The data plane also owns the overload sampler: one task, every
SAMPLE_INTERVAL, that measures client connections (all TCP-based listeners)
against the global cap and resident memory against the memory limit, sets
the overload stage the listeners read (`ctx.overload`), and pauses or
resumes accepting (`Admission.reconcile`). The global cap and the memory
limit are worked out at each `apply` from the table's `limits`, the
descriptor limit and the cgroup.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass
from typing import Any

from meshgate import aio
from meshgate.dataplane.admission import (
    NO_CAP,
    Figures,
    Thresholds,
    global_cap,
    next_stage,
)
from meshgate.dataplane.certs import TlsStore
from meshgate.dataplane.http_listener import HttpListener, HttpsListener
from meshgate.dataplane.listener import Context, Listener, State
from meshgate.dataplane.overload import Stage
from meshgate.dataplane.stream import StreamListener
from meshgate.dataplane.tcp import TcpListener
from meshgate.dataplane.tls_listener import TlsListener
from meshgate.dataplane.udp import UdpListener
from meshgate.obs.metrics import Metrics
from meshgate.obs.process import cgroup_memory_limit, descriptor_limit, resident_memory
from meshgate.routing.table import GlobalLimitsSpec, ListenerKey, ListenerSpec, RouteTable
from meshgate.upstream.pool import PoolRegistry

log = logging.getLogger("meshgate.dataplane")

# Seconds between overload samples: a surge of connections or memory is met
# within a second, and a sample (one read of /proc/self/statm, a few
# comparisons per listener) costs nothing at this rate.
SAMPLE_INTERVAL = 0.5


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
        self.ctx = Context(metrics=metrics, pools=PoolRegistry(metrics), tls=TlsStore())
        self.drain_timeout = drain_timeout
        self.table: RouteTable | None = None
        self.listeners: dict[ListenerKey, Listener] = {}
        # Removed listeners still finishing their connections.
        self._retiring: dict[Listener, asyncio.Task[None]] = {}
        # Overload: what the stages are measured against, and the last sample.
        self.memory_limit: int | None = None
        self.thresholds = Thresholds()
        self.rss: int | None = None
        self._out_of_fds = False  # said so in the log, until a sample succeeds
        self._sampler: asyncio.Task[None] | None = None

    async def apply(self, table: RouteTable) -> list[BindFailure]:
        """Make the running listeners match `table`; return the binds that failed.

        Raises CertError, with nothing changed, when a certificate is unusable.
        """
        self.ctx.tls.prepare(table)
        loop = asyncio.get_running_loop()
        wanted = table.keys
        for key in [k for k in self.listeners if k not in wanted]:
            self._retire(self.listeners.pop(key), loop.time() + self.drain_timeout)
        self._set_limits(table.limits)
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
        if self._sampler is None:
            self.sample()  # the stage is known before the first interval ends
            self._sampler = aio.spawn(self._sampling(), name="overload sampler")
        return failures

    # -- limits and overload ---------------------------------------------------
    def _set_limits(self, limits: GlobalLimitsSpec) -> None:
        """The global cap and memory limit for `limits` (the descriptor limit
        and the cgroup are read again: either may have changed)."""
        admission = self.ctx.admission
        cap = global_cap(limits, descriptor_limit())
        memory = limits.memory_limit if limits.memory_limit is not None else cgroup_memory_limit()
        thresholds = Thresholds.of(limits)
        changed = (cap, memory, thresholds) != (
            admission.total.cap,
            self.memory_limit,
            self.thresholds,
        )
        admission.total.cap = cap
        self.memory_limit = memory
        self.thresholds = thresholds
        if changed:
            admission.schedule()  # a listener may pause or resume under the new cap
            log.info(
                "admission limits",
                extra={
                    "fields": {
                        "max_connections": None if cap == NO_CAP else cap,
                        "memory_limit": memory,
                        "disable_keepalive": thresholds.disable_keepalive,
                        "reject_requests": thresholds.reject_requests,
                        "stop_accepting": thresholds.stop_accepting,
                    }
                },
            )

    def figures(self) -> Figures:
        total = self.ctx.admission.total
        return Figures(total.open, total.cap, self.rss, self.memory_limit)

    def sample(self) -> None:
        """Measure, set the overload stage, pause or resume listeners."""
        metrics = self.ctx.metrics
        try:
            self.rss = resident_memory()
        except OSError as exc:  # keep the last figure
            self._unmeasured(exc)
        else:
            self._out_of_fds = False
            metrics.resident_memory.set(self.rss)
        figures = self.figures()
        load, reason = figures.load()
        state = self.ctx.overload
        previous = state.stage
        stage = next_stage(previous, load, self.thresholds)
        state.stage = stage
        state.reason = reason if stage else ""
        if stage != previous:
            metrics.overload_stage.set(int(stage))
            log.warning(
                "overload stage changed",
                extra={
                    "fields": {
                        "stage": stage.name.lower(),
                        "previous": previous.name.lower(),
                        "reason": reason,
                        "load": round(load, 3),
                        **self._figures_json(figures),
                    }
                },
            )
        for listener in self.listeners.values():
            if isinstance(listener, StreamListener):
                listener.report_resumed()
            elif (stage >= Stage.STOP_ACCEPTING) != (previous >= Stage.STOP_ACCEPTING):
                # UDP: new flows are dropped at stage 3 (the gauge says so too).
                accepting = 1 if listener.accepting else 0
                metrics.listener_accepting.labels(listener.spec.name).set(accepting)
        # Stage 3 pauses every listener and a lower stage resumes them; this
        # also retries a resume that ran out of descriptors.
        self.ctx.admission.reconcile()

    def _unmeasured(self, exc: OSError) -> None:
        """The statm read failed. Out of descriptors, it is also the one sign
        of exhaustion there is: the accept loop (libuv) drops the queued
        connections it cannot take without telling anyone."""
        if exc.errno not in (errno.EMFILE, errno.ENFILE) or self._out_of_fds:
            return
        self._out_of_fds = True  # one line until the next read succeeds
        log.warning(
            "out of file descriptors",
            extra={
                "fields": {
                    "error": exc.strerror,
                    "descriptor_limit": descriptor_limit(),
                    **self._figures_json(self.figures()),
                }
            },
        )

    async def _sampling(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            try:
                self.sample()
            except Exception:  # the next sample may do better; never end the loop
                log.exception("overload sample failed")

    @staticmethod
    def _figures_json(figures: Figures) -> dict[str, Any]:
        return {
            "connections": figures.connections,
            "max_connections": (
                None if figures.max_connections == NO_CAP else figures.max_connections
            ),
            "rss": figures.rss,
            "memory_limit": figures.memory_limit,
        }

    def _retire(self, listener: Listener, deadline: float) -> None:
        listener.begin_drain()
        task = aio.spawn(listener.drain(deadline), name=f"drain {listener.spec.key}")
        self._retiring[listener] = task
        task.add_done_callback(lambda _: self._retiring.pop(listener, None))

    async def shutdown(self) -> None:
        """Drain every listener (SIGTERM): stop accepting everywhere, wait for
        established connections up to the drain deadline, close the rest."""
        if self._sampler is not None:  # it would resume what the drain pauses
            await aio.cancel_and_wait([self._sampler])
            self._sampler = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        for listener in self.listeners.values():
            listener.begin_drain()
        waits = [listener.drain(deadline) for listener in self.listeners.values()]
        await asyncio.gather(*waits, *self._retiring.values())
        self.listeners.clear()
        self.ctx.keepalive.close_all()
        await self.ctx.pools.close()

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
            "overload": {
                "stage": self.ctx.overload.stage.name.lower(),
                "level": int(self.ctx.overload.stage),
                "reason": self.ctx.overload.reason,
                **self._figures_json(self.figures()),
            },
        }
