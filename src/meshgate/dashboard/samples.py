"""Prometheus samples for the dashboard, looked up by name and summed by label.

The numbers come from the registry that /metrics renders, collected through
`AdminState.metric_families()` (which flushes pending counters exactly as
`metrics()` does), and are read here and nowhere else: the page and a
Prometheus server scraping /metrics see the same values.

The collected families are read directly, not the text exposition parsed
back: for 4,400 series rendering plus `prometheus_client.parser` takes about
160 ms, collecting about 18 ms, and this runs on the event loop the data
plane shares.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric


@dataclass(frozen=True, slots=True)
class Sample:
    family: str  # metric family: "meshgate_connections"
    name: str  # sample: "meshgate_connections_total", "..._bucket"
    labels: Mapping[str, str]
    value: float


class Samples:
    """All samples of one collection, looked up by sample name."""

    def __init__(self, samples: Iterable[Sample]) -> None:
        self.by_name: dict[str, list[Sample]] = defaultdict(list)
        self.by_family: dict[str, list[Sample]] = defaultdict(list)
        for sample in samples:
            self.by_name[sample.name].append(sample)
            self.by_family[sample.family].append(sample)

    @classmethod
    def collect(cls, families: Iterable[Metric]) -> Samples:
        return cls(
            Sample(family.name, s.name, s.labels, float(s.value))
            for family in families
            for s in family.samples
        )

    def sum_by(self, name: str, *keys: str) -> dict[tuple[str, ...], float]:
        """Samples of `name` added up per value of the labels `keys`
        (as PromQL `sum by (keys) (name)`)."""
        out: dict[tuple[str, ...], float] = defaultdict(float)
        for sample in self.by_name.get(name, ()):
            out[tuple(sample.labels.get(key, "") for key in keys)] += sample.value
        return dict(out)

    def families(self) -> list[str]:
        return list(self.by_family)
