"""Merging the workers' figures: what a scrape of the supervisor must show."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from meshgate.obs.aggregate import merge_metrics, merge_status
from meshgate.obs.metrics import Metrics


def worker(requests: int, healthy: int, version: int) -> str:
    m = Metrics()
    for _ in range(requests):
        m.http_request_done("web", "*/", 200, 0.002)
    m.endpoint_healthy.labels("api", "10.0.0.1:80").set(healthy)
    m.table_version.set(version)
    return m.render().decode()


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_and_histograms_add_up_and_states_take_the_worst() -> None:
    merged = samples(merge_metrics([worker(3, 1, 4), worker(5, 0, 5)]))
    code = (("code", "200"), ("listener", "web"), ("route", "*/"))
    assert merged[("meshgate_http_requests_total", code)] == 8
    route = (("listener", "web"), ("route", "*/"))
    assert merged[("meshgate_http_request_duration_seconds_count", route)] == 8
    bucket = (("le", "0.0025"), *route)
    assert merged[("meshgate_http_request_duration_seconds_bucket", bucket)] == 8
    # An endpoint one worker ejected is not healthy; the newest table is shown.
    ep = (("backend", "api"), ("endpoint", "10.0.0.1:80"))
    assert merged[("meshgate_endpoint_healthy", ep)] == 0
    assert merged[("meshgate_table_version", ())] == 5


def test_the_merged_text_keeps_help_and_type_lines() -> None:
    text = merge_metrics([worker(1, 1, 1), worker(1, 1, 1)]).decode()
    assert "# TYPE meshgate_http_requests_total counter" in text
    assert "# TYPE meshgate_http_request_duration_seconds histogram" in text
    assert "# HELP meshgate_endpoint_healthy" in text


def status(active: int, state: str, ep_state: str, in_flight: int) -> dict[str, Any]:
    return {
        "version": 3,
        "listeners": [
            {
                "key": "tcp://127.0.0.1:80",
                "state": state,
                "error": None,
                "active": active,
                "total": active * 10,
                "bytes_in": 100,
                "bytes_out": 200,
                "udp_flows": 0,
            },
        ],
        "backends": [
            {
                "name": "api",
                "endpoints": [
                    {
                        "address": "10.0.0.1:80",
                        "state": ep_state,
                        "in_flight": in_flight,
                        "failures": 1,
                        "ejections": 0,
                    },
                ],
            },
        ],
    }


def test_status_adds_traffic_and_shows_the_worst_state() -> None:
    first = status(2, "serving", "healthy", 1)
    merged = merge_status([first, status(3, "failed", "ejected", 2)])
    listener = merged["listeners"][0]
    assert (listener["active"], listener["total"], listener["bytes_in"]) == (5, 50, 200)
    assert listener["state"] == "failed"
    ep = merged["backends"][0]["endpoints"][0]
    assert (ep["state"], ep["in_flight"], ep["failures"]) == ("ejected", 3, 2)
    assert first["listeners"][0]["active"] == 2  # the worker's own document is untouched
    assert merge_status([]) == {}


def test_status_adds_refusals_overload_and_process_figures_and_keeps_the_worst_check() -> None:
    def doc(refused: int, accepting: bool, level: int, check: str, fds: int) -> dict[str, Any]:
        base = status(1, "serving", "healthy", 0)
        base["listeners"][0].update(
            {"refused": {"listener_limit": refused}, "accepting": accepting, "connections": 4}
        )
        base["backends"][0]["endpoints"][0].update({"check": check, "check_reason": check})
        base["overload"] = {
            "stage": ["normal", "no_keepalive"][level],
            "level": level,
            "reason": "connections" if level else "",
            "connections": 4,
            "rss": 100,
        }
        base["process"] = {"pid": fds, "tasks": 3, "open_fds": fds, "rss": 100}
        return base

    first = doc(2, True, 0, "healthy", 10)
    merged = merge_status([first, doc(5, False, 1, "unhealthy", 20)])
    listener = merged["listeners"][0]
    assert listener["refused"] == {"listener_limit": 7}
    assert listener["accepting"] is False  # paused in one worker
    assert listener["connections"] == 8
    ep = merged["backends"][0]["endpoints"][0]
    assert (ep["check"], ep["check_reason"]) == ("unhealthy", "unhealthy")
    assert merged["overload"]["stage"] == "no_keepalive"
    assert merged["overload"]["connections"] == 8
    assert merged["process"]["open_fds"] == 30
    assert first["listeners"][0]["refused"] == {"listener_limit": 2}  # untouched
    assert first["process"]["open_fds"] == 10
