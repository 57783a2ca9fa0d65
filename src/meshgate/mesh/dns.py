"""Mesh DNS names: a small authoritative responder for the names meshgate serves.

A device on the mesh asks `dig @100.100.0.2 my-app.mesh.internal` and gets
the proxy's current mesh address. meshgate is authoritative for its zones
only: it answers A and AAAA from `DnsRecords`, says NXDOMAIN for unknown
names inside a zone, REFUSED for every other name, and never recurses.

Two halves:

- **sans-I/O** (`DnsRecords`, `respond`/`answer`, `read_frame`, `hosts_lines`,
  `coredns_stanza`): a DNS message in, a DNS message out, plain values in and
  out. Wire encoding is dnslib's; the decisions (which rcode, which records,
  when to truncate) are made here and unit-tested without sockets.
- **I/O** (`DnsServer`): one UDP and one TCP socket on the same address. The
  records are a single immutable value that `update()` replaces, so every
  answer uses one consistent snapshot. A bad or unlucky query is dropped and
  counted; it never stops the server.

Boundaries: no config, no routing table, no metrics import. The caller builds
`DnsRecords` (from listeners' `dns_name`s and the mesh address) and passes an
`on_query(label)` callback to count queries in Prometheus.

Section numbers refer to RFC 1035 (DNS), RFC 2308 (negative caching),
RFC 6891 (EDNS(0)) and RFC 7766 (DNS over TCP).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, cast

from dnslib import (
    AAAA,
    EDNS0,
    RR,
    SOA,
    A,
    DNSError,
    DNSHeader,
    DNSRecord,
)

from meshgate import settings
from meshgate.aio import DatagramSide, adopt_datagram
from meshgate.errors import ProtocolError
from meshgate.protocols.result import NEED_MORE, NeedMore

log = logging.getLogger("meshgate.dns")

# Mesh addresses move (the interface comes back with a new address, a
# replica goes away), so answers are cached briefly; 30 s is CoreDNS's
# default for its kubernetes plugin, the closest thing users know.
DEFAULT_TTL: Final = 30
MAX_TTL: Final = 2**31 - 1  # RFC 2181 §8

# A UDP reply without EDNS must fit in 512 bytes (RFC 1035 §4.2.1).
UDP_PLAIN_SIZE: Final = 512
# With EDNS the client says how much it takes; we never send more than 1232
# bytes (DNS Flag Day 2020): that fits a 1280-byte IPv6 minimum MTU, and so
# WireGuard's 1420, without IP fragmentation, which meshes often lose.
EDNS_UDP_SIZE: Final = 1232
# A DNS message over TCP carries a two-byte length (RFC 1035 §4.2.2).
MAX_TCP_MESSAGE: Final = 65535
# A query is a header, one name (<= 255 bytes) and an OPT record; 4 KiB leaves
# room for any EDNS options (padding, cookies) and stops a client from making
# the server buffer 64 KiB per connection.
MAX_TCP_QUERY: Final = 4096
# RFC 7766 §6.2.3: servers should close idle connections after a few seconds;
# resolvers that reuse a connection do so within that time.
TCP_IDLE_TIMEOUT: Final = 10.0
# Each open TCP connection holds a descriptor; bounded so a flood of idle
# connections cannot exhaust them (UDP keeps working regardless).
MAX_TCP_CONNECTIONS: Final = 256
# With port 0 the kernel picks a free UDP port, which may be taken for TCP;
# a few more picks make that vanishingly unlikely to fail.
PORT_ATTEMPTS: Final = 8
# Closing a socket completes one loop iteration later; `stop` waits for it so
# the port is free when it returns. Bounded so shutdown can never hang.
CLOSE_WAIT: Final = 1.0

# SOA timers for the synthetic SOA (RFC 1035 §3.3.13). Only its MINIMUM
# matters here, as the negative-caching TTL (RFC 2308 §4, set to the answer
# TTL); meshgate serves no zone transfers, so the rest are conventional values.
SOA_REFRESH: Final = 3600
SOA_RETRY: Final = 600
SOA_EXPIRE: Final = 86400
SOA_SERIAL: Final = 1

# Response codes (RFC 1035 §4.1.1, RFC 6891 §9). BADVERS needs 12 bits: its
# upper 8 travel in the OPT record, the lower 4 (zero) in the header.
NOERROR: Final = 0
FORMERR: Final = 1
NXDOMAIN: Final = 3
NOTIMP: Final = 4
REFUSED: Final = 5
BADVERS: Final = 16
RCODE_NAMES: Final[Mapping[int, str]] = {
    NOERROR: "NOERROR",
    FORMERR: "FORMERR",
    NXDOMAIN: "NXDOMAIN",
    NOTIMP: "NOTIMP",
    REFUSED: "REFUSED",
    BADVERS: "BADVERS",
}
# `on_query` labels besides the rcode names above.
MALFORMED: Final = "malformed"  # not a DNS query we could parse: dropped
ERROR: Final = "error"  # a bug met while answering: dropped, logged
DROPPED: Final = "dropped"  # an answered UDP query whose reply could not be sent

# The few numbers of the DNS registry used here (IANA "DNS Parameters"),
# spelled out rather than looked up in dnslib's untyped tables.
OPCODE_QUERY: Final = 0
TYPE_A: Final = 1
TYPE_SOA: Final = 6
TYPE_AAAA: Final = 28
TYPE_OPT: Final = 41
TYPE_ANY: Final = 255
CLASS_IN: Final = 1
CLASS_ANY: Final = 255

# A name as a tuple of lower-case labels, most specific first:
# "My-App.mesh.internal." -> (b"my-app", b"mesh", b"internal").
Labels = tuple[bytes, ...]


# -- records -----------------------------------------------------------------------
def _labels(name: str) -> Labels:
    return tuple(name.encode("ascii").split(b"."))


def _normal_name(text: str, what: str) -> str:
    """`text` as a lower-case name without the trailing dot; ValueError if it is none."""
    name = text.strip().lower().removesuffix(".")
    problem = None
    if not name:
        problem = "empty"
    elif not name.isascii():
        problem = "not ASCII (use the xn-- form of an international name)"
    elif len(name) > 253:  # 255 bytes on the wire (RFC 1035 §2.3.4)
        problem = "longer than 253 characters"
    elif any(not 1 <= len(label) <= 63 for label in name.split(".")):
        problem = "a label is empty or longer than 63 characters"
    elif any(not (c.isalnum() or c in "-_.") for c in name):
        problem = "only letters, digits, '-', '_' and '.' are allowed"
    if problem is not None:
        raise ValueError(f"invalid DNS {what} {text!r}: {problem}")
    return name


@dataclass(frozen=True, slots=True)
class _Addresses:
    v4: tuple[str, ...]
    v6: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DnsRecords:
    """The names served and the zones they live in: one immutable snapshot.

    `names` maps a fully qualified name (any case, trailing dot or not) to its
    IPv4 and IPv6 addresses. Construction normalises both fields (lower case,
    no trailing dot, canonical address text, duplicates removed) and raises
    ValueError naming the culprit for a bad name, a bad address, or a name in
    none of the zones (it could never be answered).
    """

    zones: tuple[str, ...]
    names: Mapping[str, tuple[str, ...]]
    # Derived once here so that answering is a few dict lookups.
    _zones: tuple[Labels, ...] = field(init=False, repr=False, compare=False)
    _index: Mapping[Labels, _Addresses] = field(init=False, repr=False, compare=False)
    # Names that exist without addresses of their own: zone apexes and the
    # names between an apex and a record ("team.mesh.internal" for
    # "app.team.mesh.internal"). They get NODATA, not NXDOMAIN, which would
    # tell resolvers that nothing exists below them either (RFC 8020).
    _existing: frozenset[Labels] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        zones = tuple(dict.fromkeys(_normal_name(zone, "zone") for zone in self.zones))
        # Most specific first, so a name in nested zones gets the inner one's SOA.
        zone_labels = tuple(sorted((_labels(z) for z in zones), key=len, reverse=True))
        merged: dict[str, list[str]] = {}
        for raw, addresses in self.names.items():
            name = _normal_name(raw, "name")
            if isinstance(addresses, str):  # a bare string would iterate characters
                raise ValueError(f"addresses of DNS name {name!r} must be a list, not a string")
            known = merged.setdefault(name, [])
            for text in addresses:
                try:
                    address = str(ipaddress.ip_address(text.strip()))
                except ValueError:
                    raise ValueError(
                        f"DNS name {name!r}: {text!r} is not an IPv4 or IPv6 address"
                    ) from None
                if address not in known:
                    known.append(address)
        index: dict[Labels, _Addresses] = {}
        existing = set(zone_labels)
        for name, known in merged.items():
            labels = _labels(name)
            zone = _zone_of(zone_labels, labels)
            if zone is None:
                raise ValueError(
                    f"DNS name {name!r} is in none of the zones: {', '.join(zones) or '(none)'}"
                )
            index[labels] = _Addresses(
                v4=tuple(a for a in known if ":" not in a),
                v6=tuple(a for a in known if ":" in a),
            )
            existing.update(labels[-n:] for n in range(len(zone), len(labels)))
        setattr_ = object.__setattr__  # frozen: fields are set once, here
        setattr_(self, "zones", zones)
        setattr_(self, "names", MappingProxyType({n: tuple(a) for n, a in merged.items()}))
        setattr_(self, "_zones", zone_labels)
        setattr_(self, "_index", MappingProxyType(index))
        setattr_(self, "_existing", frozenset(existing))


def _zone_of(zones: Iterable[Labels], name: Labels) -> Labels | None:
    """The most specific zone containing `name` (equal to it or a suffix of it)."""
    for zone in zones:
        if name[len(name) - len(zone) :] == zone:
            return zone
    return None


def _zone_name(zone: Labels) -> str:
    return b".".join(zone).decode("ascii")


def hosts_lines(records: DnsRecords) -> list[str]:
    """Hosts-file lines ("100.100.0.2 my-app.mesh.internal"), one per address."""
    return [
        f"{address} {name}" for name in sorted(records.names) for address in records.names[name]
    ]


def coredns_stanza(records: DnsRecords, ttl: int = DEFAULT_TTL) -> str:
    """CoreDNS server blocks serving the same names with the `hosts` plugin."""
    by_zone: dict[Labels, list[str]] = {zone: [] for zone in records._zones}
    for name in sorted(records.names):
        zone = _zone_of(records._zones, _labels(name))
        if zone is not None:  # always: DnsRecords rejects names outside its zones
            by_zone[zone].extend(f"{a} {name}" for a in records.names[name])
    out = [
        "# meshgate mesh DNS names (from `meshgate dns coredns`). Add these server",
        "# blocks to your CoreDNS Corefile, next to the `.:53 { ... }` block; in",
        "# Kubernetes that is the `Corefile` key of the kube-system/coredns ConfigMap",
        "# (with the `reload` plugin CoreDNS picks the change up by itself).",
        "# `fallthrough` passes names not listed here to the next plugin of the block:",
        "# add one (e.g. `forward . <meshgate --dns-listen address>`) to ask meshgate",
        "# live; with none, CoreDNS answers SERVFAIL for such names.",
    ]
    for zone in (_labels(z) for z in records.zones):  # in the configured order
        out += [f"{_zone_name(zone)}:53 {{", "    hosts {"]
        out += [f"        {line}" for line in by_zone[zone]]
        out += [f"        ttl {ttl}", "        fallthrough", "    }", "}"]
    return "\n".join(out) + "\n"


# -- answering (sans-I/O) ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Response:
    """A reply to send, and what to count it as."""

    data: bytes
    rcode: str  # a name from RCODE_NAMES
    truncated: bool  # TC set: the full answer did not fit (RFC 2181 §9)


@dataclass(frozen=True, slots=True)
class _Decision:
    rcode: int
    answers: tuple[Any, ...] = ()  # dnslib RRs
    authority: tuple[Any, ...] = ()
    authoritative: bool = False  # AA: the answer comes from one of our zones


def answer(
    records: DnsRecords, request_bytes: bytes, ttl: int = DEFAULT_TTL, *, udp: bool = False
) -> bytes | None:
    """The reply to the DNS message `request_bytes`, or None to drop it (malformed).

    With `udp`, a reply larger than the client can take is truncated (TC set).
    """
    response = respond(records, request_bytes, ttl=ttl, udp=udp)
    return None if response is None else response.data


def respond(
    records: DnsRecords, request_bytes: bytes, *, ttl: int = DEFAULT_TTL, udp: bool = False
) -> Response | None:
    """Like `answer`, with the rcode and truncation as values for the caller to count."""
    query = _parse(request_bytes)
    if query is None:
        return None
    header = query.header
    if header.qr:
        # A response, not a query. Answering it could start two responders
        # bouncing messages off each other forever.
        return None
    opts = [rr for rr in query.ar if rr.rtype == TYPE_OPT]
    decision = _decide(records, query, opts, ttl)
    reply = DNSRecord(
        DNSHeader(
            id=header.id,
            bitmap=0,
            qr=1,
            opcode=header.opcode,
            aa=int(decision.authoritative),
            rd=header.rd,  # copied, though we never recurse (RA stays 0)
            cd=header.cd,
            rcode=decision.rcode & 0xF,
        )
    )
    if len(query.questions) == 1:
        reply.add_question(query.questions[0])
    reply.add_answer(*decision.answers)
    reply.add_auth(*decision.authority)
    if len(opts) == 1:
        # RFC 6891 §7: a query with an OPT record gets one back.
        reply.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE, ext_rcode=decision.rcode >> 4))
    data = cast(bytes, reply.pack())
    limit = _size_limit(opts, udp=udp)
    truncated = len(data) > limit
    if truncated:
        # RFC 2181 §9: drop the answer rather than send part of an RRset; the
        # client retries over TCP. Unlike dnslib's `truncate()` the question
        # and the OPT record stay, so the client can match the reply.
        reply.rr, reply.auth = [], []
        reply.header.tc = 1
        data = cast(bytes, reply.pack())
    return Response(data, RCODE_NAMES[decision.rcode], truncated)


def _parse(request: bytes) -> Any:
    """The parsed query, or None if it is not a DNS message dnslib can read."""
    try:
        query = DNSRecord.parse(request)
    except (DNSError, ValueError):  # ValueError: bad UTF-8 in some RDATA (e.g. CAA)
        return None
    for question in query.questions:
        # dnslib reads label lengths 64-191 that RFC 1035 §3.1 forbids and would
        # then fail to echo the name back: refuse such a name here.
        labels = question.qname.label
        if any(len(label) > 63 for label in labels) or len(b".".join(labels)) > 253:
            return None
    return query


def _size_limit(opts: list[Any], *, udp: bool) -> int:
    """The largest reply the client takes (RFC 1035 §4.2.1, RFC 6891 §6.2.5)."""
    if not udp:
        return MAX_TCP_MESSAGE
    if len(opts) != 1:
        return UDP_PLAIN_SIZE
    advertised = int(opts[0].edns_len)  # below 512 means 512 (RFC 6891 §6.2.5)
    return min(max(advertised, UDP_PLAIN_SIZE), EDNS_UDP_SIZE)


def _decide(records: DnsRecords, query: Any, opts: list[Any], ttl: int) -> _Decision:
    """What to answer: the rules, in the order a query meets them."""
    if query.header.opcode != OPCODE_QUERY:
        return _Decision(NOTIMP)  # NOTIFY, UPDATE, ...: not served here
    if len(query.questions) != 1 or len(opts) > 1:
        return _Decision(FORMERR)  # RFC 9619 (one question), RFC 6891 §6.1.1 (one OPT)
    if opts and opts[0].edns_ver != 0:
        return _Decision(BADVERS)  # RFC 6891 §6.1.3
    question = query.questions[0]
    if question.qclass not in (CLASS_IN, CLASS_ANY):
        return _Decision(REFUSED)  # CHAOS ("version.bind") and the like
    name: Labels = tuple(label.lower() for label in question.qname.label)
    zone = _zone_of(records._zones, name)
    if zone is None:
        return _Decision(REFUSED)  # not ours, and we do not recurse
    qtype = question.qtype
    # The owner name is the question's, as asked: resolvers that randomise
    # the case of their queries (draft-vixie-dnsext-dns0x20) check it.
    owner = question.qname
    answers: list[Any] = []
    found = records._index.get(name)
    if found is not None:
        # ANY gets both address families (RFC 8482 §4.2 lets us pick).
        if qtype in (TYPE_A, TYPE_ANY):
            answers += [RR(owner, TYPE_A, rdata=A(a), ttl=ttl) for a in found.v4]
        if qtype in (TYPE_AAAA, TYPE_ANY):
            answers += [RR(owner, TYPE_AAAA, rdata=AAAA(a), ttl=ttl) for a in found.v6]
    elif name == zone and qtype in (TYPE_SOA, TYPE_ANY):
        answers.append(_soa(zone, ttl))
    if answers:
        return _Decision(NOERROR, answers=tuple(answers), authoritative=True)
    # Negative answers carry the zone's SOA so resolvers can cache them (RFC 2308 §3).
    soa = (_soa(zone, ttl),)
    if found is not None or name in records._existing:
        return _Decision(NOERROR, authority=soa, authoritative=True)  # NODATA, RFC 2308 §2.2
    return _Decision(NXDOMAIN, authority=soa, authoritative=True)  # RFC 2308 §2.1


def _soa(zone: Labels, ttl: int) -> Any:
    """A minimal SOA for `zone`: the apex as primary, MINIMUM = the answer TTL."""
    apex = _zone_name(zone)
    times = (SOA_SERIAL, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, ttl)
    # RFC 2308 §3: the SOA's own TTL is at most its MINIMUM.
    return RR(apex, TYPE_SOA, rdata=SOA(apex, f"hostmaster.{apex}", times), ttl=ttl)


def read_frame(buffer: bytes | bytearray, max_size: int = MAX_TCP_QUERY) -> bytes | NeedMore:
    """The first length-prefixed message in `buffer` (RFC 1035 §4.2.2), or NEED_MORE.

    The caller drops `len(message) + 2` bytes after a message. Raises
    ProtocolError for an empty message or one longer than `max_size`, as soon
    as the length says so (before the body arrives).
    """
    if len(buffer) < 2:
        return NEED_MORE
    size = int.from_bytes(buffer[:2], "big")
    if size == 0 or size > max_size:
        raise ProtocolError(f"DNS message of {size} bytes over TCP", MALFORMED)
    if len(buffer) < 2 + size:
        return NEED_MORE
    return bytes(buffer[2 : 2 + size])


# -- the server (I/O) ------------------------------------------------------------------
QueryCounter = Callable[[str], None]


class DnsServer:
    """UDP and TCP DNS on one address, answering from the latest `DnsRecords`."""

    def __init__(
        self,
        records: DnsRecords,
        *,
        ttl: int = DEFAULT_TTL,
        on_query: QueryCounter | None = None,
        idle_timeout: float = TCP_IDLE_TIMEOUT,
    ) -> None:
        if not 0 <= ttl <= MAX_TTL:
            raise ValueError(f"DNS TTL must be 0 to {MAX_TTL} seconds, not {ttl}")
        self.records = records
        self.ttl = ttl
        self.idle_timeout = idle_timeout
        self.address: tuple[str, int] | None = None  # set while serving
        self._on_query = on_query
        self._udp: _UdpSide | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self.accepting = False  # TCP connections are taken only between start and stop
        self.connections: set[_TcpConnection] = set()

    # -- lifecycle ---------------------------------------------------------
    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind UDP and TCP on `host` (an IP literal) and `port`; returns the address.

        Port 0 picks a port free for both. Raises OSError when either bind
        fails, with nothing left open.
        """
        if self.address is not None:
            raise RuntimeError(f"DNS server already serving on {self.address}")
        loop = asyncio.get_running_loop()
        udp_sock, tcp_sock = _bind_pair(host, port)
        bound = udp_sock.getsockname()  # (host, port[, flowinfo, scope_id])
        try:
            self._udp = await adopt_datagram(loop, udp_sock, _UdpSide(self, loop))
        except BaseException:
            tcp_sock.close()
            raise
        self.accepting = True
        try:
            self._tcp = await loop.create_server(
                lambda: _TcpConnection(self, loop), sock=tcp_sock, backlog=settings.LISTEN_BACKLOG
            )
        except BaseException:
            self.accepting = False
            tcp_sock.close()
            await self._close_udp()
            raise
        self.address = (str(bound[0]), int(bound[1]))
        log.info("dns serving", extra={"fields": {"address": f"{bound[0]}:{bound[1]}"}})
        return self.address

    def update(self, records: DnsRecords) -> None:
        """Answer from `records` from now on (queries in progress finish with the old)."""
        self.records = records

    async def stop(self) -> None:
        """Close both sockets and every TCP connection; the port is free on return."""
        self.address = None
        self.accepting = False
        tcp, self._tcp = self._tcp, None
        if tcp is not None:
            tcp.close()  # stop accepting first, so no connection slips in
        waits = [conn.lost for conn in self.connections]
        for conn in list(self.connections):
            conn.abort()
        await self._close_udp()
        if waits:
            _, left = await asyncio.wait(waits, timeout=CLOSE_WAIT)
            if left:
                log.warning("dns connections still closing", extra={"fields": {"left": len(left)}})
        if tcp is not None:
            try:
                async with asyncio.timeout(CLOSE_WAIT):
                    await tcp.wait_closed()
            except TimeoutError:
                log.warning("dns tcp socket still closing")

    async def _close_udp(self) -> None:
        side, self._udp = self._udp, None
        if side is not None:
            side.abandon()
            await asyncio.wait([side.lost], timeout=CLOSE_WAIT)

    # -- queries -----------------------------------------------------------
    def serve(self, request: bytes, *, udp: bool) -> Response | None:
        """Answer one query and count it; never raises."""
        try:
            response = respond(self.records, request, ttl=self.ttl, udp=udp)
        except Exception:
            log.exception("dns query failed", extra={"fields": {"size": len(request)}})
            self.count(ERROR)
            return None
        self.count(MALFORMED if response is None else response.rcode)
        return response

    def count(self, label: str) -> None:
        if self._on_query is None:
            return
        try:
            self._on_query(label)
        except Exception:  # the caller's counter must not take a query down
            log.exception("dns on_query callback failed", extra={"fields": {"label": label}})


# -- sockets -------------------------------------------------------------------------
def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to the same address and port."""
    # The address is an IP literal; its form gives the family.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    attempt = 1
    while True:
        udp = _bound(family, socket.SOCK_DGRAM, host, port)
        try:
            tcp = _bound(family, socket.SOCK_STREAM, host, udp.getsockname()[1])
        except OSError as exc:
            udp.close()
            if port == 0 and exc.errno == errno.EADDRINUSE and attempt < PORT_ATTEMPTS:
                attempt += 1
                continue
            raise
        except BaseException:
            udp.close()
            raise
        return udp, tcp


def _bound(
    family: socket.AddressFamily, kind: socket.SocketKind, host: str, port: int
) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        if kind == socket.SOCK_STREAM:
            # A restarted server must not wait out its old connections' TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # UDP gets neither SO_REUSEADDR nor SO_REUSEPORT: another responder on
        # the port would silently take part of the queries; a refused bind is
        # honest. Only meshgate's own workers share the port (settings.REUSE_PORT).
        if settings.REUSE_PORT:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _UdpSide(DatagramSide):
    """The UDP socket: one datagram, one query, one reply."""

    def __init__(self, server: DnsServer, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        # Nothing may escape to the transport: uvloop closes a datagram
        # transport whose callback raises, which would end the server.
        try:
            response = self._server.serve(data, udp=True)
            if response is None:
                return
            if self.paused or self.transport is None:
                self._server.count(DROPPED)
                return
            self.transport.sendto(response.data, addr)
        except Exception:
            log.exception("dns datagram failed")
            self._server.count(ERROR)

    def error_received(self, exc: Exception) -> None:
        # An unconnected socket reports no ICMP errors; this is a reply that
        # could not be sent (no route back to the client, a firewall).
        self._server.count(DROPPED)
        log.debug("dns reply not sent", extra={"fields": {"error": str(exc)}})


class _TcpConnection(asyncio.Protocol):
    """One TCP client: length-prefixed queries, answered in order (RFC 7766 §6.2.1).

    Backpressure: while the client does not read its replies (our write buffer
    is above the high-water mark) we stop reading its queries. The buffer
    never holds more than one query in progress plus one read.
    """

    def __init__(self, server: DnsServer, loop: asyncio.AbstractEventLoop) -> None:
        self.lost: asyncio.Future[None] = loop.create_future()
        self._server = server
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._paused = False
        self._eof = False
        self._last_read = loop.time()
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not a check: uvloop's TCPTransport is no asyncio.Transport subclass.
        self._transport = stream = cast(asyncio.Transport, transport)
        server = self._server
        if not server.accepting or len(server.connections) >= MAX_TCP_CONNECTIONS:
            log.debug(
                "dns tcp connection refused", extra={"fields": {"open": len(server.connections)}}
            )
            stream.abort()
            return
        server.connections.add(self)
        self._idle = self._loop.call_later(server.idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self._last_read = self._loop.time()
        self._buffer += data
        self._answer_buffered()

    def eof_received(self) -> bool:
        self._eof = True
        # Keep the socket open only to answer queries held back by backpressure;
        # otherwise the transport closes after sending what is written.
        return self._paused

    def pause_writing(self) -> None:
        self._paused = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if not self._eof:
                transport.resume_reading()
            self._answer_buffered()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._server.connections.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _answer_buffered(self) -> None:
        transport = self._transport
        if transport is None:
            return
        # One catch-all per connection: whatever goes wrong closes this one only.
        try:
            while not self._paused and not transport.is_closing():
                message = read_frame(self._buffer)
                if message is NEED_MORE:
                    break
                del self._buffer[: 2 + len(message)]
                response = self._server.serve(message, udp=False)
                if response is None:
                    transport.close()  # not DNS (counted by `serve`): stop listening
                    return
                transport.write(len(response.data).to_bytes(2, "big") + response.data)
        except ProtocolError as exc:
            self._server.count(exc.label)
            transport.close()
            return
        except Exception:
            log.exception("dns tcp connection failed")
            self._server.count(ERROR)
            transport.abort()
            return
        if self._eof and not self._paused:
            transport.close()

    def _check_idle(self) -> None:
        # One timer per connection, re-armed for the remaining time rather than
        # on every read.
        self._idle = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        remaining = self._last_read + self._server.idle_timeout - self._loop.time()
        if remaining > 0:
            self._idle = self._loop.call_later(remaining, self._check_idle)
        elif transport.get_write_buffer_size():
            transport.abort()  # a client that stopped reading would hold close() forever
        else:
            transport.close()
