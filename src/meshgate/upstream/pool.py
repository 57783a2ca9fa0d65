"""Mutable per-backend state: balancer cursor, endpoint health, in-flight counts.

The routing table holds immutable `PoolSpec`s; the `Pool` objects here are
keyed by backend name and reconciled on every table swap, so health marks
and the round-robin cursor survive a reload (an endpoint kept across the
reload keeps its state; a new one starts healthy, its active check pending).

Outlier detection follows the backend's `OutlierSpec`: `consecutive_failures`
in a row eject an endpoint for `base_ejection`, doubled for each ejection in
a row up to `max_ejection`, and never more than `max_ejected_percent` of the
pool at once. Active health checks (upstream/active_check.py) run one task
per pool that has a `health_check`, started and stopped by `reconcile`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable, Iterator
from typing import Any

from meshgate import aio
from meshgate.obs.metrics import Metrics
from meshgate.routing.table import EndpointAddr, PoolSpec
from meshgate.upstream.health import Check, CheckState, Health, HealthEvent, next_state

log = logging.getLogger("meshgate.upstream")

# The doubling stops growing here (2**16 base periods is far past any
# max_ejection); keeps the float finite for an endpoint down for weeks.
_MAX_DOUBLINGS = 16


class EndpointState:
    __slots__ = (
        "addr",
        "backend",
        "capped",
        "check",
        "ejected_until",
        "ejections",
        "failures",
        "health",
        "in_flight",
        "period",
    )

    def __init__(
        self, addr: EndpointAddr, backend: str = "", check: CheckState | None = None
    ) -> None:
        self.addr = addr
        self.backend = backend  # for log lines
        self.health = Health.HEALTHY
        self.failures = 0  # consecutive failed connects
        self.in_flight = 0
        self.ejected_until = 0.0
        self.period = 0.0  # of the latest ejection
        self.ejections = 0  # in a row, without a success between them
        self.capped = False  # an ejection was refused (the pool's cap) and logged
        self.check = check  # None: the backend has no active health check

    def available(self, now: float) -> bool:
        """Whether new connections may try this endpoint now: not ejected,
        and not failing its active health check."""
        if self.health is Health.EJECTED:
            if now < self.ejected_until:
                return False
            self.health = next_state(self.health, HealthEvent.EJECT_EXPIRED)
            log.info(
                "endpoint ejection over",
                extra={"fields": self.log_fields(period=self.period)},
            )
        check = self.check
        return check is None or check.status is not Check.UNHEALTHY

    def log_fields(self, **more: object) -> dict[str, object]:
        return {"backend": self.backend, "endpoint": str(self.addr), **more}

    def to_json(self, now: float) -> dict[str, Any]:
        check = self.check
        ejected = self.health is Health.EJECTED
        return {
            "address": str(self.addr),
            "state": self.health.value,
            "in_flight": self.in_flight,
            "failures": self.failures,
            "ejections": self.ejections,
            # Seconds until the ejected endpoint is probed again.
            "ejected_for": round(max(0.0, self.ejected_until - now), 1) if ejected else None,
            "check": check.status.value if check is not None else None,
            "check_reason": check.reason if check is not None else None,
            "check_passes": check.passes if check is not None else 0,
            "check_fails": check.fails if check is not None else 0,
        }


class Pool:
    """One backend's endpoints and the order in which a connection tries them."""

    def __init__(self, spec: PoolSpec, metrics: Metrics | None = None) -> None:
        self.spec = spec
        self.metrics = metrics  # None: ejections are not counted (tests)
        self.endpoints: list[EndpointState] = [self._new(a) for a in spec.endpoints]
        self._cursor = 0
        self._random = random.Random()

    def _new(self, addr: EndpointAddr) -> EndpointState:
        check = CheckState() if self.spec.health_check is not None else None
        return EndpointState(addr, self.spec.name, check)

    def update(self, spec: PoolSpec) -> None:
        """Take a new spec; endpoints present before keep their state (their
        active-check record too, unless the check was removed)."""
        old = {ep.addr: ep for ep in self.endpoints}
        self.spec = spec
        checked = spec.health_check is not None
        endpoints = []
        for addr in spec.endpoints:
            ep = old.get(addr)
            if ep is None:
                ep = self._new(addr)
            elif not checked:
                ep.check = None
            elif ep.check is None:
                ep.check = CheckState()
            endpoints.append(ep)
        self.endpoints = endpoints

    def candidates(self, now: float) -> list[EndpointState]:
        """Endpoints in the order a new connection should try them.

        The balancer picks the first; the others follow so a refused connect
        fails over. Ejected and actively unhealthy endpoints are left out,
        unless that leaves none: then all are tried anyway (fail open, like
        Envoy's panic threshold): refusing traffic for a backend that may
        have recovered helps nobody.
        """
        eps = self.endpoints
        n = len(eps)
        if n == 0:
            return []
        if n == 1:
            # One endpoint: it is tried whatever its health (fail open); the
            # call still moves an expired ejection on to probing.
            eps[0].available(now)
            return [eps[0]]
        if self.spec.balance == "random":
            start = self._random.randrange(n)
        elif self.spec.balance == "least_request" and n > 1:
            # Power of two choices: two distinct random endpoints, the less
            # busy wins (Envoy's LEAST_REQUEST); no herd on one idle endpoint.
            a, b = self._random.sample(range(n), 2)
            start = a if eps[a].in_flight <= eps[b].in_flight else b
        elif self.spec.balance == "least_conn":
            start = min(range(n), key=lambda i: (eps[i].in_flight, (i - self._cursor) % n))
            self._cursor = (start + 1) % n
        else:
            start = self._cursor % n
            self._cursor = (start + 1) % n
        ordered = eps[start:] + eps[:start]
        usable = [ep for ep in ordered if ep.available(now)]
        return usable or ordered

    def record_success(self, ep: EndpointState) -> None:
        if ep.health is Health.HEALTHY and not ep.failures and not ep.ejections:
            return  # nothing to reset (the common case, once per connection)
        ep.failures = 0
        ep.ejections = 0
        ep.capped = False
        ep.health = next_state(ep.health, HealthEvent.SUCCESS)

    def record_failure(self, ep: EndpointState, now: float) -> None:
        ep.failures += 1
        outlier = self.spec.outlier
        limit = ep.failures >= outlier.consecutive_failures
        before = ep.health
        after = next_state(before, HealthEvent.FAILURE_LIMIT if limit else HealthEvent.FAILURE)
        if after is Health.EJECTED and before is not Health.EJECTED:
            if self.may_eject(now):
                self._eject(ep, now)
                return
            after = next_state(before, HealthEvent.EJECT_REFUSED)
            self._refused(ep, now)
        ep.health = after

    def ejected(self, now: float) -> int:
        """How many endpoints are ejected now (expired ejections not counted)."""
        return sum(
            1 for e in self.endpoints if e.health is Health.EJECTED and now < e.ejected_until
        )

    def ejection_cap(self) -> int:
        """How many endpoints may be ejected at once: `max_ejected_percent` of
        the pool, rounded down, but at least one when the percent is not 0
        (as Envoy does): in a pool of one or two a dead endpoint still goes."""
        percent = self.spec.outlier.max_ejected_percent
        if percent <= 0:
            return 0
        return max(1, len(self.endpoints) * percent // 100)

    def may_eject(self, now: float) -> bool:
        return self.ejected(now) < self.ejection_cap()

    def _eject(self, ep: EndpointState, now: float) -> None:
        outlier = self.spec.outlier
        ep.health = Health.EJECTED
        ep.ejections += 1
        ep.capped = False
        doubled = outlier.base_ejection * 2 ** min(ep.ejections - 1, _MAX_DOUBLINGS)
        ep.period = min(doubled, outlier.max_ejection)
        ep.ejected_until = now + ep.period
        if self.metrics is not None:
            self.metrics.endpoint_ejections.labels(self.spec.name, str(ep.addr)).inc()
        log.warning(
            "endpoint ejected",
            extra={
                "fields": ep.log_fields(
                    period=ep.period, failures=ep.failures, ejections_in_a_row=ep.ejections
                )
            },
        )

    def _refused(self, ep: EndpointState, now: float) -> None:
        """An ejection the cap does not allow: the endpoint stays in the pool;
        said once until it is ejected or succeeds, not at every failure."""
        if ep.capped:
            return
        ep.capped = True
        log.warning(
            "endpoint ejection refused: cap reached",
            extra={
                "fields": ep.log_fields(
                    failures=ep.failures,
                    ejected=self.ejected(now),
                    endpoints=len(self.endpoints),
                    max_ejected_percent=self.spec.outlier.max_ejected_percent,
                )
            },
        )

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        if now is None:
            now = _loop_time()
        for ep in self.endpoints:
            ep.available(now)  # an expired ejection shows as probing, not ejected
        check = self.spec.health_check
        return {
            "name": self.spec.name,
            "balance": self.spec.balance,
            "builtin": self.spec.builtin,
            "health_check": check.type if check is not None else None,
            "endpoints": [ep.to_json(now) for ep in self.endpoints],
        }


def _loop_time() -> float:
    """The clock endpoint deadlines are on: the running loop's (outside a
    loop, the monotonic clock asyncio's own loop uses)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class PoolRegistry:
    """The pools of the table in use, reconciled by backend name, and the
    active health-check task of each pool that has a check."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._pools: dict[str, Pool] = {}
        self._metrics = metrics
        self._checks: dict[str, asyncio.Task[None]] = {}
        # Cancelled check tasks not finished yet (close() waits for them too).
        self._stopping: set[asyncio.Task[None]] = set()

    def reconcile(self, specs: Iterable[PoolSpec]) -> None:
        wanted = {spec.name: spec for spec in specs}
        for name in list(self._pools):
            if name not in wanted:
                del self._pools[name]
                self._stop_checks(name)
        for name, spec in wanted.items():
            pool = self._pools.get(name)
            if pool is None:
                pool = self._pools[name] = Pool(spec, self._metrics)
            elif pool.spec != spec:
                pool.update(spec)
            else:
                continue
            # A changed pool gets a fresh task over its new endpoint list and
            # settings; the endpoints' records carry over, so no verdict is lost.
            self._stop_checks(name)
            if spec.health_check is not None and spec.endpoints and spec.builtin is None:
                self._checks[name] = self._start_checks(pool)

    def _start_checks(self, pool: Pool) -> asyncio.Task[None]:
        # Imported here: active_check uses upstream.connect, which imports this module.
        from meshgate.upstream.active_check import PoolChecks

        return aio.spawn(PoolChecks(pool, self._metrics).run(), name=f"checks {pool.spec.name}")

    def _stop_checks(self, name: str) -> None:
        task = self._checks.pop(name, None)
        if task is None:
            return
        task.cancel()
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def close(self) -> None:
        """Stop every health check and wait until each task has ended (shutdown)."""
        tasks = [*self._checks.values(), *self._stopping]
        self._checks.clear()
        self._stopping.clear()
        await aio.cancel_and_wait(tasks)

    def get(self, spec: PoolSpec) -> Pool:
        """The live pool for `spec`; a connection from an older table whose
        backend was removed gets a private pool so it can still connect."""
        pool = self._pools.get(spec.name)
        return pool if pool is not None else Pool(spec, self._metrics)

    def __iter__(self) -> Iterator[Pool]:
        return iter(self._pools.values())
