"""Mesh DNS: the sans-I/O answers, the renderings, and the server on real sockets.

The answer tests build queries with dnslib and read replies with it. The
server tests use real clients on 127.0.0.1: dnslib's own (in a thread, it
blocks), raw asyncio streams for TCP framing, and `dig` when installed (CI
installs it: Debian package dnsutils). Every wait is bounded by WAIT;
nothing asserts after a fixed sleep.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from dnslib import EDNS0, DNSQuestion, DNSRecord
from hypothesis import given
from hypothesis import strategies as st

from meshgate.errors import ProtocolError
from meshgate.mesh.dns import (
    DEFAULT_TTL,
    EDNS_UDP_SIZE,
    MAX_TCP_QUERY,
    UDP_PLAIN_SIZE,
    DnsRecords,
    DnsServer,
    answer,
    coredns_stanza,
    hosts_lines,
    read_frame,
    respond,
)
from meshgate.mesh.dns import _TcpConnection as TcpConnection
from meshgate.protocols.result import NEED_MORE

LOOPBACK = "127.0.0.1"
WAIT = 3.0  # upper bound of every wait; loopback answers in well under 1 ms

# 100 addresses: about 1.6 KB of answers, more than any UDP reply may carry.
MANY = tuple(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(100))

RECORDS = DnsRecords(
    zones=("mesh.internal",),
    names={
        "my-app.mesh.internal": ("100.100.0.2",),
        "dual.mesh.internal": ("100.100.0.3", "fd00::3"),
        "v6only.mesh.internal": ("fd00::4",),
        "app.team.mesh.internal": ("100.100.0.5",),
        "many.mesh.internal": MANY,
    },
)


# -- helpers -------------------------------------------------------------------------
def query(
    name: str, qtype: str = "A", *, edns: int | None = None, version: int = 0, qid: int = 4242
) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns, version=version))
    return q


def ask(
    name: str,
    qtype: str = "A",
    *,
    records: DnsRecords = RECORDS,
    ttl: int = DEFAULT_TTL,
    udp: bool = False,
    edns: int | None = None,
) -> Any:
    """`answer` for a fresh query, parsed; fails the test if it returned None."""
    data = answer(records, query(name, qtype, edns=edns).pack(), ttl, udp=udp)
    assert data is not None
    return DNSRecord.parse(data)


def rcode(reply: Any) -> int:
    return int(reply.header.rcode)


def addresses(reply: Any) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr]


def soa_of(reply: Any) -> Any:
    """The single SOA in the authority section."""
    assert [int(rr.rtype) for rr in reply.auth] == [6]
    return reply.auth[0]


# -- DnsRecords ----------------------------------------------------------------------
def test_records_are_normalised() -> None:
    records = DnsRecords(
        zones=("Mesh.Internal.", "mesh.internal"),
        names={"My-App.MESH.internal.": (" 100.100.0.2", "FD00:0:0::2", "100.100.0.2")},
    )
    assert records.zones == ("mesh.internal",)
    assert dict(records.names) == {"my-app.mesh.internal": ("100.100.0.2", "fd00::2")}


@pytest.mark.parametrize(
    ("zones", "names", "message"),
    [
        (("mesh.internal",), {"a.mesh.internal": ("300.1.1.1",)}, "not an IPv4 or IPv6"),
        (("mesh.internal",), {"a.mesh.internal": "100.100.0.2"}, "must be a list"),
        (("mesh.internal",), {"a.example.com": ("100.100.0.2",)}, "in none of the zones"),
        (("mesh.internal",), {"xmesh.internal": ("100.100.0.2",)}, "in none of the zones"),
        ((), {"a.mesh.internal": ("100.100.0.2",)}, "in none of the zones: (none)"),
        (("mesh..internal",), {}, "label is empty"),
        ((".",), {}, "empty"),
        (("mesh.internal",), {"bad name.mesh.internal": ()}, "only letters"),
        (("mesh.internal",), {"é.mesh.internal": ()}, "not ASCII"),
        (("mesh.internal",), {"a" * 64 + ".mesh.internal": ()}, "longer than 63"),
    ],
)
def test_records_reject_bad_input(
    zones: tuple[str, ...], names: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DnsRecords(zones=zones, names=names)


# -- answers -------------------------------------------------------------------------
def test_a_query_gets_the_v4_addresses_only() -> None:
    reply = ask("dual.mesh.internal", "A")
    assert rcode(reply) == 0
    assert addresses(reply) == ["100.100.0.3"]
    assert reply.header.aa == 1
    assert reply.header.ra == 0  # authoritative only, never recursive
    assert reply.header.id == 4242


def test_aaaa_query_gets_the_v6_addresses_only() -> None:
    reply = ask("dual.mesh.internal", "AAAA")
    assert rcode(reply) == 0
    assert [int(rr.rtype) for rr in reply.rr] == [28]
    assert addresses(reply) == ["fd00::3"]


def test_any_query_gets_both_families() -> None:
    assert addresses(ask("dual.mesh.internal", "ANY")) == ["100.100.0.3", "fd00::3"]


@pytest.mark.parametrize(
    ("name", "qtype"),
    [
        ("v6only.mesh.internal", "A"),  # the other family only
        ("my-app.mesh.internal", "AAAA"),
        ("my-app.mesh.internal", "MX"),  # a type meshgate never serves
        ("my-app.mesh.internal", "TXT"),
        ("team.mesh.internal", "A"),  # exists: a name lives below it (RFC 8020)
        ("mesh.internal", "A"),  # the zone apex
    ],
)
def test_nodata_is_noerror_without_answers_and_with_the_soa(name: str, qtype: str) -> None:
    reply = ask(name, qtype)
    assert rcode(reply) == 0
    assert reply.rr == []
    assert str(soa_of(reply).rname) == "mesh.internal."


def test_unknown_name_in_the_zone_is_nxdomain_with_a_minimal_soa() -> None:
    reply = ask("nope.mesh.internal")
    assert rcode(reply) == 3
    assert reply.rr == []
    assert reply.header.aa == 1
    soa = soa_of(reply)
    assert str(soa.rname) == "mesh.internal."
    assert str(soa.rdata.mname) == "mesh.internal."
    assert str(soa.rdata.rname) == "hostmaster.mesh.internal."
    assert soa.rdata.times[-1] == DEFAULT_TTL  # MINIMUM: the negative-caching TTL
    assert soa.ttl == DEFAULT_TTL


def test_apex_soa_query_is_answered() -> None:
    reply = ask("mesh.internal", "SOA")
    assert rcode(reply) == 0
    assert [int(rr.rtype) for rr in reply.rr] == [6]


def test_nested_zones_use_the_most_specific_soa() -> None:
    records = DnsRecords(
        zones=("mesh.internal", "eu.mesh.internal"),
        names={"a.eu.mesh.internal": ("100.100.1.1",)},
    )
    assert str(soa_of(ask("b.eu.mesh.internal", records=records)).rname) == "eu.mesh.internal."
    assert str(soa_of(ask("b.mesh.internal", records=records)).rname) == "mesh.internal."


@pytest.mark.parametrize(
    "name",
    ["example.com", "xmesh.internal", "mesh.internal.evil", "internal", "my-app.mesh"],
)
def test_names_outside_every_zone_are_refused(name: str) -> None:
    reply = ask(name)
    assert rcode(reply) == 5
    assert reply.rr == reply.auth == []
    assert reply.header.aa == 0


def test_names_are_case_insensitive_and_the_case_asked_is_echoed() -> None:
    reply = ask("MY-App.Mesh.INTERNAL")
    assert addresses(reply) == ["100.100.0.2"]
    # Resolvers randomising the case of queries (DNS 0x20) check both names.
    assert str(reply.q.qname) == "MY-App.Mesh.INTERNAL."
    assert str(reply.rr[0].rname) == "MY-App.Mesh.INTERNAL."
    assert rcode(ask("NOPE.MESH.INTERNAL")) == 3


@pytest.mark.parametrize("ttl", [DEFAULT_TTL, 5])
def test_ttl_applies_to_answers_and_negative_answers(ttl: int) -> None:
    assert {rr.ttl for rr in ask("dual.mesh.internal", "ANY", ttl=ttl).rr} == {ttl}
    soa = soa_of(ask("nope.mesh.internal", ttl=ttl))
    assert soa.ttl == soa.rdata.times[-1] == ttl


def test_default_ttl_is_30_seconds() -> None:
    assert DEFAULT_TTL == 30
    assert ask("my-app.mesh.internal").rr[0].ttl == 30


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"",
        b"\x00",
        b"\x12\x34\x01\x00\x00\x01",  # header cut short
        query("my-app.mesh.internal").pack()[:-3],  # question cut short
        b"\xff" * 40,
        # A 64-byte label: the length byte is reserved (RFC 1035 §3.1).
        bytes.fromhex("123401000001000000000000") + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
    ],
)
def test_malformed_messages_get_no_answer(request_bytes: bytes) -> None:
    assert answer(RECORDS, request_bytes) is None
    assert respond(RECORDS, request_bytes) is None


def test_responses_are_never_answered() -> None:
    q = query("my-app.mesh.internal")
    q.header.qr = 1  # two responders must not bounce replies off each other
    assert answer(RECORDS, q.pack()) is None


def test_other_opcodes_are_not_implemented() -> None:
    q = query("my-app.mesh.internal")
    q.header.opcode = 4  # NOTIFY
    response = respond(RECORDS, q.pack())
    assert response is not None
    assert response.rcode == "NOTIMP"
    assert rcode(DNSRecord.parse(response.data)) == 4


@pytest.mark.parametrize("count", [0, 2])
def test_one_question_exactly_else_formerr(count: int) -> None:
    q = DNSRecord()
    q.header.id = 7
    for _ in range(count):
        q.add_question(DNSQuestion("my-app.mesh.internal"))
    response = respond(RECORDS, q.pack())
    assert response is not None
    assert response.rcode == "FORMERR"
    assert DNSRecord.parse(response.data).header.id == 7


def test_two_opt_records_are_formerr() -> None:
    q = query("my-app.mesh.internal", edns=1232)
    q.add_ar(EDNS0(udp_len=1232))
    response = respond(RECORDS, q.pack())
    assert response is not None
    assert response.rcode == "FORMERR"


def test_edns_query_gets_an_opt_record_back() -> None:
    reply = ask("my-app.mesh.internal", edns=4096)
    assert [int(rr.rtype) for rr in reply.ar] == [41]
    assert reply.ar[0].edns_len == EDNS_UDP_SIZE
    assert ask("my-app.mesh.internal").ar == []  # none asked, none sent


def test_unknown_edns_version_is_badvers() -> None:
    response = respond(RECORDS, query("my-app.mesh.internal", edns=1232, version=1).pack())
    assert response is not None
    assert response.rcode == "BADVERS"
    reply = DNSRecord.parse(response.data)
    assert rcode(reply) == 0  # the low 4 bits of 16
    assert reply.ar[0].edns_rcode == 1  # the high 8 bits (RFC 6891 §6.1.3)


def test_chaos_class_is_refused() -> None:
    q = DNSRecord(q=DNSQuestion("version.bind", 16, 3))  # TXT CH
    response = respond(RECORDS, q.pack())
    assert response is not None
    assert response.rcode == "REFUSED"


# -- truncation ------------------------------------------------------------------------
def test_udp_reply_over_512_bytes_is_truncated_with_the_question_kept() -> None:
    full = answer(RECORDS, query("many.mesh.internal").pack())
    assert full is not None
    assert len(full) > UDP_PLAIN_SIZE
    response = respond(RECORDS, query("many.mesh.internal").pack(), udp=True)
    assert response is not None
    assert response.truncated
    reply = DNSRecord.parse(response.data)
    assert reply.header.tc == 1
    assert reply.rr == []
    assert str(reply.q.qname) == "many.mesh.internal."
    assert len(response.data) <= UDP_PLAIN_SIZE


def test_tcp_reply_is_never_truncated_below_64k() -> None:
    reply = ask("many.mesh.internal", udp=False)
    assert reply.header.tc == 0
    assert len(reply.rr) == len(MANY)


def test_edns_size_is_honoured_up_to_our_own_limit() -> None:
    forty = DnsRecords(zones=("mesh.internal",), names={"forty.mesh.internal": MANY[:40]})
    # About 700 bytes: too big for plain UDP, fits an EDNS client's 1232.
    assert ask("forty.mesh.internal", records=forty, udp=True).header.tc == 1
    assert len(ask("forty.mesh.internal", records=forty, udp=True, edns=1232).rr) == 40
    # A client claiming less than 512 still gets 512 (RFC 6891 §6.2.5)...
    assert ask("forty.mesh.internal", records=forty, udp=True, edns=100).header.tc == 1
    # ...and one offering 64 KiB gets no more than 1232 (no IP fragments).
    assert ask("many.mesh.internal", udp=True, edns=65535).header.tc == 1


# -- robustness (property tests) -------------------------------------------------------
VALID = [
    query("my-app.mesh.internal").pack(),
    query("many.mesh.internal", "ANY", edns=4096).pack(),
    query("example.com", "AAAA").pack(),
]


def _check_answer(request: bytes) -> None:
    for udp in (False, True):
        data = answer(RECORDS, request, udp=udp)
        if data is not None:
            reply = DNSRecord.parse(data)
            assert reply.header.qr == 1
            assert reply.header.id == int.from_bytes(request[:2], "big")
            if udp:
                assert len(data) <= EDNS_UDP_SIZE


@given(st.binary(max_size=600))
def test_any_bytes_get_a_reply_or_none(request_bytes: bytes) -> None:
    _check_answer(request_bytes)


@given(st.sampled_from(VALID), st.integers(0, 200), st.binary(max_size=80))
def test_any_prefix_plus_garbage_gets_a_reply_or_none(
    valid: bytes, cut: int, garbage: bytes
) -> None:
    _check_answer(valid[:cut] + garbage)


@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=6),
)
def test_flipped_bytes_get_a_reply_or_none(valid: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(valid)
    for position, value in flips:
        data[position % len(data)] = value
    _check_answer(bytes(data))


# -- TCP framing -------------------------------------------------------------------------
def frame(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


def test_read_frame_returns_the_first_message() -> None:
    assert read_frame(frame(b"abc") + frame(b"de")) == b"abc"


@given(st.binary(min_size=1, max_size=300), st.data())
def test_read_frame_needs_more_for_every_proper_prefix(message: bytes, data: st.DataObject) -> None:
    framed = frame(message)
    cut = data.draw(st.integers(0, len(framed) - 1))
    assert read_frame(framed[:cut]) is NEED_MORE
    assert read_frame(framed + data.draw(st.binary(max_size=20))) == message


@given(st.binary(max_size=100))
def test_read_frame_never_fails_otherwise(buffer: bytes) -> None:
    try:
        result: object = read_frame(buffer)
    except ProtocolError as exc:
        result = exc.label
    assert result in (NEED_MORE, "malformed") or isinstance(result, bytes)


@pytest.mark.parametrize("size", [0, MAX_TCP_QUERY + 1, 65535])
def test_read_frame_rejects_empty_and_oversized_messages_from_the_length(size: int) -> None:
    with pytest.raises(ProtocolError):
        read_frame(size.to_bytes(2, "big"))  # no need to wait for the body


# -- renderings ------------------------------------------------------------------------
def test_hosts_lines() -> None:
    records = DnsRecords(
        zones=("mesh.internal",),
        names={
            "my-app.mesh.internal": ("100.100.0.2", "fd00::2"),
            "db.mesh.internal": ("100.100.0.9",),
        },
    )
    assert hosts_lines(records) == [
        "100.100.0.9 db.mesh.internal",
        "100.100.0.2 my-app.mesh.internal",
        "fd00::2 my-app.mesh.internal",
    ]


def test_coredns_stanza_has_a_hosts_block_per_zone() -> None:
    records = DnsRecords(
        zones=("mesh.internal", "eu.mesh.internal"),
        names={"my-app.mesh.internal": ("100.100.0.2",), "db.eu.mesh.internal": ("fd00::9",)},
    )
    text = coredns_stanza(records, ttl=15)
    comment = [line for line in text.splitlines() if line.startswith("#")]
    assert any("Corefile" in line for line in comment)
    assert any("kube-system/coredns" in line for line in comment)
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert body == (
        "mesh.internal:53 {\n"
        "    hosts {\n"
        "        100.100.0.2 my-app.mesh.internal\n"
        "        ttl 15\n"
        "        fallthrough\n"
        "    }\n"
        "}\n"
        "eu.mesh.internal:53 {\n"
        "    hosts {\n"
        "        fd00::9 db.eu.mesh.internal\n"
        "        ttl 15\n"
        "        fallthrough\n"
        "    }\n"
        "}"
    )
    assert text.endswith("}\n")


# -- the server --------------------------------------------------------------------------
@dataclass
class Running:
    server: DnsServer
    port: int
    counted: list[str] = field(default_factory=list)


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Poll `check` until it holds; fail after WAIT seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def serving(records: DnsRecords = RECORDS, **options: Any) -> AsyncIterator[Running]:
    counted: list[str] = []
    options.setdefault("on_query", counted.append)
    server = DnsServer(records, **options)
    _, port = await server.start(LOOPBACK, 0)
    try:
        yield Running(server, port, counted)
    finally:
        await server.stop()


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    async with serving() as run:
        yield run


async def lookup(port: int, name: str, qtype: str = "A", *, tcp: bool = False) -> Any:
    """Ask with dnslib's client (blocking, so in a thread); the parsed reply."""
    q = DNSRecord.question(name, qtype)
    data = await asyncio.to_thread(q.send, LOOPBACK, port, tcp=tcp, timeout=WAIT)
    reply = DNSRecord.parse(data)
    assert reply.header.id == q.header.id
    return reply


@asynccontextmanager
async def tcp_client(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        try:
            async with asyncio.timeout(WAIT):
                await writer.wait_closed()
        except (ConnectionError, TimeoutError):
            pass


async def read_reply(reader: asyncio.StreamReader) -> Any:
    async with asyncio.timeout(WAIT):
        size = int.from_bytes(await reader.readexactly(2), "big")
        return DNSRecord.parse(await reader.readexactly(size))


async def read_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes the connection."""
    async with asyncio.timeout(WAIT):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


@contextmanager
def udp_socket() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT)
        yield sock


async def test_udp_and_tcp_answer(running: Running) -> None:
    assert addresses(await lookup(running.port, "my-app.mesh.internal")) == ["100.100.0.2"]
    reply = await lookup(running.port, "dual.mesh.internal", "AAAA", tcp=True)
    assert addresses(reply) == ["fd00::3"]
    assert rcode(await lookup(running.port, "nope.mesh.internal")) == 3
    assert rcode(await lookup(running.port, "example.com", tcp=True)) == 5
    assert running.counted == ["NOERROR", "NOERROR", "NXDOMAIN", "REFUSED"]


async def test_two_queries_on_one_tcp_connection(running: Running) -> None:
    async with tcp_client(running.port) as (reader, writer):
        # Pipelined in one write; the answers come back in order (RFC 7766 §6.2.1.1).
        writer.write(
            frame(query("my-app.mesh.internal", qid=1).pack())
            + frame(query("dual.mesh.internal", "AAAA", qid=2).pack())
        )
        first, second = await read_reply(reader), await read_reply(reader)
        assert (first.header.id, addresses(first)) == (1, ["100.100.0.2"])
        assert (second.header.id, addresses(second)) == (2, ["fd00::3"])
        # A third, one byte at a time: framing does not depend on read sizes.
        for byte in frame(query("v6only.mesh.internal", "AAAA", qid=3).pack()):
            writer.write(bytes([byte]))
            await writer.drain()
        third = await read_reply(reader)
        assert (third.header.id, addresses(third)) == (3, ["fd00::4"])


async def test_update_changes_the_next_answer(running: Running) -> None:
    assert addresses(await lookup(running.port, "my-app.mesh.internal")) == ["100.100.0.2"]
    running.server.update(
        DnsRecords(zones=("mesh.internal",), names={"my-app.mesh.internal": ("100.100.7.7",)})
    )
    assert addresses(await lookup(running.port, "my-app.mesh.internal")) == ["100.100.7.7"]
    assert addresses(await lookup(running.port, "my-app.mesh.internal", tcp=True)) == [
        "100.100.7.7"
    ]
    assert rcode(await lookup(running.port, "dual.mesh.internal")) == 3  # gone with the update


async def test_truncation_sets_tc_over_udp_and_tcp_has_it_all(running: Running) -> None:
    reply = await lookup(running.port, "many.mesh.internal")
    assert reply.header.tc == 1
    assert reply.rr == []
    reply = await lookup(running.port, "many.mesh.internal", tcp=True)
    assert reply.header.tc == 0
    assert len(reply.rr) == len(MANY)


async def test_garbage_datagram_does_not_stop_the_server(running: Running) -> None:
    with udp_socket() as sock:
        sock.sendto(b"\x00\x01garbage", (LOOPBACK, running.port))
        sock.sendto(b"", (LOOPBACK, running.port))
    await eventually(lambda: running.counted.count("malformed") == 2, "garbage counted")
    assert addresses(await lookup(running.port, "my-app.mesh.internal")) == ["100.100.0.2"]


async def test_a_failing_query_is_counted_and_the_server_goes_on(running: Running) -> None:
    # A TTL no DNS message can carry (set past the constructor's check)
    # stands in for a bug met while answering.
    running.server.ttl = -1
    with udp_socket() as sock:
        sock.sendto(query("my-app.mesh.internal", qid=1).pack(), (LOOPBACK, running.port))
        await eventually(lambda: running.counted == ["error"], "error counted")
        running.server.ttl = 30
        sock.sendto(query("my-app.mesh.internal", qid=2).pack(), (LOOPBACK, running.port))
        data = await asyncio.to_thread(sock.recv, 4096)
    # The first reply to arrive is the second query's: the failed one got none.
    assert DNSRecord.parse(data).header.id == 2


async def test_a_failing_counter_does_not_stop_the_server() -> None:
    def explode(label: str) -> None:
        raise RuntimeError(label)

    async with serving(on_query=explode) as run:
        assert addresses(await lookup(run.port, "my-app.mesh.internal")) == ["100.100.0.2"]


async def test_garbage_over_tcp_closes_that_connection_only(running: Running) -> None:
    async with tcp_client(running.port) as (reader, writer):
        writer.write(frame(b"\x00\x01garbage"))
        assert await read_eof(reader) == b""
    async with tcp_client(running.port) as (reader, writer):
        writer.write((MAX_TCP_QUERY + 1).to_bytes(2, "big"))  # over the size cap
        assert await read_eof(reader) == b""
    assert running.counted == ["malformed", "malformed"]
    assert addresses(await lookup(running.port, "my-app.mesh.internal", tcp=True)) == [
        "100.100.0.2"
    ]


async def test_idle_tcp_connection_is_closed() -> None:
    async with serving(idle_timeout=0.2) as run, tcp_client(run.port) as (reader, writer):
        writer.write(frame(query("my-app.mesh.internal").pack()))
        assert addresses(await read_reply(reader)) == ["100.100.0.2"]
        assert await read_eof(reader) == b""  # then nothing: closed by the server
        await eventually(lambda: not run.server.connections, "connection forgotten")


async def test_half_close_after_a_query_still_gets_the_answer(running: Running) -> None:
    async with tcp_client(running.port) as (reader, writer):
        writer.write(frame(query("my-app.mesh.internal").pack()))
        writer.write_eof()
        assert addresses(await read_reply(reader)) == ["100.100.0.2"]
        assert await read_eof(reader) == b""


class StalledTransport:
    """A TCP transport whose peer reads nothing: full after `room` bytes.

    Real loopback sockets absorb megabytes in kernel buffers before the
    transport ever pauses, so backpressure is driven by this fake instead.
    Like a real transport it calls `pause_writing` when a write fills it.
    """

    def __init__(self, protocol: TcpConnection, room: int) -> None:
        self.protocol = protocol
        self.room = room
        self.written: list[bytes] = []
        self.reading = True
        self.closed = False
        self._paused = False

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.room -= len(data)
        if self.room <= 0 and not self._paused:
            self._paused = True
            self.protocol.pause_writing()

    def drained(self, room: int) -> None:
        """The peer read everything: room again, and the protocol is told."""
        self.room, self._paused = room, False
        self.protocol.resume_writing()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


async def test_tcp_stops_reading_while_the_client_does_not_read(running: Running) -> None:
    conn = TcpConnection(running.server, asyncio.get_running_loop())
    transport = StalledTransport(conn, room=1)  # full after the first reply
    conn.connection_made(cast(asyncio.Transport, transport))
    try:
        conn.data_received(
            b"".join(frame(query("my-app.mesh.internal", qid=i).pack()) for i in range(3))
        )
        assert len(transport.written) == 1  # answered one, then stopped
        assert not transport.reading
        assert conn.eof_received() is True  # stay open for the two held back
        transport.drained(room=10_000)
        ids = [DNSRecord.parse(w[2:]).header.id for w in transport.written]
        assert ids == [0, 1, 2]  # in order
        assert transport.closed  # then closed: the client had sent EOF
        assert not transport.reading  # no reading after EOF
    finally:
        conn.connection_lost(None)
    assert not running.server.connections


async def test_stop_closes_connections_and_frees_the_port() -> None:
    server = DnsServer(RECORDS)
    _, port = await server.start(LOOPBACK, 0)
    async with tcp_client(port) as (reader, _):
        await eventually(lambda: len(server.connections) == 1, "connection accepted")
        await server.stop()
        assert await read_eof(reader) == b""
    assert not server.connections
    # Both ports are free again: the same server starts on the same port.
    assert await server.start(LOOPBACK, port) == (LOOPBACK, port)
    assert addresses(await lookup(port, "my-app.mesh.internal")) == ["100.100.0.2"]
    await server.stop()
    await server.stop()  # idempotent


async def test_start_twice_is_an_error(running: Running) -> None:
    with pytest.raises(RuntimeError, match="already serving"):
        await running.server.start(LOOPBACK, 0)


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM])
async def test_a_busy_port_fails_start_and_leaves_nothing_open(kind: socket.SocketKind) -> None:
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind((LOOPBACK, 0))
        if kind == socket.SOCK_STREAM:
            taken.listen()
        port = taken.getsockname()[1]
        server = DnsServer(RECORDS)
        with pytest.raises(OSError, match="in use"):
            await server.start(LOOPBACK, port)
        assert server.address is None
    # Whichever socket did bind was closed: an unclosed one would raise
    # ResourceWarning when collected (warnings are errors in this suite).
    # Binding the port again is not checked: another process may take it.
    gc.collect()


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = DnsServer(RECORDS)
    try:
        host, port = await server.start("::1", 0)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        assert host == "::1"
        q = DNSRecord.question("dual.mesh.internal", "AAAA")
        data = await asyncio.to_thread(q.send, "::1", port, timeout=WAIT, ipv6=True)
        assert addresses(DNSRecord.parse(data)) == ["fd00::3"]
    finally:
        await server.stop()


# -- with dig ------------------------------------------------------------------------------
needs_dig = pytest.mark.skipif(
    shutil.which("dig") is None, reason="dig is not installed (Debian package dnsutils)"
)


async def dig(port: int, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "dig",
        f"@{LOOPBACK}",
        "-p",
        str(port),
        "+tries=1",
        "+time=2",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(WAIT * 2):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    return out.decode()


@needs_dig
async def test_dig_over_udp_and_tcp(running: Running) -> None:
    assert (await dig(running.port, "+short", "my-app.mesh.internal")).split() == ["100.100.0.2"]
    out = await dig(running.port, "+short", "+tcp", "DUAL.mesh.internal", "AAAA")
    assert out.split() == ["fd00::3"]


@needs_dig
@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("nope.mesh.internal", "NXDOMAIN"),
        ("example.com", "REFUSED"),
        ("v6only.mesh.internal", "NOERROR"),
    ],
)
async def test_dig_status(running: Running, name: str, status: str) -> None:
    out = await dig(running.port, name, "A")
    assert f"status: {status}," in out
    if status != "REFUSED":
        assert "AUTHORITY: 1" in out
        assert "hostmaster.mesh.internal." in out


@needs_dig
async def test_dig_retries_a_truncated_answer_over_tcp(running: Running) -> None:
    out = await dig(running.port, "+noedns", "+ignore", "many.mesh.internal")
    assert "flags: qr aa tc" in out
    out = await dig(running.port, "+noedns", "many.mesh.internal")
    assert "Truncated, retrying in TCP mode" in out
    assert f"ANSWER: {len(MANY)}," in out


@pytest.mark.parametrize("ttl", [-1, 2**31])
def test_server_rejects_a_ttl_dns_cannot_carry(ttl: int) -> None:
    with pytest.raises(ValueError, match="TTL"):
        DnsServer(RECORDS, ttl=ttl)
