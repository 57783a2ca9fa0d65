"""Passive endpoint health as a transition table (pure, walkable by a test).

An endpoint that fails connects in a row is first *suspect*, then *ejected*
for a while (new connections skip it), then *probing*: the next connection
tries it, and its result decides between healthy and ejected again. This is
the "outlier detection" of Envoy and HAProxy's `observe layer4`, reduced to
what a connect result can tell.
"""

from __future__ import annotations

from enum import Enum


class Health(Enum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    EJECTED = "ejected"
    PROBING = "probing"


class HealthEvent(Enum):
    SUCCESS = "success"  # a connect succeeded
    FAILURE = "failure"  # a connect failed, below the ejection threshold
    FAILURE_LIMIT = "failure_limit"  # a connect failed and the threshold is reached
    EJECT_EXPIRED = "eject_expired"  # the ejection period is over


H, E = Health, HealthEvent

# (state, event) -> next state. A pair not listed leaves the state unchanged:
# e.g. a late success reported for an ejected endpoint does not re-admit it
# before its probe.
TRANSITIONS: dict[tuple[Health, HealthEvent], Health] = {
    (H.HEALTHY, E.FAILURE): H.SUSPECT,
    (H.HEALTHY, E.FAILURE_LIMIT): H.EJECTED,
    (H.SUSPECT, E.SUCCESS): H.HEALTHY,
    (H.SUSPECT, E.FAILURE): H.SUSPECT,
    (H.SUSPECT, E.FAILURE_LIMIT): H.EJECTED,
    (H.EJECTED, E.EJECT_EXPIRED): H.PROBING,
    (H.PROBING, E.SUCCESS): H.HEALTHY,
    (H.PROBING, E.FAILURE): H.EJECTED,
    (H.PROBING, E.FAILURE_LIMIT): H.EJECTED,
}


def next_state(state: Health, event: HealthEvent) -> Health:
    return TRANSITIONS.get((state, event), state)
