"""The project's error types.

`ConfigError` carries every problem found in one validation pass, each naming
the source (a file, a flag), the object, the field and the reason, so a user
can fix them all at once. `ProtocolError` is raised by sans-I/O parsers for
malformed traffic; its `label` is the metric label the listener counts it by.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with the configuration, located as precisely as known."""

    source: str  # "--ingress", "examples/quickstart.yaml", ...
    object: str  # "tcp:99999:web:80", "listeners[0] (web)", ...
    field: str  # "listen_port", "listeners[0].port", ...
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        parts = [where]
        if self.object:
            parts.append(self.object)
        if self.field:
            parts.append(f"field '{self.field}'")
        return ": ".join([*parts, self.reason])


class ConfigError(Exception):
    """Invalid configuration; nothing from it was applied."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def one(
        cls, source: str, obj: str, field: str, reason: str, line: int | None = None
    ) -> ConfigError:
        return cls([ConfigProblem(source, obj, field, reason, line)])


class ProtocolError(Exception):
    """Malformed or disallowed traffic; the connection is closed and counted."""

    def __init__(self, reason: str, label: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.label = label
