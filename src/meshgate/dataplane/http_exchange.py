"""One HTTP request and its response, from route decision to the last byte.

`start()` first refuses what must not cost any routing or upstream work:
every request at overload stage 2 (503, `Connection: close`) and a client
past its per-client request rate (429, keep-alive kept so it may retry on
the same connection); both with Retry-After. At stage 1 every response says
`Connection: close`, as during a drain.

Then it asks `routing.http_decide` what to do. Answers meshgate gives
itself (404, 403, 421, redirects, 413, 503) are written at once. Otherwise
the request goes to an upstream connection: an idle keep-alive one to the
endpoint the balancer picked, or a new one (with failover over the pool's
other endpoints). Until it is there, request body bytes are buffered up to
the listener's `buffer_limit` and then the client stops being read.

Bodies stream both ways without being held whole: each direction's
backpressure pauses the other side's reading. A chunked request body is
counted against the route's `max_body` as it arrives.

Retries: a request on a reused connection that closed before any response
byte is sent again once on a new connection, when its method is idempotent
and it had no body (nothing was lost, nothing can happen twice).

Upgrades (WebSocket): after the backend's `101`, both connections become a
byte relay until either side closes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from meshgate import aio
from meshgate.dataplane.overload import Stage
from meshgate.protocols.http1 import (
    LAST_CHUNK,
    Data,
    EndOfMessage,
    HttpError,
    RequestEvent,
    RequestHead,
    ResponseEvent,
    ResponseHead,
    Upgraded,
    encode_chunk,
    serialize_response_head,
)
from meshgate.protocols.http_forward import (
    client_response,
    connection_header,
    interim_response,
    new_request_id,
    request_id_of,
    simple_response,
    upstream_request,
)
from meshgate.routing.http_decide import Respond, decide
from meshgate.routing.table import (
    DEFAULT_ROUTE_LABEL,
    HttpRouteSpec,
    PoolSpec,
    http_route_label,
)
from meshgate.upstream.connect import NoEndpointAvailable, connect
from meshgate.upstream.http_conn import UpstreamConn
from meshgate.upstream.pool import EndpointState, Pool

if TYPE_CHECKING:
    from meshgate.dataplane.http_server import HttpServer

log = logging.getLogger("meshgate.access")

# Plain ints: looking up an Enum member costs ~80 ns, on every request.
NO_KEEPALIVE = int(Stage.NO_KEEPALIVE)
REJECT_REQUESTS = int(Stage.REJECT_REQUESTS)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Exchange:
    # Slots: one of these per request, and attribute access is on every path.
    __slots__ = (
        "_last",
        "_timer",
        "body_seen",
        "buffer",
        "buffered",
        "bytes_out",
        "chunked_out",
        "continue_owed",
        "eofs",
        "ep",
        "finished",
        "has_body",
        "head",
        "keep_alive",
        "label",
        "loop",
        "outgoing",
        "pool",
        "request_done",
        "request_id",
        "response",
        "response_started",
        "retried",
        "reusable",
        "reused",
        "route",
        "route_label",
        "server",
        "started",
        "status",
        "tunnel",
        "upgrade_rest",
        "upstream",
    )

    def __init__(self, server: HttpServer, head: RequestHead) -> None:
        self.server = server
        self.head = head
        self.loop = server.loop
        self.started = self.loop.time()
        # The client's own ID is kept (ingress-nginx does): it ties the
        # client's logs to ours; it is a checked token, so no header injection.
        self.request_id = request_id_of(head) or new_request_id()
        self.has_body = head.chunked or bool(head.content_length)
        # The overload stage is read once per request: from stage 1 on, no
        # response keeps the connection (clients spread out, sockets free up).
        self.reusable = (
            head.keep_alive and head.upgrade is None and server.overload.stage < NO_KEEPALIVE
        )
        # A client that asked `Expect: 100-continue` may hold its body back
        # until we say so (RFC 9110 §10.1.1): its body timer starts then.
        self.continue_owed = head.expect_continue
        self.request_done = False
        self.route: HttpRouteSpec | None = None
        self.route_label = "-"
        self.pool: Pool | None = None
        self.upstream: UpstreamConn | None = None
        self.ep: EndpointState | None = None
        self.reused = False
        self.retried = False
        self.outgoing: bytes = b""  # the request head for the upstream
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.body_seen = 0
        self.upgrade_rest = b""
        self.response: ResponseHead | None = None
        self.response_started = False
        self.chunked_out = False
        self.keep_alive = False
        self.status = 0
        self.label = ""
        self.bytes_out = 0
        self.finished = False
        self.tunnel = False
        self.eofs: set[str] = set()  # tunnel sides that sent FIN: "client", "upstream"
        self._timer: asyncio.TimerHandle | None = None

    # -- start ---------------------------------------------------------------
    def start(self) -> None:
        server = self.server
        if not self.reusable and self._refused():
            return
        buckets = server.buckets
        if buckets is not None and not buckets.take(server.client_ip_text, self.started):
            self._refuse(429, "rate_limited", buckets.retry_after(server.client_ip_text))
            return
        route, decision = decide(
            server.routes,
            self.head,
            scheme=server.scheme,
            client=server.client_ip,
            sni=server.sni,
            certs=server.spec.certs,
        )
        self.route = route
        if route is not None:
            if route is server.routes.default:
                self.route_label = DEFAULT_ROUTE_LABEL  # not "*/": a rule may be that
            else:
                self.route_label = http_route_label(route.host, route.path)
        if isinstance(decision, Respond):
            location = (b"Location", decision.location.encode()) if decision.location else None
            self.respond(decision.status, decision.label, [location] if location else [])
            return
        assert route is not None
        assert route.pool is not None
        pool_spec = route.pool
        if pool_spec.builtin is not None:
            self._builtin(pool_spec)
            return
        if not pool_spec.endpoints:
            self.respond(503, "no_endpoints")
            return
        self.outgoing = upstream_request(
            self.head,
            target=decision.target,
            client_ip=server.client_ip_text,
            scheme=server.scheme,
            port=server.spec.key.port,
            trusted=server.trusted,
            request_id=self.request_id,
        )
        ctx = server.listener.ctx
        self.pool = ctx.pools.get(pool_spec)
        candidates = self.pool.candidates(self.loop.time())
        conn = ctx.keepalive.take(_key(pool_spec, candidates[0]))
        if conn is not None:
            candidates[0].in_flight += 1
            self.reused = True
            ctx.metrics.http_upstream_connection(pool_spec.name, "reused")
            self._attach(conn, candidates[0])
        else:
            aio.spawn(self._connect(candidates), name="http upstream connect")

    def _refused(self) -> bool:
        """At overload stage 2 and beyond a new request gets 503, before any
        routing or upstream work; connections in flight finish."""
        if self.server.overload.stage < REJECT_REQUESTS:
            return False
        self._refuse(503, "overloaded", 1.0)
        return True

    def _refuse(self, status: int, label: str, retry_after: float) -> None:
        """Refuse the request before routing, with Retry-After in whole seconds."""
        server = self.server
        server.listener.ctx.metrics.http_rejected.labels(server.spec.name, label).inc()
        seconds = max(1, math.ceil(retry_after))  # RFC 9110 §10.2.3: delay-seconds
        self.respond(status, label, [(b"Retry-After", str(seconds).encode())])

    async def _connect(self, candidates: list[EndpointState] | None = None) -> None:
        assert self.pool is not None
        assert self.route is not None
        pool, ctx = self.pool, self.server.listener.ctx
        spec = pool.spec
        keepalive = ctx.keepalive
        holder: list[UpstreamConn] = []

        limit = self.server.spec.buffer_limit

        def factory() -> UpstreamConn:
            conn = UpstreamConn(None, None, keepalive, buffer_limit=limit)
            holder.append(conn)
            return conn

        try:
            _, conn, ep = await connect(
                pool,
                factory,
                ctx.metrics,
                ctx.tls.client_side,
                candidates=candidates,
                connect_timeout=self.route.connect_timeout,
                success_is_connect=False,
            )
        except NoEndpointAvailable as exc:
            log.info(
                "upstream connect failed",
                extra={"fields": {"backend": spec.name, "error": str(exc)}},
            )
            ctx.metrics.http_upstream_errors.labels(spec.name, "connect").inc()
            if not self.finished:
                self.respond(502, "connect_failed")
            return
        conn.ep, conn.key = ep, _key(spec, ep)
        ctx.metrics.http_upstream_connection(spec.name, "new")
        if self.finished:  # the client went away meanwhile; keep the connection
            ep.in_flight -= 1
            keepalive.give_back(conn)
            return
        self.reused = False
        self._attach(conn, ep)

    def _attach(self, conn: UpstreamConn, ep: EndpointState) -> None:
        self.upstream, self.ep = conn, ep
        conn.sink = self
        conn.exchanges += 1
        conn.parser.expect(self.head.method)
        if self.continue_owed:
            self.continue_owed = False
            if not self.request_done:
                self.server.write(CONTINUE)
                self.server.body_expected()
        conn.write(self.outgoing + b"".join(self.buffer))
        self.buffer.clear()
        self.buffered = 0
        self.server.resume("body_buffer")
        self._arm_read_timeout()

    def _client_keep_alive(self) -> bool:
        """Whether the client connection may carry another request after this one.

        Not after an Upgrade request that does not become a tunnel (the parser
        handed the connection's bytes on), nor at overload stage 1 and beyond
        (`reusable`), nor once the listener drains (the response says
        `Connection: close`, RFC 9112 §9.6). The drain may begin while the
        request is in flight, so that is asked each time.
        """
        return self.reusable and self.server.listener.state.value == "serving"

    # -- request side --------------------------------------------------------
    def client_event(self, event: RequestEvent) -> None:
        if self.finished:
            if isinstance(event, EndOfMessage | Upgraded):
                self.request_done = True
            return
        if isinstance(event, Data):
            data = event.data
            self.body_seen += len(data)
            limit = self.route.max_body if self.route is not None else None
            if limit is not None and self.body_seen > limit:
                self._body_too_large()
                return
            self._send(encode_chunk(data) if self.head.chunked else data)
            if self.upstream is not None:
                # The backend answers after the body: a long upload is activity.
                self._arm_read_timeout()
        elif isinstance(event, EndOfMessage):
            self.request_done = True
            if self.head.chunked:
                self._send(LAST_CHUNK)
        elif isinstance(event, Upgraded):
            self.request_done = True
            self.upgrade_rest = event.rest

    def _send(self, data: bytes) -> None:
        if not data:
            return
        if self.upstream is not None:
            self.upstream.write(data)
            return
        self.buffer.append(data)
        self.buffered += len(data)
        if self.buffered > self.server.spec.buffer_limit:
            self.server.pause("body_buffer")

    def _body_too_large(self) -> None:
        if self.response_started:
            self.server.abort()
            return
        self._drop_upstream()
        self.respond(413, "body_too_large")

    def client_raw(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(data)

    def client_eof(self) -> None:
        conn = self.upstream
        if conn is not None and conn.transport is not None and conn.transport.can_write_eof():
            conn.transport.write_eof()
        self.eofs.add("client")
        self._tunnel_eof()

    def client_pause(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def client_resume(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def client_lost(self) -> None:
        if not self.finished:
            self.status = self.status or 499
            self.label = self.label or "client_closed"
            self._drop_upstream()
            self._finish(keep_alive=False)

    def cancel(self) -> None:
        """The client connection is failing: release the upstream, log once."""
        self.client_lost()

    # -- response side ---------------------------------------------------------
    def response_events(self, events: list[ResponseEvent]) -> None:
        server = self.server
        corked = server.cork()
        try:
            self._response_events(events)
        finally:
            if corked:
                server.uncork()

    def _response_events(self, events: list[ResponseEvent]) -> None:
        for event in events:
            if self.finished:
                return
            if isinstance(event, Data):
                self._arm_read_timeout()
                data = event.data
                self.bytes_out += len(data)
                self.server.write(encode_chunk(data) if self.chunked_out else data)
            elif isinstance(event, ResponseHead):
                self._response_head(event)
            elif isinstance(event, EndOfMessage):
                if self.response is None:
                    continue  # the end of an interim (1xx) response
                if self.chunked_out:
                    self.server.write(LAST_CHUNK)
                self._complete()
            elif isinstance(event, Upgraded):
                self._become_tunnel(event.rest)

    def _response_head(self, resp: ResponseHead) -> None:
        if 100 <= resp.status < 200 and resp.status != 101:
            if resp.status != 100:  # 100 was ours to send; 103 Early Hints goes on
                self.server.write(interim_response(resp))
            return
        if resp.status == 101 and self.head.upgrade is None:
            self.response_error(HttpError(502, "101 to a request without Upgrade", "upstream_101"))
            return
        self.response = resp
        self.status = resp.status
        if self.ep is not None and self.pool is not None and self.ep.failures:
            self.pool.record_success(self.ep)  # a valid response: the endpoint works
        head_only = self.head.method == "HEAD" or resp.status in (204, 304)
        client_11 = self.head.version == "1.1"
        self.chunked_out = not head_only and client_11 and (resp.chunked or resp.until_close)
        # A body without a length for the client (an HTTP/1.0 client, a chunked
        # or until-close upstream body) ends when the connection does.
        delimited = head_only or self.chunked_out or resp.content_length is not None
        self.keep_alive = self._client_keep_alive() and resp.status != 101 and delimited
        self.response_started = True
        self.server.write(
            client_response(
                resp,
                chunked=self.chunked_out,
                keep_alive=self.keep_alive,
                request_id=self.request_id,
                http10=self.head.version == "1.0",
            )
        )

    def _become_tunnel(self, rest: bytes) -> None:
        conn = self.upstream
        assert conn is not None
        self._cancel_timer()
        self.tunnel = conn.raw = self.server.tunnel = True
        self.label = "upgraded"
        if rest:
            self.server.write(rest)
        if self.upgrade_rest:
            conn.write(self.upgrade_rest)
            self.upgrade_rest = b""
        self.server.resume("upgrade")

    def upstream_raw(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.server.write(data)

    def upstream_eof(self) -> None:
        transport = self.server.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()
        self.eofs.add("upstream")
        self._tunnel_eof()

    def _tunnel_eof(self) -> None:
        """A tunnel ends when both sides have sent FIN (no event comes after
        that), or when the half-closed timeout runs out."""
        if len(self.eofs) == 2:
            self._cancel_timer()
            conn, self.upstream = self.upstream, None
            self._release_endpoint()
            if conn is not None:
                conn.close()
            self._finish(keep_alive=False)
            self.server.close()
        elif self._timer is None and self.pool is not None:
            timeout = self.pool.spec.timeouts.half_closed
            self._timer = self.loop.call_later(timeout, self.server.abort)

    def upstream_pause(self) -> None:
        self.server.pause("upstream")

    def upstream_resume(self) -> None:
        self.server.resume("upstream")

    def response_error(self, error: HttpError) -> None:
        """The backend sent something that is not a valid response."""
        if error.label == "upstream_closed" and self._may_retry():
            # A reused connection closed (FIN) without answering: the backend
            # closed it idle as the request arrived. Sent again on a new one.
            self._drop_upstream()
            self.retried = True
            aio.spawn(self._connect(), name="http upstream retry")
            return
        assert self.pool is not None
        self._upstream_failed(error.label)
        log.warning(
            "bad upstream response",
            extra={
                "fields": {
                    "backend": self.pool.spec.name,
                    "endpoint": str(self.ep.addr) if self.ep else "-",
                    "reason": error.reason,
                }
            },
        )
        self._drop_upstream()
        if self.response_started:
            self.label = error.label
            self._finish(keep_alive=False)
            self.server.abort()
        else:
            self.respond(502, error.label)

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.finished:
            return
        if self.tunnel:
            self._release_endpoint()
            self.upstream = None
            self._finish(keep_alive=False)
            self.server.close()
            return
        retry = not self.response_started and self._may_retry()
        if not self.response_started and not retry:
            self._upstream_failed("closed")
        self._release_endpoint()
        self.upstream = None
        if not self.response_started:
            if retry:
                self.retried = True
                aio.spawn(self._connect(), name="http upstream retry")
                return
            self.respond(502, "upstream_closed")
            return
        self.label = "upstream_truncated"
        self._finish(keep_alive=False)
        self.server.abort()

    def _upstream_failed(self, reason: str) -> None:
        """Count a failed exchange against the backend, and against its
        endpoint for passive ejection (as a refused connect is)."""
        assert self.pool is not None
        metrics = self.server.listener.ctx.metrics
        metrics.http_upstream_errors.labels(self.pool.spec.name, reason).inc()
        if self.ep is not None:
            self.pool.record_failure(self.ep, self.loop.time())

    def _may_retry(self) -> bool:
        return (
            self.reused
            and not self.retried
            and not self.has_body
            and self.head.method in IDEMPOTENT
            and self.head.upgrade is None
        )

    # -- timeouts ----------------------------------------------------------------
    def _arm_read_timeout(self) -> None:
        if self._timer is not None:
            # Re-armed lazily: the timer checks the last activity when it fires.
            self._last = self.loop.time()
            return
        assert self.route is not None
        self._last = self.loop.time()
        self._timer = self.loop.call_later(self.route.read_timeout, self._read_timeout)

    def _read_timeout(self) -> None:
        self._timer = None
        assert self.route is not None
        left = self._last + self.route.read_timeout - self.loop.time()
        if left > 0.001 and not self.finished:
            self._timer = self.loop.call_later(left, self._read_timeout)
            return
        if self.finished:
            return
        if self.pool is not None:
            self._upstream_failed("timeout")
        self._drop_upstream()
        if self.response_started:
            self.label = "upstream_timeout"
            self._finish(keep_alive=False)
            self.server.abort()
        else:
            self.respond(504, "upstream_timeout")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- endings -----------------------------------------------------------------
    def respond(
        self, status: int, label: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """Answer the request from meshgate itself."""
        keep_alive = self._client_keep_alive() and not self.has_body and status < 500
        if status in (413,) or self.server.closing:
            keep_alive = False
        self.status, self.label = status, label
        self.server.write(
            simple_response(
                status,
                keep_alive=keep_alive,
                request_id=self.request_id,
                headers=headers or (),
                head_only=self.head.method == "HEAD",
                http10=self.head.version == "1.0",
            )
        )
        self._finish(keep_alive)

    def _builtin(self, pool: PoolSpec) -> None:
        """The `hello` built-in backend, answered in-process (quickstart, tests)."""
        body = (
            f"hello from meshgate\nroute: {self.route_label}\nbackend: {pool.name}\n"
            f"host: {self.head.host}\npath: {self.head.path}\n"
        ).encode()
        keep_alive = self._client_keep_alive() and not self.has_body
        headers = [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
            (b"X-Request-ID", self.request_id.encode()),
            *connection_header(keep_alive, self.head.version == "1.0"),
        ]
        self.status, self.label = 200, "builtin"
        self.bytes_out = len(body)
        head_only = self.head.method == "HEAD"
        self.server.write(
            serialize_response_head(200, "OK", headers) + (b"" if head_only else body)
        )
        self._finish(keep_alive)

    def _complete(self) -> None:
        """The backend's response ended: reuse its connection when we can."""
        self._cancel_timer()
        conn = self.upstream
        self.upstream = None
        self._release_endpoint()
        if conn is not None:
            if self.request_done and conn.parser.reusable:
                self.server.listener.ctx.keepalive.give_back(conn)
            else:
                conn.close()
        self._finish(self.keep_alive)

    def _drop_upstream(self) -> None:
        self._cancel_timer()
        conn, self.upstream = self.upstream, None
        self._release_endpoint()
        if conn is not None:
            conn.abort()

    def _release_endpoint(self) -> None:
        if self.ep is not None:
            self.ep.in_flight -= 1
            self.ep = None

    def _finish(self, keep_alive: bool) -> None:
        if self.finished:
            return
        self.finished = True
        self._cancel_timer()
        server = self.server
        duration = self.loop.time() - self.started
        metrics = server.listener.ctx.metrics
        name = server.spec.name
        metrics.http_request_done(name, self.route_label, self.status, duration)
        if server.routes.limits.access_log and log.isEnabledFor(logging.INFO):
            log.info(
                "http request",
                extra={
                    "fields": {
                        "listener": name,
                        "client": server.client,
                        "method": self.head.method,
                        "host": self.head.host,
                        "path": self.head.path,
                        "status": self.status,
                        "reason": self.label or None,
                        "route": self.route_label,
                        "backend": self.pool.spec.name if self.pool else None,
                        "upstream_reused": self.reused,
                        "bytes_out": self.bytes_out,
                        "duration": round(duration, 6),
                        "request_id": self.request_id,
                    }
                },
            )
        server.exchange_done(self, keep_alive)


def _key(pool: PoolSpec, ep: EndpointState) -> tuple[object, ...]:
    """Idle connections are shared by endpoint and TLS settings, not by route."""
    return (ep.addr, pool.tls)
