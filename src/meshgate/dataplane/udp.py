"""UDP listeners: one flow per client address, each with its own upstream socket.

UDP has no connections, so the listener makes them up: the first datagram
from a client address (host, port) opens a *flow*, and the flow owns a
*connected* upstream datagram socket. Replies arriving on that socket can
only be for that client, so they go back to it from the listening socket
without any lookup. This is what `nexd proxy` and socat's `UDP-RECVFROM,fork`
do, with three additions: endpoints are balanced across flows, upstream host
names are resolved when a flow opens, and flows are bounded and counted.

Boundaries: this module does socket I/O for UDP only. A flow takes the
listener spec and the live pool at creation and keeps both, so a reload never
re-routes an established flow. It knows nothing of config or of TCP.

Flow life: opening (upstream socket being set up; client datagrams queue,
bounded) -> open (datagrams relayed both ways) -> closed (idle, aborted, no
upstream, listener closed). UDP has no close, so idleness is the normal end:
one sweep timer per listener, not a timer per datagram, finds idle flows.

UDP has no backpressure either: a datagram that cannot be queued or sent now
is dropped and counted, never buffered without bound.

Admission: a datagram that would open a flow for a source outside the
listener's allow-list, or while overload stage 3 stops new connections, is
dropped and counted (reasons `not_allowed`, `overload`); flows already open
carry on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from meshgate import settings
from meshgate.aio import DatagramSide, adopt_datagram, cancel_and_wait, spawn
from meshgate.dataplane.admission import NOT_ALLOWED, OVERLOAD, allowed, client_ip
from meshgate.dataplane.listener import Context, Listener, State, Traffic
from meshgate.dataplane.overload import Stage
from meshgate.routing.table import EndpointAddr, ListenerSpec, hostport
from meshgate.upstream.connect import failure_reason
from meshgate.upstream.pool import EndpointState, Pool

log = logging.getLogger("meshgate.udp")

# A client address as the socket reports it: (host, port) for IPv4,
# (host, port, flowinfo, scope_id) for IPv6. Used as is for the flow key and
# for sendto, so a link-local client's scope survives the round trip.
Address = tuple[Any, ...]

# The idle sweep runs every half idle timeout (a flow ends between 1x and 1.5x
# its timeout), but at least this often: a long timeout should not make a
# flow linger for minutes past it, and a wake-up every 5 s costs nothing.
SWEEP_MAX_PERIOD = 5.0
# ...and at most this often, whatever a (mis)configured tiny timeout asks.
SWEEP_MIN_PERIOD = 0.05

# Closing a socket completes one loop iteration later; `_closed` waits for it
# so the port is free when it returns. Bounded so shutdown can never hang.
CLOSE_WAIT = 1.0


def _addr_text(addr: object) -> str:
    """`host:port` for logs; never raises, whatever the loop passed as an address."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        return hostport(str(addr[0]), addr[1])
    return str(addr)


# -- sockets -----------------------------------------------------------------------


async def _connected_socket(loop: asyncio.AbstractEventLoop, addr: EndpointAddr) -> socket.socket:
    """A non-blocking datagram socket connected to `addr` (resolved now)."""
    try:
        # IP literals need no lookup (and no executor thread).
        infos = socket.getaddrinfo(
            addr.host, addr.port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST
        )
    except socket.gaierror:
        infos = await loop.getaddrinfo(addr.host, addr.port, type=socket.SOCK_DGRAM)
    if not infos:
        raise socket.gaierror(socket.EAI_NONAME, f"no address for {addr.host}")
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.connect(sockaddr)  # UDP: sends nothing, only fixes the peer
    except BaseException:
        sock.close()
        raise
    return sock


# -- flows ---------------------------------------------------------------------------
class UdpFlow:
    """One client address and the connected upstream socket serving it.

    Implements the listener's `Tracked` protocol. Created by `UdpListener`
    with the spec and pool of that moment, which it keeps.
    """

    __slots__ = (
        "_closed",
        "_downstream",
        "_loop",
        "_owner",
        "_pending",
        "_replied",
        "_side",
        "_upstream",
        "backend",
        "client",
        "endpoint",
        "last_seen",
        "pool",
        "setup",
        "spec",
        "started",
        "traffic",
    )

    def __init__(
        self,
        owner: UdpListener,
        spec: ListenerSpec,
        pool: Pool,
        client: Address,
        *,
        downstream: _ClientSide,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.spec = spec
        self.pool = pool
        self.backend = spec.l4_pool.name
        self.client = client
        self.traffic = Traffic()
        self.endpoint: EndpointState | None = None  # set once an upstream socket is up
        self.setup: asyncio.Task[None] | None = None  # the task running `open()`
        self.started = self.last_seen = loop.time()
        self._owner = owner
        self._downstream = downstream  # the listening socket: replies leave from it
        self._loop = loop
        self._side: _UpstreamSide | None = None
        self._upstream: asyncio.DatagramTransport | None = None
        self._pending: list[bytes] | None = []  # None once open or closed
        self._replied = False  # since the last error: the next reply proves the endpoint
        self._closed = False

    @property
    def client_text(self) -> str:
        return _addr_text(self.client)

    @property
    def endpoint_text(self) -> str | None:
        return str(self.endpoint.addr) if self.endpoint is not None else None

    # -- data --------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        self.last_seen = self._loop.time()
        upstream = self._upstream
        if upstream is not None:
            if self._side is not None and self._side.paused:
                self._owner.dropped("congested")
                return
            upstream.sendto(data)  # connected socket: no address
            self.traffic.bytes_in += len(data)
        elif self._pending is not None and len(self._pending) < settings.UDP_PENDING_DATAGRAMS:
            self._pending.append(data)
        else:
            self._owner.dropped("pending_full")

    def from_upstream(self, data: bytes) -> None:
        self.last_seen = self._loop.time()
        downstream = self._downstream
        if downstream.paused or downstream.transport is None:
            self._owner.dropped("congested")
            return
        downstream.transport.sendto(data, self.client)
        self.traffic.bytes_out += len(data)
        if not self._replied:
            # A reply is the only proof a UDP endpoint is alive (setting up a
            # connected socket sends nothing), so success is recorded here.
            self._replied = True
            if self.endpoint is not None:
                self.pool.record_success(self.endpoint)

    def upstream_error(self, exc: Exception) -> None:
        """An ICMP error (or a failed send) on the upstream socket.

        The flow stays: UDP servers restart, and the client may simply retry.
        The endpoint gets a passive-health failure so new flows avoid it.
        """
        reason = "upstream_" + failure_reason(exc)  # ConnectionRefusedError -> upstream_refused
        self._owner.ctx.metrics.connection_errors.labels(self._owner.spec.name, reason).inc()
        if self.endpoint is not None:
            self.pool.record_failure(self.endpoint, self._loop.time())
        self._replied = False
        log.debug(
            "udp upstream error",
            extra={
                "fields": {
                    "listener": self.spec.name,
                    "client": self.client_text,
                    "endpoint": self.endpoint_text,
                    "reason": reason,
                }
            },
        )

    def upstream_lost(self, side: _UpstreamSide) -> None:
        # Only the socket in use matters: a failed setup attempt's closing is expected.
        if side is self._side and not self._closed:
            self.close("upstream_lost")

    def failed_datagram(self) -> None:
        self._owner.failed_datagram(self.client)

    # -- setup -------------------------------------------------------------
    async def open(self) -> None:
        """Set up the upstream socket: try the pool's candidates in order.

        Host names are resolved here, once per flow, so a Service name is
        looked up again for the next flow.
        """
        loop = self._loop
        timeout = self.spec.l4_pool.timeouts.connect
        metrics = self._owner.ctx.metrics
        for ep in self.pool.candidates(loop.time()):
            ep.in_flight += 1
            side = _UpstreamSide(self, self._owner.upstream_sockets, loop)
            try:
                async with asyncio.timeout(timeout):
                    sock = await _connected_socket(loop, ep.addr)
                    await adopt_datagram(loop, sock, side)
            except Exception as exc:
                # Refused socket, DNS failure, timeout, or a name IDNA cannot
                # encode (UnicodeError): all this endpoint's failure, not the flow's.
                ep.in_flight -= 1
                self.pool.record_failure(ep, loop.time())
                reason = failure_reason(exc)
                metrics.connect_failures.labels(self.backend, str(ep.addr), reason).inc()
                log.debug(
                    "udp upstream setup failed",
                    extra={
                        "fields": {
                            "listener": self.spec.name,
                            "endpoint": str(ep.addr),
                            "reason": reason,
                            "error": str(exc),
                        }
                    },
                )
                continue
            except BaseException:
                ep.in_flight -= 1  # cancelled: the flow closed
                raise
            self.setup = None
            self.endpoint, self._side, self._upstream = ep, side, side.transport
            pending, self._pending = self._pending or [], None
            for data in pending:
                self.from_client(data)
            return
        # Every candidate failed: what the client sent so far cannot go anywhere.
        self.setup = None
        if self._pending:
            self._owner.dropped("no_upstream", len(self._pending))
        self.close("no_upstream")

    # -- end ---------------------------------------------------------------
    def abort(self) -> None:
        self.close("aborted")

    def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self.setup is not None:
            self.setup.cancel()
            self.setup = None
        if self._side is not None:
            self._side.abandon()
        self._upstream = None
        self._pending = None
        if self.endpoint is not None:
            self.endpoint.in_flight -= 1
        self._owner.flow_ended(self, reason)


class _ClientSide(DatagramSide):
    """The listening socket: datagrams from clients, replies to them."""

    def __init__(self, listener: UdpListener, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._listener = listener

    def datagram_received(self, data: bytes, addr: Address) -> None:
        # A failure on one datagram must not reach the transport: uvloop
        # closes a datagram transport whose callback raises.
        try:
            self._listener.from_client(data, addr)
        except Exception:
            self._listener.failed_datagram(addr)

    def error_received(self, exc: Exception) -> None:
        # An unconnected socket reports no ICMP errors; this is a reply that
        # could not be sent (no route to the client, a firewall).
        self._listener.dropped("send_failed")
        log.debug(
            "udp send to client failed",
            extra={"fields": {"listener": self._listener.spec.name, "error": str(exc)}},
        )


class _UpstreamSide(DatagramSide):
    """A flow's connected upstream socket (one instance per setup attempt)."""

    def __init__(
        self, flow: UdpFlow, sockets: set[_UpstreamSide], loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(loop)
        self._flow = flow
        self._sockets = sockets  # the listener's, so it can wait for their release

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sockets.add(self)
        super().connection_made(transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        try:
            self._flow.from_upstream(data)
        except Exception:
            self._flow.failed_datagram()

    def error_received(self, exc: Exception) -> None:
        try:
            self._flow.upstream_error(exc)
        except Exception:
            self._flow.failed_datagram()

    def connection_lost(self, exc: Exception | None) -> None:
        self._sockets.discard(self)
        super().connection_lost(exc)
        self._flow.upstream_lost(self)


# -- the listener ----------------------------------------------------------------------
class UdpListener(Listener):
    """A UDP socket relaying each client's datagrams through its own flow."""

    def __init__(self, spec: ListenerSpec, ctx: Context) -> None:
        super().__init__(spec, ctx)
        self.flows: dict[Address, UdpFlow] = {}
        # Upstream sockets not yet released (a closed socket is released one
        # loop iteration later); `_closed` waits for them.
        self.upstream_sockets: set[_UpstreamSide] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._side: _ClientSide | None = None
        self._accepting = True
        self._sweep: asyncio.TimerHandle | None = None
        self._setups: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------
    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        address, port = self.spec.key.address, self.spec.key.port
        # The address is an IP literal (config checks it); its form gives the family.
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        # SO_REUSEPORT only among meshgate's own workers (settings.REUSE_PORT).
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if settings.REUSE_PORT:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address, port))
        except BaseException:
            sock.close()
            raise
        self._side = await adopt_datagram(loop, sock, _ClientSide(self, loop))
        self._loop = loop

    def _stop_accepting(self) -> None:
        # The listening socket stays open: established flows still receive
        # their clients' datagrams on it. Only new clients are turned away.
        self._accepting = False

    @property
    def accepting(self) -> bool:
        return (
            self.state is State.SERVING
            and self._accepting
            and self.ctx.overload.stage < Stage.STOP_ACCEPTING
        )

    async def _closed(self) -> None:
        self._accepting = False
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for flow in list(self.flows.values()):
            flow.close("closed")
        await cancel_and_wait(list(self._setups))
        waits = [side.lost for side in self.upstream_sockets]
        if self._side is not None:
            self._side.abandon()
            waits.append(self._side.lost)
        if waits:
            _, left = await asyncio.wait(waits, timeout=CLOSE_WAIT)
            if left:
                log.warning(
                    "udp sockets still closing",
                    extra={"fields": {"listener": self.spec.name, "sockets": len(left)}},
                )

    # -- datagrams ---------------------------------------------------------
    def from_client(self, data: bytes, addr: Address) -> None:
        flow = self.flows.get(addr)
        if flow is None:
            flow = self._new_flow(addr)
            if flow is None:
                return
        flow.from_client(data)

    def _new_flow(self, addr: Address) -> UdpFlow | None:
        if not isinstance(addr, tuple) or len(addr) < 2:  # a source the loop could not name
            self.dropped("error")
            return None
        if not self._accepting:
            self.dropped("draining")
            return None
        spec = self.spec
        if spec.allow and not allowed(client_ip(str(addr[0])), spec.allow):
            self.dropped(NOT_ALLOWED)
            return None
        if self.ctx.overload.stage >= Stage.STOP_ACCEPTING:
            self.dropped(OVERLOAD)
            return None
        if len(self.live) >= spec.udp.max_flows:
            self.dropped("max_flows")
            return None
        loop, side = self._loop, self._side
        if loop is None or side is None:  # not bound: no datagram can arrive
            return None
        pool = self.ctx.pools.get(spec.l4_pool)
        flow = UdpFlow(self, spec, pool, addr, downstream=side, loop=loop)
        self.flows[addr] = flow
        self.track(flow)
        metrics = self.ctx.metrics
        metrics.udp_flows.labels(spec.name, flow.backend).inc()
        metrics.udp_flows_active.labels(spec.name, flow.backend).inc()
        task = spawn(flow.open(), name=f"udp flow {spec.name} {flow.client_text}")
        flow.setup = task
        self._setups.add(task)
        task.add_done_callback(self._setups.discard)
        self._schedule_sweep()
        return flow

    def flow_ended(self, flow: UdpFlow, reason: str) -> None:
        if self.flows.get(flow.client) is flow:
            del self.flows[flow.client]
        self.untrack(flow)
        self.ctx.metrics.udp_flows_active.labels(flow.spec.name, flow.backend).dec()
        duration = (self._loop.time() - flow.started) if self._loop is not None else 0.0
        log.info(
            "flow closed",
            extra={
                "fields": {
                    "listener": flow.spec.name,
                    "client": flow.client_text,
                    "endpoint": flow.endpoint_text,
                    "bytes_in": flow.traffic.bytes_in,
                    "bytes_out": flow.traffic.bytes_out,
                    "duration": round(duration, 3),
                    "reason": reason,
                }
            },
        )

    def dropped(self, reason: str, count: int = 1) -> None:
        self.ctx.metrics.udp_datagrams_dropped.labels(self.spec.name, reason).inc(count)

    def failed_datagram(self, client: Address) -> None:
        """A bug met while handling one datagram: count it, keep serving."""
        self.dropped("error")
        log.exception(
            "udp datagram failed",
            extra={"fields": {"listener": self.spec.name, "client": _addr_text(client)}},
        )

    # -- idle sweep --------------------------------------------------------
    def _schedule_sweep(self) -> None:
        # Runs only while flows exist: an idle listener costs no wake-ups.
        if self._sweep is not None or self._loop is None:
            return
        period = min(self.spec.udp.flow_idle_timeout / 2, SWEEP_MAX_PERIOD)
        self._sweep = self._loop.call_later(max(period, SWEEP_MIN_PERIOD), self._run_sweep)

    def _run_sweep(self) -> None:
        self._sweep = None
        if self._loop is None:
            return
        now = self._loop.time()
        try:
            for flow in list(self.flows.values()):
                # Each flow's own timeout: it keeps the spec it was created with.
                if now - flow.last_seen >= flow.spec.udp.flow_idle_timeout:
                    flow.close("idle")
        finally:
            # Even after an error, or idle flows would never be swept again.
            if self.flows:
                self._schedule_sweep()
