"""Active health checks without sockets: the http check's request and its
verdict on response bytes, and the threshold state machine."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgate.protocols.result import NEED_MORE
from meshgate.routing.table import EndpointAddr, HealthCheckSpec
from meshgate.upstream.active_check import PASSED, HttpProbe, Verdict, host_header, status_ok
from meshgate.upstream.health import (
    CHECK_TRANSITIONS,
    Check,
    CheckEvent,
    CheckState,
    next_check,
)

OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


HTTP_CHECK = HealthCheckSpec(
    "http", interval=5.0, timeout=1.0, healthy_threshold=2, unhealthy_threshold=3
)


# -- the http check ------------------------------------------------------------------


def test_default_statuses_are_2xx_and_3xx() -> None:
    assert [s for s in (199, 200, 204, 301, 399, 400, 404, 500) if status_ok(s, ())] == [
        200,
        204,
        301,
        399,
    ]


def test_expect_status_replaces_the_default() -> None:
    assert status_ok(204, (204,))
    assert not status_ok(200, (204,))
    assert status_ok(503, (200, 503))  # e.g. a maintenance page that still counts


def test_the_request_is_a_plain_get_that_closes() -> None:
    probe = HttpProbe("/healthz?full=1", "app.example:8080")
    head, _, rest = probe.request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"GET /healthz?full=1 HTTP/1.1"
    assert set(lines[1:]) == {
        b"Host: app.example:8080",
        b"User-Agent: meshgate-health-check",
        b"Accept: */*",
        b"Connection: close",
    }
    assert rest == b""


def test_a_path_that_cannot_go_on_a_request_line_is_refused() -> None:
    with pytest.raises(ValueError, match="request-target"):
        HttpProbe("/a b", "app")


def test_a_status_in_range_passes_as_soon_as_the_head_is_in() -> None:
    probe = HttpProbe("/", "app")
    assert probe.feed(b"HTTP/1.1 200 OK\r\nContent-Len") is NEED_MORE
    assert probe.feed(b"gth: 100000\r\n\r\n") == PASSED  # the body is never waited for


def test_a_status_out_of_range_fails_and_says_which() -> None:
    verdict = HttpProbe("/", "app").feed(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    assert verdict == Verdict("status 500")
    assert isinstance(verdict, Verdict)
    assert not verdict.ok


def test_expect_status_decides_the_verdict() -> None:
    probe = HttpProbe("/", "app", expect=(204,))
    assert probe.feed(OK_RESPONSE) == Verdict("status 200")


def test_interim_responses_are_skipped() -> None:
    probe = HttpProbe("/", "app")
    assert probe.feed(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n") is NEED_MORE
    assert probe.feed(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n") == Verdict("status 503")


def test_garbage_fails_the_check() -> None:
    verdict = HttpProbe("/", "app").feed(b"this is not a status line\r\n\r\n")
    assert isinstance(verdict, Verdict)
    assert verdict.error is not None
    assert verdict.error.startswith("bad response")


def test_a_close_before_the_head_fails_the_check() -> None:
    probe = HttpProbe("/", "app")
    assert probe.feed(b"HTTP/1.1 200") is NEED_MORE
    assert probe.feed_eof() == Verdict("closed before a response")


@given(st.data())
def test_the_verdict_does_not_depend_on_how_the_bytes_are_split(data: st.DataObject) -> None:
    response = data.draw(
        st.sampled_from(
            [OK_RESPONSE, b"HTTP/1.1 404 Not Found\r\n\r\n", b"HTTP/1.0 100 Continue\r\n\r\n"]
        )
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(response)), max_size=4)))
    probe, whole = HttpProbe("/", "app"), HttpProbe("/", "app")
    expected = whole.feed(response)
    verdict: Verdict | object = NEED_MORE
    for start, end in itertools.pairwise([0, *cuts, len(response)]):
        verdict = probe.feed(response[start:end])
        if verdict is not NEED_MORE:
            break
    assert verdict == expected


@pytest.mark.parametrize(
    ("configured", "addr", "tls", "host"),
    [
        ("status.example", EndpointAddr("10.0.0.1", 8080), False, "status.example"),
        (None, EndpointAddr("web.default.svc", 8080), False, "web.default.svc:8080"),
        (None, EndpointAddr("web.default.svc", 80), False, "web.default.svc"),
        (None, EndpointAddr("web.default.svc", 443), True, "web.default.svc"),
        (None, EndpointAddr("web.default.svc", 443), False, "web.default.svc:443"),
        (None, EndpointAddr("fd00::1", 8080), False, "[fd00::1]:8080"),
        # The static address override is where to connect, not the name to ask for.
        (None, EndpointAddr("api.example", 8443, "10.0.0.9"), True, "api.example:8443"),
    ],
)
def test_host_header(configured: str | None, addr: EndpointAddr, tls: bool, host: str) -> None:
    assert host_header(replace(HTTP_CHECK, host=configured), addr, tls) == host


# -- thresholds --------------------------------------------------------------------------


def status_of(state: CheckState) -> Check:
    return state.status  # a call, so the type checker does not keep an earlier narrowing


def test_pending_counts_as_healthy_and_one_pass_confirms_it() -> None:
    state = CheckState()
    assert state.status is Check.PENDING
    assert not state.down
    assert state.record(None, healthy_threshold=3, unhealthy_threshold=3)
    assert status_of(state) is Check.HEALTHY


def test_unhealthy_after_the_threshold_of_failures_in_a_row() -> None:
    state = CheckState()
    changes = [state.record("refused", 2, 3) for _ in range(3)]
    assert changes == [False, False, True]
    assert state.down
    assert (state.fails, state.reason) == (3, "refused")


def test_a_pass_between_failures_starts_the_count_again() -> None:
    state = CheckState()
    state.record(None, 1, 3)
    for result in ["timeout", "timeout", None, "timeout", "timeout"]:
        state.record(result, 1, 3)
    assert state.status is Check.HEALTHY
    state.record("timeout", 1, 3)
    assert status_of(state) is Check.UNHEALTHY


def test_healthy_again_after_the_threshold_of_passes_in_a_row() -> None:
    state = CheckState()
    state.record("status 500", 2, 1)
    assert state.down
    assert not state.record(None, 2, 1)
    assert state.record("status 500", 2, 1) is False  # still down; the pass run is broken
    assert [state.record(None, 2, 1) for _ in range(2)] == [False, True]
    assert state.status is Check.HEALTHY
    assert state.reason == "status 500"  # the last failure is still shown


def test_the_check_table_is_total_and_every_status_is_reachable() -> None:
    seen, frontier = {Check.PENDING}, [Check.PENDING]
    while frontier:
        status = frontier.pop()
        for event in CheckEvent:
            following = next_check(status, event)
            assert following in Check
            if following not in seen:
                seen.add(following)
                frontier.append(following)
    assert seen == set(Check)
    # Nothing ever goes back to pending: a verdict, once reached, is kept.
    assert Check.PENDING not in CHECK_TRANSITIONS.values()
    # Only a run reaching its threshold moves a decided endpoint.
    for (status, event), following in CHECK_TRANSITIONS.items():
        if status is not Check.PENDING:
            assert event in (CheckEvent.PASS_LIMIT, CheckEvent.FAIL_LIMIT), (status, event)
            assert following is not status
