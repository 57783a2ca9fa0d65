"""RecentErrors: which log records become dashboard errors, and how many stay."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from meshgate.obs.recent import MAX_FIELD_CHARS, RecentErrors


@pytest.fixture
def recent(caplog: pytest.LogCaptureFixture) -> Iterator[RecentErrors]:
    # INFO, as `meshgate run` logs by default (the test default is WARNING).
    caplog.set_level(logging.INFO, logger="meshgate")
    handler = RecentErrors(capacity=4)
    with handler.attached(logging.getLogger("meshgate")):
        yield handler


def log(name: str, level: int, event: str, **fields: Any) -> None:
    logging.getLogger(name).log(level, event, extra={"fields": fields})


def events(recent: RecentErrors) -> list[str]:
    return [record.event for record in recent.snapshot()]


def test_warnings_and_errors_of_meshgate_are_kept_newest_first(recent: RecentErrors) -> None:
    log("meshgate.tcp", logging.WARNING, "no upstream", listener="relay", error="refused")
    log("meshgate.runtime", logging.ERROR, "reload rejected, keeping the running table")
    assert events(recent) == ["reload rejected, keeping the running table", "no upstream"]
    assert recent.snapshot()[1].reason == "refused"


def test_ordinary_info_lines_are_not_errors(recent: RecentErrors) -> None:
    log("meshgate.listener", logging.INFO, "listener serving", listener="web")
    log("meshgate.tcp", logging.INFO, "connection closed", listener="relay", reason="eof")
    log("meshgate.access", logging.INFO, "http request", status=200, reason="builtin")
    log("meshgate.access", logging.INFO, "http request", status=404, reason="")
    # A backend's own 503 went through meshgate fine: not meshgate's error.
    log("meshgate.access", logging.INFO, "http request", status=503, reason=None)
    assert events(recent) == []


@pytest.mark.parametrize(
    ("name", "event", "fields"),
    [
        ("meshgate.http", "http request rejected", {"status": 400, "reason": "smuggling_cl_te"}),
        ("meshgate.tls", "tls connection rejected", {"reason": "malformed", "sni": None}),
        ("meshgate.proxy_protocol", "proxy header rejected", {"reason": "untrusted"}),
        ("meshgate.access", "upstream connect failed", {"backend": "app", "error": "refused"}),
        ("meshgate.access", "http request", {"status": 404, "reason": "no_route"}),
        ("meshgate.access", "http request", {"status": 504, "reason": "upstream_timeout"}),
        ("meshgate.tcp", "connection closed", {"reason": "idle_timeout"}),
    ],
)
def test_info_events_that_are_errors_are_kept(
    recent: RecentErrors, name: str, event: str, fields: dict[str, Any]
) -> None:
    log(name, logging.INFO, event, **fields)
    [record] = recent.snapshot()
    assert (record.logger, record.event, record.level) == (name, event, "info")


def test_a_failed_connect_is_kept_once(recent: RecentErrors) -> None:
    # The 502 access line repeats "upstream connect failed", which says why.
    log("meshgate.access", logging.INFO, "upstream connect failed", error="refused")
    log("meshgate.access", logging.INFO, "http request", status=502, reason="connect_failed")
    assert events(recent) == ["upstream connect failed"]


def test_other_loggers_are_ignored(recent: RecentErrors) -> None:
    root = RecentErrors()
    with root.attached(logging.getLogger()):
        logging.getLogger("aiohttp.server").error("Error handling request")
        logging.getLogger("meshgatex").error("not ours")
        logging.getLogger("meshgate").error("ours")
    assert [record.event for record in root.snapshot()] == ["ours"]


def test_the_buffer_is_bounded_and_counts_what_it_dropped(recent: RecentErrors) -> None:
    for n in range(10):
        log("meshgate.tcp", logging.WARNING, f"event {n}")
    assert events(recent) == ["event 9", "event 8", "event 7", "event 6"]
    assert recent.to_json()["seen"] == 10
    assert recent.to_json()["capacity"] == 4


def test_fields_become_plain_json_values(recent: RecentErrors) -> None:
    log(
        "meshgate.tls",
        logging.WARNING,
        "odd",
        port=443,
        ok=True,
        none=None,
        exc=ValueError("x"),
        long="a" * 5000,
    )
    fields = recent.snapshot()[0].fields
    assert fields["port"] == 443
    assert fields["ok"] is True
    assert fields["none"] is None
    assert fields["exc"] == "x"
    assert len(fields["long"]) == MAX_FIELD_CHARS


def test_an_exception_is_summed_up_in_one_line(recent: RecentErrors) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("meshgate.udp").exception("udp datagram failed", extra={"fields": {}})
    [record] = recent.snapshot()
    assert record.fields["error"] == "RuntimeError: boom"
    assert record.to_json()["reason"] == "RuntimeError: boom"


def test_detaching_stops_collecting() -> None:
    handler = RecentErrors()
    with handler.attached(logging.getLogger("meshgate")):
        logging.getLogger("meshgate.x").warning("during")
    logging.getLogger("meshgate.x").warning("after")
    assert [record.event for record in handler.snapshot()] == ["during"]
