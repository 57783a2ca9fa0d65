"""The heads a reverse proxy sends on: pure functions, no I/O.

What a request loses and gains on its way to the backend (RFC 9110 §7.6.1,
and what ingress-nginx users expect):
- Host is the host the route was chosen by (see `upstream_request`);
- hop-by-hop headers go (Connection, Keep-Alive, TE, Upgrade, ... and every
  header the Connection header names); so do Expect (meshgate answers
  `100 Continue` itself) and the framing headers, which are written again
  from the framing the parser decided on, so the backend can never read the
  body differently from meshgate;
- `X-Forwarded-For`, `-Proto`, `-Host`, `-Port` and `X-Real-IP` describe the
  client. A client's own values are kept (and For appended to) only when it
  connects from a trusted range; otherwise they are replaced, so a client
  cannot forge its address. `X-Request-ID` is kept when it is a sane token
  (as ingress-nginx does), else generated.

Responses lose their hop-by-hop headers too and get the framing meshgate
uses towards the client.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from meshgate.protocols.http1 import (
    HOP_BY_HOP,
    RequestHead,
    ResponseHead,
    connection_tokens,
    serialize_request_head,
    serialize_response_head,
)

_CLIENT_SET = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-real-ip",
        b"forwarded",
    }
)
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"expect"})


def _lines_named(names: Iterable[bytes]) -> re.Pattern[bytes]:
    """Matches "CRLF name: value" for each field named (any case) in a raw head.

    The head was checked by the parser (token names, no space before the
    colon, no CR or LF inside a value), so a line is exactly that shape.
    """
    alternatives = b"|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    return re.compile(rb"\r\n(?:" + alternatives + rb"):[^\r]*", re.IGNORECASE)


# What a forwarded head loses as received: hop-by-hop fields, the framing
# (written again) and the fields meshgate sets itself.
_REQUEST_DROP = _lines_named(HOP_BY_HOP | _FRAMING | _CLIENT_SET | {b"x-request-id"})
_RESPONSE_DROP = _lines_named(HOP_BY_HOP | {b"content-length"})
_REQUEST_ID_LINE = _lines_named({b"x-request-id"})
# Connection tokens that name no other field to drop (RFC 9110 §7.6.1).
_PLAIN_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade"})
_TARGET = re.compile(r"[!-~]+")
_random = random.Random()
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,200}")

REASONS = {
    100: "Continue",
    101: "Switching Protocols",
    200: "OK",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    304: "Not Modified",
    308: "Permanent Redirect",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def new_request_id() -> str:
    # 128 random bits, as ingress-nginx's $request_id; not a secret, so the
    # fast generator (os.urandom costs a system call per request).
    return f"{_random.getrandbits(128):032x}"


def request_id_of(head: RequestHead) -> str | None:
    """The client's X-Request-ID when it is a plain token (kept end to end)."""
    if head.raw and _REQUEST_ID_LINE.search(head.raw) is None:
        return None  # the usual case, found without a loop over the fields
    for name, value in head.headers:
        if name.lower() == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            return value.decode("ascii")
    return None


def _drop(
    headers: Iterable[tuple[bytes, bytes]], more: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    headers = list(headers)
    named = connection_tokens(headers)
    return [
        (name, value)
        for name, value in headers
        if (low := name.lower()) not in HOP_BY_HOP and low not in more and low not in named
    ]


def upstream_request(
    head: RequestHead,
    *,
    target: str,
    client_ip: str,
    scheme: str,
    port: int,
    trusted: bool,
    request_id: str,
) -> bytes:
    """The request head sent to the backend for `head` (body framing kept)."""
    if (
        head.raw
        and not trusted
        and head.host is not None
        and head.target[0] == "/"
        and head.connection <= _PLAIN_TOKENS
    ):
        return _edited_request(head, target, client_ip, scheme=scheme, port=port, rid=request_id)
    own = {name.lower(): value for name, value in head.headers if name.lower() in _CLIENT_SET}
    drop = _FRAMING | _CLIENT_SET | {b"x-request-id", b"host"}
    host = (head.host or "").encode("latin-1")
    # The Host the route was chosen by: an absolute-form target's authority
    # wins over the client's Host header (which could name a host whose route
    # has other rules); empty when an HTTP/1.0 client sent none (RFC 9112 §3.2).
    headers = [(b"Host", host), *_drop(head.headers, drop)]
    ip = client_ip.encode()
    xff = own.get(b"x-forwarded-for")
    headers.append((b"X-Forwarded-For", xff + b", " + ip if trusted and xff else ip))
    for name, key, mine in (
        (b"X-Forwarded-Proto", b"x-forwarded-proto", scheme.encode()),
        (b"X-Forwarded-Host", b"x-forwarded-host", host),
        (b"X-Forwarded-Port", b"x-forwarded-port", str(port).encode()),
        (b"X-Real-IP", b"x-real-ip", ip),
    ):
        theirs = own.get(key)
        headers.append((name, theirs if trusted and theirs else mine))
    if trusted and b"forwarded" in own:
        headers.append((b"Forwarded", own[b"forwarded"]))
    headers.append((b"X-Request-ID", request_id.encode()))
    if head.chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
    elif head.content_length is not None:
        headers.append((b"Content-Length", str(head.content_length).encode()))
    if head.upgrade is not None:
        headers.append((b"Connection", b"upgrade"))
        headers.append((b"Upgrade", head.upgrade.encode("latin-1")))
    return serialize_request_head(head.method, target, headers)


def _edited_request(
    head: RequestHead, target: str, client_ip: str, *, scheme: str, port: int, rid: str
) -> bytes:
    """`upstream_request` for the usual request: the client's head with its
    field lines kept in place (Host included: an origin-form target has no
    authority to override it), the dropped ones cut out, ours appended."""
    if target != head.target and not _TARGET.fullmatch(target):
        raise ValueError(f"bad request-target {target!r}")
    raw = head.raw
    fields = raw[raw.index(b"\r\n") : -4]  # "\r\nName: value" per field
    fields = _REQUEST_DROP.sub(b"", fields)
    ip = client_ip.encode()
    if head.chunked:
        framing = b"\r\nTransfer-Encoding: chunked"
    elif head.content_length is not None:
        framing = b"\r\nContent-Length: %d" % head.content_length
    else:
        framing = b""
    if head.upgrade is not None:
        framing += b"\r\nConnection: upgrade\r\nUpgrade: " + head.upgrade.encode("latin-1")
    return b"%b %b HTTP/1.1%b%b%b\r\n\r\n" % (
        head.method.encode(),
        target.encode(),
        fields,
        b"\r\nX-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Host: %b"
        b"\r\nX-Forwarded-Port: %d\r\nX-Real-IP: %b\r\nX-Request-ID: %b"
        % (ip, scheme.encode(), (head.host or "").encode("latin-1"), port, ip, rid.encode()),
        framing,
    )


def connection_header(keep_alive: bool, http10: bool) -> list[tuple[bytes, bytes]]:
    """What tells the client whether the connection stays: HTTP/1.1 keeps it
    unless told `close`; HTTP/1.0 closes it unless told `keep-alive`."""
    if not keep_alive:
        return [(b"Connection", b"close")]
    return [(b"Connection", b"keep-alive")] if http10 else []


def client_response(
    resp: ResponseHead,
    *,
    chunked: bool,
    keep_alive: bool,
    request_id: str | None = None,
    http10: bool = False,
) -> bytes:
    """The response head sent to the client for the backend's `resp`.

    `chunked`: meshgate chunks the body itself (the backend's was chunked, or
    ran until close and the client speaks HTTP/1.1).
    """
    if resp.raw and resp.status != 101 and resp.connection <= _PLAIN_TOKENS:
        return _edited_response(resp, chunked, keep_alive, request_id, http10)
    headers = _drop(resp.headers, frozenset({b"content-length"}))
    if resp.status == 101:
        headers.append((b"Connection", b"upgrade"))
        for name, value in resp.headers:
            if name.lower() == b"upgrade":
                headers.append((b"Upgrade", value))
        return serialize_response_head(101, resp.reason or REASONS[101], headers)
    if chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
    elif resp.content_length is not None:
        headers.append((b"Content-Length", str(resp.content_length).encode()))
    headers.extend(connection_header(keep_alive, http10))
    if request_id is not None and not any(n.lower() == b"x-request-id" for n, _ in headers):
        headers.append((b"X-Request-ID", request_id.encode()))
    return serialize_response_head(
        resp.status, resp.reason or REASONS.get(resp.status, ""), headers
    )


def _edited_response(
    resp: ResponseHead, chunked: bool, keep_alive: bool, request_id: str | None, http10: bool
) -> bytes:
    """`client_response` for the usual response: the backend's head edited in place."""
    raw = resp.raw
    eol = raw.index(b"\r\n")
    fields = _RESPONSE_DROP.sub(b"", raw[eol:-4])
    if resp.reason and raw.startswith(b"HTTP/1.1 "):
        line = raw[:eol]
    else:
        reason = resp.reason or REASONS.get(resp.status, "")
        line = b"HTTP/1.1 %d %b" % (resp.status, reason.encode("latin-1"))
    if chunked:
        fields += b"\r\nTransfer-Encoding: chunked"
    elif resp.content_length is not None:
        fields += b"\r\nContent-Length: %d" % resp.content_length
    if not keep_alive:
        fields += b"\r\nConnection: close"
    elif http10:
        fields += b"\r\nConnection: keep-alive"
    if request_id is not None and _REQUEST_ID_LINE.search(fields) is None:
        fields += b"\r\nX-Request-ID: " + request_id.encode()
    return line + fields + b"\r\n\r\n"


def simple_response(
    status: int,
    *,
    keep_alive: bool,
    request_id: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    head_only: bool = False,
    http10: bool = False,
) -> bytes:
    """A whole response meshgate answers itself (errors, redirects)."""
    reason = REASONS.get(status, "")
    body = f"{status} {reason}\n".encode()
    out = list(headers)
    out.append((b"Content-Type", b"text/plain; charset=utf-8"))
    out.append((b"Content-Length", str(len(body)).encode()))
    if request_id is not None:
        out.append((b"X-Request-ID", request_id.encode()))
    out.extend(connection_header(keep_alive, http10))
    return serialize_response_head(status, reason, out) + (b"" if head_only else body)


def interim_response(resp: ResponseHead) -> bytes:
    """A 1xx response passed on to the client (103 Early Hints, ...)."""
    return serialize_response_head(
        resp.status, resp.reason or REASONS.get(resp.status, ""), _drop(resp.headers, frozenset())
    )
