"""A YAML file as a configuration source (`-c meshgate.yaml`).

Every `load()` reads the file again: that is how SIGHUP picks up an edited
file. A file that has become invalid raises ConfigError and the caller keeps
running on the table it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshgate.config.files import load_file
from meshgate.config.model import Config


@dataclass(frozen=True, slots=True)
class FileSource:
    """One YAML file; its path (as given) names it in errors."""

    path: Path | str

    @property
    def name(self) -> str:
        return str(self.path)

    def load(self) -> Config:
        return load_file(self.path)
