"""The overload stage every listener reads on its hot path.

Stages, as ingress operators know them from Envoy's overload manager:
0 normal; 1 keep-alive off (every response says `Connection: close`, so
clients spread out and connections are released); 2 new HTTP requests get
503 (connections in flight finish); 3 listeners stop accepting.

`OverloadState.stage` is a plain attribute, so reading it costs one lookup;
it is set by the sampler (see `dataplane.admission`) from the connection
count and resident memory against the table's `limits`.
"""

from __future__ import annotations

from enum import IntEnum


class Stage(IntEnum):
    NORMAL = 0
    NO_KEEPALIVE = 1
    REJECT_REQUESTS = 2
    STOP_ACCEPTING = 3


class OverloadState:
    __slots__ = ("reason", "stage")

    def __init__(self) -> None:
        self.stage = Stage.NORMAL
        self.reason = ""  # what drove the stage: "connections" or "memory"
