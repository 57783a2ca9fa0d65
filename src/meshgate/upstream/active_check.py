"""Active health checks: each endpoint of a backend with a `health_check` is
checked on an interval, and its `CheckState` (upstream/health.py) follows
the results.

- tcp: a connect;
- tls: a connect and a TLS handshake, with the backend's upstream TLS
  settings when it has them (the context builder re-originated connections
  use, so a check fails where traffic would), else without verification and
  with the endpoint's host as SNI when it is a name;
- http: GET `path`, over TLS when the backend re-originates TLS; it passes
  when the status is one of `expect_status` (by default 200-399).

`PoolRegistry.reconcile` runs one `PoolChecks.run()` task per pool with a
check and cancels it when the pool changes or goes away. Inside the task
each endpoint has its own loop, so a slow endpoint never delays the checks
of the others and no endpoint ever has two checks in flight. Names are
resolved at every check from `EndpointAddr.connect_host`, as connect.py
does (the static `resolve` override included).

`HttpProbe` is the sans-I/O part: request bytes out, a verdict from the
response bytes in. The I/O here is only connect, write, read and abort.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import random
import ssl
from dataclasses import dataclass

from meshgate.dataplane.certs import CertError, client_context
from meshgate.obs.metrics import Metrics
from meshgate.protocols.http1 import HttpError, ResponseHead, ResponseParser, serialize_request_head
from meshgate.protocols.result import NEED_MORE, NeedMore
from meshgate.routing.table import EndpointAddr, HealthCheckSpec
from meshgate.upstream.connect import failure_reason
from meshgate.upstream.health import Check, CheckState
from meshgate.upstream.pool import EndpointState, Pool

log = logging.getLogger("meshgate.health")

# The first check of each endpoint comes within this long of the task's
# start: soon enough that a dead endpoint is found quickly after a reload,
# spread out so a backend of many endpoints is not checked in one burst.
FIRST_CHECK_WITHIN = 1.0
# Every interval is stretched or shrunk by up to this share at random, so
# the checks of several proxies (or workers) do not fall into step (Envoy's
# interval_jitter_percent does the same).
JITTER = 0.1
# A check reads only the response head; a head bigger than the parser's cap
# fails the check anyway.
READ_SIZE = 16 * 1024
USER_AGENT = b"meshgate-health-check"


def status_ok(status: int, expect: tuple[int, ...]) -> bool:
    """Whether an http check passes with `status`: one of `expect`, or with
    none configured any 2xx or 3xx (as Envoy, HAProxy and Kubernetes probes)."""
    return status in expect if expect else 200 <= status < 400


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one check concluded."""

    error: str | None = None  # None: passed; else a short reason for people

    @property
    def ok(self) -> bool:
        return self.error is None


PASSED = Verdict()


class HttpProbe:
    """One health-check GET, sans-I/O.

    `request` holds the bytes to send; `feed()` takes response bytes as they
    come and answers NEED_MORE until the head of the final response is in,
    then a Verdict on its status; `feed_eof()` is the verdict when the server
    closed first. The body is never read. Raises ValueError at construction
    for a path or host that cannot go on a request line or in a field.
    """

    def __init__(self, path: str, host: str, expect: tuple[int, ...] = ()) -> None:
        self.expect = expect
        # Connection: close - one request per connection, so the server does
        # not keep an idle connection open for a client that never returns.
        self.request = serialize_request_head(
            "GET",
            path,
            [
                (b"Host", host.encode("ascii")),
                (b"User-Agent", USER_AGENT),
                (b"Accept", b"*/*"),
                (b"Connection", b"close"),
            ],
        )
        self._parser = ResponseParser()
        self._parser.expect("GET")

    def feed(self, data: bytes) -> Verdict | NeedMore:
        try:
            events = self._parser.feed(data)
        except HttpError as exc:
            return Verdict(f"bad response: {exc.reason}")
        for event in events:
            # Interim 1xx heads (RFC 9110 §15.2) come before the real answer;
            # 101 is final (a switch nobody asked for, judged like any status).
            if isinstance(event, ResponseHead) and (event.status >= 200 or event.status == 101):
                if status_ok(event.status, self.expect):
                    return PASSED
                return Verdict(f"status {event.status}")
        return NEED_MORE

    def feed_eof(self) -> Verdict:
        return Verdict("closed before a response")


def host_header(check: HealthCheckSpec, addr: EndpointAddr, tls: bool) -> str:
    """The Host of an http check: the configured one, else the endpoint's
    host, with its port unless it is the scheme's default (RFC 9110 §7.2)."""
    if check.host:
        return check.host
    host = f"[{addr.host}]" if ":" in addr.host else addr.host
    return host if addr.port == (443 if tls else 80) else f"{host}:{addr.port}"


def _is_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


class PoolChecks:
    """The active checks of one pool: `run()` is its task, over the pool's
    endpoints as they are at the start (a changed pool gets a new task)."""

    def __init__(self, pool: Pool, metrics: Metrics | None) -> None:
        check = pool.spec.health_check
        if check is None:
            raise ValueError(f"backend {pool.spec.name} has no health check")
        self.pool = pool
        self.spec = pool.spec
        self.check = check
        self.metrics = metrics
        self._random = random.Random()
        self._context: ssl.SSLContext | None = None  # built at the first TLS check

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for ep in list(self.pool.endpoints):
                group.create_task(self._watch(ep), name=f"check {self.spec.name} {ep.addr}")

    async def _watch(self, ep: EndpointState) -> None:
        """Check `ep` every interval (jittered), until cancelled."""
        interval = self.check.interval
        delay = self._random.uniform(0.0, min(interval, FIRST_CHECK_WITHIN))
        while True:
            await asyncio.sleep(delay)
            delay = interval * self._random.uniform(1.0 - JITTER, 1.0 + JITTER)
            state = ep.check
            if state is None or state.checking:
                # The check was removed by a reload (this task is about to be
                # cancelled), or the previous task's check is still out.
                continue
            state.checking = True
            try:
                error = await self.probe(ep.addr)
            finally:
                state.checking = False
            self._record(ep, state, error)

    async def probe(self, addr: EndpointAddr) -> str | None:
        """Check `addr` once: None when it passed, else why it did not."""
        check = self.check
        try:
            tls = self._tls(addr)
            probe = (
                HttpProbe(
                    check.path, host_header(check, addr, tls is not None), check.expect_status
                )
                if check.type == "http"
                else None
            )
            async with asyncio.timeout(check.timeout):
                return await self._exchange(addr, tls, probe)
        except CertError as exc:
            return f"tls settings: {exc}"
        except (OSError, ValueError) as exc:
            # Refused, timed out (TimeoutError is an OSError), DNS, TLS, or a
            # name IDNA cannot encode: the endpoint's failure, said briefly.
            return failure_reason(exc)
        except Exception:
            # A bug here must cost one check, not every check of the pool.
            log.exception(
                "health check error",
                extra={"fields": {"backend": self.spec.name, "endpoint": str(addr)}},
            )
            return "error"

    async def _exchange(
        self,
        addr: EndpointAddr,
        tls: tuple[ssl.SSLContext, str] | None,
        probe: HttpProbe | None,
    ) -> str | None:
        if tls is None:
            reader, writer = await asyncio.open_connection(addr.connect_host, addr.port)
        else:
            reader, writer = await asyncio.open_connection(
                addr.connect_host,
                addr.port,
                ssl=tls[0],
                server_hostname=tls[1],
                ssl_handshake_timeout=self.check.timeout,
            )
        try:
            if probe is None:
                return None  # connected (and handshaken): that was the whole check
            writer.write(probe.request)
            while True:
                data = await reader.read(READ_SIZE)
                verdict = probe.feed(data) if data else probe.feed_eof()
                if verdict is not NEED_MORE:
                    return verdict.error
        finally:
            # No goodbye: the verdict is in, and waiting for a TLS close_notify
            # (or for the body) could stall on the very server being judged.
            writer.transport.abort()

    def _tls(self, addr: EndpointAddr) -> tuple[ssl.SSLContext, str] | None:
        """(context, server name) when the check speaks TLS, else None."""
        upstream = self.spec.tls
        if self.check.type == "tcp" or (self.check.type == "http" and upstream is None):
            return None
        if self._context is None:
            self._context = self._make_context()
        if upstream is not None:
            # The name re-originated connections send (TlsStore.client_side):
            # the configured one, else the endpoint's host.
            return self._context, upstream.sni or addr.host
        # "" sends no SNI: an IP literal is not a server name (RFC 6066 §3).
        return self._context, addr.host if _is_name(addr.host) else ""

    def _make_context(self) -> ssl.SSLContext:
        upstream = self.spec.tls
        if upstream is None:
            # A tls check without TLS settings only asks that a handshake
            # completes: there is nothing configured to verify against.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        if self.check.type == "http" and upstream.alpn:
            # The check speaks HTTP/1.1: offering h2 as well could get it chosen.
            upstream = dataclasses.replace(upstream, alpn=("http/1.1",))
        return client_context(upstream)

    def _record(self, ep: EndpointState, state: CheckState, error: str | None) -> None:
        check = self.check
        before = state.status
        changed = state.record(error, check.healthy_threshold, check.unhealthy_threshold)
        if self.metrics is not None:
            result = "success" if error is None else "failure"
            self.metrics.health_checks.labels(self.spec.name, str(ep.addr), result).inc()
        if not changed:
            return  # no log line per check: only changes are news
        fields = ep.log_fields(check=check.type)
        if state.status is Check.UNHEALTHY:
            log.info(
                "endpoint unhealthy",
                extra={"fields": {**fields, "reason": error, "fails_in_a_row": state.fails}},
            )
        elif before is Check.UNHEALTHY:
            log.info(
                "endpoint healthy again",
                extra={"fields": {**fields, "passes_in_a_row": state.passes}},
            )
        else:
            log.debug("endpoint healthy", extra={"fields": fields})
