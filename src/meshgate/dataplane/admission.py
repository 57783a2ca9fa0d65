"""Admission decisions, sans-I/O: who may connect, and whether listeners take
new connections at all.

Three kinds of decision, each a pure function of counts and figures that the
listener and data plane modules feed in (they do all the socket and /proc
I/O):

- caps: open client connections of one listener and of all listeners
  together against `max_connections`. At a cap a listener stops accepting
  (the kernel backlog holds newcomers) and resumes below it. `Slots` is the
  bookkeeping, `pause_reason` and `over_cap` the decisions.
- clients: a listener's allow-list and its per-client limits (connections
  open at once, new connections per second); `ClientLimiter.check`.
- overload: the stage (see `overload.Stage`) from the higher of connections
  over the global cap and resident memory over the memory limit, with
  hysteresis so a figure hovering at a threshold does not flap; `next_stage`.
"""

from __future__ import annotations

import ipaddress
import math
import sys
from dataclasses import dataclass

from meshgate.dataplane.overload import Stage
from meshgate.dataplane.ratelimit import ClientBuckets, keep_or_new
from meshgate.routing.table import ClientLimitsSpec, GlobalLimitsSpec, IpNetwork

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# "No cap": an int larger than any descriptor count, so the hot path compares
# two ints instead of testing for None first.
NO_CAP = sys.maxsize

# Refusal reasons: label values of meshgate_connections_refused.
NOT_ALLOWED = "not_allowed"
LISTENER_LIMIT = "listener_limit"
GLOBAL_LIMIT = "global_limit"
CLIENT_LIMIT = "client_limit"
CLIENT_RATE = "client_rate"
OVERLOAD = "overload"
FD_EXHAUSTED = "fd_exhausted"
CLIENT_GONE = "client_gone"  # queued while paused, and closed by its client since

# A stage is left only once its figure is this far below the stage's
# threshold (0.05 of the cap or memory limit): a load hovering at a threshold
# would otherwise switch keep-alive or accepting on and off every sample.
HYSTERESIS = 0.05


# -- caps ------------------------------------------------------------------------------
class Slots:
    """Open connections against a cap (NO_CAP: none)."""

    __slots__ = ("cap", "open")

    def __init__(self, cap: int = NO_CAP) -> None:
        self.cap = cap
        self.open = 0


def cap_of(value: int | None) -> int:
    """A configured cap (None: unlimited) as the int `Slots` compares."""
    return NO_CAP if value is None else value


def global_cap(limits: GlobalLimitsSpec, nofile: int | None) -> int:
    """The cap on client connections of all listeners together.

    Configured, else what the descriptor limit (`nofile`, the soft
    RLIMIT_NOFILE; None: unlimited) allows with `fd_reserve` kept free: a
    proxied connection holds two descriptors, the client's and the upstream's.
    """
    if limits.max_connections is not None:
        return limits.max_connections
    if nofile is None:
        return NO_CAP
    return max(1, (nofile - limits.fd_reserve) // 2)


def pause_reason(own: Slots, total: Slots, stage: Stage) -> str | None:
    """Why a listener must not accept now, or None when it may."""
    if stage >= Stage.STOP_ACCEPTING:
        return OVERLOAD
    if own.open >= own.cap:
        return LISTENER_LIMIT
    if total.open >= total.cap:
        return GLOBAL_LIMIT
    return None


def over_cap(own: Slots, total: Slots) -> str | None:
    """For a connection already counted: the cap it went past, if any.

    A listener pauses right after the connection that fills its last slot,
    but an event loop that accepts several connections in one go (libuv
    has, uvloop 0.23 does not) could pass a cap before then; those past it
    are closed at once.
    """
    if own.open > own.cap:
        return LISTENER_LIMIT
    if total.open > total.cap:
        return GLOBAL_LIMIT
    return None


# -- clients ---------------------------------------------------------------------------
def client_ip(host: str) -> IpAddress | None:
    """The address a peer's host text names, None when it is not an IP.

    An IPv6 zone ("fe80::1%eth0") is dropped, and an IPv4-mapped IPv6
    address (a dual-stack socket's view of an IPv4 client) is the IPv4
    address, so allow-lists and per-client counts see one client one way.
    """
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def allowed(ip: IpAddress | None, allow: tuple[IpNetwork, ...]) -> bool:
    """Whether `ip` is in one of the `allow` ranges (empty: everyone is)."""
    if not allow:
        return True
    if ip is None:
        return False  # a peer without an IP (never on TCP/UDP) is nobody we know
    return any(ip in net for net in allow)


class ClientLimiter:
    """Per-client limits of one listener: connections each client has open,
    and a token bucket per client for new connections per second.

    Counts are kept across reloads (they are facts about open connections);
    the buckets are made anew when the rate or burst changes.
    """

    __slots__ = ("_buckets", "open")

    def __init__(self) -> None:
        self.open: dict[str, int] = {}  # client -> connections open; absent: none
        self._buckets: ClientBuckets | None = None

    def check(self, client: str, limits: ClientLimitsSpec, now: float) -> str | None:
        """Refusal reason for a new connection of `client`, or None (then a
        rate token has been spent; call `opened` if it is kept)."""
        cap = limits.max_connections
        if cap is not None and self.open.get(client, 0) >= cap:
            return CLIENT_LIMIT  # checked first: a refused connection spends no token
        rate = limits.connection_rate
        if rate is not None and not self._bucket(rate, limits.burst).take(client, now):
            return CLIENT_RATE
        return None

    def opened(self, client: str) -> None:
        self.open[client] = self.open.get(client, 0) + 1

    def closed(self, client: str) -> None:
        left = self.open.get(client, 0) - 1
        if left > 0:
            self.open[client] = left
        else:
            self.open.pop(client, None)  # bounded by the open connections, not by history

    def _bucket(self, rate: float, burst: int | None) -> ClientBuckets:
        self._buckets = keep_or_new(self._buckets, rate, burst)
        return self._buckets


def counts_clients(limits: ClientLimitsSpec | None) -> bool:
    """Whether a listener with these per-client limits must look at each
    client at accept (`request_rate` alone is the HTTP server's)."""
    return limits is not None and (
        limits.max_connections is not None or limits.connection_rate is not None
    )


# -- overload --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Thresholds:
    """Loads (fractions of the cap or limit) at which each stage begins."""

    disable_keepalive: float = 0.80
    reject_requests: float = 0.90
    stop_accepting: float = 0.95

    @classmethod
    def of(cls, limits: GlobalLimitsSpec) -> Thresholds:
        return cls(limits.disable_keepalive, limits.reject_requests, limits.stop_accepting)

    def stage_at(self, load: float) -> Stage:
        """The stage a load calls for, ignoring where it came from."""
        if load >= self.stop_accepting:
            return Stage.STOP_ACCEPTING
        if load >= self.reject_requests:
            return Stage.REJECT_REQUESTS
        if load >= self.disable_keepalive:
            return Stage.NO_KEEPALIVE
        return Stage.NORMAL


@dataclass(frozen=True, slots=True)
class Figures:
    """One sample of what the overload stages are measured on."""

    connections: int  # client connections open, all listeners
    max_connections: int  # the global cap (NO_CAP: none)
    rss: int | None  # resident bytes (None: unknown)
    memory_limit: int | None  # None: memory is not watched

    def load(self) -> tuple[float, str]:
        """The higher of the two fractions, and which it was ("connections"
        or "memory")."""
        conns = 0.0 if self.max_connections == NO_CAP else self.connections / self.max_connections
        memory = 0.0
        if self.rss is not None and self.memory_limit:
            memory = self.rss / self.memory_limit
        if memory > conns:
            return memory, "memory"
        return conns, "connections"


def next_stage(current: Stage, load: float, thresholds: Thresholds) -> Stage:
    """The stage after `current` for `load`: up as soon as a threshold is
    reached, down only once the load is HYSTERESIS below the threshold of
    the stage being left."""
    if not math.isfinite(load):
        return Stage.STOP_ACCEPTING
    rising = thresholds.stage_at(load)
    holding = thresholds.stage_at(load + HYSTERESIS)
    return max(rising, min(current, holding))
