"""Admission decisions without sockets: caps, client rules, overload stages
with hysteresis, the cgroup memory limit."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgate.dataplane.admission import (
    CLIENT_LIMIT,
    CLIENT_RATE,
    GLOBAL_LIMIT,
    HYSTERESIS,
    LISTENER_LIMIT,
    NO_CAP,
    OVERLOAD,
    ClientLimiter,
    Figures,
    Slots,
    Thresholds,
    allowed,
    client_ip,
    counts_clients,
    global_cap,
    next_stage,
    over_cap,
    pause_reason,
)
from meshgate.dataplane.overload import Stage
from meshgate.routing.table import ClientLimitsSpec, GlobalLimitsSpec

T = Thresholds(0.80, 0.90, 0.95)


def slots(open_: int, cap: int = NO_CAP) -> Slots:
    s = Slots(cap)
    s.open = open_
    return s


# -- caps ------------------------------------------------------------------------------
def test_global_cap_defaults_to_half_the_descriptors_left_after_the_reserve() -> None:
    # A proxied connection holds two descriptors: 65536 - 256 kept free, halved.
    assert global_cap(GlobalLimitsSpec(fd_reserve=256), 65536) == 32640


def test_configured_global_cap_wins_over_the_descriptor_limit() -> None:
    assert global_cap(GlobalLimitsSpec(max_connections=100), 65536) == 100


def test_global_cap_without_a_descriptor_limit_is_none() -> None:
    assert global_cap(GlobalLimitsSpec(), None) == NO_CAP


def test_global_cap_never_falls_to_zero() -> None:
    # A descriptor limit below the reserve still lets one client in.
    assert global_cap(GlobalLimitsSpec(fd_reserve=256), 64) == 1


def test_listener_pauses_at_its_cap_and_resumes_below() -> None:
    total = slots(0)
    assert pause_reason(slots(1, 2), total, Stage.NORMAL) is None
    assert pause_reason(slots(2, 2), total, Stage.NORMAL) == LISTENER_LIMIT
    assert pause_reason(slots(1, 2), total, Stage.NORMAL) is None


def test_all_listeners_pause_at_the_global_cap() -> None:
    assert pause_reason(slots(3), slots(10, 10), Stage.NORMAL) == GLOBAL_LIMIT
    assert pause_reason(slots(3), slots(9, 10), Stage.NORMAL) is None


@pytest.mark.parametrize("stage", list(Stage))
def test_only_stage_three_stops_accepting(stage: Stage) -> None:
    reason = pause_reason(slots(0), slots(0), stage)
    assert reason == (OVERLOAD if stage is Stage.STOP_ACCEPTING else None)


def test_a_connection_past_a_cap_is_refused_with_the_cap_it_passed() -> None:
    assert over_cap(slots(2, 2), slots(5, 10)) is None  # the one that filled the last slot
    assert over_cap(slots(3, 2), slots(5, 10)) == LISTENER_LIMIT
    assert over_cap(slots(3), slots(11, 10)) == GLOBAL_LIMIT


# -- clients ---------------------------------------------------------------------------
def test_allow_list_empty_means_everyone() -> None:
    assert allowed(client_ip("203.0.113.9"), ())


def test_allow_list_takes_clients_in_its_ranges_only() -> None:
    allow = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
    assert allowed(client_ip("10.1.2.3"), allow)
    assert allowed(client_ip("2001:db8::7"), allow)
    assert not allowed(client_ip("192.0.2.1"), allow)
    assert not allowed(None, allow)


def test_ipv4_mapped_and_zoned_addresses_are_the_plain_address() -> None:
    assert client_ip("::ffff:10.0.0.1") == ipaddress.ip_address("10.0.0.1")
    assert client_ip("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert client_ip("not-an-ip") is None


def test_per_client_connections_are_capped_and_freed() -> None:
    limiter = ClientLimiter()
    limits = ClientLimitsSpec(max_connections=2)
    for _ in range(2):
        assert limiter.check("a", limits, 0.0) is None
        limiter.opened("a")
    assert limiter.check("a", limits, 0.0) == CLIENT_LIMIT
    assert limiter.check("b", limits, 0.0) is None  # another client is not affected
    limiter.closed("a")
    assert limiter.check("a", limits, 0.0) is None
    limiter.closed("a")
    limiter.closed("a")
    assert limiter.open == {}  # nothing is remembered of clients with nothing open


def test_per_client_rate_allows_the_burst_then_refuses_until_refilled() -> None:
    limiter = ClientLimiter()
    limits = ClientLimitsSpec(connection_rate=1.0, burst=3)
    assert [limiter.check("a", limits, 0.0) for _ in range(4)] == [None, None, None, CLIENT_RATE]
    assert limiter.check("a", limits, 1.0) is None  # one token back after a second


def test_a_client_at_its_connection_cap_spends_no_rate_token() -> None:
    limiter = ClientLimiter()
    limits = ClientLimitsSpec(max_connections=1, connection_rate=1.0, burst=2)
    assert limiter.check("a", limits, 0.0) is None
    limiter.opened("a")
    for _ in range(5):
        assert limiter.check("a", limits, 0.0) == CLIENT_LIMIT
    limiter.closed("a")
    assert limiter.check("a", limits, 0.0) is None  # the second token was kept


def test_request_rate_alone_is_not_an_accept_time_limit() -> None:
    assert not counts_clients(ClientLimitsSpec(request_rate=10.0))
    assert counts_clients(ClientLimitsSpec(connection_rate=10.0))
    assert counts_clients(ClientLimitsSpec(max_connections=10))
    assert not counts_clients(None)


# -- overload --------------------------------------------------------------------------
def test_load_is_the_higher_of_connections_and_memory() -> None:
    assert Figures(50, 100, 900, 1000).load() == (0.9, "memory")
    assert Figures(95, 100, 100, 1000).load() == (0.95, "connections")
    assert Figures(5, NO_CAP, None, None).load() == (0.0, "connections")
    assert Figures(5, 100, 900, None).load() == (0.05, "connections")  # memory not watched


@pytest.mark.parametrize(
    ("load", "stage"),
    [
        (0.0, Stage.NORMAL),
        (0.79, Stage.NORMAL),
        (0.80, Stage.NO_KEEPALIVE),
        (0.90, Stage.REJECT_REQUESTS),
        (0.95, Stage.STOP_ACCEPTING),
        (3.0, Stage.STOP_ACCEPTING),
    ],
)
def test_stage_rises_as_soon_as_a_threshold_is_reached(load: float, stage: Stage) -> None:
    assert next_stage(Stage.NORMAL, load, T) is stage


def test_stage_is_left_only_a_few_points_below_its_threshold() -> None:
    stage = next_stage(Stage.NORMAL, 0.95, T)
    assert stage is Stage.STOP_ACCEPTING
    # Hovering just under the threshold keeps the stage: no flapping.
    assert next_stage(stage, 0.94, T) is Stage.STOP_ACCEPTING
    assert next_stage(stage, 0.95 - HYSTERESIS + 0.001, T) is Stage.STOP_ACCEPTING
    # Clearly below: down to the stage the load holds, with the same margin.
    assert next_stage(stage, 0.89, T) is Stage.REJECT_REQUESTS
    assert next_stage(stage, 0.84, T) is Stage.NO_KEEPALIVE
    assert next_stage(stage, 0.5, T) is Stage.NORMAL


def test_a_load_that_cannot_be_measured_as_a_number_stops_accepting() -> None:
    assert next_stage(Stage.NORMAL, float("nan"), T) is Stage.STOP_ACCEPTING


@given(
    st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=50),
)
def test_stage_never_flaps_on_small_moves(loads: list[float]) -> None:
    # Whatever the history, the stage is within what the load calls for and
    # what it calls for with the hysteresis margin added.
    stage = Stage.NORMAL
    for load in loads:
        stage = next_stage(stage, load, T)
        assert T.stage_at(load) <= stage <= T.stage_at(load + HYSTERESIS)
