"""The HAProxy PROXY protocol, versions 1 and 2, as a sans-I/O parser and encoder.

A listener that sits behind a load balancer (or another meshgate) reads the
PROXY header the peer prepends to the connection to learn the original client
and, for v2, the SNI the client asked for. `parse_proxy_header` takes the bytes
read so far and returns a `ProxyHeader` when a whole header is present,
`NEED_MORE` while the bytes are still a valid prefix of one, and raises
`ProtocolError` as soon as they cannot be; `ProxyHeader.length` says how many
bytes to slice off, and everything after them is application data, untouched.
`encode_v1` / `encode_v2` build headers for upstream connections.

Boundaries: no sockets, no clocks, no policy. Whether a listener demands the
header, and whom it trusts to send one, is the listener's business: the spec
forbids guessing whether a header is present (proxy-protocol.txt §2, §5), so
this module never falls back to treating the bytes as application data.

Section numbers refer to HAProxy's doc/proxy-protocol.txt (2020/03/05).
"""

from __future__ import annotations

import codecs
import ipaddress
import re
from dataclasses import dataclass
from typing import Final, Literal

from meshgate.errors import ProtocolError
from meshgate.protocols.result import NEED_MORE, NeedMore

__all__ = [
    "BAD_PROXY_HEADER",
    "DEFAULT_MAX_HEADER",
    "MAX_V1",
    "NO_PROXY_HEADER",
    "PP2_TYPE_AUTHORITY",
    "TOO_LARGE",
    "ProxyHeader",
    "encode_v1",
    "encode_v2",
    "parse_proxy_header",
]

# Metric labels carried by ProtocolError.label.
NO_PROXY_HEADER: Final = "no_proxy_header"  # starts with neither signature
BAD_PROXY_HEADER: Final = "bad_proxy_header"  # a signature, then malformed
TOO_LARGE: Final = "too_large"  # would exceed the caller's max_size

MAX_V1: Final = 107
"""Longest v1 line including CRLF: the "PROXY UNKNOWN" worst case of §2.1."""

DEFAULT_MAX_HEADER: Final = 536
"""Default cap on a whole header. §2: both formats are meant to fit the
smallest segment every TCP host must accept (576 - 40 = 536 bytes), so a
compliant sender never needs more. For v2 that leaves 520 bytes after the
16-byte fixed part: room for the largest address block (AF_UNIX, 216) plus
304 bytes of TLVs, or IPv6 (36) plus 484 -- plenty for an authority, which
DNS limits to 253 bytes. The 16-bit length field would otherwise let a peer
make us buffer 64 KiB before it has said anything useful."""

PP2_TYPE_AUTHORITY: Final = 0x02
"""§2.2.2: the host name the client asked for (the TLS SNI), UTF-8."""

_V1_SIGNATURE: Final = b"PROXY"
# §2.2: twelve bytes chosen to be rejected by HTTP, TLS, SMTP, ... parsers.
_V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED: Final = 16  # signature, ver_cmd, fam, 16-bit length (§2.2)
_V2_VERSION: Final = 0x2
_V2_LOCAL: Final = 0x0
_V2_PROXY: Final = 0x1
_TLV_HEAD: Final = 3  # type, length_hi, length_lo (§2.2 "struct pp2_tlv")
_UINT16_MAX: Final = 0xFFFF

_V1_FAMILIES: Final = ("TCP4", "TCP6", "UNKNOWN")
# §2.1: the whole line is US-ASCII; we also refuse control characters, so a
# bare CR or LF (which §2.1 says must not end the line) is caught wherever it
# appears -- a sender using LF-only endings would otherwise have us swallow
# its first application line while looking for a CRLF.
_V1_TEXT: Final = re.compile(rb"[\x20-\x7e]*")
# §2.1: decimal, no heading zeroes (they read as octal to some parsers).
_V1_PORT: Final = re.compile(r"0|[1-9][0-9]{0,4}")
_V1_IPV6_CHARS: Final = re.compile(r"[0-9A-Fa-f:.]*")

# The 14th byte (§2.2): family in the high nibble, transport in the low one.
# Only the seven combinations §2.2 lists "in practice" are valid; the value is
# (address block size, whether we decode it). We decode TCP over IPv4/IPv6;
# for UDP and AF_UNIX, §2.2 lets a receiver fall back to UNSPEC: we skip their
# address bytes and report no addresses, so the caller uses the real peer.
_V2_FAMILIES: Final[dict[int, tuple[int, bool]]] = {
    0x00: (0, False),  # UNSPEC
    0x11: (12, True),  # TCP over IPv4: 2*4 + 2*2
    0x12: (12, False),  # UDP over IPv4
    0x21: (36, True),  # TCP over IPv6: 2*16 + 2*2
    0x22: (36, False),  # UDP over IPv6
    0x31: (216, False),  # UNIX stream: 2*108
    0x32: (216, False),  # UNIX datagram
}

Address = tuple[str, int]
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete PROXY header.

    `source`/`destination` are None when the header carries no usable
    addresses (v2 LOCAL, v1 UNKNOWN, AF_UNSPEC, or a family we fall back on);
    the caller then uses the connection's real endpoints (§2.1, §2.2). Hosts
    are in `ipaddress` canonical text (`str(ip_address(host))`), whatever
    spelling the sender used.
    """

    version: int  # 1 or 2
    command: Literal["proxy", "local"]  # v2 LOCAL and v1 "UNKNOWN" -> "local"
    source: Address | None
    destination: Address | None
    authority: str | None = None  # v2 PP2_TYPE_AUTHORITY (SNI)
    length: int = 0  # bytes the header occupied at the start of the buffer


# --------------------------------------------------------------------- parse


def parse_proxy_header(
    buf: bytes | bytearray | memoryview, max_size: int = DEFAULT_MAX_HEADER
) -> ProxyHeader | NeedMore:
    """Parse a PROXY header (v1 or v2) from the start of `buf`.

    Returns the header, or `NEED_MORE` while `buf` is a valid proper prefix of
    one; raises `ProtocolError` (labels `no_proxy_header`, `bad_proxy_header`,
    `too_large`) the moment no continuation could make it valid. Bytes after
    the header are ignored here; `ProxyHeader.length` marks where they start.
    """
    # A header must fit in max_size bytes, so only the first max_size bytes
    # can decide anything. Judging just those also keeps verdicts stable as
    # bytes arrive: whatever this call says, a longer buffer says too.
    data = bytes(buf[:max_size])
    result: ProxyHeader | NeedMore
    if _is_prefix_either_way(data, _V2_SIGNATURE):
        result = NEED_MORE if len(data) < len(_V2_SIGNATURE) else _parse_v2(data, max_size)
    elif _is_prefix_either_way(data, _V1_SIGNATURE):
        result = NEED_MORE if len(data) < len(_V1_SIGNATURE) else _parse_v1(data)
    else:
        raise ProtocolError("data does not start with a PROXY protocol signature", NO_PROXY_HEADER)
    # The size cap: a header still incomplete at max_size bytes can only end
    # beyond it, so stop buffering now rather than when it finally arrives.
    if result is NEED_MORE and len(data) >= max_size:
        raise ProtocolError(f"PROXY header longer than {max_size} bytes", TOO_LARGE)
    return result


def _is_prefix_either_way(data: bytes, signature: bytes) -> bool:
    """True if `data` starts with `signature`, or is itself a prefix of it."""
    n = min(len(data), len(signature))
    return data[:n] == signature[:n]


def _bad(reason: str) -> ProtocolError:
    return ProtocolError(reason, BAD_PROXY_HEADER)


# ------------------------------------------------------------- v1 (§2.1)


def _parse_v1(data: bytes) -> ProxyHeader | NeedMore:
    end = data.find(b"\r\n", 0, MAX_V1)
    if end < 0:
        # §2.1: "If the CRLF sequence is not found in the first 107
        # characters, the receiver should declare the line invalid."
        if len(data) >= MAX_V1:
            raise _bad(f"PROXY v1 line has no CRLF within {MAX_V1} bytes")
        # A trailing CR may be the first half of the CRLF: then the line's
        # text is final and must be valid as a whole, else it may still grow.
        complete = data.endswith(b"\r")
        _v1_fields(data[:-1] if complete else data, complete=complete)
        return NEED_MORE
    fields = _v1_fields(data[:end], complete=True)
    if fields is None:  # complete=True always yields fields; keeps mypy honest
        raise _bad("PROXY v1 line incomplete")
    source, destination = fields
    return ProxyHeader(
        version=1,
        command="local" if source is None else "proxy",
        source=source,
        destination=destination,
        length=end + 2,
    )


def _v1_fields(raw: bytes, *, complete: bool) -> tuple[Address | None, Address | None] | None:
    """Check a v1 line (CRLF excluded), or the prefix of one.

    With `complete`, returns (source, destination), both None for UNKNOWN.
    Otherwise the last field may still grow: every field before it must be
    valid and it must be the prefix of a valid one; returns None.
    """
    if not _V1_TEXT.fullmatch(raw):
        raise _bad("PROXY v1 line has a non-ASCII or control character")
    # Splitting on single spaces makes "exactly one space" (§2.1) checkable:
    # a doubled space shows up as an empty field, which nothing accepts.
    fields = raw.decode("ascii").split(" ")
    growing = -1 if complete else len(fields) - 1

    if fields[0] != "PROXY":
        raise _bad("PROXY v1 line must start with 'PROXY '")
    if len(fields) == 1:
        if complete:
            raise _bad("PROXY v1 line has no protocol family")
        return None

    family = fields[1]
    if growing == 1:
        if not any(known.startswith(family) for known in _V1_FAMILIES):
            raise _bad(f"PROXY v1 family {family!r} is not TCP4, TCP6 or UNKNOWN")
        return None
    if family not in _V1_FAMILIES:
        raise _bad(f"PROXY v1 family {family!r} is not TCP4, TCP6 or UNKNOWN")
    if family == "UNKNOWN":
        # §2.1: for UNKNOWN "the receiver must ignore anything presented
        # before the CRLF"; the connection's real endpoints are used.
        return (None, None) if complete else None

    # "PROXY" family src dst sport dport
    if len(fields) > 6 or (complete and len(fields) < 6):
        raise _bad(f"PROXY v1 {family} line needs 6 space-separated fields")
    version = 4 if family == "TCP4" else 6
    hosts: list[str] = []
    ports: list[int] = []
    for index in range(2, len(fields)):
        text, is_growing = fields[index], index == growing
        if index < 4:
            if is_growing:
                _v1_host_prefix(text, version)
            else:
                hosts.append(_v1_host(text, version))
        elif is_growing:
            if text:
                _v1_port(text)
        else:
            ports.append(_v1_port(text))
    if not complete:
        return None
    return (hosts[0], ports[0]), (hosts[1], ports[1])


def _v1_host(text: str, version: int) -> str:
    """A complete v1 address of the announced family, in canonical form."""
    # §2.1 IPv6 is hex groups and colons; "%scope" suffixes are not allowed.
    # We accept a dotted IPv4 tail ("::ffff:1.2.3.4") because inet_ntop-based
    # senders produce it for IPv4-mapped addresses.
    if version == 6 and not _V1_IPV6_CHARS.fullmatch(text):
        raise _bad(f"PROXY v1 TCP6 address {text!r} is not an IPv6 address")
    try:
        # IPv4Address rejects heading zeroes itself (Python >= 3.9.5), which
        # is exactly §2.1's "Heading zeroes are not permitted".
        address: _IP = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise _bad(
            f"PROXY v1 TCP{version} address {text!r} is not an IPv{version} address"
        ) from None
    return str(address)


def _v1_host_prefix(text: str, version: int) -> None:
    """Raise unless `text` can still grow into a valid address.

    A prefix is valid when some completion of it is a valid address; the
    suffixes tried below are enough to complete any valid prefix (a partial
    IPv4 octet completes with "0" after a dot, missing octets with ".0";
    a partial IPv6 group is already a group, a lone ":" takes "0" or ":",
    and missing groups come from "::" or ":0"s). A candidate that parses
    proves the prefix valid, so the check is exact both ways; a test walks
    every prefix of many IPv6 spellings to hold it to that.
    """
    candidates: list[str]
    if version == 4:
        candidates = [text + head + ".0" * dots for head in ("", "0") for dots in range(4)]
    else:
        if not _V1_IPV6_CHARS.fullmatch(text):
            raise _bad(f"PROXY v1 TCP6 address {text!r} is not an IPv6 address")
        dotted = [text + head + ".0" * dots for head in ("", "0") for dots in range(4)]
        pads = ["", "::", *(":0" * groups for groups in range(1, 8))]
        hexed = [text + head + pad for head in ("", "0", ":") for pad in pads]
        candidates = dotted + hexed
    for candidate in candidates:
        try:
            if version == 4:
                ipaddress.IPv4Address(candidate)
            else:
                ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        return
    raise _bad(f"PROXY v1 TCP{version} address {text!r} is not an IPv{version} address")


def _v1_port(text: str) -> int:
    """A v1 port: §2.1 decimal in [0..65535], no heading zeroes."""
    if not _V1_PORT.fullmatch(text) or int(text) > _UINT16_MAX:
        raise _bad(f"PROXY v1 port {text!r} is not a decimal in 0..65535")
    return int(text)


# ------------------------------------------------------------- v2 (§2.2)


def _parse_v2(data: bytes, max_size: int) -> ProxyHeader | NeedMore:
    # Each fixed byte is checked as soon as it arrives, so a bad header is
    # refused without waiting for bytes that cannot make it good.
    sig = len(_V2_SIGNATURE)
    if len(data) <= sig:
        return NEED_MORE
    version, command = data[sig] >> 4, data[sig] & 0x0F
    if version != _V2_VERSION:
        raise _bad(f"PROXY v2 version nibble is {version:#x}, must be 0x2")
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise _bad(f"PROXY v2 command {command:#x} is neither LOCAL nor PROXY")
    if len(data) <= sig + 1:
        return NEED_MORE
    family = data[sig + 1]
    if family not in _V2_FAMILIES:
        raise _bad(f"PROXY v2 family/transport byte {family:#04x} is not defined")
    address_size, decode_addresses = _V2_FAMILIES[family]
    if len(data) < _V2_FIXED:
        return NEED_MORE

    # §2.2: "the length of the protocol header in bytes is always exactly
    # 16 + this value" -- the only length we need, and the one we cap.
    block = int.from_bytes(data[sig + 2 : _V2_FIXED], "big")
    length = _V2_FIXED + block
    if length > max_size:
        raise ProtocolError(
            f"PROXY v2 header of {length} bytes exceeds the {max_size}-byte cap", TOO_LARGE
        )
    # We hold LOCAL to the same layout as PROXY: §2.2 says the family is then
    # ignored, but it still says where the TLVs start; senders are told to use
    # AF_UNSPEC with LOCAL, so a short block is a broken sender either way.
    if block < address_size:
        raise _bad(f"PROXY v2 address block of {block} bytes, family needs {address_size}")
    tlvs_at = _V2_FIXED + address_size
    authority = _scan_tlvs(data[tlvs_at:length], length - tlvs_at)
    if len(data) < length:
        return NEED_MORE

    source = destination = None
    if command == _V2_PROXY and decode_addresses:
        source, destination = _v2_addresses(data[_V2_FIXED:tlvs_at])
    return ProxyHeader(
        version=2,
        command="proxy" if command == _V2_PROXY else "local",
        source=source,
        destination=destination,
        authority=authority,
        length=length,
    )


def _v2_addresses(block: bytes) -> tuple[Address, Address]:
    """§2.2 address order: src addr, dst addr, src port, dst port (big-endian)."""
    width = (len(block) - 4) // 2  # 4 for IPv4, 16 for IPv6
    ip = ipaddress.IPv4Address if width == 4 else ipaddress.IPv6Address
    source_ip, destination_ip = ip(block[:width]), ip(block[width : 2 * width])
    ports = block[2 * width :]
    return (
        (str(source_ip), int.from_bytes(ports[:2], "big")),
        (str(destination_ip), int.from_bytes(ports[2:], "big")),
    )


def _scan_tlvs(available: bytes, declared: int) -> str | None:
    """Walk the TLVs of a v2 header and return its authority, if any.

    `declared` is the size the header says the TLV area has; `available` is
    as much of it as has arrived. Structure errors are raised as soon as they
    are visible; the authority is returned only once the area is complete.

    §2.2 TLV vectors: a type byte, a 16-bit big-endian length, the value.
    Types we do not use (ALPN, CRC32C, NOOP, SSL, ...) are skipped, as §2.2
    allows; a receiver that does not implement CRC32C may ignore it (§2.2.3).
    """
    complete = len(available) == declared
    authority: str | None = None
    seen_authority = False
    position = 0
    while position < declared:
        if declared - position < _TLV_HEAD:
            # Leftover bytes too short to be a TLV cannot be anything valid.
            raise _bad(f"PROXY v2 has {declared - position} stray bytes after its TLVs")
        if position + _TLV_HEAD > len(available):
            break  # the next TLV's head has not arrived yet
        kind = available[position]
        size = int.from_bytes(available[position + 1 : position + 3], "big")
        value_at = position + _TLV_HEAD
        if value_at + size > declared:
            raise _bad(f"PROXY v2 TLV {kind:#04x} of {size} bytes overruns the header")
        value = available[value_at : value_at + size]
        if kind == PP2_TYPE_AUTHORITY:
            # Two authorities would let a sender show one name to logging and
            # another to routing; an empty one names nothing.
            if seen_authority:
                raise _bad("PROXY v2 header has more than one authority TLV")
            seen_authority = True
            if size == 0:
                raise _bad("PROXY v2 authority TLV is empty")
            authority = _utf8(value, final=len(value) == size)
        position = value_at + size
    return authority if complete else None


def _utf8(value: bytes, *, final: bool) -> str:
    """Decode §2.2.2's UTF-8; a partial value is checked as far as it goes."""
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(value, final=final)
    except UnicodeDecodeError:
        raise _bad("PROXY v2 authority is not valid UTF-8") from None


# -------------------------------------------------------------------- encode


def encode_v1(source: Address, destination: Address) -> bytes:
    """Build a v1 line "PROXY TCP4|TCP6 src dst sport dport\\r\\n" (§2.1).

    If one address is IPv4 and the other IPv6 (a dual-stack listener), the
    IPv4 one is sent IPv4-mapped (::ffff:a.b.c.d) under TCP6, since §2.1 has
    one family per line. An IPv6 scope ("%eth0") is dropped: it names an
    interface on this host and means nothing to the receiver. IPv6 is written
    as hex groups, as §2.1 asks. Raises ValueError for a malformed address or
    a port outside 0..65535.
    """
    (source_ip, source_port), (destination_ip, destination_port) = _pair(source, destination)
    family = "TCP4" if source_ip.version == 4 else "TCP6"
    hosts = f"{_v1_text(source_ip)} {_v1_text(destination_ip)}"
    line = f"PROXY {family} {hosts} {source_port} {destination_port}\r\n"
    return line.encode("ascii")


def encode_v2(
    source: Address | None, destination: Address | None, *, authority: str | None = None
) -> bytes:
    """Build a v2 header (§2.2) for TCP over IPv4 (0x11) or IPv6 (0x21).

    With no addresses (both None) it is a LOCAL command with AF_UNSPEC, as
    §2.2 recommends for health checks. Mixed families are mapped as in
    `encode_v1`. `authority` (the SNI) becomes a PP2_TYPE_AUTHORITY TLV.
    Raises ValueError for one address without the other, malformed addresses
    or ports, an empty authority, or a header beyond the 16-bit length field.
    Our own parser caps headers at `DEFAULT_MAX_HEADER` by default.
    """
    if (source is None) != (destination is None):
        raise ValueError("give both source and destination, or neither (LOCAL)")
    body = b""
    if source is None or destination is None:
        ver_cmd, family = (_V2_VERSION << 4) | _V2_LOCAL, 0x00
    else:
        (source_ip, source_port), (destination_ip, destination_port) = _pair(source, destination)
        ver_cmd = (_V2_VERSION << 4) | _V2_PROXY
        family = 0x11 if source_ip.version == 4 else 0x21
        body = (
            source_ip.packed
            + destination_ip.packed
            + source_port.to_bytes(2, "big")
            + destination_port.to_bytes(2, "big")
        )
    if authority is not None:
        value = authority.encode("utf-8")
        if not value:
            raise ValueError("authority must not be empty")
        if len(value) > _UINT16_MAX:
            raise ValueError("authority too long for a TLV")
        body += bytes([PP2_TYPE_AUTHORITY]) + len(value).to_bytes(2, "big") + value
    if len(body) > _UINT16_MAX:
        raise ValueError("PROXY v2 header too long for its 16-bit length field")
    return _V2_SIGNATURE + bytes([ver_cmd, family]) + len(body).to_bytes(2, "big") + body


def _pair(source: Address, destination: Address) -> tuple[tuple[_IP, int], tuple[_IP, int]]:
    """Validate both endpoints and bring them to one family (see encode_v1)."""
    source_ip, destination_ip = _ip(source[0]), _ip(destination[0])
    if source_ip.version != destination_ip.version:
        source_ip, destination_ip = _as_ipv6(source_ip), _as_ipv6(destination_ip)
    return (source_ip, _port(source[1])), (destination_ip, _port(destination[1]))


def _ip(text: str) -> _IP:
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(address.packed)  # drop any %scope
    return address


def _v1_text(address: _IP) -> str:
    # Some Python versions print IPv4-mapped IPv6 with a dotted tail; §2.1
    # asks for hex groups, so fall back to the (still short enough) long form.
    text = str(address)
    return address.exploded if address.version == 6 and "." in text else text


def _as_ipv6(address: _IP) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + address.packed)


def _port(port: int) -> int:
    if not 0 <= port <= _UINT16_MAX:
        raise ValueError(f"port {port} is outside 0..65535")
    return port
