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
