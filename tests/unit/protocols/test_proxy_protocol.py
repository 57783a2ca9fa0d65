"""PROXY protocol v1/v2: spec vectors, round trips, every split point, errors, fuzz.

Section numbers refer to HAProxy's doc/proxy-protocol.txt.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.provisional import domains

from meshgate.errors import ProtocolError
from meshgate.protocols.proxy_protocol import (
    BAD_PROXY_HEADER,
    DEFAULT_MAX_HEADER,
    MAX_V1,
    NO_PROXY_HEADER,
    PP2_TYPE_AUTHORITY,
    TOO_LARGE,
    ProxyHeader,
    encode_v1,
    encode_v2,
    parse_proxy_header,
)
from meshgate.protocols.result import NEED_MORE, NeedMore

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"  # §2.2
V2_LOCAL = V2_SIG + b"\x20\x00\x00\x00"  # version 2, LOCAL, AF_UNSPEC, no block
HTTP = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
TLS_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def parsed(buf: bytes, max_size: int = DEFAULT_MAX_HEADER) -> ProxyHeader:
    result = parse_proxy_header(buf, max_size)
    assert isinstance(result, ProxyHeader), result
    return result


def label_of(buf: bytes, max_size: int = DEFAULT_MAX_HEADER) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_proxy_header(buf, max_size)
    return info.value.label


def outcome(buf: bytes, max_size: int = DEFAULT_MAX_HEADER) -> ProxyHeader | NeedMore | str:
    """The parse result, or the error label; anything else escapes and fails."""
    try:
        return parse_proxy_header(buf, max_size)
    except ProtocolError as error:
        return error.label


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def v2(ver_cmd: int, family: int, block: bytes, declared: int | None = None) -> bytes:
    size = len(block) if declared is None else declared
    return V2_SIG + bytes([ver_cmd, family]) + size.to_bytes(2, "big") + block


V2_TCP4_BLOCK = bytes([192, 168, 0, 1, 192, 168, 0, 11]) + (56324).to_bytes(2, "big") + b"\x01\xbb"


def canonical(host: str) -> str:
    return str(ipaddress.ip_address(host))


def mapped(host: str) -> str:
    """How a host is carried once its peer forces the IPv6 family."""
    address = ipaddress.ip_address(host)
    if address.version == 6:
        return str(address)
    return str(ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + address.packed))


# ------------------------------------------------------------ spec vectors


def test_v1_tcp4_spec_example_keeps_the_request_after_it() -> None:
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"  # §2.1 example
    header = parsed(line + HTTP)
    assert header == ProxyHeader(
        version=1,
        command="proxy",
        source=("192.168.0.1", 56324),
        destination=("192.168.0.11", 443),
        length=len(line),
    )
    assert (line + HTTP)[header.length :] == HTTP


def test_v1_tcp6_any_spelling_comes_back_canonical() -> None:
    line = b"PROXY TCP6 2001:DB8:0000:0000:0000:0000:0000:0001 ::ffff:1.2.3.4 65535 0\r\n"
    header = parsed(line + b"\x16")
    assert header.source == ("2001:db8::1", 65535)
    assert header.destination == (canonical("::ffff:1.2.3.4"), 0)
    assert header.length == len(line)


def test_v1_unknown_short_form_is_local() -> None:
    header = parsed(b"PROXY UNKNOWN\r\n" + HTTP)
    assert header == ProxyHeader(1, "local", None, None, None, 15)


def test_v1_unknown_worst_case_is_exactly_107_bytes_and_accepted() -> None:
    six = ":".join(["ffff"] * 8)
    line = f"PROXY UNKNOWN {six} {six} 65535 65535\r\n".encode()
    assert len(line) == MAX_V1  # §2.1 worst case
    header = parsed(line + b"x")
    assert header.command == "local"
    assert header.source is None
    assert header.length == MAX_V1


def test_v2_local_signature_only() -> None:
    header = parsed(V2_LOCAL + HTTP)
    assert header == ProxyHeader(2, "local", None, None, None, 16)


def test_v2_local_ignores_addresses_it_carries() -> None:
    header = parsed(v2(0x20, 0x11, V2_TCP4_BLOCK))
    assert header.command == "local"
    assert header.source is None
    assert header.length == 16 + 12


def test_v2_tcp4_by_hand_keeps_tls_bytes_after_it() -> None:
    raw = v2(0x21, 0x11, V2_TCP4_BLOCK)
    header = parsed(raw + TLS_HELLO_START)
    assert header.source == ("192.168.0.1", 56324)
    assert header.destination == ("192.168.0.11", 443)
    assert header.authority is None
    assert (raw + TLS_HELLO_START)[header.length :] == TLS_HELLO_START


def test_v2_tcp6_with_tlvs_reads_authority_and_skips_the_rest() -> None:
    block = (
        ipaddress.IPv6Address("2001:db8::1").packed
        + ipaddress.IPv6Address("fd00::2").packed
        + b"\x00\x01\xff\xff"
        + tlv(0x04, b"")  # PP2_TYPE_NOOP
        + tlv(0x01, b"h2")  # PP2_TYPE_ALPN
        + tlv(PP2_TYPE_AUTHORITY, "bücher.example".encode())
        + tlv(0xE0, b"custom")  # §2.2.8 application range
    )
    header = parsed(v2(0x21, 0x21, block))
    assert header.source == ("2001:db8::1", 1)
    assert header.destination == ("fd00::2", 65535)
    assert header.authority == "bücher.example"


@pytest.mark.parametrize(("family", "size"), [(0x12, 12), (0x22, 36), (0x31, 216), (0x32, 216)])
def test_v2_families_we_do_not_decode_fall_back_to_unspec(family: int, size: int) -> None:
    block = b"\x01" * size + tlv(PP2_TYPE_AUTHORITY, b"a.example")
    header = parsed(v2(0x21, family, block))
    assert (header.command, header.source, header.destination) == ("proxy", None, None)
    assert header.authority == "a.example"


def test_v2_proxy_with_unspec_family_has_no_addresses() -> None:
    header = parsed(v2(0x21, 0x00, tlv(PP2_TYPE_AUTHORITY, b"x.example")))
    assert (header.command, header.source, header.authority) == ("proxy", None, "x.example")


def test_header_exactly_at_the_cap_is_accepted() -> None:
    raw = encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2), authority="a" * 40)
    assert parsed(raw, max_size=len(raw)).authority == "a" * 40
    assert label_of(raw, max_size=len(raw) - 1) == TOO_LARGE


# ------------------------------------------------------------------ encode


def test_encode_v1_matches_the_spec_example() -> None:
    assert (
        encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443))
        == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )


def test_encode_v2_local_is_the_bare_signature() -> None:
    assert encode_v2(None, None) == V2_LOCAL
    assert parsed(encode_v2(None, None, authority="h.example")).authority == "h.example"


def test_mixed_families_are_sent_ipv4_mapped() -> None:
    line = encode_v1(("10.0.0.1", 1), ("fd00::1", 2))
    assert line == b"PROXY TCP6 ::ffff:a00:1 fd00::1 1 2\r\n"
    header = parsed(encode_v2(("fd00::1", 2), ("10.0.0.1", 1)))
    assert header.destination == ("::ffff:a00:1", 1)


def test_encode_drops_an_ipv6_scope() -> None:
    assert encode_v1(("fe80::1%eth0", 1), ("fe80::2", 2)) == b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_v1(("1.2.3.4", 65536), ("1.2.3.4", 1)),
        lambda: encode_v1(("1.2.3.4", -1), ("1.2.3.4", 1)),
        lambda: encode_v1(("not-an-ip", 1), ("1.2.3.4", 1)),
        lambda: encode_v2(("1.2.3.4", 1), None),
        lambda: encode_v2(None, ("1.2.3.4", 1)),
        lambda: encode_v2(None, None, authority=""),
        lambda: encode_v2(None, None, authority="a" * 70000),
    ],
)
def test_encode_rejects_bad_arguments(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- the message varies by case
        call()


# ------------------------------------------------------------ split points

SPLIT_CASES = [
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
    b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n",
    b"PROXY TCP6 2001:DB8:0000:0000:0000:0000:0000:0001 1:2:3:4:5:6:7:: 1 2\r\n",
    b"PROXY TCP6 ::ffff:10.0.0.1 1:2:3:4:5:6:255.255.255.255 10 20\r\n",
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN anything at all 1 2\r\n",
    V2_LOCAL,
    v2(0x21, 0x11, V2_TCP4_BLOCK),
    encode_v2(("2001:db8::1", 443), ("fd00::1", 8443), authority="ünïcode.example"),
    v2(0x21, 0x00, tlv(0x04, b"") + tlv(PP2_TYPE_AUTHORITY, b"a.b") + tlv(0x04, b"pad")),
]


@pytest.mark.parametrize("raw", SPLIT_CASES)
def test_every_split_point_needs_more_until_complete(raw: bytes) -> None:
    whole = parsed(raw + b"tail")
    assert whole.length == len(raw)
    for cut in range(len(raw)):
        assert parse_proxy_header(raw[:cut]) is NEED_MORE, raw[:cut]
    assert parsed(raw) == whole


def ipv6_spellings(address: ipaddress.IPv6Address) -> list[str]:
    groups = address.exploded.split(":")
    short = [group.lstrip("0") or "0" for group in groups]
    tail = ipaddress.IPv4Address(address.packed[12:])
    return [
        address.compressed,
        address.exploded,
        address.exploded.upper(),
        ":".join(short),
        ":".join(short[:6]) + f":{tail}",  # inet_ntop-style dotted tail
    ]


@settings(max_examples=60)
@given(st.ip_addresses(v=6))
def test_no_valid_ipv6_spelling_is_refused_early(address: ipaddress.IPv6Address) -> None:
    # The partial-address check must never call a valid prefix invalid. (The
    # peer is "::1" so that even 45-character spellings fit in 107 bytes.)
    for spelling in ipv6_spellings(address):
        for raw, expected_source in (
            (f"PROXY TCP6 {spelling} ::1 1 2\r\n".encode(), str(address)),
            (f"PROXY TCP6 ::1 {spelling} 1 2\r\n".encode(), "::1"),
        ):
            for cut in range(len(raw)):
                assert parse_proxy_header(raw[:cut]) is NEED_MORE, raw[:cut]
            assert parsed(raw).source == (expected_source, 1)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\n",
        TLS_HELLO_START,
        b"proxy TCP4 ",
        b"PROXX",
        b"\r\n\r\n\x01",
        b"\r\n\r\n\x00\r\nQUIT\r",
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ],
)
def test_not_a_proxy_header(raw: bytes) -> None:
    assert label_of(raw) == NO_PROXY_HEADER


@pytest.mark.parametrize(
    "raw",
    [
        # complete lines
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 80\r\n",  # port out of range
        b"PROXY TCP4 1.2.3.4 5.6.7.8 080 80\r\n",  # heading zero in a port
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 80\r\n",
        b"PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n",  # octet out of range
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # heading zero in an octet
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",  # IPv6 under TCP4
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",  # IPv4 under TCP6
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",  # scoped
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # missing field
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",  # extra field
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",  # trailing space
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY\r\n",
        b"PROXY \r\n",
        b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY UNKNOWNX\r\n",
        b"PROXY UNKNOWN\r\r\n",  # a CR that does not end the line
        b"PROXY UNKNOWN\nGET / HTTP/1.1\r\n",  # LF-only ending must not eat the request
        b"PROXY UNKNOWN \xff\r\n",  # not US-ASCII
        b"PROXY UNKNOWN " + b"a" * 200 + b"\r\n",  # no CRLF within 107 bytes
        b"PROXY UNKNOWN " + b"a" * (MAX_V1 - 14),  # ... even before one arrives
        # partial lines already beyond repair: refused without waiting
        b"PROXY TCP9",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 0123",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 70000",
        b"PROXY TCP4 ::",
        b"PROXY TCP4 1..",
        b"PROXY TCP4 1.2.3.4  ",
        b"PROXY TCP6 1:2:3:4:5:6:7:8:",
        b"PROXY TCP6 :::",
        b"PROXY TCP6 12345",
        b"PROXY TCP4 1.2.3.4\r",  # the CR commits the line, which is short
    ],
)
def test_bad_v1(raw: bytes) -> None:
    assert label_of(raw) == BAD_PROXY_HEADER


@pytest.mark.parametrize(
    "raw",
    [
        V2_SIG + b"\x11",  # version nibble 1: refused on the 13th byte
        V2_SIG + b"\x31",  # version nibble 3
        V2_SIG + b"\x22",  # command 2
        V2_SIG + b"\x21\x13",  # transport 3
        V2_SIG + b"\x21\x41",  # family 4
        V2_SIG + b"\x21\x10",  # AF_INET with UNSPEC transport: not a listed combination
        v2(0x21, 0x11, V2_TCP4_BLOCK[:8]),  # address block shorter than AF_INET needs
        v2(0x21, 0x21, V2_TCP4_BLOCK),  # ... than AF_INET6 needs
        v2(0x21, 0x11, b"", declared=4),  # ... known from the length alone
        v2(0x21, 0x00, b"\x02\x00\x03ab"),  # TLV claims 3 bytes, 2 remain
        v2(0x21, 0x00, b"\x02\x00\x05", declared=6),  # overrun seen before the value arrives
        v2(0x21, 0x00, b"\x04\x00"),  # two stray bytes: too short to be a TLV
        v2(0x21, 0x00, tlv(2, b"a.example") + tlv(2, b"b.example")),  # two authorities
        v2(0x21, 0x00, tlv(2, b"")),  # empty authority
        v2(0x21, 0x00, tlv(2, b"caf\xe9")),  # not UTF-8
        v2(0x21, 0x00, tlv(2, b"\xffabc"), declared=7)[:-2],  # not UTF-8, seen early
    ],
)
def test_bad_v2(raw: bytes) -> None:
    assert label_of(raw) == BAD_PROXY_HEADER


def test_too_large() -> None:
    # A v2 length is judged as soon as the 16-byte fixed part is in.
    assert label_of(V2_SIG + b"\x21\x11\xff\xff") == TOO_LARGE
    raw = encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2), authority="h" * 600)
    assert label_of(raw) == TOO_LARGE
    # A v1 line longer than a (small) configured cap, complete or not.
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert label_of(line, max_size=20) == TOO_LARGE
    assert label_of(line[:20], max_size=20) == TOO_LARGE
    assert parse_proxy_header(line[:19], max_size=20) is NEED_MORE


# -------------------------------------------------------------- round trips

PORTS = st.integers(min_value=0, max_value=65535)
AUTHORITIES = (
    st.none() | domains() | st.sampled_from(["bücher.example", "例え.jp", "xn--bcher-kva.ch"])
)


IP = ipaddress.IPv4Address | ipaddress.IPv6Address
ENDPOINTS = st.tuples(st.ip_addresses(), PORTS)


@settings(max_examples=150)
@given(ENDPOINTS, ENDPOINTS, st.binary(max_size=16))
def test_v1_round_trip(
    source_endpoint: tuple[IP, int], destination_endpoint: tuple[IP, int], tail: bytes
) -> None:
    (source, source_port), (destination, destination_port) = source_endpoint, destination_endpoint
    raw = encode_v1((str(source), source_port), (str(destination), destination_port))
    header = parsed(raw + tail)
    fix = canonical if source.version == destination.version else mapped
    assert header.version == 1
    assert header.command == "proxy"
    assert header.source == (fix(str(source)), source_port)
    assert header.destination == (fix(str(destination)), destination_port)
    assert header.length == len(raw) <= MAX_V1
    assert (raw + tail)[header.length :] == tail


@settings(max_examples=150)
@given(ENDPOINTS, ENDPOINTS, AUTHORITIES, st.binary(max_size=16))
def test_v2_round_trip(
    source_endpoint: tuple[IP, int],
    destination_endpoint: tuple[IP, int],
    authority: str | None,
    tail: bytes,
) -> None:
    (source, source_port), (destination, destination_port) = source_endpoint, destination_endpoint
    raw = encode_v2(
        (str(source), source_port), (str(destination), destination_port), authority=authority
    )
    header = parsed(raw + tail)
    fix = canonical if source.version == destination.version else mapped
    assert header == ProxyHeader(
        version=2,
        command="proxy",
        source=(fix(str(source)), source_port),
        destination=(fix(str(destination)), destination_port),
        authority=authority,
        length=len(raw),
    )
    assert (raw + tail)[header.length :] == tail


# --------------------------------------------------------------------- fuzz

VALID_HEADERS = st.one_of(
    st.builds(
        lambda s, d, sp, dp: encode_v1((str(s), sp), (str(d), dp)),
        st.ip_addresses(),
        st.ip_addresses(),
        PORTS,
        PORTS,
    ),
    st.builds(
        lambda s, d, sp, dp, a: encode_v2((str(s), sp), (str(d), dp), authority=a),
        st.ip_addresses(),
        st.ip_addresses(),
        PORTS,
        PORTS,
        AUTHORITIES,
    ),
    st.sampled_from(SPLIT_CASES),
)
# Seeds that get arbitrary bytes past the signature checks into the deeper code.
SEEDS = st.sampled_from(
    [b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", V2_SIG, V2_SIG + b"\x21"]
)


@settings(max_examples=300)
@given(VALID_HEADERS, st.data(), st.binary(max_size=64))
def test_prefix_plus_garbage_gives_only_the_three_outcomes(
    raw: bytes, data: st.DataObject, garbage: bytes
) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    result = outcome(raw[:cut] + garbage)
    assert (
        result is NEED_MORE
        or result in (BAD_PROXY_HEADER, NO_PROXY_HEADER, TOO_LARGE)
        or (isinstance(result, ProxyHeader) and result.length <= cut + len(garbage))
    )
    # The valid prefix alone is never refused.
    assert outcome(raw[:cut]) == (parsed(raw) if cut == len(raw) else NEED_MORE)


@settings(max_examples=300)
@given(
    st.binary(max_size=600) | st.builds(bytes.__add__, SEEDS, st.binary(max_size=120)),
    st.binary(max_size=64),
    st.just(DEFAULT_MAX_HEADER) | st.integers(min_value=0, max_value=120),
)
def test_arbitrary_bytes_and_monotonic_verdicts(buf: bytes, more: bytes, max_size: int) -> None:
    # Only the three outcomes; and a verdict never changes as bytes arrive:
    # an error stays the same error (never NEED_MORE once invalidity is
    # certain), and a header stays the same header -- whatever the cap.
    first, later = outcome(buf, max_size), outcome(buf + more, max_size)
    assert first is NEED_MORE or isinstance(first, ProxyHeader | str)
    if first is not NEED_MORE:
        assert later == first
    if isinstance(first, ProxyHeader):
        assert first.length <= min(len(buf), max_size)
