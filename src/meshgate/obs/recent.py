"""The last errors meshgate logged, kept in memory for the admin dashboard.

`RecentErrors` is a `logging.Handler` with a bounded ring buffer: attached to
the "meshgate" logger, it keeps WARNING and worse from every `meshgate.*`
logger, plus the few INFO events that are errors a person looking at a
dashboard wants to see. The data plane logs those at INFO on purpose: a
client can cause them at will (a malformed request, a bad ClientHello), so
they must not read as warnings about meshgate itself. They are picked here by
(logger, event) and, for the per-request and per-connection lines, by their
fields; see `INFO_ERRORS`.

Only records that reach the handler are seen: with `--log-level warning` the
INFO events are filtered out before they get here, and an HTTP listener
with its access log off writes no per-request line.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

# Enough to see what just went wrong and its pattern (one refused backend, a
# scanner sending garbage) without the admin answer growing past a few KiB.
CAPACITY: Final = 50

# A logged field longer than this is cut: an error detail may quote what a
# client sent, and a client decides how long that is.
MAX_FIELD_CHARS: Final = 300

Fields = Mapping[str, Any]


def _always(fields: Fields) -> bool:
    return True


def _failed_request(fields: Fields) -> bool:
    # A 404 without a route and every 5xx meshgate answered itself (those
    # carry a reason label; a backend's own 503 has none and is no error of
    # the proxy's). A failed connect is left out: it has its own "upstream
    # connect failed" line, which says why.
    status, reason = fields.get("status"), fields.get("reason")
    if not isinstance(status, int) or not reason or reason == "connect_failed":
        return False
    return status >= 500 or reason == "no_route"


def _abnormal_close(fields: Fields) -> bool:
    # The same rule as meshgate_connection_errors_total; "no_upstream" is
    # logged at WARNING ("no upstream") already.
    return fields.get("reason") not in ("eof", "no_upstream", None)


# (logger, event) -> does this INFO record describe an error?
INFO_ERRORS: Final[dict[tuple[str, str], Callable[[Fields], bool]]] = {
    ("meshgate.http", "http request rejected"): _always,  # 400/414/431: malformed, smuggling
    ("meshgate.tls", "tls connection rejected"): _always,  # bad hello, unknown SNI, handshake
    ("meshgate.proxy_protocol", "proxy header rejected"): _always,
    ("meshgate.access", "upstream connect failed"): _always,  # HTTP: refused/timed out -> 502
    ("meshgate.access", "http request"): _failed_request,
    ("meshgate.tcp", "connection closed"): _abnormal_close,
}


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    time: float
    level: str
    logger: str
    event: str
    fields: dict[str, Any]

    @property
    def reason(self) -> str | None:
        """The one value that says what went wrong, by the data plane's field names."""
        for key in ("reason", "error", "problem", "detail"):
            value = self.fields.get(key)
            if value not in (None, ""):
                return str(value)
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "time": round(self.time, 3),
            "level": self.level,
            "logger": self.logger,
            "event": self.event,
            "reason": self.reason,
            "fields": self.fields,
        }


def _plain(value: object) -> object:
    """A JSON-safe copy of one field value (fields are written for a log line)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[:MAX_FIELD_CHARS]


class RecentErrors(logging.Handler):
    """A ring buffer of the last `capacity` error records; thread-safe."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        super().__init__(logging.NOTSET)
        self.capacity = capacity
        self.seen = 0  # every error kept since start, including those pushed out
        self._records: deque[ErrorRecord] = deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        raw = _fields(record)
        if not is_error(record, raw):
            return
        fields = {key: _plain(value) for key, value in raw.items()}
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            fields.setdefault("error", _plain(f"{type(exc).__name__}: {exc}"))
        self._records.append(
            ErrorRecord(
                time=record.created,
                level=record.levelname.lower(),
                logger=record.name,
                event=record.getMessage(),
                fields=fields,
            )
        )
        self.seen += 1

    def snapshot(self) -> list[ErrorRecord]:
        """The kept records, newest first."""
        # handle() appends under this lock; copying under it too means a
        # record logged from another thread cannot mutate the deque mid-copy.
        with self.lock or contextlib.nullcontext():
            records = list(self._records)
        records.reverse()
        return records

    def to_json(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "seen": self.seen,
            "errors": [record.to_json() for record in self.snapshot()],
        }

    @contextlib.contextmanager
    def attached(self, logger: logging.Logger) -> Iterator[RecentErrors]:
        """Collect from `logger` (and its children) while the block runs."""
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)


def is_error(record: logging.LogRecord, fields: Fields) -> bool:
    """WARNING and worse from meshgate, or one of the INFO_ERRORS events."""
    if record.name != "meshgate" and not record.name.startswith("meshgate."):
        return False
    if record.levelno >= logging.WARNING:
        return True
    # The data plane logs a constant event name without %-arguments.
    event = record.msg if isinstance(record.msg, str) else ""
    rule = INFO_ERRORS.get((record.name, event))
    return rule is not None and rule(fields)


def _fields(record: logging.LogRecord) -> Fields:
    # Not copied: every access-log line passes here, and only kept ones are.
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}
