"""Pool: balancing order, failover order, passive ejection, reconcile on reload."""

from __future__ import annotations

from collections import Counter

from meshgate.routing.table import EndpointAddr, OutlierSpec, PoolSpec, Timeouts
from meshgate.upstream.health import Health
from meshgate.upstream.pool import EndpointState, Pool, PoolRegistry

T = Timeouts(connect=1.0, idle=10.0, half_closed=5.0)
DEFAULTS = OutlierSpec()  # what a backend that says nothing gets


def spec(*ports: int, balance: str = "round_robin", name: str = "b") -> PoolSpec:
    return PoolSpec(name, tuple(EndpointAddr("127.0.0.1", p) for p in ports), balance, T)


def health_of(ep: EndpointState) -> Health:
    return ep.health  # a call, so the type checker does not keep an earlier narrowing


def first_ports(pool: Pool, n: int, now: float = 0.0) -> list[int]:
    return [pool.candidates(now)[0].addr.port for _ in range(n)]


def test_round_robin_rotates_and_lists_the_rest_for_failover() -> None:
    pool = Pool(spec(1, 2, 3))
    assert first_ports(pool, 6) == [1, 2, 3, 1, 2, 3]
    order = [ep.addr.port for ep in pool.candidates(0.0)]
    assert order == [1, 2, 3]
    assert [ep.addr.port for ep in pool.candidates(0.0)] == [2, 3, 1]


def test_random_covers_all_endpoints() -> None:
    pool = Pool(spec(1, 2, 3, balance="random"))
    assert set(first_ports(pool, 200)) == {1, 2, 3}


def test_least_conn_prefers_the_idle_endpoint() -> None:
    pool = Pool(spec(1, 2, balance="least_conn"))
    pool.endpoints[0].in_flight = 5
    assert first_ports(pool, 3) == [2, 2, 2]
    pool.endpoints[1].in_flight = 5
    assert Counter(first_ports(pool, 4)) == {1: 2, 2: 2}


def test_failures_eject_then_probe_after_the_period() -> None:
    pool = Pool(spec(1, 2))
    bad = pool.endpoints[0]
    for i in range(DEFAULTS.consecutive_failures):
        pool.record_failure(bad, now=100.0)
        expected = Health.EJECTED if i + 1 == DEFAULTS.consecutive_failures else Health.SUSPECT
        assert bad.health is expected
    # Ejected: new connections only see the good endpoint.
    assert [ep.addr.port for ep in pool.candidates(101.0)] == [2]
    assert [ep.addr.port for ep in pool.candidates(101.0)] == [2]
    # After the period the endpoint is probed by the next connection.
    later = 100.0 + DEFAULTS.base_ejection
    assert 1 in [ep.addr.port for ep in pool.candidates(later)]
    assert bad.health is Health.PROBING
    pool.record_success(bad)
    assert health_of(bad) is Health.HEALTHY
    assert bad.failures == 0


def test_all_ejected_fails_open() -> None:
    pool = Pool(spec(1))
    for _ in range(DEFAULTS.consecutive_failures):
        pool.record_failure(pool.endpoints[0], now=0.0)
    assert [ep.addr.port for ep in pool.candidates(1.0)] == [1]


def test_reconcile_keeps_state_of_surviving_endpoints() -> None:
    registry = PoolRegistry()
    registry.reconcile([spec(1, 2)])
    pool = registry.get(spec(1, 2))
    pool.record_failure(pool.endpoints[1], now=0.0)
    registry.reconcile([spec(2, 3)])
    same = registry.get(spec(2, 3))
    assert same is pool
    assert [ep.addr.port for ep in same.endpoints] == [2, 3]
    assert same.endpoints[0].health is Health.SUSPECT
    assert same.endpoints[1].health is Health.HEALTHY


def test_reconcile_drops_removed_backends_but_old_connections_still_get_a_pool() -> None:
    registry = PoolRegistry()
    registry.reconcile([spec(1, name="a"), spec(2, name="b")])
    registry.reconcile([spec(2, name="b")])
    assert [p.spec.name for p in registry] == ["b"]
    orphan = registry.get(spec(1, name="a"))
    assert orphan.candidates(0.0)[0].addr.port == 1


def test_an_endpoint_ejected_again_after_its_probe_stays_out_longer() -> None:
    pool = Pool(spec(1, 2))
    bad = pool.endpoints[0]
    now = 0.0
    periods = []
    for _ in range(7):
        while bad.health is not Health.EJECTED:
            pool.record_failure(bad, now=now)
        periods.append(bad.ejected_until - now)
        now = bad.ejected_until
        assert bad.available(now)  # probing: the next connection tries it
    assert periods == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    pool.record_success(bad)
    for _ in range(DEFAULTS.consecutive_failures):
        pool.record_failure(bad, now=now)
    assert bad.ejected_until - now == DEFAULTS.base_ejection  # a success resets it
