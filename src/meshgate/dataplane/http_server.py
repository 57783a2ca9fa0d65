"""The client side of the HTTP reverse proxy: one `HttpServer` per connection.

It feeds bytes to the sans-I/O `protocols.http1.RequestParser` and runs one
`Exchange` (dataplane/http_exchange.py) at a time; pipelined requests wait in
`pending`, and reading pauses while they do, so a client cannot make meshgate
buffer without bound. Framing errors (smuggling shapes, limits) are answered
with their status and the connection is closed after the response had a
chance to arrive (a lingering close: the write side is shut, what the client
still sends is read and dropped for a moment, then the socket closes).

Timers (one timer handle per connection, see `_arm`): the first request head
must be complete within `header_timeout` of the connection; between requests
the connection may idle `keepalive_timeout`, then the next head again has
`header_timeout` from its first byte. Neither is extended by later bytes, so
a head trickled a line at a time (slowloris) still ends at its deadline. A
request body may pause at most `body_timeout` between two reads (slow-body
attacks, stalled uploads): 408 when no response has started, else an abort.

A client that takes no response bytes for `send_timeout` while meshgate waits
for it (its transport paused our writing, or a close waits to flush) is
aborted and counted as `send_timeout` (slow-read attacks). Pipelined
requests wait while the client is not reading, so responses cannot pile up.

Refusals before any routing: at overload stage 2 and beyond every new
request gets 503 (at stage 1 keep-alive is off, in the exchange); past the
listener's per-client `request_rate` a request gets 429, with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import struct
import termios
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from meshgate.aio import Deadline
from meshgate.dataplane.listener import Traffic, client_text
from meshgate.dataplane.pipe import connection_ended, connection_opened
from meshgate.dataplane.proxy_accept import Peer
from meshgate.protocols.http1 import (
    EndOfMessage,
    HttpError,
    Limits,
    RequestEvent,
    RequestHead,
    RequestParser,
    Upgraded,
)
from meshgate.protocols.http_forward import simple_response
from meshgate.routing.table import CertRef, ListenerSpec

if TYPE_CHECKING:
    from meshgate.dataplane.http_exchange import Exchange
    from meshgate.dataplane.listener import Listener
    from meshgate.dataplane.ratelimit import ClientBuckets

log = logging.getLogger("meshgate.http")

LINGER = 2.0  # seconds a closing connection keeps reading so the client sees our answer
BACKEND_LABEL = "http"  # connection-level metrics; per-route figures are in http_* metrics
# The send watch samples progress this many times per send_timeout: a stall
# is cut between 1 and 1.25 send_timeouts after the client took its last byte.
SEND_CHECKS = 4
_OUTQ = struct.Struct("i")  # the int that SIOCOUTQ (TIOCOUTQ) fills in


def unsent(transport: asyncio.Transport) -> int:
    """Bytes written to `transport` that the peer has not acknowledged yet:
    the transport's buffer plus the kernel's send queue (SIOCOUTQ counts the
    unsent and the unacknowledged). The kernel part makes any byte the client
    takes visible at once; the transport's buffer alone only moves when the
    kernel frees a large part of its queue."""
    n = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # OSError, ValueError: closed meanwhile (no descriptor), or not TCP.
        with contextlib.suppress(OSError, ValueError):
            n += _OUTQ.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)))[0]
    return n


class HttpServer(asyncio.Protocol):
    __slots__ = (
        "_cork",
        "_deadline",
        "_idle",
        "_on_deadline",
        "_pause_reasons",
        "_paused",
        "_pumping",
        "_send_mark",
        "_send_moved",
        "_send_watch",
        "_timer",
        "_timer_at",
        "_write_paused",
        "backend",
        "buckets",
        "cert",
        "client",
        "client_eof",
        "client_ip",
        "client_ip_text",
        "closed",
        "closing",
        "end_reason",
        "exchange",
        "failed",
        "listener",
        "loop",
        "overload",
        "parser",
        "peer",
        "pending",
        "requests",
        "routes",
        "scheme",
        "skip_body",
        "sni",
        "spec",
        "started",
        "traffic",
        "transport",
        "trusted",
        "tunnel",
    )

    def __init__(
        self,
        listener: Listener,
        spec: ListenerSpec,
        peer: Peer | None,
        *,
        scheme: str = "http",
        sni: str | None = None,
        cert: CertRef | None = None,
        buckets: ClientBuckets | None = None,
    ) -> None:
        assert spec.http is not None
        self.listener = listener
        self.spec = spec
        self.routes = spec.http
        self.peer = peer
        self.scheme = scheme
        self.sni = sni
        self.cert = cert
        self.buckets = buckets  # the listener's per-client request rate, if any
        self.overload = listener.ctx.overload  # its `stage` is read once per request
        limits = spec.http.limits
        self.parser = RequestParser(
            Limits(limits.max_request_line, limits.max_header_bytes, limits.max_headers)
        )
        self.transport: asyncio.Transport | None = None
        self.pending: deque[RequestEvent] = deque()
        self.exchange: Exchange | None = None
        self.traffic = Traffic()
        self.backend = BACKEND_LABEL
        self.client = "-"
        self.client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self.client_ip_text = ""  # str(client_ip), made once
        self.trusted = False
        self.requests = 0
        self.closing = False
        self.closed = False
        self.tunnel = False  # upgraded: bytes go straight to the exchange
        self.skip_body = False  # drop the rest of an answered request's body
        self.failed: HttpError | None = None  # a bad request behind the one in flight
        self.loop = asyncio.get_running_loop()  # once: each lookup costs a getpid()
        self._cork: list[bytes] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when `_timer` fires
        self._deadline: float | None = None  # when the armed callback is due
        self._on_deadline: Callable[[], None] | None = None
        self._idle = True  # no byte of a next request seen yet
        self._pumping = False
        self.client_eof = False
        self.end_reason = ""  # why meshgate ended the connection, when it did on an error
        self._paused = False
        self._pause_reasons: set[str] = set()
        self._write_paused = False  # the client's transport paused our writing
        self._send_watch: Deadline | None = None
        self._send_mark = 0  # bytes the client had taken at the last send check
        self._send_moved = 0.0  # when that count last grew

    # -- connection ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        limit = self.spec.buffer_limit  # past it the upstream stops being read
        self.transport.set_write_buffer_limits(limit, limit // 4)
        self.client = client_text(transport, self.peer)
        addr = self.peer or transport.get_extra_info("peername")
        if addr:
            try:
                self.client_ip = ipaddress.ip_address(addr[0])
                self.client_ip_text = str(self.client_ip)
            except ValueError:
                self.client_ip = None
        trusted = self.routes.limits.trusted_proxies
        ip = self.client_ip
        self.trusted = ip is not None and any(ip in net for net in trusted)
        connection_opened(self.listener, self)
        self.started = self.loop.time()
        self._arm(self.routes.limits.header_timeout, self._header_timeout)

    def data_received(self, data: bytes) -> None:
        self.traffic.bytes_in += len(data)
        if self.closing:
            return  # lingering: read and drop
        if self.tunnel:
            if self.exchange is not None:
                self.exchange.client_raw(data)
            return
        if self.failed is not None:
            return  # the parser is dead; the answer waits for the request in flight
        if self._idle and self.exchange is None and not self.skip_body:
            self._idle = False
            if self.requests:  # the first head's deadline runs from the connection
                # Armed once, at the head's first byte: later lines never extend it.
                self._arm(self.routes.limits.header_timeout, self._header_timeout)
        try:
            events = self.parser.feed(data)
        except HttpError as exc:
            self._protocol_error(exc)
            return
        corked = self.cork()
        try:
            self._take(events)
        finally:
            if corked:
                self.uncork()
        if self._awaiting_body():
            # Moved on every read: the body may pause, never for body_timeout.
            self._arm_body()

    def _take(self, events: list[RequestEvent]) -> None:
        self.pending.extend(events)
        if self.parser.failed is not None:
            # Whole requests came before the bad bytes: they are answered
            # first, then the error (see the end of _pump_events).
            self._count_rejection(self.parser.failed)
            self.failed = self.parser.failed
            self.pause("failed")
        self._pump()

    def _pump(self) -> None:
        """Hand queued events to the exchange they belong to, in order."""
        if self._pumping:
            return  # an exchange finished inside the loop below; it goes on
        self._pumping = True
        try:
            self._pump_events()
        finally:
            self._pumping = False

    def _pump_events(self) -> None:
        pending = self.pending
        while pending and not self.closing:
            event = pending[0]
            if isinstance(event, RequestHead):
                if self.exchange is not None or self.skip_body or self._write_paused:
                    # Pipelined: the next request waits for this one, and for
                    # the client to take the answers it has (else they pile up).
                    self.pause("pipelined")
                    return
                pending.popleft()
                self._cancel_timer()
                self._start(event)
                continue
            pending.popleft()
            if self.skip_body:
                if isinstance(event, EndOfMessage | Upgraded):
                    self.skip_body = False
                    # Idle from here: the body timer gives way to keep-alive.
                    self._arm(self.routes.limits.keepalive_timeout, self._keepalive_timeout)
                continue
            if self.exchange is not None:
                self.exchange.client_event(event)
                if isinstance(event, Upgraded):
                    # The parser is done with this connection: what the client
                    # sends next waits for the tunnel (or the close, if declined).
                    self.pause("upgrade")
        if self.closing:
            return
        self.resume("pipelined")
        if self.failed is not None and self.exchange is None and not pending:
            self.write(simple_response(self.failed.status, keep_alive=False))
            self.close_lingering()

    def _start(self, head: RequestHead) -> None:
        """Run the exchange for `head` (it may refuse it at once: overload, rate)."""
        from meshgate.dataplane.http_exchange import Exchange

        self.requests += 1
        self.exchange = Exchange(self, head)
        self.exchange.start()

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None:
        """The response is complete: next request, or close."""
        if self.exchange is not exchange:
            return  # detached by _protocol_error, which answers and closes
        self.exchange = None
        # Pauses on the exchange's behalf end with it (an upstream that stopped
        # reading the body, then answered early, never says resume).
        self.resume("upstream")
        self.resume("body_buffer")
        if self.closing or self.transport is None:
            return
        if not keep_alive or self.client_eof or self.listener.state.value != "serving":
            self.close_lingering() if not exchange.request_done else self.close()
            return
        self._idle = True
        if not exchange.request_done:
            self.skip_body = True  # the rest of the body is read and dropped
            self._arm_body()
        else:
            self._arm(self.routes.limits.keepalive_timeout, self._keepalive_timeout)
        self._pump()
        if self._awaiting_body():  # a pipelined request started, its body to come
            self._arm_body()

    def write(self, data: bytes) -> None:
        if self._cork is not None:
            self._cork.append(data)
            return
        if self.transport is not None and not self.closed:
            self.traffic.bytes_out += len(data)
            self.transport.write(data)

    def cork(self) -> bool:
        """Collect writes until `uncork` (one send for a response head and
        its body); False when already corked (the outer caller uncorks)."""
        if self._cork is not None:
            return False
        self._cork = []
        return True

    def uncork(self) -> None:
        out, self._cork = self._cork, None
        if out:
            self.write(out[0] if len(out) == 1 else b"".join(out))

    # -- errors and closing ------------------------------------------------------
    def _count_rejection(self, exc: HttpError) -> None:
        self.listener.ctx.metrics.http_rejected.labels(self.spec.name, exc.label).inc()
        log.info(
            "http request rejected",
            extra={
                "fields": {
                    "listener": self.spec.name,
                    "client": self.client,
                    "status": exc.status,
                    "reason": exc.label,
                    "detail": exc.reason,
                }
            },
        )

    def _protocol_error(self, exc: HttpError) -> None:
        """Malformed request: answer with its status, count it, close."""
        self._count_rejection(exc)
        self.pending.clear()
        exchange = self.exchange
        if exchange is not None and exchange.request_done:
            # The bad bytes come after the request in flight (pipelined): it
            # is answered first, then exchange_done refuses the rest.
            self.failed = exc
            self.pause("failed")
            return
        if exchange is not None and exchange.response_started:
            exchange.label = exc.label  # its log line says why it was cut
            self.abort()  # cannot answer in the middle of a response
            return
        if exchange is not None:
            # Detached first: its end must not close the connection before our answer.
            self.exchange = None
            exchange.status, exchange.label = exc.status, exc.label
            exchange.cancel()
        self.write(simple_response(exc.status, keep_alive=False))
        self.close_lingering()

    def _header_timeout(self) -> None:
        if self.exchange is not None or self.pending:
            return  # a whole head came (it may wait for the client to read)
        self.listener.ctx.metrics.http_rejected.labels(self.spec.name, "header_timeout").inc()
        if self.requests == 0 and self.traffic.bytes_in == 0:
            self.close()  # never said anything: nothing to answer
            return
        self.write(simple_response(408, keep_alive=False))
        self.close_lingering()

    def _keepalive_timeout(self) -> None:
        if self.exchange is None and self._idle and not self.pending:
            self.close()

    def _awaiting_body(self) -> bool:
        """Whether meshgate is reading a request body and the client owes the
        next bytes (not when meshgate itself paused reading)."""
        if self.closing or self._paused:
            return False
        exchange = self.exchange
        if exchange is None:
            return self.skip_body
        return not exchange.request_done and not exchange.continue_owed

    def body_expected(self) -> None:
        """The exchange told the client to send its body (100 Continue)."""
        if self._awaiting_body():
            self._arm_body()

    def _arm_body(self) -> None:
        """The client owes request body bytes from now: body_timeout to send some."""
        self._arm(self.routes.limits.body_timeout, self._body_timeout)

    def _body_timeout(self) -> None:
        """No request body byte for body_timeout (a slow-body attack, a stalled upload)."""
        if not self._awaiting_body():
            return  # the body ended, or meshgate paused reading: `resume` re-arms
        error = HttpError(408, "no request body bytes within body_timeout", "body_timeout")
        if self.exchange is None:
            # The rest of a body already answered: there is no request to refuse.
            self._count_rejection(error)
            self.close()
            return
        self._protocol_error(error)  # 408 and a lingering close, or an abort mid-response

    def begin_drain(self) -> None:
        """The listener drains: an idle connection closes now; one in the
        middle of a request ends after its response (`Connection: close`)."""
        if self.exchange is None and not self.pending and self._idle and not self.closing:
            self.close()

    def close_lingering(self) -> None:
        """Shut the write side after the answer, drop what still arrives, then close."""
        if self.closing or self.transport is None:
            return
        self.uncork()
        self.closing = True
        self.pending.clear()
        transport = self.transport
        self.resume("pipelined")
        transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
            self._arm(LINGER, self.close)
        else:
            transport.close()

    def close(self) -> None:
        self.uncork()
        self.closing = True
        self._cancel_timer()
        transport = self.transport
        if transport is not None and not self.closed:
            if transport.get_write_buffer_size():
                # The close waits for the buffer to drain: a client that
                # stopped reading must not hold the socket for ever.
                self._watch_send()
            transport.close()

    def abort(self) -> None:
        self._cork = None
        self.closing = True
        self._cancel_timer()
        if self.exchange is not None:
            self.exchange.cancel()
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def eof_received(self) -> bool:
        if self.tunnel and self.exchange is not None:
            self.exchange.client_eof()
            return True
        if self.exchange is not None and not self.exchange.request_done:
            # The client stopped sending in the middle of its request.
            self.exchange.cancel()
            return False
        # A client may half-close after its request and still wait for the answer.
        self.client_eof = True
        return self.exchange is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.closing = True
        self._cancel_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._send_watch is not None:
            self._send_watch.cancel()
            self._send_watch = None
        if self.exchange is not None:
            self.exchange.client_lost()
            self.exchange = None
        reason = self.end_reason or ("eof" if exc is None else "reset")
        connection_ended(self.listener, self, self.client, self.started, reason)

    # -- flow control ---------------------------------------------------------------
    def pause(self, reason: str) -> None:
        """Stop reading from the client until every reason is resolved."""
        self._pause_reasons.add(reason)
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self, reason: str) -> None:
        reasons = self._pause_reasons
        if not reasons:
            return  # the usual case: nothing to resume
        reasons.discard(reason)
        if self._paused and not reasons and self.transport is not None:
            self._paused = False
            if not self.closed:
                self.transport.resume_reading()
                if self._awaiting_body():  # the client owes bytes again from now
                    self._arm_body()

    def pause_writing(self) -> None:
        """The client's transport holds buffer_limit bytes: stop producing more."""
        self._write_paused = True
        self._watch_send()
        if self.exchange is not None:
            self.exchange.client_pause()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.exchange is not None:
            self.exchange.client_resume()
        elif self.pending and not self.closing:
            self._pump()  # pipelined requests held while the client did not read

    # -- send progress ------------------------------------------------------------
    # While meshgate waits for the client to take bytes, the listener's
    # Deadlines check a few times per send_timeout that it takes some; a
    # watch costs nothing to a connection whose client reads.
    def _watch_send(self) -> None:
        if self._send_watch is not None or self.closed or self.transport is None:
            return
        self._send_mark = self.traffic.bytes_out - unsent(self.transport)
        self._send_moved = self.loop.time()
        self._send_later()

    def _send_later(self) -> None:
        delay = self.routes.limits.send_timeout / SEND_CHECKS
        self._send_watch = self.listener.timers.call_later(delay, self._check_send)

    def _check_send(self) -> None:
        self._send_watch = None
        transport = self.transport
        if self.closed or transport is None:
            return
        waiting = self._write_paused or (self.closing and transport.get_write_buffer_size() > 0)
        if not waiting:
            return  # the client caught up; a new pause starts a new watch
        taken = self.traffic.bytes_out - unsent(transport)
        now = self.loop.time()
        if taken > self._send_mark:
            self._send_mark, self._send_moved = taken, now
        elif now - self._send_moved >= self.routes.limits.send_timeout:
            self._send_stalled()
            return
        self._send_later()

    def _send_stalled(self) -> None:
        log.info(
            "client takes no response bytes, aborted",
            extra={
                "fields": {
                    "listener": self.spec.name,
                    "client": self.client,
                    "reason": "send_timeout",
                    "unsent": self.transport.get_write_buffer_size() if self.transport else 0,
                }
            },
        )
        self.end_reason = "send_timeout"  # counted in connection_errors when it ends
        if self.exchange is not None:
            self.exchange.label = "send_timeout"
        self.abort()

    # -- timers -----------------------------------------------------------------
    # One timer handle per connection, moved only when it must fire earlier:
    # arming and cancelling per request is then just two attribute writes.
    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        deadline = self.loop.time() + delay
        self._deadline, self._on_deadline = deadline, callback
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        deadline, callback = self._deadline, self._on_deadline
        if deadline is None or callback is None:
            return
        if deadline > self.loop.time():
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._fire)
            return
        self._deadline = self._on_deadline = None
        callback()

    def _cancel_timer(self) -> None:
        self._deadline = self._on_deadline = None
