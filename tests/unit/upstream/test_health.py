"""The endpoint health state machine, walked exhaustively."""

from __future__ import annotations

import itertools

from meshgate.upstream.health import TRANSITIONS, Health, HealthEvent, next_state


def test_every_pair_has_a_defined_outcome() -> None:
    for state, event in itertools.product(Health, HealthEvent):
        assert next_state(state, event) in Health


def test_only_a_probe_or_success_leaves_ejection() -> None:
    # While ejected, nothing but the timer moves the endpoint: a stale success
    # of a connection started before the ejection does not re-admit it.
    for event in HealthEvent:
        if event is not HealthEvent.EJECT_EXPIRED:
            assert next_state(Health.EJECTED, event) is Health.EJECTED
    assert next_state(Health.EJECTED, HealthEvent.EJECT_EXPIRED) is Health.PROBING
    assert next_state(Health.PROBING, HealthEvent.SUCCESS) is Health.HEALTHY
    assert next_state(Health.PROBING, HealthEvent.FAILURE) is Health.EJECTED


def test_success_always_heals_a_non_ejected_endpoint() -> None:
    for state in (Health.HEALTHY, Health.SUSPECT, Health.PROBING):
        assert next_state(state, HealthEvent.SUCCESS) is Health.HEALTHY


def test_every_state_is_reachable_from_healthy() -> None:
    seen = {Health.HEALTHY}
    frontier = [Health.HEALTHY]
    while frontier:
        state = frontier.pop()
        for event in HealthEvent:
            nxt = next_state(state, event)
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(Health)
    assert all(isinstance(k[0], Health) for k in TRANSITIONS)
