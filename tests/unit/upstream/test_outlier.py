"""Outlier detection as a backend configures it: thresholds and periods from
the spec, the cap on how much of a pool may be ejected, and what it logs and
counts."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from meshgate.obs.metrics import Metrics
from meshgate.routing.table import EndpointAddr, HealthCheckSpec, OutlierSpec, PoolSpec, Timeouts
from meshgate.upstream.health import Check, Health
from meshgate.upstream.pool import EndpointState, Pool, PoolRegistry

T = Timeouts(connect=1.0, idle=10.0, half_closed=5.0)
DEFAULTS = OutlierSpec()  # 3 failures, 10 s doubling to 300 s, at most 50 %
CHECK = HealthCheckSpec(
    "tcp", interval=5.0, timeout=1.0, healthy_threshold=2, unhealthy_threshold=2
)


def spec(
    n: int, outlier: OutlierSpec = DEFAULTS, health_check: HealthCheckSpec | None = None
) -> PoolSpec:
    endpoints = tuple(EndpointAddr("127.0.0.1", 1000 + i) for i in range(n))
    return PoolSpec("app", endpoints, "round_robin", T, outlier=outlier, health_check=health_check)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured data of a log line (`extra={"fields": ...}`)."""
    data: dict[str, Any] = record.__dict__["fields"]
    return data


def health_of(ep: EndpointState) -> Health:
    return ep.health  # a call, so the type checker does not keep an earlier narrowing


def fail(pool: Pool, ep: EndpointState, times: int, now: float = 0.0) -> None:
    for _ in range(times):
        pool.record_failure(ep, now)


def ports(eps: list[EndpointState]) -> set[int]:
    return {ep.addr.port for ep in eps}


@pytest.mark.parametrize(("n", "cap"), [(1, 1), (2, 1), (4, 2), (10, 5)])
def test_at_most_half_the_pool_is_ejected_but_always_one(n: int, cap: int) -> None:
    pool = Pool(spec(n))
    for ep in pool.endpoints:
        fail(pool, ep, 3)
    states = [ep.health for ep in pool.endpoints]
    assert states.count(Health.EJECTED) == cap
    # The rest reached the threshold too, but stay in rotation as suspect.
    assert states.count(Health.SUSPECT) == n - cap
    if n > 1:
        assert ports(pool.candidates(1.0)) == {
            ep.addr.port for ep in pool.endpoints if ep.health is Health.SUSPECT
        }
    else:
        assert pool.candidates(1.0) == pool.endpoints  # one endpoint: fail open


def test_a_refused_ejection_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    pool = Pool(spec(2))
    first, second = pool.endpoints
    fail(pool, first, 3)
    with caplog.at_level(logging.WARNING, logger="meshgate.upstream"):
        fail(pool, second, 10)
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1
    assert fields(refused[0])["endpoint"] == "127.0.0.1:1001"
    assert second.health is Health.SUSPECT


def test_a_capped_endpoint_is_ejected_once_room_is_made() -> None:
    pool = Pool(spec(2))
    first, second = pool.endpoints
    fail(pool, first, 3, now=0.0)
    fail(pool, second, 3, now=0.0)
    assert second.health is Health.SUSPECT
    # The first ejection ends (10 s): the next failure of the second ejects it.
    assert first.available(10.0)
    pool.record_failure(second, 10.0)
    assert health_of(second) is Health.EJECTED


def test_a_failed_probe_when_the_cap_is_reached_stays_in_rotation() -> None:
    pool = Pool(spec(2))
    first, second = pool.endpoints
    fail(pool, first, 3, now=0.0)
    assert first.available(10.0)  # probing
    fail(pool, second, 3, now=10.0)  # takes the only ejection slot
    pool.record_failure(first, 11.0)  # the probe fails
    assert first.health is Health.SUSPECT
    assert ports(pool.candidates(12.0)) == {1000}


def test_zero_percent_never_ejects() -> None:
    pool = Pool(spec(3, OutlierSpec(max_ejected_percent=0)))
    fail(pool, pool.endpoints[0], 20)
    assert pool.endpoints[0].health is Health.SUSPECT


def test_everything_ejected_fails_open() -> None:
    pool = Pool(spec(3, OutlierSpec(max_ejected_percent=100)))
    for ep in pool.endpoints:
        fail(pool, ep, 3)
    assert all(ep.health is Health.EJECTED for ep in pool.endpoints)
    assert ports(pool.candidates(1.0)) == {1000, 1001, 1002}


def test_thresholds_and_periods_come_from_the_spec() -> None:
    outlier = OutlierSpec(consecutive_failures=5, base_ejection=2.5, max_ejection=60.0)
    pool = Pool(spec(2, outlier))
    bad = pool.endpoints[0]
    fail(pool, bad, 4, now=100.0)
    assert bad.health is Health.SUSPECT
    pool.record_failure(bad, 100.0)
    assert health_of(bad) is Health.EJECTED
    assert bad.ejected_until == 102.5


def test_the_period_doubles_per_ejection_in_a_row_up_to_the_cap() -> None:
    pool = Pool(spec(2, OutlierSpec(consecutive_failures=1, base_ejection=1.0, max_ejection=5.0)))
    bad = pool.endpoints[0]
    now, periods = 0.0, []
    for _ in range(5):
        pool.record_failure(bad, now)
        periods.append(bad.ejected_until - now)
        now = bad.ejected_until
        assert bad.available(now)  # probing again
    assert periods == [1.0, 2.0, 4.0, 5.0, 5.0]
    pool.record_success(bad)
    pool.record_failure(bad, now)
    assert bad.ejected_until - now == 1.0  # a success starts the doubling over


def test_ejections_are_counted_and_logged_with_their_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    registry = PoolRegistry(metrics)
    registry.reconcile([spec(2, OutlierSpec(base_ejection=7.0))])
    pool = registry.get(spec(2))
    with caplog.at_level(logging.INFO, logger="meshgate.upstream"):
        fail(pool, pool.endpoints[1], 3, now=0.0)
        assert pool.endpoints[1].available(7.0)
    counted = metrics.registry.get_sample_value(
        "meshgate_endpoint_ejections_total", {"backend": "app", "endpoint": "127.0.0.1:1001"}
    )
    assert counted == 1.0
    events = {r.getMessage(): r for r in caplog.records}
    assert events["endpoint ejected"].levelno == logging.WARNING
    assert fields(events["endpoint ejected"])["period"] == 7.0
    assert fields(events["endpoint ejection over"])["backend"] == "app"


def test_status_says_how_long_an_ejection_lasts() -> None:
    pool = Pool(spec(2))
    fail(pool, pool.endpoints[0], 3, now=100.0)
    out, ok = pool.to_json(now=104.0)["endpoints"]
    assert (out["state"], out["ejected_for"]) == ("ejected", 6.0)
    assert (ok["state"], ok["ejected_for"], ok["check"]) == ("healthy", None, None)


def test_an_actively_unhealthy_endpoint_is_skipped_but_the_pool_fails_open() -> None:
    pool = Pool(spec(2, health_check=CHECK))
    first, second = pool.endpoints
    assert first.check is not None
    assert second.check is not None
    assert first.check.status is Check.PENDING
    assert ports(pool.candidates(0.0)) == {1000, 1001}  # pending counts as healthy
    for _ in range(2):
        first.check.record("refused", 2, 2)
    assert ports(pool.candidates(0.0)) == {1001}
    for _ in range(2):
        second.check.record("refused", 2, 2)
    assert ports(pool.candidates(0.0)) == {1000, 1001}  # none left: all are tried
    view = pool.to_json(now=0.0)["endpoints"][0]
    assert (view["check"], view["check_reason"], view["check_fails"]) == (
        "unhealthy",
        "refused",
        2,
    )


def test_a_reload_keeps_the_check_record_of_kept_endpoints() -> None:
    pool = Pool(spec(2, health_check=CHECK))
    kept = pool.endpoints[1]
    assert kept.check is not None
    kept.check.record("timeout", 2, 1)
    pool.update(spec(3, health_check=CHECK))
    assert pool.endpoints[1] is kept
    assert kept.check is not None
    assert kept.check.status is Check.UNHEALTHY
    assert pool.endpoints[2].check is not None
    assert pool.endpoints[2].check.status is Check.PENDING
    pool.update(spec(3))  # the check removed: nobody is held out by it any more
    assert all(ep.check is None for ep in pool.endpoints)
    assert ports(pool.candidates(0.0)) == {1000, 1001, 1002}
