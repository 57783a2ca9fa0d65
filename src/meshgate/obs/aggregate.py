"""One view of several worker processes: their metrics and status documents merged.

`meshgate run --workers N` runs N processes that each serve every listener
(SO_REUSEPORT spreads connections over them). Each keeps its own counters; the
supervisor's admin server shows their sum, so a scrape or `meshgate status`
sees one proxy, as it would with one process.

Merging rules: counters, histograms and traffic gauges add up. A state gauge
takes the worst value any worker reports (an endpoint is healthy, a listener
up, only if it is in every worker); the table version takes the newest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

# Gauges whose value is a state (1 good, 0 bad): the merged value is the worst.
_WORST = frozenset({"meshgate_endpoint_healthy", "meshgate_listener_up"})
_NEWEST = frozenset({"meshgate_table_version"})
_HEALTH_ORDER = {"healthy": 0, "suspect": 1, "probing": 2, "ejected": 3}
_CHECK_ORDER = {"healthy": 0, "pending": 1, "unhealthy": 2}

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class _Families:
    """A collector that yields already-built metric families."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge_metrics(texts: Sequence[str], extra: Iterable[Metric] = ()) -> bytes:
    """The Prometheus text exposition of several workers' expositions, merged."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[SampleKey, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            merged = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                before = merged.get(key)
                merged[key] = (
                    sample.value if before is None else _combine(family.name, before, sample.value)
                )
    out: list[Metric] = []
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
        out.append(family)
    out.extend(extra)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(out))
    return generate_latest(registry)


def _combine(family: str, a: float, b: float) -> float:
    if family in _WORST:
        return min(a, b)
    if family in _NEWEST:
        return max(a, b)
    return a + b


def merge_status(documents: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Worker 0's status document with every worker's traffic added in."""
    if not documents:
        return {}
    merged = _copy(documents[0])
    listeners = {item.get("key"): item for item in merged.get("listeners", [])}
    endpoints = {
        (backend.get("name"), ep.get("address")): ep
        for backend in merged.get("backends", [])
        for ep in backend.get("endpoints", [])
    }
    for doc in documents[1:]:
        for item in doc.get("listeners", []):
            mine = listeners.get(item.get("key"))
            if mine is None:
                continue
            for field in ("active", "total", "bytes_in", "bytes_out", "udp_flows", "connections"):
                if isinstance(item.get(field), int) and isinstance(mine.get(field), int):
                    mine[field] += item[field]
            _add_counts(mine, item, "refused")
            if item.get("accepting") is False:  # paused in any worker
                mine["accepting"] = False
            if item.get("state") != "serving":  # a listener is serving if it is in every worker
                mine["state"] = item.get("state")
                mine["error"] = item.get("error") or mine.get("error")
        for backend in doc.get("backends", []):
            for ep in backend.get("endpoints", []):
                mine = endpoints.get((backend.get("name"), ep.get("address")))
                if mine is None:
                    continue
                for field in ("in_flight", "failures", "ejections"):
                    if isinstance(ep.get(field), int) and isinstance(mine.get(field), int):
                        mine[field] += ep[field]
                if _HEALTH_ORDER.get(ep.get("state", ""), 0) > _HEALTH_ORDER.get(
                    mine.get("state", ""), 0
                ):
                    mine["state"] = ep["state"]
                # Each worker checks on its own: show the worst verdict and its reason.
                if _CHECK_ORDER.get(ep.get("check") or "", -1) > _CHECK_ORDER.get(
                    mine.get("check") or "", -1
                ):
                    mine["check"] = ep["check"]
                    mine["check_reason"] = ep.get("check_reason")
        _merge_sums(merged, doc, "overload", ("connections", "rss"))
        _merge_sums(merged, doc, "process", ("tasks", "open_fds", "rss"))
        mine_overload, theirs = merged.get("overload"), doc.get("overload")
        if (
            isinstance(mine_overload, dict)
            and isinstance(theirs, dict)
            and theirs.get("level", 0) > mine_overload.get("level", 0)
        ):
            for field in ("stage", "level", "reason"):
                if field in theirs:
                    mine_overload[field] = theirs[field]
    return merged


def _add_counts(mine: dict[str, Any], theirs: dict[str, Any], field: str) -> None:
    """Add a {reason: count} map of another worker's into ours."""
    counts, more = mine.get(field), theirs.get(field)
    if not isinstance(counts, dict) or not isinstance(more, dict):
        return
    for key, value in more.items():
        if isinstance(value, int):
            counts[key] = counts.get(key, 0) + value


def _merge_sums(
    merged: dict[str, Any], doc: dict[str, Any], section: str, fields: tuple[str, ...]
) -> None:
    """Add the per-process figures of one section (e.g. `process`) together."""
    mine, theirs = merged.get(section), doc.get(section)
    if not isinstance(mine, dict) or not isinstance(theirs, dict):
        return
    for field in fields:
        if isinstance(mine.get(field), int) and isinstance(theirs.get(field), int):
            mine[field] += theirs[field]


def _copy(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy deep enough that merging never changes the worker's cached document."""
    out = dict(doc)
    out["listeners"] = [
        {**item, "refused": dict(item["refused"])}
        if isinstance(item.get("refused"), dict)
        else dict(item)
        for item in doc.get("listeners", [])
    ]
    for section in ("overload", "process"):
        if isinstance(doc.get(section), dict):
            out[section] = dict(doc[section])
    out["backends"] = [
        {**backend, "endpoints": [dict(ep) for ep in backend.get("endpoints", [])]}
        for backend in doc.get("backends", [])
    ]
    return out
