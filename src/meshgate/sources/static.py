"""The command-line rules as a configuration source (`--ingress`, `--egress`).

The rules never change while meshgate runs, but they are parsed on every
`load()` like any other source, so a reload rebuilds the whole Config the
same way whatever its sources are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshgate.config.model import Config
from meshgate.config.rules import rules_to_config


@dataclass(frozen=True, slots=True)
class RulesSource:
    """nexd-style rules; ingress binds to `bind`, egress to `cluster_bind`."""

    ingress: Sequence[str] = ()
    egress: Sequence[str] = ()
    bind: str = "127.0.0.1"
    cluster_bind: str = "0.0.0.0"
    dns_name: str | None = None

    def __post_init__(self) -> None:
        # Keep private copies: a caller's list changing later must not change
        # what a reload sees (and tuples keep the source hashable).
        object.__setattr__(self, "ingress", tuple(self.ingress))
        object.__setattr__(self, "egress", tuple(self.egress))

    @property
    def name(self) -> str:
        return "--ingress/--egress"

    def load(self) -> Config:
        return rules_to_config(
            self.ingress,
            self.egress,
            bind=self.bind,
            cluster_bind=self.cluster_bind,
            dns_name=self.dns_name,
        )
