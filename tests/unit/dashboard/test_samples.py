"""Samples: the collected registry, looked up and summed by label."""

from __future__ import annotations

from meshgate.dashboard.samples import Samples
from meshgate.obs.metrics import Metrics


def test_sum_by_adds_up_the_other_labels() -> None:
    m = Metrics()
    m.connections.labels("web", "a").inc(2)
    m.connections.labels("web", "b").inc(3)
    m.connections.labels("db", "c").inc()
    samples = Samples.collect(m.registry.collect())
    assert samples.sum_by("meshgate_connections_total", "listener") == {("web",): 5, ("db",): 1}
    assert samples.sum_by("meshgate_connections_total") == {(): 6}
    assert samples.sum_by("meshgate_no_such_metric", "listener") == {}


def test_families_and_histogram_samples() -> None:
    m = Metrics()
    m.http_duration.labels("web", "*/").observe(0.003)
    samples = Samples.collect(m.registry.collect())
    assert "meshgate_http_request_duration_seconds" in samples.families()
    buckets = samples.sum_by("meshgate_http_request_duration_seconds_bucket", "le")
    assert buckets[("0.0025",)] == 0
    assert buckets[("0.005",)] == 1
    assert buckets[("+Inf",)] == 1
    # Counters are one family whatever the sample suffix.
    assert [s.name for s in samples.by_family["meshgate_table_version"]] == [
        "meshgate_table_version"
    ]
