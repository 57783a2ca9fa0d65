"""The three-way result every sans-I/O parser returns.

A parser given a buffer returns a value when the message is complete, the
`NEED_MORE` sentinel when the buffer is a valid prefix, and raises
`meshgate.errors.ProtocolError` (with a metric label) for anything else.
"""

from __future__ import annotations

from enum import Enum
from typing import Final, Literal


class _NeedMore(Enum):
    NEED_MORE = "need_more"

    def __repr__(self) -> str:
        return "NEED_MORE"


NeedMore = Literal[_NeedMore.NEED_MORE]
NEED_MORE: Final = _NeedMore.NEED_MORE
