"""Endpoint health as transition tables (pure, walkable by a test).

Two independent machines decide whether new connections may use an endpoint:

*Passive* (outlier detection, from real traffic): an endpoint that fails
connects in a row is first *suspect*, then *ejected* for a while (new
connections skip it), then *probing*: the next connection tries it, and its
result decides between healthy and ejected again. This is Envoy's outlier
detection and HAProxy's `observe layer4`, reduced to what a connect result
can tell. When the pool's ejection cap is reached the ejection is refused
and the endpoint stays suspect (Envoy's `max_ejection_percent`).

*Active* (health checks, when the backend configures them): a check result
is a pass or a fail; `unhealthy_threshold` fails in a row take the endpoint
out, `healthy_threshold` passes in a row bring it back (Envoy's and
Kubernetes' probe thresholds). A new endpoint is *pending*: it counts as
healthy until results say otherwise, so a reload never empties a pool while
its first checks are under way.
"""

from __future__ import annotations

from enum import Enum

# -- passive: outlier detection ----------------------------------------------


class Health(Enum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    EJECTED = "ejected"
    PROBING = "probing"


class HealthEvent(Enum):
    SUCCESS = "success"  # a connect succeeded
    FAILURE = "failure"  # a connect failed, below the ejection threshold
    FAILURE_LIMIT = "failure_limit"  # a connect failed and the threshold is reached
    EJECT_REFUSED = "eject_refused"  # the threshold is reached, but so is the pool's cap
    EJECT_EXPIRED = "eject_expired"  # the ejection period is over


H, E = Health, HealthEvent

# (state, event) -> next state. A pair not listed leaves the state unchanged:
# e.g. a late success reported for an ejected endpoint does not re-admit it
# before its probe.
TRANSITIONS: dict[tuple[Health, HealthEvent], Health] = {
    (H.HEALTHY, E.FAILURE): H.SUSPECT,
    (H.HEALTHY, E.FAILURE_LIMIT): H.EJECTED,
    (H.HEALTHY, E.EJECT_REFUSED): H.SUSPECT,
    (H.SUSPECT, E.SUCCESS): H.HEALTHY,
    (H.SUSPECT, E.FAILURE): H.SUSPECT,
    (H.SUSPECT, E.FAILURE_LIMIT): H.EJECTED,
    (H.SUSPECT, E.EJECT_REFUSED): H.SUSPECT,
    (H.EJECTED, E.EJECT_EXPIRED): H.PROBING,
    (H.PROBING, E.SUCCESS): H.HEALTHY,
    (H.PROBING, E.FAILURE): H.EJECTED,
    (H.PROBING, E.FAILURE_LIMIT): H.EJECTED,
    # A failed probe while the cap is reached: back in rotation as suspect,
    # so the next failure tries the ejection again.
    (H.PROBING, E.EJECT_REFUSED): H.SUSPECT,
}


def next_state(state: Health, event: HealthEvent) -> Health:
    return TRANSITIONS.get((state, event), state)


# -- active: health checks -----------------------------------------------------


class Check(Enum):
    PENDING = "pending"  # no verdict yet: counts as healthy
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class CheckEvent(Enum):
    PASS = "pass"  # a check passed, fewer than healthy_threshold in a row
    PASS_LIMIT = "pass_limit"  # a check passed, healthy_threshold in a row reached
    FAIL = "fail"  # a check failed, fewer than unhealthy_threshold in a row
    FAIL_LIMIT = "fail_limit"  # a check failed, unhealthy_threshold in a row reached


C, CE = Check, CheckEvent

# (status, event) -> next status; pairs not listed keep the status. A pending
# endpoint was assumed healthy, so one pass confirms it; leaving healthy or
# unhealthy takes the full threshold in a row.
CHECK_TRANSITIONS: dict[tuple[Check, CheckEvent], Check] = {
    (C.PENDING, CE.PASS): C.HEALTHY,
    (C.PENDING, CE.PASS_LIMIT): C.HEALTHY,
    (C.PENDING, CE.FAIL_LIMIT): C.UNHEALTHY,
    (C.HEALTHY, CE.FAIL_LIMIT): C.UNHEALTHY,
    (C.UNHEALTHY, CE.PASS_LIMIT): C.HEALTHY,
}


def next_check(status: Check, event: CheckEvent) -> Check:
    return CHECK_TRANSITIONS.get((status, event), status)


class CheckState:
    """One endpoint's active-check record: the verdict and the runs behind it."""

    __slots__ = ("checking", "fails", "passes", "reason", "status")

    def __init__(self) -> None:
        self.status = Check.PENDING
        self.passes = 0  # in a row
        self.fails = 0  # in a row
        self.reason: str | None = None  # why the last failed check failed
        self.checking = False  # a check is in flight (never two at once)

    @property
    def down(self) -> bool:
        return self.status is Check.UNHEALTHY

    def record(self, error: str | None, healthy_threshold: int, unhealthy_threshold: int) -> bool:
        """Take one result (`error` None: passed); True when the status changed."""
        if error is None:
            self.passes += 1
            self.fails = 0
            limit = self.passes >= healthy_threshold
            event = CheckEvent.PASS_LIMIT if limit else CheckEvent.PASS
        else:
            self.fails += 1
            self.passes = 0
            self.reason = error
            limit = self.fails >= unhealthy_threshold
            event = CheckEvent.FAIL_LIMIT if limit else CheckEvent.FAIL
        before = self.status
        self.status = next_check(before, event)
        return self.status is not before
