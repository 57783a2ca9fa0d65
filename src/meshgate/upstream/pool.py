"""Mutable per-backend state: balancer cursor, endpoint health, in-flight counts.

The routing table holds immutable `PoolSpec`s; the `Pool` objects here are
keyed by backend name and reconciled on every table swap, so health marks
and the round-robin cursor survive a reload (an endpoint kept across the
reload keeps its state; a new one starts healthy).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from meshgate import settings
from meshgate.routing.table import EndpointAddr, PoolSpec
from meshgate.upstream.health import Health, HealthEvent, next_state


class EndpointState:
    __slots__ = ("addr", "ejected_until", "ejections", "failures", "health", "in_flight")

    def __init__(self, addr: EndpointAddr) -> None:
        self.addr = addr
        self.health = Health.HEALTHY
        self.failures = 0  # consecutive failed connects
        self.in_flight = 0
        self.ejected_until = 0.0
        self.ejections = 0  # in a row, without a success between them

    def available(self, now: float) -> bool:
        """Whether new connections may try this endpoint now."""
        if self.health is Health.EJECTED and now >= self.ejected_until:
            self.health = next_state(self.health, HealthEvent.EJECT_EXPIRED)
        return self.health is not Health.EJECTED

    def to_json(self) -> dict[str, Any]:
        return {
            "address": str(self.addr),
            "state": self.health.value,
            "in_flight": self.in_flight,
            "failures": self.failures,
            "ejections": self.ejections,
        }


class Pool:
    """One backend's endpoints and the order in which a connection tries them."""

    def __init__(self, spec: PoolSpec) -> None:
        self.spec = spec
        self.endpoints: list[EndpointState] = [EndpointState(a) for a in spec.endpoints]
        self._cursor = 0
        self._random = random.Random()

    def update(self, spec: PoolSpec) -> None:
        """Take a new spec; endpoints present before keep their state."""
        old = {ep.addr: ep for ep in self.endpoints}
        self.spec = spec
        self.endpoints = [old.get(a) or EndpointState(a) for a in spec.endpoints]

    def candidates(self, now: float) -> list[EndpointState]:
        """Endpoints in the order a new connection should try them.

        The balancer picks the first; the others follow so a refused connect
        fails over. When every endpoint is ejected all are tried anyway
        (fail open, like Envoy's panic threshold): refusing traffic for a
        backend that may have recovered helps nobody.
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
        ep.health = next_state(ep.health, HealthEvent.SUCCESS)

    def record_failure(self, ep: EndpointState, now: float) -> None:
        ep.failures += 1
        limit = ep.failures >= settings.EJECT_AFTER_FAILURES
        before = ep.health
        ep.health = next_state(
            ep.health, HealthEvent.FAILURE_LIMIT if limit else HealthEvent.FAILURE
        )
        if ep.health is Health.EJECTED and before is not Health.EJECTED:
            ep.ejections += 1
            period = settings.EJECT_DURATION * 2 ** min(ep.ejections - 1, 16)
            ep.ejected_until = now + min(period, settings.EJECT_MAX_DURATION)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "balance": self.spec.balance,
            "builtin": self.spec.builtin,
            "endpoints": [ep.to_json() for ep in self.endpoints],
        }


class PoolRegistry:
    """The pools of the table in use, reconciled by backend name."""

    def __init__(self) -> None:
        self._pools: dict[str, Pool] = {}

    def reconcile(self, specs: Iterable[PoolSpec]) -> None:
        wanted = {spec.name: spec for spec in specs}
        for name in list(self._pools):
            if name not in wanted:
                del self._pools[name]
        for name, spec in wanted.items():
            pool = self._pools.get(name)
            if pool is None:
                self._pools[name] = Pool(spec)
            elif pool.spec != spec:
                pool.update(spec)

    def get(self, spec: PoolSpec) -> Pool:
        """The live pool for `spec`; a connection from an older table whose
        backend was removed gets a private pool so it can still connect."""
        pool = self._pools.get(spec.name)
        return pool if pool is not None else Pool(spec)

    def __iter__(self) -> Any:
        return iter(self._pools.values())
