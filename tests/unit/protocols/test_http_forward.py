"""The heads the proxy sends on: the in-place edit of a received head (the
fast path) must mean exactly what the rebuilt head (the general path) means."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.protocols.http1 import (
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
)
from meshgate.protocols.http_forward import client_response, upstream_request

RID = "0123456789abcdef0123456789abcdef"


def parse_request(raw: bytes) -> RequestHead:
    head = RequestParser().feed(raw)[0]
    assert isinstance(head, RequestHead)
    return head


def parse_response(raw: bytes, method: str = "GET") -> ResponseHead:
    parser = ResponseParser()
    parser.expect(method)
    head = parser.feed(raw)[0]
    assert isinstance(head, ResponseHead)
    return head


def meaning(head: RequestHead | ResponseHead) -> tuple[object, ...]:
    """What a backend or client reads from a head: order of distinct names
    does not matter, values are compared without surrounding whitespace."""
    fields = sorted((n.lower(), v.strip(b" \t")) for n, v in head.headers)
    start = (head.method, head.target) if isinstance(head, RequestHead) else (head.status,)
    return (*start, head.version, fields)


def forward(head: RequestHead, **kw: object) -> bytes:
    args: dict[str, object] = {
        "target": head.target,
        "client_ip": "10.1.2.3",
        "scheme": "http",
        "port": 80,
        "trusted": False,
        "request_id": RID,
    }
    args.update(kw)
    return upstream_request(head, **args)  # type: ignore[arg-type]


def both_requests(raw: bytes, **kw: object) -> tuple[bytes, bytes]:
    head = parse_request(raw)
    assert head.raw == raw
    return forward(head, **kw), forward(dataclasses.replace(head, raw=b""), **kw)


def both_responses(raw: bytes, **kw: object) -> tuple[ResponseHead, ResponseHead]:
    method = "GET"
    resp = parse_response(raw, method)
    args: dict[str, object] = {"chunked": False, "keep_alive": True, "request_id": RID}
    args.update(kw)
    fast = client_response(resp, **args)  # type: ignore[arg-type]
    slow = client_response(dataclasses.replace(resp, raw=b""), **args)  # type: ignore[arg-type]
    return parse_response(fast, method), parse_response(slow, method)


def test_plain_request_keeps_fields_in_place_and_adds_forwarding() -> None:
    fast, slow = both_requests(
        b"GET /a?b HTTP/1.1\r\nHost: web.example\r\nAccept: */*\r\nX-Trace: 1\r\n\r\n"
    )
    assert fast == (
        b"GET /a?b HTTP/1.1\r\nHost: web.example\r\nAccept: */*\r\nX-Trace: 1"
        b"\r\nX-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http"
        b"\r\nX-Forwarded-Host: web.example\r\nX-Forwarded-Port: 80\r\nX-Real-IP: 10.1.2.3"
        b"\r\nX-Request-ID: " + RID.encode() + b"\r\n\r\n"
    )
    assert meaning(parse_request(fast)) == meaning(parse_request(slow))


@pytest.mark.parametrize(
    "extra",
    [
        b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n",
        b"connection: close\r\n",
        b"TE: trailers\r\nTrailer: X-Sum\r\nProxy-Authorization: Basic eA==\r\n",
        b"X-Forwarded-For: 6.6.6.6\r\nx-real-ip: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n",
        b"X-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 1\r\n",
        b"Content-Length: 0005\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Expect: 100-continue\r\nContent-Length: 3\r\n",
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
        b"Connection: close, X-Secret\r\nX-Secret: 1\r\n",  # a named field: general path
        b"X-Request-ID: from-client\r\n",
    ],
)
def test_request_edits_mean_what_the_rebuilt_head_means(extra: bytes) -> None:
    raw = b"POST /up HTTP/1.1\r\nHost: h\r\n" + extra + b"Accept: */*\r\n\r\n"
    fast, slow = both_requests(raw)
    assert meaning(parse_request(fast)) == meaning(parse_request(slow))
    lowered = fast.lower()
    for gone in (b"6.6.6.6", b"keep-alive", b"proxy-authorization", b"x-secret", b"evil"):
        assert gone not in lowered


def test_a_rewritten_target_replaces_the_request_line() -> None:
    fast, _ = both_requests(b"GET /api/v1 HTTP/1.1\r\nHost: h\r\n\r\n", target="/v1")
    assert fast.startswith(b"GET /v1 HTTP/1.1\r\nHost: h\r\n")
    with pytest.raises(ValueError, match="request-target"):
        forward(parse_request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), target="/a b")


def test_http10_request_goes_on_as_http11() -> None:
    fast, slow = both_requests(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
    assert fast.startswith(b"GET / HTTP/1.1\r\n")
    assert meaning(parse_request(fast))[1:] == meaning(parse_request(slow))[1:]


def test_trusted_client_keeps_its_forwarding_headers() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n"
    fast, slow = both_requests(raw, trusted=True)
    assert fast == slow
    assert b"X-Forwarded-For: 1.1.1.1, 10.1.2.3\r\n" in fast


def test_response_drops_hop_by_hop_and_writes_its_own_framing() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nServer: s\r\nConnection: keep-alive\r\nKeep-Alive: timeout=4\r\n"
        b"Content-Length: 007\r\nX-Thing: a\r\n\r\n"
    )
    fast, slow = both_responses(raw)
    assert meaning(fast) == meaning(slow)
    assert fast.raw == (
        b"HTTP/1.1 200 OK\r\nServer: s\r\nX-Thing: a\r\nContent-Length: 7"
        b"\r\nX-Request-ID: " + RID.encode() + b"\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("raw", "kw"),
    [
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", {}),
        (b"HTTP/1.1 404 \r\nContent-Length: 1\r\n\r\n", {}),  # empty reason: ours
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", {"chunked": True}),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", {"keep_alive": False}),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", {"http10": True}),
        (b"HTTP/1.1 200 OK\r\nx-request-id: theirs\r\nContent-Length: 1\r\n\r\n", {}),
        (b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nContent-Length: 1\r\n\r\n", {}),
        (b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", {}),
    ],
)
def test_response_edits_mean_what_the_rebuilt_head_means(raw: bytes, kw: dict[str, object]) -> None:
    fast, slow = both_responses(raw, **kw)
    assert meaning(fast) == meaning(slow)
    assert fast.raw.startswith(b"HTTP/1.1 ")


_NAME = st.sampled_from(
    [
        b"Accept",
        b"Cookie",
        b"X-A",
        b"Connection",
        b"Keep-Alive",
        b"TE",
        b"Trailer",
        b"Upgrade",
        b"X-Forwarded-For",
        b"X-Real-IP",
        b"Forwarded",
        b"X-Request-ID",
        b"Proxy-Authorization",
        b"Expect",
        b"Via",
    ]
)
_VALUE = st.sampled_from([b"1", b"keep-alive", b"close", b"a b", b"x, y", b"", b"trailers"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAME, _VALUE), max_size=8), st.booleans())
def test_fast_and_general_request_paths_agree(
    fields: list[tuple[bytes, bytes]], trusted: bool
) -> None:
    raw = b"GET /p HTTP/1.1\r\nHost: h\r\n"
    raw += b"".join(name + b": " + value + b"\r\n" for name, value in fields) + b"\r\n"
    try:
        head = parse_request(raw)
    except Exception:  # a combination the parser refuses (say, a bad Upgrade)
        return
    fast = forward(head, trusted=trusted)
    slow = forward(dataclasses.replace(head, raw=b""), trusted=trusted)
    assert meaning(parse_request(fast)) == meaning(parse_request(slow))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAME, _VALUE), max_size=8), st.booleans(), st.booleans())
def test_fast_and_general_response_paths_agree(
    fields: list[tuple[bytes, bytes]], keep_alive: bool, http10: bool
) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
    raw += b"".join(name + b": " + value + b"\r\n" for name, value in fields) + b"\r\n"
    try:
        parse_response(raw)
    except Exception:
        return
    fast, slow = both_responses(raw, keep_alive=keep_alive, http10=http10)
    assert meaning(fast) == meaning(slow)
