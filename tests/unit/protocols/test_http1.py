"""HTTP/1.1 framing: events, every split point, each smuggling shape, limits, responses, fuzz.

Section numbers refer to RFC 9112 (HTTP/1.1) and RFC 9110 (HTTP semantics).
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.errors import ProtocolError
from meshgate.protocols.http1 import (
    END_OF_MESSAGE,
    HOP_BY_HOP,
    LAST_CHUNK,
    Data,
    EndOfMessage,
    HttpError,
    Limits,
    RequestEvent,
    RequestHead,
    RequestParser,
    ResponseEvent,
    ResponseHead,
    ResponseParser,
    Upgraded,
    connection_tokens,
    encode_chunk,
    serialize_request_head,
    serialize_response_head,
)

Event = RequestEvent | ResponseEvent

DEFAULT = Limits()
GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
HEAD_START = b"GET / HTTP/1.1\r\nHost: a\r\n"  # a head still open for more fields
CHUNKED_START = HEAD_START + b"Transfer-Encoding: chunked\r\n\r\n"


# --- helpers ----------------------------------------------------------------------


def merged(events: Iterable[Event]) -> list[Event]:
    """Events with adjacent Data joined: how they are split depends on the feeds."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(out[-1].data + event.data)
        elif not (isinstance(event, Data) and not event.data):
            out.append(event)
    return out


def feed_all(parser: RequestParser | ResponseParser, pieces: Iterable[bytes]) -> list[Event]:
    """Feed pieces in order, stopping after Upgraded (the parser refuses more)."""
    return feed_until_upgraded(parser, pieces)[0]


def feed_until_upgraded(
    parser: RequestParser | ResponseParser, pieces: Iterable[bytes]
) -> tuple[list[Event], int]:
    """The events up to Upgraded, and how many bytes were fed to get them."""
    events: list[Event] = []
    taken = 0
    for piece in pieces:
        events += parser.feed(piece)
        taken += len(piece)
        if events and isinstance(events[-1], Upgraded):
            break
    return events, taken


def requests(raw: bytes, limits: Limits = DEFAULT) -> list[Event]:
    return merged(RequestParser(limits).feed(raw))


def responses(raw: bytes, *methods: str, limits: Limits = DEFAULT) -> list[Event]:
    parser = ResponseParser(limits)
    for method in methods or ("GET",):
        parser.expect(method)
    return merged(parser.feed(raw))


def request_error(raw: bytes, limits: Limits = DEFAULT) -> tuple[int, str]:
    with pytest.raises(HttpError) as info:
        RequestParser(limits).feed(raw)
    return info.value.status, info.value.label


def response_error(raw: bytes, method: str = "GET", limits: Limits = DEFAULT) -> tuple[int, str]:
    parser = ResponseParser(limits)
    parser.expect(method)
    with pytest.raises(HttpError) as info:
        parser.feed(raw)
    return info.value.status, info.value.label


def heads(events: Sequence[Event]) -> list[Any]:
    return [e for e in events if isinstance(e, RequestHead | ResponseHead)]


def only_head(raw: bytes) -> RequestHead:
    events = requests(raw)
    assert len(events) == 2, events
    assert events[1] == END_OF_MESSAGE
    head = events[0]
    assert isinstance(head, RequestHead)
    return head


def splits(raw: bytes) -> Iterable[list[bytes]]:
    """Every way of cutting `raw` in two, and one byte at a time."""
    for cut in range(len(raw) + 1):
        yield [raw[:cut], raw[cut:]]
    yield [raw[i : i + 1] for i in range(len(raw))]


# --- requests: the basics ---------------------------------------------------------


def test_simple_get() -> None:
    raw = b"GET /a/b?x=1&y HTTP/1.1\r\nHost: example.com\r\nUser-Agent:  curl/8 \t\r\n\r\n"
    assert requests(raw) == [
        RequestHead(
            method="GET",
            target="/a/b?x=1&y",
            path="/a/b",
            query="x=1&y",
            version="1.1",
            headers=[(b"Host", b"example.com"), (b"User-Agent", b"curl/8")],
            host="example.com",
            content_length=None,
            chunked=False,
            keep_alive=True,
            upgrade=None,
            expect_continue=False,
        ),
        END_OF_MESSAGE,
    ]


def test_header_names_keep_their_case_and_order() -> None:
    raw = b"GET / HTTP/1.1\r\nhOsT: a\r\nX-B: 1\r\nx-a: 2\r\nX-B: 3\r\n\r\n"
    head = only_head(raw)
    assert head.headers == [(b"hOsT", b"a"), (b"X-B", b"1"), (b"x-a", b"2"), (b"X-B", b"3")]
    assert head.host == "a"


def test_obs_text_and_inner_whitespace_in_values_pass() -> None:
    head = only_head(HEAD_START + b"X: a\tb  c\x80\xff\r\nEmpty:\r\nBlank: \t \r\n\r\n")
    assert head.headers[1:] == [(b"X", b"a\tb  c\x80\xff"), (b"Empty", b""), (b"Blank", b"")]


PIPELINE = (
    b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
    b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    b"PUT /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer-A: x\r\n\r\n"
    b"\r\n"  # an empty line between requests is ignored (§2.2)
    b"DELETE /4 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
)


def test_pipelined_requests_in_one_feed() -> None:
    events = requests(PIPELINE)
    assert [type(e).__name__ for e in events] == [
        "RequestHead",
        "EndOfMessage",
        "RequestHead",
        "Data",
        "EndOfMessage",
        "RequestHead",
        "Data",
        "EndOfMessage",
        "RequestHead",
        "EndOfMessage",
    ]
    assert [h.target for h in heads(events)] == ["/1", "/2", "/3", "/4"]
    assert [e.data for e in events if isinstance(e, Data)] == [b"hello", b"abcde"]
    put = heads(events)[2]
    assert put.chunked
    assert put.content_length is None
    # Trailers are consumed and dropped: the head's fields stay as they were.
    assert put.headers == [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")]
    delete = heads(events)[3]
    assert delete.content_length == 0
    assert not delete.chunked


@pytest.mark.parametrize(
    "raw",
    [
        PIPELINE,
        GET,
        b"\r\n\r\n" + GET,
        CHUNKED_START + b'5;a=b;c="d;e"\r\nhello\r\n0;last\r\nX: 1\r\nY: 2\r\n\r\n' + GET,
    ],
)
def test_every_split_gives_the_same_events(raw: bytes) -> None:
    whole = merged(feed_all(RequestParser(), [raw]))
    for pieces in splits(raw):
        assert merged(feed_all(RequestParser(), pieces)) == whole, pieces


def test_every_split_of_an_upgrade() -> None:
    head = HEAD_START + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    raw = head + b"\x81\x05hello"
    for pieces in splits(raw):
        events, taken = feed_until_upgraded(RequestParser(), pieces)
        assert [type(e) for e in events] == [RequestHead, Upgraded]
        # `rest` is what followed the head in the feed that ended it.
        assert isinstance(events[-1], Upgraded)
        assert head + events[-1].rest == raw[:taken]


def test_content_length_body_across_feeds() -> None:
    parser = RequestParser()
    head = parser.feed(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhel")
    assert isinstance(head[0], RequestHead)
    assert head[0].content_length == 11
    assert head[1:] == [Data(b"hel")]
    middle = b"lo wo"
    events = parser.feed(middle)
    assert events == [Data(middle)]
    assert isinstance(events[0], Data)
    assert events[0].data is middle  # a whole feed of body is passed on, not copied
    assert parser.feed(b"rldGET") == [Data(b"rld"), END_OF_MESSAGE]
    assert merged(parser.feed(b" / HTTP/1.1\r\nHost: a\r\n\r\n"))[1] == END_OF_MESSAGE


def test_chunked_body_with_extensions_and_trailers() -> None:
    raw = CHUNKED_START + (
        b'4;name=value;quoted="a \\" b"\r\nWiki\r\n'
        b"5\r\npedia\r\n"
        b"E\r\n in\r\n\r\nchunks.\r\n"
        b"0;end\r\nExpires: never\r\nX-Checksum: 1234\r\n\r\n"
    )
    events = requests(raw)
    assert events[1:] == [Data(b"Wikipedia in\r\n\r\nchunks."), END_OF_MESSAGE]
    head = events[0]
    assert isinstance(head, RequestHead)
    assert [name for name, _ in head.headers] == [b"Host", b"Transfer-Encoding"]


def test_content_length_may_have_any_number_of_leading_zeros() -> None:
    # More digits than int() converts by default (4300): still just 5.
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"0" * 5000 + b"5\r\n\r\nhello"
    events = requests(raw)
    assert events[1:] == [Data(b"hello"), END_OF_MESSAGE]
    head = events[0]
    assert isinstance(head, RequestHead)
    assert head.content_length == 5


def test_chunk_size_may_have_leading_zeros_and_any_case() -> None:
    raw = CHUNKED_START + b"000A\r\n0123456789\r\n00a\r\nabcdefghij\r\n0000\r\n\r\n"
    assert requests(raw)[1:] == [Data(b"0123456789abcdefghij"), END_OF_MESSAGE]
    long_zeros = CHUNKED_START + b"0" * 100 + b"3\r\nabc\r\n0\r\n\r\n"
    assert requests(long_zeros, Limits(max_chunk_line=200))[1:] == [Data(b"abc"), END_OF_MESSAGE]


def test_chunked_data_is_passed_through_when_a_feed_is_all_data() -> None:
    parser = RequestParser()
    parser.feed(CHUNKED_START + b"10\r\n")
    data = b"0123456789abcdef"
    events = parser.feed(data)
    assert events == [Data(data)]
    assert isinstance(events[0], Data)
    assert events[0].data is data
    assert parser.feed(b"\r\n0\r\n\r\n") == [END_OF_MESSAGE]


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Keep-Alive, CLOSE", False),
        (b"1.1", b"keep-alive", True),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
        (b"1.0", b"Foo, Keep-Alive", True),
        (b"1.0", b"keep-alive, close", False),
    ],
)
def test_keep_alive_rules(version: bytes, connection: bytes | None, keep_alive: bool) -> None:
    raw = b"GET / HTTP/" + version + b"\r\nHost: a\r\n"
    if connection is not None:
        raw += b"Connection: " + connection + b"\r\n"
    assert only_head(raw + b"\r\n").keep_alive is keep_alive


def test_http10_needs_no_host() -> None:
    head = only_head(b"GET / HTTP/1.0\r\n\r\n")
    assert head.version == "1.0"
    assert head.host is None


def test_bytes_after_a_closing_request_are_ignored() -> None:
    # §9.6: after "close" the server does not process further requests.
    parser = RequestParser()
    events = parser.feed(HEAD_START + b"Connection: close\r\n\r\n" + GET)
    assert len(heads(events)) == 1
    assert events[-1] == END_OF_MESSAGE
    assert parser.feed(GET) == []
    assert parser.feed_eof() == []


def test_absolute_form() -> None:
    raw = b"GET http://Example.com:8080/p/q?x=1 HTTP/1.1\r\nHost: other\r\n\r\n"
    head = only_head(raw)
    assert head.target == "http://Example.com:8080/p/q?x=1"
    assert (head.path, head.query) == ("/p/q", "x=1")
    assert head.host == "Example.com:8080"  # §3.2.2: the target's authority wins


@pytest.mark.parametrize(
    ("target", "path", "query", "host"),
    [
        ("https://h", "/", "", "h"),
        ("HTTP://h?q=1", "/", "q=1", "h"),
        ("http://[::1]:80/x?", "/x", "", "[::1]:80"),
    ],
)
def test_absolute_form_shapes(target: str, path: str, query: str, host: str) -> None:
    head = only_head(f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert (head.path, head.query, head.host) == (path, query, host)


def test_asterisk_form_for_options() -> None:
    head = only_head(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (head.method, head.target, head.path, head.query) == ("OPTIONS", "*", "*", "")


@pytest.mark.parametrize(
    ("header", "version", "expected"),
    [
        (b"Expect: 100-continue", b"1.1", True),
        (b"Expect: 100-Continue", b"1.1", True),
        (b"Expect: something-else", b"1.1", False),
        (b"Expect: 100-continue", b"1.0", False),  # RFC 9110 §10.1.1: ignored in 1.0
        (b"X: 100-continue", b"1.1", False),
    ],
)
def test_expect_continue(header: bytes, version: bytes, expected: bool) -> None:
    raw = b"POST / HTTP/" + version + b"\r\nHost: a\r\n" + header + b"\r\nContent-Length: 2\r\n\r\n"
    parser = RequestParser()
    events = parser.feed(raw)
    assert len(events) == 1
    assert isinstance(events[0], RequestHead)
    assert events[0].expect_continue is expected
    assert parser.feed(b"ok") == [Data(b"ok"), END_OF_MESSAGE]


# --- upgrade ----------------------------------------------------------------------


def test_upgrade_hands_over_the_rest() -> None:
    parser = RequestParser()
    raw = HEAD_START + b"Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
    events = parser.feed(raw + b"\x81\x05hello" + GET)
    head = events[0]
    assert isinstance(head, RequestHead)
    assert head.upgrade == "websocket"
    assert events[1:] == [Upgraded(b"\x81\x05hello" + GET)]
    with pytest.raises(RuntimeError):
        parser.feed(b"more")
    assert parser.feed(b"") == []
    assert parser.feed_eof() == []


def test_upgrade_with_a_body_ends_after_it() -> None:
    raw = HEAD_START + b"Connection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 3\r\n\r\nabcREST"
    events = RequestParser().feed(raw)
    assert events[1:] == [Data(b"abc"), Upgraded(b"REST")]


def test_upgrade_with_nothing_after_the_head() -> None:
    raw = HEAD_START + b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert requests(raw)[1:] == [Upgraded(b"")]


def test_upgrade_without_the_connection_token_is_a_plain_request() -> None:
    raw = HEAD_START + b"Upgrade: websocket\r\n\r\n" + GET
    events = requests(raw)
    assert [type(e) for e in events] == [RequestHead, EndOfMessage, RequestHead, EndOfMessage]
    assert heads(events)[0].upgrade is None


def test_connection_upgrade_without_upgrade_header_is_a_plain_request() -> None:
    head = only_head(HEAD_START + b"Connection: upgrade\r\n\r\n")
    assert head.upgrade is None


# --- requests: every smuggling and syntax shape -------------------------------------

REQUEST_ERRORS = [
    # Content-Length with Transfer-Encoding, either order (§6.3, §11.2).
    (
        HEAD_START + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        "smuggling_cl_te",
    ),
    (
        HEAD_START + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        400,
        "smuggling_cl_te",
    ),
    (HEAD_START + b"Content-Length: 0\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "smuggling_cl_te"),
    # Content-Length: one header, plain digits, below 2**63 (§8.6).
    (
        HEAD_START + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\n",
        400,
        "duplicate_content_length",
    ),
    (
        HEAD_START + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n",
        400,
        "duplicate_content_length",
    ),
    (HEAD_START + b"Content-Length: 5, 5\r\n\r\n", 400, "bad_content_length"),
    (HEAD_START + b"Content-Length: +5\r\n\r\n", 400, "bad_content_length"),
    (HEAD_START + b"Content-Length: 5x\r\n\r\n", 400, "bad_content_length"),
    (HEAD_START + b"Content-Length:  \r\n\r\n", 400, "bad_content_length"),
    (HEAD_START + b"Content-Length:\r\n\r\n", 400, "bad_content_length"),
    (HEAD_START + b"Content-Length: -1\r\n\r\n", 400, "bad_content_length"),
    (HEAD_START + b"Content-Length: 0x5\r\n\r\n", 400, "bad_content_length"),
    (HEAD_START + b"Content-Length: 5 5\r\n\r\n", 400, "bad_content_length"),
    (HEAD_START + b"Content-Length: 9223372036854775808\r\n\r\n", 400, "bad_content_length"),
    (HEAD_START + b"Content-Length: 18446744073709551615\r\n\r\n", 400, "bad_content_length"),
    (HEAD_START + b"Content-Length: 99999999999999999999\r\n\r\n", 400, "bad_content_length"),
    # Transfer-Encoding: exactly one "chunked" (§6.1, §6.3).
    (HEAD_START + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501, "unsupported_transfer_coding"),
    (HEAD_START + b"Transfer-Encoding: gzip\r\n\r\n", 400, "bad_transfer_encoding"),
    (HEAD_START + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400, "bad_transfer_encoding"),
    (HEAD_START + b"Transfer-Encoding: identity\r\n\r\n", 400, "bad_transfer_encoding"),
    (HEAD_START + b"Transfer-Encoding: xchunked\r\n\r\n", 400, "bad_transfer_encoding"),
    (HEAD_START + b"Transfer-Encoding: chunked;x=1\r\n\r\n", 400, "bad_transfer_encoding"),
    (HEAD_START + b"Transfer-Encoding: chunked, chunked\r\n\r\n", 400, "bad_transfer_encoding"),
    (HEAD_START + b"Transfer-Encoding: , chunked\r\n\r\n", 400, "bad_transfer_encoding"),
    (HEAD_START + b"Transfer-Encoding: chunked,\r\n\r\n", 400, "bad_transfer_encoding"),
    (HEAD_START + b"Transfer-Encoding:\r\n\r\n", 400, "bad_transfer_encoding"),
    (
        HEAD_START + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        "bad_transfer_encoding",
    ),
    (
        HEAD_START + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        "bad_transfer_encoding",
    ),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "bad_transfer_encoding"),
    # Field syntax (§5): obs-fold, whitespace before the colon, bad names and values.
    (HEAD_START + b"X: a\r\n b\r\n\r\n", 400, "obs_fold"),
    (HEAD_START + b"X: a\r\n\tb\r\n\r\n", 400, "obs_fold"),
    (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, "obs_fold"),
    (b"GET / HTTP/1.1\r\n\tHost: a\r\n\r\n", 400, "obs_fold"),
    (HEAD_START + b"X : a\r\n\r\n", 400, "bad_header_name"),
    (HEAD_START + b"X\t: a\r\n\r\n", 400, "bad_header_name"),
    (HEAD_START + b"X(: a\r\n\r\n", 400, "bad_header_name"),
    (HEAD_START + b"X@Y: a\r\n\r\n", 400, "bad_header_name"),
    (HEAD_START + b"X\x00: a\r\n\r\n", 400, "bad_header_name"),
    (HEAD_START + b": a\r\n\r\n", 400, "bad_header_name"),
    (HEAD_START + b"no-colon\r\n\r\n", 400, "bad_header_name"),
    (HEAD_START + b"X: a\x00b\r\n\r\n", 400, "bad_header_value"),
    (HEAD_START + b"X: a\rb\r\n\r\n", 400, "bad_header_value"),
    (HEAD_START + b"X: a\nb\r\n\r\n", 400, "bad_header_value"),
    (HEAD_START + b"X: a\n\r\n", 400, "bad_header_value"),
    (HEAD_START + b"X: a\x01b\r\n\r\n", 400, "bad_header_value"),
    (HEAD_START + b"X: a\x7f\r\n\r\n", 400, "bad_header_value"),
    (HEAD_START + b"\rX: a\r\n\r\n", 400, "bad_line_ending"),
    # Host (§3.2, RFC 9110 §7.2).
    (b"GET / HTTP/1.1\r\n\r\n", 400, "missing_host"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, "duplicate_host"),
    (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, "duplicate_host"),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "bad_host"),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "bad_host"),
    (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400, "bad_host"),
    (b"GET / HTTP/1.1\r\nHost: a\tb\r\n\r\n", 400, "bad_host"),
    (b"GET / HTTP/1.1\r\nHost: a\x80\r\n\r\n", 400, "bad_host"),
    (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400, "bad_host"),
    (b"GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", 400, "bad_header_value"),  # llhttp's first
    # Versions (§2.3).
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "version"),
    (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505, "version"),
    (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505, "version"),
    (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505, "version"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "version"),
    # The request line (§3).
    (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_method"),
    (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_method"),
    (b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_method"),
    (b"GETX / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_method"),
    (b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_method"),
    (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_request_line"),
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_request_line"),
    (b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_request_line"),
    (b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, "bad_request_line"),
    (b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400, "bad_request_line"),
    (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400, "bad_request_line"),
    (b"GET / RTSP/1.0\r\nHost: a\r\n\r\n", 400, "bad_request_line"),
    (b"GET /\r\nHost: a\r\n\r\n", 400, "bad_request_line"),  # HTTP/0.9 style
    (b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    (b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    (b"GET /a\x80b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    (b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    # Request-target forms (§3.2).
    (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405, "connect"),
    (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    (b"GET example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    (b"OPTIONS example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    (b"GET x HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    (b"GET /x#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    (b"GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    (b"GET http://user@a/x HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    (b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    (b"GET http:// HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    # Chunked framing (§7.1).
    (CHUNKED_START + b"5 \r\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"zz\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"-5\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"0x5\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"+5\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"ffffffffffffffffff\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"8000000000000000\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"5\r\nhelloX\r\n0\r\n\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"5\r\nhello\n0\r\n\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"5\r\nhello\r\r\n0\r\n\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"5\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"0\r\r\n\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"5;a\x01\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"5;a=\x7f\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"5;\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b"5; a = b\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    (CHUNKED_START + b'5;a="b\r\nhello\r\n0\r\n\r\n', 400, "bad_chunk"),
    (CHUNKED_START + b"0\r\nX: y\r\n z\r\n\r\n", 400, "obs_fold"),
    (CHUNKED_START + b"0\r\nX : y\r\n\r\n", 400, "bad_header_name"),
    (CHUNKED_START + b"0\r\nX: a\x00\r\n\r\n", 400, "bad_header_value"),
    (CHUNKED_START + b"0\r\nContent-Length: 5\r\n\r\n", 400, "smuggling_cl_te"),
    # Upgrade.
    (HEAD_START + b"Connection: upgrade\r\nUpgrade:\r\n\r\n", 400, "bad_upgrade"),
    (
        # llhttp would take the chunked body for the new protocol.
        HEAD_START + b"Connection: upgrade\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        "bad_upgrade",
    ),
]


@pytest.mark.parametrize(("raw", "status", "label"), REQUEST_ERRORS)
def test_request_errors(raw: bytes, status: int, label: str) -> None:
    assert request_error(raw) == (status, label)
    # The verdict does not depend on how the bytes arrive.
    parser = RequestParser()
    with pytest.raises(HttpError) as info:
        feed_all(parser, [raw[i : i + 1] for i in range(len(raw))])
    assert (info.value.status, info.value.label) == (status, label)


def test_each_kind_of_shape_has_its_label() -> None:
    assert {label for _, _, label in REQUEST_ERRORS} == {
        "smuggling_cl_te",
        "duplicate_content_length",
        "bad_content_length",
        "unsupported_transfer_coding",
        "bad_transfer_encoding",
        "obs_fold",
        "bad_header_name",
        "bad_header_value",
        "bad_line_ending",
        "missing_host",
        "duplicate_host",
        "bad_host",
        "version",
        "bad_method",
        "bad_request_line",
        "bad_target",
        "connect",
        "bad_chunk",
        "bad_upgrade",
    }


def test_http_error_is_a_protocol_error() -> None:
    error = HttpError(431, "too big", "header_too_large")
    assert isinstance(error, ProtocolError)
    assert (error.status, error.reason, error.label, str(error)) == (
        431,
        "too big",
        "header_too_large",
        "too big",
    )


def test_a_dead_parser_stays_dead() -> None:
    parser = RequestParser()
    with pytest.raises(HttpError) as first:
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    with pytest.raises(HttpError) as again:
        parser.feed(GET)
    assert again.value is first.value
    with pytest.raises(HttpError):
        parser.feed_eof()


def test_an_error_after_a_whole_request_in_the_same_feed_keeps_that_request() -> None:
    # A pipelined good request is answered; the bad one after it is refused.
    parser = RequestParser()
    events = parser.feed(GET + b"GET /bad HTTP/1.1\r\n\r\n")
    assert isinstance(events[0], RequestHead)
    assert isinstance(events[-1], EndOfMessage)
    assert parser.failed is not None
    assert parser.failed.label == "missing_host"
    with pytest.raises(HttpError) as again:
        parser.feed(GET)
    assert again.value is parser.failed


def test_request_eof() -> None:
    parser = RequestParser()
    parser.feed(GET + b"\r\n")
    assert parser.feed_eof() == []
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(HttpError) as info:
        parser.feed_eof()
    assert (info.value.status, info.value.label) == (400, "truncated")
    parser = RequestParser()
    parser.feed(b"GET / HT")
    with pytest.raises(HttpError):
        parser.feed_eof()


def test_feed_takes_any_bytes_like() -> None:
    assert requests(GET) == merged(RequestParser().feed(bytearray(GET)))  # type: ignore[arg-type]
    assert requests(GET) == merged(RequestParser().feed(memoryview(GET)))  # type: ignore[arg-type]


class SilentEnd(RequestParser):
    """llhttp never reports the end of a message."""

    __slots__ = ()

    def on_message_complete(self) -> None:
        pass


class NoHead(RequestParser):
    """llhttp never reports the end of a head."""

    __slots__ = ()

    def on_headers_complete(self) -> None:
        pass


class MissedUpgrade(RequestParser):
    """We fail to see an upgrade that llhttp sees."""

    __slots__ = ()

    def _build_head(self) -> RequestHead:
        head = super()._build_head()
        self._upgrade = False
        return head


@pytest.mark.parametrize(
    ("parser", "raw"),
    [
        (SilentEnd(), CHUNKED_START + b"0\r\n\r\n"),
        (NoHead(), GET),
        (MissedUpgrade(), HEAD_START + b"Connection: upgrade\r\nUpgrade: x\r\n\r\n"),
    ],
)
def test_disagreeing_with_llhttp_is_refused(parser: RequestParser, raw: bytes) -> None:
    with pytest.raises(HttpError) as info:
        parser.feed(raw)
    assert (info.value.status, info.value.label) == (400, "framing_mismatch")


# --- limits -------------------------------------------------------------------------

SMALL = Limits(max_request_line=32, max_header_bytes=128, max_headers=4, max_chunk_line=16)


def first_failure(pieces: Iterable[bytes], limits: Limits) -> tuple[int, HttpError]:
    """Feed pieces until one raises; its index (every earlier feed gave no event)."""
    parser = RequestParser(limits)
    for index, piece in enumerate(pieces):
        try:
            events = parser.feed(piece)
        except HttpError as error:
            return index, error
        assert events == []
    raise AssertionError("no error")


def test_request_line_at_the_limit_passes() -> None:
    line = b"GET /" + b"a" * (SMALL.max_request_line - 14) + b" HTTP/1.1"
    assert len(line) == SMALL.max_request_line
    assert isinstance(requests(line + b"\r\nHost: a\r\n\r\n", SMALL)[0], RequestHead)
    longer = b"GET /a" + line[5:] + b"\r\nHost: a\r\n\r\n"
    assert request_error(longer, SMALL) == (414, "uri_too_long")


def test_endless_request_line_is_stopped_as_it_arrives() -> None:
    pieces = [b"GET /"] + [b"a"] * 1000
    index, error = first_failure(pieces, SMALL)
    assert (error.status, error.label) == (414, "uri_too_long")
    # Refused with the first byte past room for the longest line and its CRLF.
    assert len(pieces[0]) + index == SMALL.max_request_line + 3
    assert request_error(b"GET /" + b"a" * 10_000, SMALL) == (414, "uri_too_long")
    assert request_error(b"GET /" + b"a" * 10_000) == (414, "uri_too_long")


def test_head_at_the_limit_passes() -> None:
    start = b"GET / HTTP/1.1\r\nHost: a\r\nX: "
    fill = SMALL.max_header_bytes - len(start) - 4
    raw = start + b"v" * fill + b"\r\n\r\n"
    assert len(raw) == SMALL.max_header_bytes
    assert isinstance(requests(raw, SMALL)[0], RequestHead)
    longer = start + b"v" * (fill + 1) + b"\r\n\r\n"
    assert request_error(longer, SMALL) == (431, "header_too_large")


def test_endless_header_line_is_stopped_as_it_arrives() -> None:
    pieces = [b"GET / HTTP/1.1\r\nHost: a\r\nX: "] + [b"v" * 10] * 1000
    index, error = first_failure(pieces, SMALL)
    assert (error.status, error.label) == (431, "header_too_large")
    assert index == (SMALL.max_header_bytes - len(pieces[0])) // 10 + 1
    # With the default limits, a megabyte in one feed is refused at once.
    assert request_error(pieces[0] + b"v" * 1_000_000) == (431, "header_too_large")
    index, error = first_failure([pieces[0]] + [b"v" * 1000] * 100, Limits())
    assert index == 33
    assert error.status == 431


def test_endless_headers_without_an_end_are_stopped() -> None:
    pieces = [b"GET / HTTP/1.1\r\n"] + [b"X: 1\r\n"] * 1000
    _, error = first_failure(pieces, Limits(max_headers=10_000, max_header_bytes=1024))
    assert (error.status, error.label) == (431, "header_too_large")


def test_too_many_headers() -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(SMALL.max_headers - 1))
    assert isinstance(requests(HEAD_START + fields + b"\r\n", SMALL)[0], RequestHead)
    assert request_error(HEAD_START + fields + b"Y: v\r\n\r\n", SMALL) == (431, "header_too_large")


def test_endless_empty_lines_are_stopped() -> None:
    _, error = first_failure([b"\r\n" * 10] * 1000, SMALL)
    assert (error.status, error.label) == (431, "header_too_large")


def test_chunk_line_limit() -> None:
    ext = b";e=" + b"x" * (SMALL.max_chunk_line - 4)
    assert len(b"5" + ext) == SMALL.max_chunk_line
    good = CHUNKED_START + b"5" + ext + b"\r\nhello\r\n0\r\n\r\n"
    assert requests(good, SMALL)[1:] == [Data(b"hello"), END_OF_MESSAGE]
    assert request_error(CHUNKED_START + b"5" + ext + b"x\r\n", SMALL) == (400, "bad_chunk")
    parser = RequestParser(SMALL)
    parser.feed(CHUNKED_START + b"5;e=")
    fed = 0
    with pytest.raises(HttpError) as info:  # noqa: PT012 - which feed raises matters
        for fed in range(100):  # noqa: B007 - read after the loop
            parser.feed(b"x")
    assert (info.value.status, info.value.label) == (400, "bad_chunk")
    # Refused once max_chunk_line + 2 bytes have come without a line end.
    assert len(b"5;e=") + fed + 1 == SMALL.max_chunk_line + 2


def test_trailer_limits() -> None:
    parser = RequestParser(SMALL)
    parser.feed(CHUNKED_START + b"0\r\nT: ")
    fed = 0
    with pytest.raises(HttpError) as info:  # noqa: PT012 - which feed raises matters
        for fed in range(1000):  # noqa: B007 - read after the loop
            parser.feed(b"x" * 10)
    assert (info.value.status, info.value.label) == (431, "header_too_large")
    assert fed == (SMALL.max_header_bytes - 3) // 10
    many = b"".join(b"T%d: v\r\n" % i for i in range(SMALL.max_headers + 1))
    assert request_error(CHUNKED_START + b"0\r\n" + many + b"\r\n", SMALL) == (
        431,
        "header_too_large",
    )


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_headers"):
        Limits(max_headers=0)


# --- responses ----------------------------------------------------------------------


def test_response_with_content_length() -> None:
    parser = ResponseParser()
    parser.expect("GET")
    events = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhel")
    assert events == [
        ResponseHead(
            status=200,
            reason="OK",
            version="1.1",
            headers=[(b"Content-Length", b"5"), (b"Server", b"x")],
            content_length=5,
            chunked=False,
            keep_alive=True,
            until_close=False,
        ),
        Data(b"hel"),
    ]
    assert parser.feed(b"lo") == [Data(b"lo"), END_OF_MESSAGE]
    assert parser.reusable


def test_chunked_response() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: 1\r\n\r\n"
    events = responses(raw)
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert head.chunked
    assert not head.until_close
    assert events[1:] == [Data(b"abc"), END_OF_MESSAGE]


def test_until_close_body_ends_at_eof() -> None:
    parser = ResponseParser()
    parser.expect("GET")
    events = parser.feed(b"HTTP/1.1 200 OK\r\n\r\nsome")
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert head.until_close
    assert not head.keep_alive
    assert events[1:] == [Data(b"some")]
    assert not parser.reusable
    chunk = b" more"
    more = parser.feed(chunk)
    assert more == [Data(chunk)]
    assert isinstance(more[0], Data)
    assert more[0].data is chunk
    assert parser.feed_eof() == [END_OF_MESSAGE]
    assert not parser.reusable
    assert parser.feed_eof() == []


def test_truncated_body_at_eof() -> None:
    parser = ResponseParser()
    parser.expect("GET")
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(HttpError) as info:
        parser.feed_eof()
    assert (info.value.status, info.value.label) == (502, "upstream_truncated")
    assert not parser.reusable


@pytest.mark.parametrize(
    ("received", "label"),
    [
        (b"", "upstream_closed"),
        (b"HTTP/1.1 2", "upstream_truncated"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "upstream_truncated"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", "upstream_truncated"),
    ],
)
def test_eof_before_the_response_is_complete(received: bytes, label: str) -> None:
    parser = ResponseParser()
    parser.expect("POST")
    parser.feed(received)
    with pytest.raises(HttpError) as info:
        parser.feed_eof()
    assert (info.value.status, info.value.label) == (502, label)


def test_a_dead_response_parser_stays_dead() -> None:
    parser = ResponseParser()
    parser.expect("GET")
    with pytest.raises(HttpError) as first:
        parser.feed(b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n")
    with pytest.raises(HttpError) as again:
        parser.feed_eof()
    assert again.value is first.value
    assert not parser.reusable
    with pytest.raises(RuntimeError):
        parser.expect("GET")


def test_eof_when_nothing_is_expected() -> None:
    parser = ResponseParser()
    assert parser.feed_eof() == []
    parser = ResponseParser()
    parser.expect("GET")
    parser.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert parser.feed_eof() == []
    assert not parser.reusable


def test_head_response_has_no_body_whatever_content_length_says() -> None:
    parser = ResponseParser()
    parser.expect("HEAD")
    events = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert head.content_length == 1234
    assert events[1:] == [END_OF_MESSAGE]
    assert parser.reusable
    parser.expect("GET")
    assert responses_of(parser, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") == [
        Data(b"ok"),
        END_OF_MESSAGE,
    ]
    assert parser.reusable


def responses_of(parser: ResponseParser, raw: bytes) -> list[Event]:
    """The events after the head."""
    events = merged(parser.feed(raw))
    assert isinstance(events[0], ResponseHead)
    return events[1:]


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    raw = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n" % status
    # Framing headers are still checked: CL with TE is refused even here.
    assert response_error(raw) == (502, "upstream_smuggling_cl_te")
    parser = ResponseParser()
    parser.expect("GET")
    events = parser.feed(b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status)
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert parser.reusable


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",  # to HEAD
    ],
)
def test_bytes_after_a_bodiless_response_belong_to_nothing(head: bytes) -> None:
    parser = ResponseParser()
    parser.expect("HEAD")
    events = parser.feed(head + b"abc")
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert not parser.reusable
    assert parser.feed(b"HTTP/1.1 200 OK\r\n\r\n") == []
    with pytest.raises(RuntimeError):
        parser.expect("GET")


def test_unsolicited_bytes_make_the_connection_unusable() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\n\r\n") == []
    assert not parser.reusable


def test_interim_responses_come_before_the_final_one() -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 199 Whatever\r\nContent-Length: 5\r\n\r\n"  # 1xx never has a body
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    whole = None
    for pieces in splits(raw):
        parser = ResponseParser()
        parser.expect("POST")
        events = merged(feed_all(parser, pieces))
        assert parser.reusable
        whole = whole or events
        assert events == whole
    assert whole is not None
    assert [h.status for h in heads(whole)] == [100, 103, 199, 200]
    assert [type(e) for e in whole] == [ResponseHead, EndOfMessage] * 3 + [
        ResponseHead,
        Data,
        EndOfMessage,
    ]


def test_switching_protocols() -> None:
    parser = ResponseParser()
    parser.expect("GET")
    raw = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    events = parser.feed(raw + b"\x81\x02hi")
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert head.status == 101
    assert not head.keep_alive
    assert events[1:] == [Upgraded(b"\x81\x02hi")]
    assert not parser.reusable
    with pytest.raises(RuntimeError):
        parser.feed(b"more")
    assert parser.feed_eof() == []
    for pieces in splits(raw + b"xy"):
        parser = ResponseParser()
        parser.expect("GET")
        got, taken = feed_until_upgraded(parser, pieces)
        assert [type(e) for e in got] == [ResponseHead, Upgraded]
        # `rest` is what followed the head in the feed that ended it.
        assert isinstance(got[-1], Upgraded)
        assert raw + got[-1].rest == (raw + b"xy")[:taken]


@pytest.mark.parametrize(
    ("raw", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\n\r\n", False),
    ],
)
def test_reuse_flag(raw: bytes, reusable: bool) -> None:
    parser = ResponseParser()
    parser.expect("GET")
    parser.feed(raw)
    assert parser.reusable is reusable


def test_reusable_while_a_body_is_in_flight_and_after() -> None:
    parser = ResponseParser()
    assert parser.reusable
    parser.expect("GET")
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    assert parser.reusable
    parser.feed(b"cd")
    assert parser.reusable


def test_pipelined_expectations() -> None:
    parser = ResponseParser()
    parser.expect("HEAD")
    parser.expect("GET")
    events = merged(
        parser.feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
        )
    )
    assert [type(e) for e in events] == [
        ResponseHead,
        EndOfMessage,
        ResponseHead,
        Data,
        EndOfMessage,
    ]
    assert parser.reusable
    assert parser.feed(b"x") == []
    assert not parser.reusable


RESPONSE_ERRORS = [
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "smuggling_cl_te",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
        "smuggling_cl_te",
    ),
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        "duplicate_content_length",
    ),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n", "bad_content_length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\n", "bad_content_length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "bad_transfer_encoding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "bad_transfer_encoding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "unsupported_transfer_coding"),
    (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "bad_transfer_encoding"),
    (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "obs_fold"),
    (b"HTTP/1.1 200 OK\r\n\tX: a\r\n\r\n", "obs_fold"),
    (b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n", "bad_header_name"),
    (b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", "bad_header_value"),
    (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n", "bad_header_value"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "bad_status_line"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "bad_status_line"),
    (b"HTTP/1.1 099 OK\r\n\r\n", "bad_status_line"),
    (b"HTTP/1.1 600 OK\r\n\r\n", "bad_status_line"),
    (b"HTTP/1.1  200 OK\r\n\r\n", "bad_status_line"),
    (b"HTTP/1.1 200 O\x01K\r\n\r\n", "bad_status_line"),
    (b"HTTP/1.1 200 OK\n\r\n", "bad_status_line"),
    (b"HTTP/1.1 200 OK\rX\r\n\r\n", "bad_line_ending"),
    (b"RTSP/1.0 200 OK\r\n\r\n", "bad_status_line"),
    (b"http/1.1 200 OK\r\n\r\n", "bad_status_line"),
    (b"HTTP/2.0 200 OK\r\n\r\n", "version"),
    (b"HTTP/1.2 200 OK\r\n\r\n", "version"),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "bad_upgrade"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad_chunk"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", "bad_chunk"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 40_000, "header_too_large"),
    (b"HTTP/1.1 200 " + b"K" * 10_000, "header_too_large"),
]


@pytest.mark.parametrize(("raw", "label"), RESPONSE_ERRORS)
def test_response_errors(raw: bytes, label: str) -> None:
    assert response_error(raw) == (502, "upstream_" + label)
    parser = ResponseParser()
    parser.expect("GET")
    with pytest.raises(HttpError) as info:
        feed_all(parser, [raw[i : i + 97] for i in range(0, len(raw), 97)])
    assert (info.value.status, info.value.label) == (502, "upstream_" + label)
    assert not parser.reusable


def test_response_head_limits() -> None:
    limits = Limits(max_request_line=20, max_header_bytes=64, max_headers=2)
    ok = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n"
    assert isinstance(responses(ok, limits=limits)[0], ResponseHead)
    too_many = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"
    assert response_error(too_many, limits=limits) == (502, "upstream_header_too_large")
    long_line = b"HTTP/1.1 200 " + b"x" * 20 + b"\r\n\r\n"
    assert response_error(long_line, limits=limits) == (502, "upstream_header_too_large")


def test_reason_phrase_may_be_absent_or_have_spaces_and_obs_text() -> None:
    assert [h.reason for h in heads(responses(b"HTTP/1.1 204\r\n\r\n"))] == [""]
    assert [h.reason for h in heads(responses(b"HTTP/1.1 204 \r\n\r\n"))] == [""]
    raw = b"HTTP/1.1 204 No\tthing  at all \xe9\r\n\r\n"
    assert [h.reason for h in heads(responses(raw))] == ["No\tthing  at all \xe9"]


# --- serializers --------------------------------------------------------------------


def test_encode_chunk() -> None:
    assert encode_chunk(b"") == b""
    assert encode_chunk(b"abc") == b"3\r\nabc\r\n"
    assert encode_chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_serialized_request_round_trips() -> None:
    headers = [(b"Host", b"example.com"), (b"Transfer-Encoding", b"chunked"), (b"X-A", b"1 2")]
    raw = serialize_request_head("PUT", "/p?q=1", headers)
    assert raw.startswith(b"PUT /p?q=1 HTTP/1.1\r\nHost: example.com\r\n")
    raw += encode_chunk(b"hello ") + encode_chunk(b"") + encode_chunk(b"world") + LAST_CHUNK
    events = requests(raw)
    head = events[0]
    assert isinstance(head, RequestHead)
    assert (head.method, head.target, head.headers) == ("PUT", "/p?q=1", headers)
    assert events[1:] == [Data(b"hello world"), END_OF_MESSAGE]


def test_serialized_response_round_trips() -> None:
    headers = [(b"Content-Length", b"2"), (b"Set-Cookie", b"a=b; Path=/")]
    raw = serialize_response_head(404, "Not Found", headers) + b"no"
    assert raw.startswith(b"HTTP/1.1 404 Not Found\r\n")
    events = responses(raw)
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert (head.status, head.reason, head.headers) == (404, "Not Found", headers)
    assert events[1:] == [Data(b"no"), END_OF_MESSAGE]


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GE T", "/", []),
        ("GET", "/a b", []),
        ("GET", "", []),
        ("GET", "/\r\n", []),
        ("GET", "/", [(b"X", b"a\r\nInjected: 1")]),
        ("GET", "/", [(b"X Y", b"a")]),
        ("GET", "/", [(b"", b"a")]),
        ("GET", "/", [(b"X", b"\x00")]),
    ],
)
def test_serialize_request_head_refuses_what_would_split_the_head(
    method: str, target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(ValueError, match="bad"):
        serialize_request_head(method, target, headers)


def test_serialize_response_head_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="status"):
        serialize_response_head(99, "x", [])
    with pytest.raises(ValueError, match="reason"):
        serialize_response_head(200, "O\r\nK", [])
    with pytest.raises(ValueError, match="field"):
        serialize_response_head(200, "OK", [(b"X", b"\n")])


def test_hop_by_hop_and_connection_tokens() -> None:
    assert {b"connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade"} <= HOP_BY_HOP
    assert all(name == name.lower() for name in HOP_BY_HOP)
    headers = [
        (b"Connection", b"Keep-Alive, X-Secret"),
        (b"X-Other", b"close"),
        (b"connection", b" ,Upgrade ,, "),
    ]
    assert connection_tokens(headers) == {b"keep-alive", b"x-secret", b"upgrade"}
    assert connection_tokens([]) == set()


# --- fuzz: only HttpError, and well-formed messages parse back -------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([b"", HEAD_START, CHUNKED_START, b"POST / HTTP/1.1\r\nContent-Length: 3"]),
    st.binary(max_size=400),
    st.lists(st.integers(0, 400), max_size=6),
)
def test_arbitrary_bytes_only_raise_http_error(
    prefix: bytes, noise: bytes, cuts: list[int]
) -> None:
    raw = prefix + noise
    bounds = sorted({0, len(raw), *(c for c in cuts if c < len(raw))})
    pieces = [raw[a:b] for a, b in itertools.pairwise(bounds)]
    for limits in (DEFAULT, SMALL):
        parser = RequestParser(limits)
        error = outcome(lambda: (feed_all(parser, pieces), parser.feed_eof()))  # noqa: B023
        assert error is None or error.status in (400, 405, 414, 431, 501, 505)
    response = ResponseParser()
    response.expect("GET")
    start = b"HTTP/1.1 200 OK\r\n"[: len(prefix)]
    error = outcome(lambda: (feed_all(response, [start, *pieces]), response.feed_eof()))
    assert error is None or error.status == 502
    assert error is None or error.label.startswith("upstream_")


def outcome(run: Callable[[], object]) -> HttpError | None:
    """The HttpError `run` raised, if any; any other exception fails the test."""
    try:
        run()
    except HttpError as error:
        return error
    return None


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([PIPELINE, CHUNKED_START + b"5;a=b\r\nhello\r\n0\r\nT: v\r\n\r\n" + GET]),
    st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=4), st.booleans()), max_size=4),
    st.lists(st.integers(0, 10_000), max_size=6),
)
def test_mutated_requests_only_raise_http_error(
    raw: bytes, edits: list[tuple[int, bytes, bool]], cuts: list[int]
) -> None:
    for position, insert, replace in edits:
        at = position % (len(raw) + 1)
        raw = raw[:at] + insert + raw[at + len(insert) if replace else at :]
    bounds = sorted({0, len(raw), *(c % (len(raw) + 1) for c in cuts)})
    pieces = [raw[a:b] for a, b in itertools.pairwise(bounds)]
    parser = RequestParser()
    outcome(lambda: (feed_all(parser, pieces), parser.feed_eof()))
    response = ResponseParser()
    for _ in range(3):
        response.expect("GET")
    swapped = raw.replace(b"GET / HTTP/1.1", b"HTTP/1.1 200 OK").replace(
        b"POST /2 HTTP/1.1", b"HTTP/1.1 201 C"
    )
    outcome(lambda: (feed_all(response, [swapped]), response.feed_eof()))


TOKEN_CHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
FRAMING_NAMES = {b"content-length", b"transfer-encoding", b"host", b"connection", b"upgrade"}
VALUE_BYTES = [b" ", b"\t", *(bytes([c]) for c in [*range(0x21, 0x7F), *range(0x80, 0x100)])]
PATH_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%"

names = st.text(TOKEN_CHARS, min_size=1, max_size=12).map(str.encode)
field_names = names.filter(lambda n: n.lower() not in FRAMING_NAMES | {b"expect"})
values = st.lists(st.sampled_from(VALUE_BYTES), max_size=20).map(
    lambda parts: b"".join(parts).strip(b" \t")
)
extensions = st.lists(
    st.tuples(names, st.none() | names | st.text(TOKEN_CHARS + " ", max_size=8)), max_size=2
)


@dataclass
class Message:
    raw: bytes
    head: tuple[Any, ...]
    body: bytes


@st.composite
def chunked_body(draw: st.DrawFn, body: bytes) -> bytes:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=5))))
    bounds = [0, *cuts, len(body)]
    out = b""
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        ext = b""
        for name, value in draw(extensions):
            ext += b";" + name
            if isinstance(value, bytes):
                ext += b"=" + value
            elif value is not None:
                ext += b'="' + value.encode() + b'"'
        out += b"%x%b\r\n%b\r\n" % (b - a, ext, body[a:b])
    trailers = draw(st.lists(st.tuples(field_names, values), max_size=3))
    return out + b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"


@st.composite
def well_formed_requests(draw: st.DrawFn) -> Message:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    target = "/" + draw(st.text(PATH_CHARS, max_size=20))
    if draw(st.booleans()):
        target += "?" + draw(st.text(PATH_CHARS + "?", max_size=20))
    headers = [(b"Host", draw(st.sampled_from([b"a", b"example.com:8080", b"[::1]"])))]
    headers += draw(st.lists(st.tuples(field_names, values), max_size=6))
    body = draw(st.binary(max_size=200))
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
        encoded = body
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        encoded = draw(chunked_body(body))
    else:
        body = encoded = b""
    raw = serialize_request_head(method, target, headers) + encoded
    return Message(raw, (method, target, headers), body)


@settings(max_examples=200, deadline=None)
@given(st.lists(well_formed_requests(), min_size=1, max_size=3), st.data())
def test_well_formed_requests_parse_back(messages: list[Message], data: st.DataObject) -> None:
    raw = b"".join(m.raw for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8), label="cuts")
    bounds = sorted({0, len(raw), *cuts})
    events = merged(feed_all(RequestParser(), [raw[a:b] for a, b in itertools.pairwise(bounds)]))
    got: list[tuple[tuple[Any, ...], bytes]] = []
    for event in events:
        if isinstance(event, RequestHead):
            got.append(((event.method, event.target, event.headers), b""))
        elif isinstance(event, Data):
            got[-1] = (got[-1][0], got[-1][1] + event.data)
        else:
            assert event == END_OF_MESSAGE
    assert got == [(m.head, m.body) for m in messages]
    assert sum(isinstance(e, EndOfMessage) for e in events) == len(messages)


@st.composite
def well_formed_responses(draw: st.DrawFn) -> tuple[str, Message]:
    method = draw(st.sampled_from(["GET", "HEAD", "POST"]))
    status = draw(st.sampled_from([200, 201, 204, 301, 304, 404, 500]))
    reason = draw(st.text(string.ascii_letters + " ", max_size=12))
    headers = draw(st.lists(st.tuples(field_names, values), max_size=5))
    body = draw(st.binary(max_size=200))
    no_body = method == "HEAD" or status in (204, 304)
    if draw(st.booleans()):
        headers.append((b"Content-Length", b"%d" % len(body)))
        encoded = body
    else:
        headers.append((b"Transfer-Encoding", b"chunked"))
        encoded = draw(chunked_body(body))
    if no_body:
        body = encoded = b""
    raw = serialize_response_head(status, reason, headers) + encoded
    return method, Message(raw, (status, reason, headers), body)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(well_formed_responses(), min_size=1, max_size=3),
    st.booleans(),
    st.data(),
)
def test_well_formed_responses_parse_back(
    exchanges: list[tuple[str, Message]], interim: bool, data: st.DataObject
) -> None:
    parser = ResponseParser()
    for method, _ in exchanges:
        parser.expect(method)
    prefix = b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b""
    raw = prefix + b"".join(m.raw for _, m in exchanges)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8), label="cuts")
    bounds = sorted({0, len(raw), *cuts})
    events = merged(feed_all(parser, [raw[a:b] for a, b in itertools.pairwise(bounds)]))
    got: list[tuple[tuple[Any, ...], bytes]] = []
    for event in events:
        if isinstance(event, ResponseHead):
            if event.status == 100:
                continue
            got.append(((event.status, event.reason, event.headers), b""))
        elif isinstance(event, Data):
            got[-1] = (got[-1][0], got[-1][1] + event.data)
    assert got == [(m.head, m.body) for _, m in exchanges]
    assert sum(isinstance(e, EndOfMessage) for e in events) == len(exchanges) + interim
    assert parser.reusable
    assert parser.feed_eof() == []
