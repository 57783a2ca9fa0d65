"""HTTP/1.1 messages for the reverse proxy: requests from clients, responses from upstreams.

The proxy reads a request from a client and writes it to a backend, then does
the same with the response. Whenever two HTTP parsers on one path disagree
about where a message ends, the bytes one of them takes for body the other
takes for the next request: request smuggling (RFC 9112 §11.2). So this
module frames messages strictly and refuses what it cannot frame without
guessing (RFC 9112 §6.3, RFC 9110 §8.6), and the proxy writes every message
on with framing it generates itself (`encode_chunk`, Content-Length), never
with what it received.

Division of labour:

- llhttp (through httptools, in its strict default mode: no leniencies) checks
  the syntax: methods, request-targets, header names and values, obs-fold,
  bare CR and LF, chunk sizes and extensions, CRLF after chunk data. Its error
  messages are mapped to our labels below.
- This module owns the framing. It finds where each head ends itself (the
  first CRLFCRLF: a head never contains an empty line) and counts head bytes
  as they arrive, since llhttp has no size limits and httptools would buffer an
  endless header line. From the headers llhttp accepted it decides the body
  length (RFC 9112 §6.3) and slices bodies out of the input itself: `Data` is
  the caller's own bytes object whenever a whole feed is body, and the data of
  all the chunks in one feed is one `Data`. llhttp never sees a body framed by
  Content-Length. It does see chunked bodies (without an on_body callback, so
  it skips their data in C) while a per-chunk tracker here finds the chunk
  boundaries; llhttp must agree that the message ends exactly where the
  tracker says, or the message is refused (`framing_mismatch`). Each message
  gets a fresh llhttp parser, so nothing llhttp assumed about one message (a
  body after a HEAD response's Content-Length, say, which httptools cannot
  tell it to skip) leaks into the next.

On top of llhttp we refuse: more than one Content-Length or one of 2**63 or
more; Transfer-Encoding other than exactly `chunked` (in requests and in
responses: Transfer-Encoding is hop-by-hop, so a proxy could not pass another
coding on; a response whose final coding is not chunked would be read until
close by RFC 9112 §6.3, we answer 502 instead); Transfer-Encoding in HTTP/1.0
(§6.1); HTTP versions other than 1.0 and 1.1; extra spaces in the request
line; a `#` in the request-target; authority-form and asterisk-form except
OPTIONS; userinfo in an absolute-form target; CONNECT; a missing, repeated or
malformed Host; a status outside 100..599; control characters in a reason
phrase; a 101 without Upgrade; an upgrade request with a chunked body (llhttp
would switch protocols before that body, RFC 9110 §7.8 after it).

Choices the RFCs leave open:

- Empty lines before a request line (or a status line) are skipped (RFC 9112
  §2.2); they count towards `max_header_bytes`.
- Trailer fields of chunked messages are checked by llhttp, counted against
  the head limits, and dropped: nothing is forwarded from them.
- After a request without keep-alive, `feed` ignores further bytes (RFC 9112
  §9.6: the server does not process them). After `Upgraded`, the bytes
  belong to another protocol: `feed` raises RuntimeError.
- An HttpError loses the events of the feed that raised it, and the parser
  is dead: every later `feed` raises the same error.
- A response parser reads a response only when `expect()` announced one; bytes
  arriving when none is expected (after a HEAD or 204 head, after a final
  response, on an idle connection) belong to nothing: they are dropped and the
  connection is no longer `reusable`.

Metric labels (`HttpError.label`). Requests, status 400 unless noted:
bad_request_line, bad_method, bad_target, version (505), connect (405),
missing_host, duplicate_host, bad_host, smuggling_cl_te,
duplicate_content_length, bad_content_length, bad_transfer_encoding,
unsupported_transfer_coding (501), obs_fold, bad_header_name,
bad_header_value, bad_line_ending, bad_chunk, bad_upgrade, uri_too_long (414),
header_too_large (431), framing_mismatch, truncated, bad_request (any other
llhttp error). Responses: status 502 and the same labels prefixed
"upstream_", with bad_status_line for the start line, header_too_large for
both head limits, bad_response for the catch-all, and upstream_closed (the
connection closed before a byte of an expected response) versus
upstream_truncated (closed inside one).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final, Generic, TypeVar

import httptools

from meshgate.errors import ProtocolError

__all__ = [
    "END_OF_MESSAGE",
    "HOP_BY_HOP",
    "LAST_CHUNK",
    "Data",
    "EndOfMessage",
    "HttpError",
    "Limits",
    "RequestEvent",
    "RequestHead",
    "RequestParser",
    "ResponseEvent",
    "ResponseHead",
    "ResponseParser",
    "Upgraded",
    "connection_tokens",
    "encode_chunk",
    "serialize_request_head",
    "serialize_response_head",
]


def _after_last_end(events: Sequence[object]) -> int:
    """How many events make up the whole messages at the start of `events`."""
    for i in range(len(events) - 1, -1, -1):
        if isinstance(events[i], EndOfMessage):
            return i + 1
    return 0


class HttpError(ProtocolError):
    """Traffic we refuse to frame.

    `status` is the HTTP status to answer (400, 405, 413, 414, 431, 501, 502,
    505 ...); `label` a short metric label such as "bad_request",
    "smuggling_cl_te", "header_too_large" (see the module docstring).
    """

    def __init__(self, status: int, reason: str, label: str) -> None:
        super().__init__(reason, label)
        self.status = status


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one message can make us hold before its body."""

    max_request_line: int = 8192  # request (or status) line without CRLF; over -> 414
    max_header_bytes: int = 32768  # the whole head, CRLFs included; over -> 431
    max_headers: int = 100  # header fields; over -> 431 (trailers: the same cap again)
    max_chunk_line: int = 4096  # a chunk-size line with its extensions; over -> 400

    def __post_init__(self) -> None:
        for name in ("max_request_line", "max_header_bytes", "max_headers", "max_chunk_line"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be positive")


@dataclass(slots=True)
class RequestHead:
    method: str  # "GET"
    target: str  # the request-target as sent, e.g. "/a/b?x=1"
    path: str  # target up to "?" (absolute-form "http://h/p?q": "/p"; "http://h": "/")
    query: str  # after "?", without it; "" if none
    version: str  # "1.1" or "1.0"
    headers: list[tuple[bytes, bytes]]  # in order, names as received, values without OWS
    host: str | None  # the Host value (absolute-form: the URI's authority), as sent
    content_length: int | None
    chunked: bool
    keep_alive: bool  # per version and Connection header
    upgrade: str | None  # the Upgrade value when Connection has "upgrade", else None
    expect_continue: bool  # Expect: 100-continue, in an HTTP/1.1 request (RFC 9110 §10.1.1)
    # The head exactly as received (start line to the empty line, checked by
    # llhttp and by this module): the proxy edits it instead of rebuilding it.
    raw: bytes = field(default=b"", compare=False, repr=False)
    # Lower-case Connection tokens.
    connection: frozenset[bytes] = field(default=frozenset(), compare=False, repr=False)


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: str  # latin-1 decoded, "" if absent
    version: str
    headers: list[tuple[bytes, bytes]]
    # As declared. For responses without a body (1xx, 204, 304, to HEAD) they
    # describe the body a GET would have had; nothing of it follows.
    content_length: int | None
    chunked: bool
    # Per version and Connection header; False too when the body runs until
    # close or the response is a 101.
    keep_alive: bool
    # True when the body runs until the connection closes (no length, not
    # chunked, and a body is allowed): feed_eof() ends it.
    until_close: bool
    raw: bytes = field(default=b"", compare=False, repr=False)  # as in RequestHead
    connection: frozenset[bytes] = field(default=frozenset(), compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes  # body bytes, de-chunked


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    pass


END_OF_MESSAGE: Final = EndOfMessage()


@dataclass(frozen=True, slots=True)
class Upgraded:
    rest: bytes  # bytes after the message that belong to the upgraded protocol


RequestEvent = RequestHead | Data | EndOfMessage | Upgraded
ResponseEvent = ResponseHead | Data | EndOfMessage | Upgraded

LAST_CHUNK: Final = b"0\r\n\r\n"

HOP_BY_HOP: Final[frozenset[bytes]] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

# --- grammar (RFC 9110 §5.6.2, §7.2; RFC 9112 §3, §4) --------------------------

_TCHAR: Final = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN: Final = re.compile(rb"[" + _TCHAR.encode() + rb"]+")
# method SP request-target SP HTTP-version CRLF, single spaces (RFC 9112 §3).
# llhttp tolerates doubled spaces; a backend might not read them as we do.
_REQUEST_LINE: Final = re.compile(
    rb"([" + _TCHAR.encode() + rb"]+) ([!-~]+) HTTP/([0-9])\.([0-9])\r\n"
)
# HTTP-version SP status-code [SP reason-phrase] CRLF (RFC 9112 §4); the reason
# is HTAB / SP / VCHAR / obs-text, which llhttp does not check.
_STATUS_LINE: Final = re.compile(
    rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?\r\n"
)
# uri-host [":" port]: an IP-literal or a reg-name (RFC 3986 §3.2.2); no
# userinfo, path, space or control character can get through.
_HOST_PATTERN: Final = r"(?:\[[0-9A-Za-z:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)(?::[0-9]*)?"
_HOST: Final = re.compile(_HOST_PATTERN.encode())
_AUTHORITY: Final = re.compile(_HOST_PATTERN)
_ABSOLUTE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?]*)([^?]*)(?:\?(.*))?")
_TARGET: Final = re.compile(rb"[!-~]+")
_DIGITS: Final = re.compile(rb"[0-9]+")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]+")
_SIZE_LINE_RE: Final = re.compile(rb"([0-9A-Fa-f]+)[^\n]*\n")  # chunk-size [ext] CRLF
_CRLFS: Final = re.compile(rb"[\r\n]*")
# A field line as llhttp accepts it, to find the line it failed on.
_GOOD_FIELD: Final = re.compile(rb"[" + _TCHAR.encode() + rb"]+:[^\x00-\x08\x0a-\x1f\x7f]*")
# A field line of a head llhttp accepted: name, value without OWS around it.
_FIELD_LINE: Final = re.compile(
    rb"\r\n([" + _TCHAR.encode() + rb"]+):[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)"
)
_FIELD_VALUE: Final = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")
_REASON: Final = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")

_H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\n"  # RFC 9113 §3.4, up to its empty line
_NO_TOKENS: Final[frozenset[bytes]] = frozenset()
_INT64: Final = 2**63  # Content-Length and chunk sizes must stay below
_VERSIONS: Final = {(b"1", b"1"): "1.1", (b"1", b"0"): "1.0"}
_SPECIAL: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"connection", b"upgrade", b"expect"}
)

# Parts of llhttp's error messages (lower-cased), most specific first, and our labels.
_LLHTTP_LABELS: Final = (
    ("can't be present with", "smuggling_cl_te"),
    ("duplicate content-length", "duplicate_content_length"),
    ("content-length", "bad_content_length"),
    ("transfer-encoding", "bad_transfer_encoding"),
    ("chunk", "bad_chunk"),
    ("whitespace after header value", "obs_fold"),  # a continuation line
    ("space after start line", "obs_fold"),  # the first field line starts with SP
    ("header value", "bad_header_value"),
    ("header token", "bad_header_name"),
    ("header field", "bad_header_name"),
    ("after version", "bad_request_line"),
    ("expected http/", "bad_request_line"),
    ("version", "version"),
    ("expected dot", "version"),
    ("pri/upgrade", "version"),  # an HTTP/2 connection preface
    ("method", "bad_method"),
    ("url", "bad_target"),
    ("status", "bad_status_line"),
    ("response line", "bad_status_line"),
    ("expected lf after", "bad_line_ending"),  # a CR not followed by LF
)
# What request-side labels become for upstream responses (then "upstream_").
_RESPONSE_LABELS: Final = {
    "uri_too_long": "header_too_large",
    "bad_request_line": "bad_status_line",
    "bad_request": "bad_response",
}

# Parser states.
_HEAD: Final = 0  # reading a head (or waiting for one)
_LENGTH: Final = 1  # a Content-Length body
_CHUNKED: Final = 2  # a chunked body
_UNTIL_CLOSE: Final = 3  # a response body that ends at EOF
_CLOSED: Final = 4  # no further message on this connection: bytes are dropped
_UPGRADED: Final = 5  # bytes belong to another protocol
_DEAD: Final = 6  # an HttpError was raised

# Where the chunk tracker is inside a chunked body.
_SIZE_LINE: Final = 0
_CHUNK_DATA: Final = 1
_CHUNK_CRLF: Final = 2
_TRAILERS: Final = 3
_CHUNKS_DONE: Final = 4

# How the body of the message being read is framed.
_NO_BODY: Final = 0
_BY_LENGTH: Final = 1
_BY_CHUNKS: Final = 2
_BY_CLOSE: Final = 3

_H = TypeVar("_H", RequestHead, ResponseHead)


class _Parser(Generic[_H]):
    """The framing shared by both directions; subclasses build the heads."""

    __slots__ = (
        "_chunk",
        "_error",
        "_framing",
        "_head",
        "_head_event",
        "_headers",
        "_in_body",
        "_interim",
        "_keep_alive",
        "_limits",
        "_line",
        "_line_open",
        "_ll",
        "_ll_done",
        "_ll_upgrade",
        "_pending",
        "_remaining",
        "_skipped",
        "_specials",
        "_state",
        "_trailer_count",
        "_trailer_partial",
        "_trailer_used",
        "_upgrade",
    )

    _upstream: ClassVar[bool] = False

    _limits: Limits
    _state: int
    _error: HttpError | None
    # The current message.
    _head: bytearray  # head bytes fed so far, from the start line on
    _skipped: int  # empty lines skipped before the start line
    _line_open: bool  # the start line has not ended yet
    _ll: httptools.HttpRequestParser | httptools.HttpResponseParser | None
    _ll_done: bool  # llhttp reported the end of the message
    _ll_upgrade: bool  # llhttp stopped for an upgrade
    _pending: HttpError | None  # raised inside an llhttp callback
    _headers: list[tuple[bytes, bytes]]
    _specials: dict[bytes, list[bytes]]  # values of the headers in _SPECIAL
    _in_body: bool  # headers complete: further fields are trailers
    _head_event: _H | None
    _framing: int
    _keep_alive: bool
    _upgrade: bool  # the message ends in Upgraded
    _interim: bool  # a 1xx response other than 101
    _remaining: int  # Content-Length left, or chunk data / CRLF left
    _chunk: int  # chunk tracker phase
    _line: bytearray  # a chunk-size line split across feeds
    _trailer_used: int
    _trailer_partial: int  # bytes of the trailer line being read
    _trailer_count: int

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._state = _HEAD
        self._error = None
        self._reset()

    def _reset(self) -> None:
        self._head = bytearray()
        self._skipped = 0
        self._line_open = True
        self._ll = None
        self._ll_done = False
        self._ll_upgrade = False
        self._pending = None
        self._headers = []
        self._specials = {}
        self._in_body = False
        self._head_event = None
        self._framing = _NO_BODY
        self._keep_alive = True
        self._upgrade = False
        self._interim = False
        self._remaining = 0
        self._chunk = _SIZE_LINE
        self._line = bytearray()
        self._trailer_used = 0
        self._trailer_partial = 0
        self._trailer_count = 0

    # --- hooks ------------------------------------------------------------------

    def _new_ll(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        raise NotImplementedError

    def _build_head(self) -> _H:
        """Check the complete head and set the framing; raise HttpError."""
        raise NotImplementedError

    def _can_start(self) -> bool:
        """Whether bytes arriving between messages may start one."""
        return True

    def _message_done(self, *, final: bool) -> None:
        """A message ended (`final`: not an interim response)."""

    # --- driving ------------------------------------------------------------------

    def _feed(self, data: bytes) -> list[_H | Data | EndOfMessage | Upgraded]:
        if self._error is not None:
            raise self._error
        if not data:
            return []
        if self._state == _UPGRADED:
            raise RuntimeError("the connection was upgraded: relay its bytes, do not parse them")
        if type(data) is not bytes:
            data = bytes(data)
        events: list[_H | Data | EndOfMessage | Upgraded] = []
        pos, end = 0, len(data)
        try:
            while pos < end:
                state = self._state
                if state == _HEAD:
                    pos = self._read_head(data, pos, events)
                elif state == _LENGTH:
                    pos = self._read_length(data, pos, events)
                elif state == _CHUNKED:
                    pos = self._read_chunked(data, pos, events)
                elif state == _UNTIL_CLOSE:
                    events.append(Data(data[pos:] if pos else data))
                    pos = end
                else:  # _CLOSED (or _UPGRADED, whose `rest` took the bytes)
                    pos = end
        except HttpError as error:
            self._die(error)
            whole = _after_last_end(events)
            if not whole:
                raise
            # Whole messages before the bad one are handed over (a pipelined
            # good request still gets its answer); the error waits in
            # `failed`, and the next feed raises it.
            del events[whole:]
        return events

    @property
    def failed(self) -> HttpError | None:
        """The error that ended parsing, once the events before it were returned."""
        return self._error

    def _die(self, error: HttpError) -> None:
        self._error = error
        self._state = _DEAD
        self._ll = None

    def _read_head(
        self, data: bytes, pos: int, events: list[_H | Data | EndOfMessage | Upgraded]
    ) -> int:
        size = len(data)
        head = self._head
        limits = self._limits
        if not head:
            pos = self._start_message(data, pos)
            if pos == size:
                return size
        end = self._head_end(data, pos)
        stop = size if end < 0 else end

        # Take no more than the limits allow, so a peer that never ends its
        # line or its head is stopped as the bytes arrive, not buffered.
        cap = pos + limits.max_header_bytes - self._skipped - len(head)
        label = "header_too_large"
        line_end = -1
        if self._line_open:
            allowed = limits.max_request_line + 2 - len(head)  # bytes left for the line and CRLF
            line_end = data.find(b"\n", pos, pos + allowed)
            if line_end < 0 and pos + allowed <= cap:
                cap, label = pos + allowed, "uri_too_long"
        over = stop > cap
        if over:
            stop = cap

        piece = data if stop - pos == len(data) else data[pos:stop]
        head += piece
        if 0 <= line_end < stop:
            self._line_open = False
        self._feed_ll(piece)
        if over:
            if label == "uri_too_long":
                raise self._fail(414, f"start line over {limits.max_request_line} bytes", label)
            raise self._fail(431, f"head over {limits.max_header_bytes} bytes", label)
        if self._head_event is None:
            if stop != end:
                return stop
            if head.startswith(_H2_PREFACE):  # llhttp waits for the rest of it
                raise self._fail(505, "an HTTP/2 connection preface", "version")
            raise self._fail(400, "llhttp did not end the head at CRLFCRLF", "framing_mismatch")
        return self._start_body(data, stop, events)

    def _start_message(self, data: bytes, pos: int) -> int:
        """Skip what comes before a start line; len(data) if nothing else came."""
        if not self._can_start():
            self._state = _CLOSED
            return len(data)
        # RFC 9112 §2.2: empty lines before the start line are ignored.
        start = pos if data[pos] not in b"\r\n" else _skip_crlfs(data, pos)
        if start > pos:
            self._skipped += start - pos
            if self._skipped > self._limits.max_header_bytes:
                raise self._fail(431, "too many empty lines before the head", "header_too_large")
        if self._ll is None and start < len(data):
            self._ll = self._new_ll()
        return start

    def _head_end(self, data: bytes, pos: int) -> int:
        """Where the head ends in `data`: after the first CRLFCRLF, or -1.

        A head never contains an empty line, and the CRLFCRLF may straddle
        the previous feed and this one.
        """
        head = self._head
        if head:
            tail = bytes(head[-3:])
            hit = (tail + data[pos : pos + 3]).find(b"\r\n\r\n")
            if hit >= 0:
                return pos + hit + 4 - len(tail)
        hit = data.find(b"\r\n\r\n", pos)
        return hit + 4 if hit >= 0 else -1

    def _start_body(
        self, data: bytes, pos: int, events: list[_H | Data | EndOfMessage | Upgraded]
    ) -> int:
        assert self._head_event is not None
        events.append(self._head_event)
        framing = self._framing
        if framing == _BY_LENGTH:
            self._state = _LENGTH
        elif framing == _BY_CHUNKS:
            self._state = _CHUNKED
        elif framing == _BY_CLOSE:
            self._state = _UNTIL_CLOSE
            self._ll = None
        else:
            return self._end_message(data, pos, events)
        return pos

    def _read_length(
        self, data: bytes, pos: int, events: list[_H | Data | EndOfMessage | Upgraded]
    ) -> int:
        size = len(data)
        take = min(self._remaining, size - pos)
        events.append(Data(data if take == size else data[pos : pos + take]))
        pos += take
        self._remaining -= take
        if self._remaining:
            return pos
        return self._end_message(data, pos, events)

    def _read_chunked(
        self, data: bytes, pos: int, events: list[_H | Data | EndOfMessage | Upgraded]
    ) -> int:
        """Track chunk boundaries (RFC 9112 §7.1); llhttp checks the syntax.

        The data of all the chunks in one feed becomes one Data event, so many
        small chunks cost one event, not one each.
        """
        size = len(data)
        start = pos
        view = memoryview(data)
        parts: list[memoryview] = []
        failure: HttpError | None = None
        window = self._limits.max_chunk_line + 2  # a size line with its CRLF
        phase, remaining = self._chunk, self._remaining
        while pos < size:
            if phase == _SIZE_LINE:
                line = None if self._line else _SIZE_LINE_RE.match(data, pos, pos + window)
                if line is not None and len(line[1]) <= 15:  # the usual case: a whole line
                    pos, remaining = line.end(), int(line[1], 16)
                else:
                    pos, remaining, failure = self._size_line(data, pos)
                    if failure is not None or remaining < 0:
                        break
                if not remaining:
                    phase = _TRAILERS
                elif pos + remaining + 2 <= size:  # the whole chunk and its CRLF are here
                    parts.append(view[pos : pos + remaining])
                    pos += remaining + 2  # llhttp checks that they are CRLF
                else:
                    phase = _CHUNK_DATA
            elif phase == _CHUNK_DATA:
                take = remaining if remaining < size - pos else size - pos
                parts.append(view[pos : pos + take])
                pos += take
                remaining -= take
                if not remaining:
                    phase, remaining = _CHUNK_CRLF, 2
            elif phase == _CHUNK_CRLF:
                take = remaining if remaining < size - pos else size - pos
                pos += take
                remaining -= take
                if not remaining:
                    phase = _SIZE_LINE
            else:
                pos, done, failure = self._trailer_line(data, pos)
                if done or failure is not None:
                    phase = _CHUNKS_DONE
                    break
        self._chunk, self._remaining = phase, remaining
        # llhttp sees every byte the tracker passed, before any verdict of ours.
        self._feed_ll(view[start:pos] if start or pos != size else data)
        if failure is not None:
            raise failure
        if parts:
            whole = len(parts) == 1 and len(parts[0]) == size
            events.append(Data(data if whole else b"".join(parts)))
        return self._end_message(data, pos, events) if phase == _CHUNKS_DONE else pos

    def _size_line(self, data: bytes, pos: int) -> tuple[int, int, HttpError | None]:
        """Read (some of) a chunk-size line split across feeds, or a bad one.

        Returns the new position and the chunk size, -1 while the line is
        incomplete. llhttp checks the extensions.
        """
        buffered = self._line
        allowed = self._limits.max_chunk_line + 2 - len(buffered)  # with the CRLF
        newline = data.find(b"\n", pos, pos + allowed)
        if newline < 0:
            if len(data) - pos >= allowed:
                error = self._fail(400, "chunk-size line too long", "bad_chunk")
                return pos + allowed, -1, error
            buffered += data[pos:]
            return len(data), -1, None
        line = data[pos:newline]
        if buffered:
            line = bytes(buffered) + line
            buffered.clear()
        digits = _HEX.match(line)
        if digits is None:
            return newline + 1, -1, self._fail(400, "no chunk size", "bad_chunk")
        significant = digits[0].lstrip(b"0") or b"0"
        # No more than 2**63 - 1 (llhttp's own cap is 2**64 - 1).
        if len(significant) > 16 or int(significant, 16) >= _INT64:
            return newline + 1, -1, self._fail(400, "chunk size overflow", "bad_chunk")
        return newline + 1, int(significant, 16), None

    def _trailer_line(self, data: bytes, pos: int) -> tuple[int, bool, HttpError | None]:
        """Read (some of) a trailer field line; True at the empty line ending the body."""
        allowed = self._limits.max_header_bytes - self._trailer_used
        newline = data.find(b"\n", pos, pos + allowed)
        if newline < 0:
            if len(data) - pos >= allowed:
                error = self._fail(431, "trailers too large", "header_too_large")
                return pos + allowed, False, error
            self._trailer_used += len(data) - pos
            self._trailer_partial += len(data) - pos
            return len(data), False, None
        taken = newline + 1 - pos
        self._trailer_used += taken
        done = self._trailer_partial + taken == 2  # CRLF alone
        self._trailer_partial = 0
        if not done:
            self._trailer_count += 1
            if self._trailer_count > self._limits.max_headers:
                error = self._fail(
                    431, f"more than {self._limits.max_headers} trailers", "header_too_large"
                )
                return newline + 1, False, error
        return newline + 1, done, None

    def _end_message(
        self, data: bytes, pos: int, events: list[_H | Data | EndOfMessage | Upgraded]
    ) -> int:
        if self._framing == _BY_CHUNKS and not self._ll_done:
            raise self._fail(400, "llhttp did not end the chunked body here", "framing_mismatch")
        if self._ll_upgrade and not self._upgrade:
            raise self._fail(400, "llhttp saw an upgrade we did not", "framing_mismatch")
        if self._upgrade:
            events.append(Upgraded(data[pos:]))
            self._message_done(final=True)
            self._state = _UPGRADED
            self._ll = None
            return len(data)
        events.append(END_OF_MESSAGE)
        final = not self._interim
        self._message_done(final=final)
        if final and not self._keep_alive:
            self._state = _CLOSED
            self._ll = None
            return len(data)
        self._reset()
        self._state = _HEAD
        return pos

    # --- llhttp -----------------------------------------------------------------

    def _feed_ll(self, piece: bytes | memoryview) -> None:
        assert self._ll is not None
        try:
            self._ll.feed_data(piece)
        except httptools.HttpParserUpgrade as upgrade:
            # llhttp pauses after an upgrade request or a 101. We never feed it
            # past the end of a message, so it must pause at the very end.
            if self._head_event is None or upgrade.args[0] != len(piece):
                reason = "llhttp upgraded inside the message"
                raise self._fail(400, reason, "framing_mismatch") from None
            self._ll_upgrade = True
        except httptools.HttpParserCallbackError:
            if self._pending is None:
                raise  # a bug in a callback: let it show
            raise self._pending from None
        except httptools.HttpParserError as error:
            raise self._translate(error) from None

    def _translate(self, error: httptools.HttpParserError) -> HttpError:
        message = str(error)
        if isinstance(error, httptools.HttpParserInvalidMethodError):
            label = "bad_method"
        elif isinstance(error, httptools.HttpParserInvalidURLError):
            label = "bad_target"
        elif isinstance(error, httptools.HttpParserInvalidStatusError):
            label = "bad_status_line"
        else:
            lower = message.lower()
            label = next((lb for key, lb in _LLHTTP_LABELS if key in lower), "bad_request")
        folded = not self._in_body and _first_bad_line_is_fold(self._head)
        if label in ("bad_header_name", "bad_header_value") and folded:
            # A field line starting with SP/HTAB: llhttp names the field it
            # broke (a fold after an empty value looks like a bad value).
            label = "obs_fold"
        return self._fail(505 if label == "version" else 400, f"llhttp: {message}", label)

    def _fail(self, status: int, reason: str, label: str) -> HttpError:
        if self._upstream:
            status, label = 502, "upstream_" + _RESPONSE_LABELS.get(label, label)
        error = HttpError(status, reason, label)
        self._pending = error
        return error

    # httptools callbacks (not API). llhttp checks every field line; the
    # fields are then read from the head in one pass (`_FIELD_LINE`) rather
    # than through a callback per field. Trailers are counted by the chunk
    # tracker (`_trailer_line`).

    def on_headers_complete(self) -> None:
        head = self._head
        headers = _FIELD_LINE.findall(head, head.index(b"\r\n"))
        limits = self._limits
        if len(headers) > limits.max_headers:
            raise self._fail(431, f"more than {limits.max_headers} headers", "header_too_large")
        specials = self._specials
        for name, value in headers:
            lower = name.lower()
            if lower in _SPECIAL:
                specials.setdefault(lower, []).append(value)
        self._headers = headers
        event = self._build_head()  # a bad start line is reported as such first
        if len(headers) != head.count(b"\r\n") - 2:  # every line but the first and last
            raise self._fail(400, "a field line llhttp passed but we cannot read", "bad_request")
        self._head_event = event
        self._in_body = True

    def on_message_complete(self) -> None:
        self._ll_done = True

    # --- header semantics shared by requests and responses ----------------------

    def _start_line_version(self, major: bytes, minor: bytes) -> str:
        version = _VERSIONS.get((major, minor))
        if version is None:
            text = f"{major.decode()}.{minor.decode()}"
            raise self._fail(505, f"HTTP/{text} is not supported", "version")
        return version

    def _content_length(self) -> int | None:
        values = self._specials.get(b"content-length")
        if values is None:
            return None
        if len(values) > 1:
            raise self._fail(400, "more than one Content-Length", "duplicate_content_length")
        value = values[0]
        # Leading zeros are fine (1*DIGIT) but would trip int()'s digit cap.
        significant = value.lstrip(b"0") or b"0"
        if not _DIGITS.fullmatch(value) or len(significant) > 19 or int(significant) >= _INT64:
            raise self._fail(400, f"bad Content-Length {value[:40]!r}", "bad_content_length")
        return int(significant)

    def _chunked(self, version: str, content_length: int | None) -> bool:
        """Whether Transfer-Encoding says chunked; anything else is refused."""
        values = self._specials.get(b"transfer-encoding")
        if values is None:
            return False
        if content_length is not None:
            # RFC 9112 §6.3 lets the recipient pick TE; we refuse instead, as
            # the two disagreeing is the classic smuggling shape.
            raise self._fail(400, "both Content-Length and Transfer-Encoding", "smuggling_cl_te")
        if version == "1.0":  # RFC 9112 §6.1: the framing is faulty
            raise self._fail(400, "Transfer-Encoding in HTTP/1.0", "bad_transfer_encoding")
        if len(values) > 1:
            raise self._fail(400, "repeated Transfer-Encoding", "bad_transfer_encoding")
        codings = [coding.strip(b" \t").lower() for coding in values[0].split(b",")]
        if codings == [b"chunked"]:
            return True
        if codings[-1] == b"chunked" and all(
            _TOKEN.fullmatch(coding.split(b";")[0].strip(b" \t")) and coding != b"chunked"
            for coding in codings[:-1]
        ):
            # Well framed, but a coding we cannot undo (RFC 9112 §6.1: 501)
            # nor pass on (Transfer-Encoding is hop-by-hop).
            raise self._fail(
                501, f"transfer coding {values[0][:60]!r}", "unsupported_transfer_coding"
            )
        # chunked missing, not final, repeated, or an empty list element.
        raise self._fail(400, f"bad Transfer-Encoding {values[0][:60]!r}", "bad_transfer_encoding")

    def _tokens(self, name: bytes) -> set[bytes]:
        values = self._specials.get(name)
        return _list_tokens(values) if values is not None else set()


def _first_bad_line_is_fold(head: bytearray) -> bool:
    """Whether the first field line llhttp could have failed on starts with
    SP/HTAB (obs-fold). Only lines up to that one count, so the verdict is
    the same however the head was split into reads."""
    for line in bytes(head).split(b"\r\n")[1:]:
        if not line:
            return False  # the end of the head: no bad line
        if line[:1] in (b" ", b"\t"):
            return True
        if not _GOOD_FIELD.fullmatch(line):
            return False  # a bad line, but not a fold
    return False


def _skip_crlfs(data: bytes, pos: int) -> int:
    match = _CRLFS.match(data, pos)
    return pos if match is None else match.end()


def _list_tokens(values: Iterable[bytes]) -> set[bytes]:
    tokens: set[bytes] = set()
    for value in values:
        for item in value.split(b","):
            token = item.strip(b" \t").lower()
            if token:
                tokens.add(token)
    return tokens


def _keep_alive(version: str, tokens: set[bytes]) -> bool:
    # RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive".
    if b"close" in tokens:
        return False
    return version == "1.1" or b"keep-alive" in tokens


class RequestParser(_Parser[RequestHead]):
    """Requests from a client, as events; see the module docstring.

    After a request that does not keep the connection alive, further bytes are
    ignored. After `Upgraded`, `feed` raises RuntimeError; if the upstream
    declines the upgrade, a new parser fed `Upgraded.rest` carries on.
    """

    __slots__ = ()

    def __init__(self, limits: Limits = Limits()) -> None:
        super().__init__(limits)

    def feed(self, data: bytes) -> list[RequestEvent]:
        """Parse `data`; raises HttpError (and stays dead) on bad input."""
        return self._feed(data)

    def feed_eof(self) -> list[RequestEvent]:
        """The client closed its side: fine between requests, else HttpError."""
        if self._error is not None:
            raise self._error
        state = self._state
        if state in (_CLOSED, _UPGRADED):
            return []
        if state == _HEAD and not self._head:  # between requests
            self._state = _CLOSED
            return []
        error = self._fail(400, "the connection closed inside a request", "truncated")
        self._die(error)
        raise error

    def _new_ll(self) -> httptools.HttpRequestParser:
        return httptools.HttpRequestParser(self)

    def _build_head(self) -> RequestHead:
        line = _REQUEST_LINE.match(self._head)
        if line is None:
            raise self._fail(400, "malformed request line", "bad_request_line")
        raw_method, raw_target, major, minor = line.groups()
        version = self._start_line_version(major, minor)
        method = raw_method.decode("ascii")
        if method == "CONNECT":
            raise self._fail(405, "CONNECT is not supported", "connect")
        target = raw_target.decode("ascii")
        path, query, authority = self._split_target(method, target)
        host = self._host(version)
        if authority is not None:
            host = authority  # RFC 9112 §3.2.2: the target's authority wins
        content_length = self._content_length()
        chunked = self._chunked(version, content_length)
        tokens = self._tokens(b"connection")
        keep_alive = _keep_alive(version, tokens)
        upgrade = None
        upgrades = self._specials.get(b"upgrade")
        if upgrades is not None and b"upgrade" in tokens:
            value = b", ".join(upgrades)
            if not value:
                raise self._fail(400, "empty Upgrade", "bad_upgrade")
            if chunked:
                # llhttp switches protocols right after such a head, before
                # the body (Node does too); the RFC says after it. Refuse.
                raise self._fail(400, "Upgrade with a chunked body", "bad_upgrade")
            upgrade = value.decode("latin-1")
            self._upgrade = True
        expect_continue = version == "1.1" and b"100-continue" in self._tokens(b"expect")
        if chunked:
            self._framing = _BY_CHUNKS
        elif content_length:
            self._framing, self._remaining = _BY_LENGTH, content_length
        self._keep_alive = keep_alive
        return RequestHead(
            method=method,
            target=target,
            path=path,
            query=query,
            version=version,
            headers=self._headers,
            host=host,
            content_length=content_length,
            chunked=chunked,
            keep_alive=keep_alive,
            upgrade=upgrade,
            expect_continue=expect_continue,
            raw=bytes(self._head),
            connection=frozenset(tokens) if tokens else _NO_TOKENS,
        )

    def _split_target(self, method: str, target: str) -> tuple[str, str, str | None]:
        """(path, query, authority) of a request-target (RFC 9112 §3.2)."""
        if "#" in target:
            raise self._fail(400, "fragment in request-target", "bad_target")
        if target[0] == "/":  # origin-form
            path, _, query = target.partition("?")
            return path, query, None
        if target == "*":  # asterisk-form
            if method != "OPTIONS":
                raise self._fail(400, f"'*' target with {method}", "bad_target")
            return "*", "", None
        absolute = _ABSOLUTE.fullmatch(target)
        if absolute is None or absolute[1].lower() not in ("http", "https"):
            raise self._fail(400, f"unsupported request-target {target[:60]!r}", "bad_target")
        authority = absolute[2]
        if not _AUTHORITY.fullmatch(authority):
            # Empty, or userinfo (RFC 9110 §4.2.4), or junk.
            raise self._fail(400, f"bad authority {authority[:60]!r}", "bad_target")
        return absolute[3] or "/", absolute[4] or "", authority

    def _host(self, version: str) -> str | None:
        values = self._specials.get(b"host")
        if values is None:
            if version == "1.1":  # RFC 9112 §3.2
                raise self._fail(400, "no Host header", "missing_host")
            return None
        if len(values) > 1:
            raise self._fail(400, "more than one Host header", "duplicate_host")
        value = values[0]
        if not _HOST.fullmatch(value):
            raise self._fail(400, f"bad Host {value[:60]!r}", "bad_host")
        return value.decode("ascii")


class ResponseParser(_Parser[ResponseHead]):
    """Responses from an upstream, as events; see the module docstring.

    Call `expect(method)` for each request sent (before its response can
    arrive; several may be queued when pipelining). Interim 1xx responses come
    as a head and EndOfMessage each, before the final response to the same
    request. A 101 ends in `Upgraded` and the parser stops.
    """

    __slots__ = ("_answered", "_expected")

    _upstream: ClassVar[bool] = True
    _expected: deque[str]  # methods of the requests whose responses are due
    _answered: bool  # an interim response to the first of them arrived

    def __init__(self, limits: Limits = Limits()) -> None:
        super().__init__(limits)
        self._expected = deque()
        self._answered = False

    def expect(self, method: str) -> None:
        """A request with `method` was sent: read its response next."""
        if not self.reusable:
            raise RuntimeError("this upstream connection cannot carry another exchange")
        self._expected.append(method)

    def feed(self, data: bytes) -> list[ResponseEvent]:
        """Parse `data`; raises HttpError (and stays dead) on bad input."""
        return self._feed(data)

    def feed_eof(self) -> list[ResponseEvent]:
        """The upstream closed: ends an until-close body, or raises HttpError.

        Label upstream_closed when an expected response had not started,
        upstream_truncated when it was cut short.
        """
        if self._error is not None:
            raise self._error
        state = self._state
        if state == _UNTIL_CLOSE:
            self._state = _CLOSED
            self._message_done(final=True)
            return [END_OF_MESSAGE]
        if state in (_CLOSED, _UPGRADED):
            return []
        self._state = _CLOSED
        if not self._expected:
            return []
        if state == _HEAD and not self._head and not self._skipped and not self._answered:
            error = self._fail(502, "the upstream closed without responding", "closed")
        else:
            error = self._fail(502, "the upstream closed inside a response", "truncated")
        self._die(error)
        raise error

    @property
    def reusable(self) -> bool:
        """False once the connection cannot carry another exchange."""
        return self._state in (_HEAD, _LENGTH, _CHUNKED)

    def _can_start(self) -> bool:
        return bool(self._expected)

    def _message_done(self, *, final: bool) -> None:
        self._answered = not final  # an interim response is part of the answer
        if final:
            self._expected.popleft()

    def _new_ll(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self)

    def _build_head(self) -> ResponseHead:
        line = _STATUS_LINE.match(self._head)
        if line is None:
            raise self._fail(502, "malformed status line", "bad_status_line")
        major, minor, code, raw_reason = line.groups()
        version = self._start_line_version(major, minor)
        status = int(code)
        if not 100 <= status <= 599:  # RFC 9110 §15
            raise self._fail(502, f"status {status} out of range", "bad_status_line")
        content_length = self._content_length()
        chunked = self._chunked(version, content_length)
        tokens = self._tokens(b"connection")
        keep_alive = _keep_alive(version, tokens)
        until_close = False
        method = self._expected[0]
        if status < 200:
            if status == 101:
                # RFC 9110 §15.2.2, §7.8: a 101 names the protocol switched to.
                if b"upgrade" not in self._specials or b"upgrade" not in tokens:
                    raise self._fail(502, "101 without Upgrade", "bad_upgrade")
                self._upgrade = True
                keep_alive = False
            else:
                self._interim = True
        elif method == "HEAD" or status in (204, 304):
            pass  # RFC 9112 §6.3: no body, whatever the headers say
        elif chunked:
            self._framing = _BY_CHUNKS
        elif content_length is not None:
            if content_length:
                self._framing, self._remaining = _BY_LENGTH, content_length
        else:
            self._framing = _BY_CLOSE
            until_close, keep_alive = True, False
        self._keep_alive = keep_alive
        return ResponseHead(
            status=status,
            reason=(raw_reason or b"").decode("latin-1"),
            version=version,
            headers=self._headers,
            content_length=content_length,
            chunked=chunked,
            keep_alive=keep_alive,
            until_close=until_close,
            raw=bytes(self._head),
            connection=frozenset(tokens) if tokens else _NO_TOKENS,
        )


# --- writing ------------------------------------------------------------------------


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body: "<hex>\\r\\n" data "\\r\\n"; b"" for no data.

    An empty chunk would read as the last one, so it is never written.
    """
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


def serialize_request_head(
    method: str, target: str, headers: Iterable[tuple[bytes, bytes]]
) -> bytes:
    """An HTTP/1.1 request line, the header fields and the empty line.

    Raises ValueError for a method that is not a token, a target with spaces
    or control characters, or a field that could split the head.
    """
    raw_method, raw_target = method.encode("ascii"), target.encode("ascii")
    if not _TOKEN.fullmatch(raw_method):
        raise ValueError(f"bad method {method!r}")
    if not _TARGET.fullmatch(raw_target):
        raise ValueError(f"bad request-target {target!r}")
    return b"%b %b HTTP/1.1\r\n%b" % (raw_method, raw_target, _fields(headers))


def serialize_response_head(
    status: int, reason: str, headers: Iterable[tuple[bytes, bytes]]
) -> bytes:
    """ "HTTP/1.1 <status> <reason>", the header fields and the empty line.

    Raises ValueError for a status outside 100..599, a reason with control
    characters, or a field that could split the head.
    """
    if not 100 <= status <= 599:
        raise ValueError(f"bad status {status}")
    if not _REASON.fullmatch(reason):
        raise ValueError(f"bad reason phrase {reason!r}")
    return b"HTTP/1.1 %d %b\r\n%b" % (status, reason.encode("latin-1"), _fields(headers))


def _fields(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    parts: list[bytes] = []
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"bad field name {name!r}")
        if not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"bad value for field {name!r}")
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Lower-case tokens of the Connection headers (RFC 9110 §7.6.1).

    The fields they name are hop-by-hop too, like those in HOP_BY_HOP.
    """
    return _list_tokens(value for name, value in headers if name.lower() == b"connection")
