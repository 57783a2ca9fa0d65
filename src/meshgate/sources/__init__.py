"""Configuration sources: where a Config comes from (rules, files, later Kubernetes).

A source has a `name` for error messages and a `load()` that returns a whole,
validated Config or raises ConfigError. `load_all` loads every source, reports
the problems of all of them together (a bad rule and a bad file in one go),
then merges. Sources may do I/O but never touch the data plane.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from meshgate.config.merge import merge
from meshgate.config.model import Config
from meshgate.errors import ConfigError, ConfigProblem
from meshgate.sources.file import FileSource
from meshgate.sources.static import RulesSource

__all__ = ["ConfigSource", "FileSource", "RulesSource", "load_all"]


class ConfigSource(Protocol):
    """Anything that can produce a whole Config on demand."""

    @property
    def name(self) -> str: ...

    def load(self) -> Config: ...


def load_all(sources: Sequence[ConfigSource]) -> Config:
    """Load and merge every source; one ConfigError holds all their problems."""
    problems: list[ConfigProblem] = []
    parts: list[tuple[str, Config]] = []
    for source in sources:
        try:
            parts.append((source.name, source.load()))
        except ConfigError as err:
            problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    return merge(parts)
