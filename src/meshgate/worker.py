"""The worker side of `meshgate run --workers N` (the supervisor is in
supervisor.py, imported only by the process that supervises)."""

from __future__ import annotations

import os
from pathlib import Path

from meshgate import settings


def worker_index() -> int | None:
    """This process's worker index, or None when it is not a worker."""
    value = os.environ.get(settings.WORKER_INDEX_ENV)
    return int(value) if value is not None and value.isdigit() else None


def report_admin(address: str) -> None:
    """Called by a worker once its admin server listens: tell the supervisor where."""
    path = os.environ.get(settings.WORKER_REPORT_ENV)
    if path:
        tmp = f"{path}.tmp"
        Path(tmp).write_text(address)
        os.replace(tmp, path)  # the supervisor never reads half a file
