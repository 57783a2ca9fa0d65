"""Structured logs: one event per line, as JSON or as `key=value` text.

Code logs an event name as the message and its data as
`extra={"fields": {...}}`; the formatter renders both.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Literal

from meshgate import settings

LogFormat = Literal["json", "text"]


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        parts = [stamp, f"{record.levelname.lower():5}", record.getMessage()]
        parts += [f"{k}={_text(v)}" for k, v in _fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


class _WorkerField(logging.Filter):
    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.fields = {**_fields(record), "worker": self.worker}
        return True


def setup(fmt: LogFormat = "text", level: str = "info") -> None:
    """Send all meshgate logs to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    worker = os.environ.get(settings.WORKER_INDEX_ENV)
    if worker is not None:  # `run --workers N`: say which process logged
        handler.addFilter(_WorkerField(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp logs every admin request at info; that is noise next to traffic logs.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
