"""UpstreamConn reads at most its buffer limit at a time (BufferedProtocol)."""

from __future__ import annotations

from meshgate.protocols.http1 import EndOfMessage, HttpError, ResponseEvent, ResponseHead
from meshgate.upstream.http_conn import KeepAlive, UpstreamConn


class Sink:
    def __init__(self) -> None:
        self.events: list[ResponseEvent] = []

    def response_events(self, events: list[ResponseEvent]) -> None:
        self.events.extend(events)

    def response_error(self, error: HttpError) -> None:
        raise AssertionError(error)

    def upstream_lost(self, exc: Exception | None) -> None: ...

    def upstream_raw(self, data: bytes) -> None: ...

    def upstream_eof(self) -> None: ...

    def upstream_pause(self) -> None: ...

    def upstream_resume(self) -> None: ...


def test_a_read_is_never_larger_than_the_buffer_limit() -> None:
    # uvloop's own reads take 256 KiB; to a slow client each would sit whole
    # in memory past the limit.
    conn = UpstreamConn(None, "k", KeepAlive(), buffer_limit=16 << 10)
    assert len(conn.get_buffer(-1)) == 16 << 10
    assert len(conn.get_buffer(1 << 20)) == 16 << 10


def test_bytes_read_into_the_shared_buffer_are_parsed_as_received() -> None:
    conn = UpstreamConn(None, "k", KeepAlive(), buffer_limit=64 << 10)
    sink = Sink()
    conn.sink = sink
    conn.parser.expect("GET")
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    for piece in (answer[:10], answer[10:]):
        buf = conn.get_buffer(-1)
        buf[: len(piece)] = piece
        conn.buffer_updated(len(piece))
    # The buffer is reused by the next read: what was handed on must be a copy.
    conn.get_buffer(-1)[:8] = b"XXXXXXXX"
    head = sink.events[0]
    assert isinstance(head, ResponseHead)
    assert head.status == 200
    assert any(isinstance(e, EndOfMessage) for e in sink.events)
    body = b"".join(bytes(getattr(e, "data", b"")) for e in sink.events)
    assert body == b"hi"
