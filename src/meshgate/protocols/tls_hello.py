"""Peek at a TLS ClientHello: the SNI, ALPN and versions a client offers.

The TCP listener buffers the first bytes of a connection, calls
`parse_client_hello` on them, routes on the result and then replays
`ClientHello.raw` to the chosen upstream unchanged, so TLS stays end to end:
nothing here decrypts, terminates or checks anything cryptographic. The module
is sans-I/O (no sockets, no ssl, no event loop) and has the project's
three-way result:

- a `ClientHello` once the whole hello is buffered;
- `NEED_MORE` while the buffer is a valid proper prefix of one (call again
  with the grown buffer);
- `ProtocolError` as soon as the bytes can be shown not to be a hello, with
  label `not_tls` (the first byte is not a handshake record), `bad_hello`
  (malformed) or `too_large` (the hello would not fit in `max_size`).

Wire layout, outermost first:

- records (RFC 8446 §5.1, RFC 5246 §6.2.1): type(1) version(2) length(2) and
  up to 2^14 bytes of fragment. One handshake message may be split over
  several handshake records, so the message is reassembled from consecutive
  records and `raw` is exactly those records;
- the handshake message: msg_type(1) length(3) body (RFC 8446 §4);
- the ClientHello body (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2): version,
  random, session id, cipher suites, compression methods, extensions, of
  which only server_name (RFC 6066 §3), ALPN (RFC 7301 §3.1) and
  supported_versions (RFC 8446 §4.2.1) are read.

Every length is checked against the block that contains it before it is
used, so hostile input yields a `ProtocolError` and nothing else.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from typing import Final

from meshgate.errors import ProtocolError
from meshgate.protocols.result import NEED_MORE, NeedMore

DEFAULT_MAX_HELLO: Final = 16 * 1024
"""Cap on a hello's records, headers included. Real hellos are 200-2000 bytes
(post-quantum key shares push some towards 2 KiB); 16 KiB leaves room for
padding and large session tickets while bounding what a slow client can make
a listener buffer before a routing decision."""

_RECORD_HEADER: Final = 5  # type(1) legacy_record_version(2) length(2), RFC 8446 §5.1
_HANDSHAKE_HEADER: Final = 4  # msg_type(1) length(3), RFC 8446 §4
_MAX_FRAGMENT: Final = 2**14  # RFC 8446 §5.1 / RFC 5246 §6.2.1: longer is record_overflow
_CONTENT_HANDSHAKE: Final = 22  # ContentType.handshake
_CLIENT_HELLO: Final = 1  # HandshakeType.client_hello
_MAX_SESSION_ID: Final = 32  # legacy_session_id<0..32>

_EXT_SERVER_NAME: Final = 0  # RFC 6066 §3
_EXT_ALPN: Final = 16  # RFC 7301 §3.1
_EXT_SUPPORTED_VERSIONS: Final = 43  # RFC 8446 §4.2.1
_HOST_NAME: Final = 0  # NameType.host_name, RFC 6066 §3

_MAX_HOST_NAME: Final = 253  # RFC 1035 §2.3.4 (255 octets on the wire, less the length bytes)
_MAX_LABEL: Final = 63
# Letters, digits and hyphen (RFC 1123 §2.1), plus underscore, which is not a
# valid host name character but does occur in service names clients connect
# to. Anything else (NUL, '/', ':', spaces) could confuse routing or logs.
_HOST_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What routing needs from a ClientHello, and the bytes to replay upstream."""

    sni: str | None  # server_name host_name, lower-cased, trailing dot stripped
    alpn: tuple[str, ...]  # protocol names in client order; () if absent
    versions: tuple[int, ...]  # supported_versions, else (legacy_version,)
    raw: bytes  # exactly the TLS records that carried the hello


def parse_client_hello(buf: bytes, max_size: int = DEFAULT_MAX_HELLO) -> ClientHello | NeedMore:
    """Parse the ClientHello at the start of `buf`; see the module docstring.

    `buf` is everything received so far; bytes after the hello's last record
    are ignored (they are not in `raw`). Each call reads at most `max_size`
    bytes plus one record, however large `buf` has grown.
    """
    if not buf:
        return NEED_MORE
    if buf[0] != _CONTENT_HANDSHAKE:
        raise _not_tls(buf)
    payload = bytearray()  # the handshake message, reassembled from record fragments
    msg_end: int | None = None  # header + declared message length, once known
    pos = 0
    while True:
        header = buf[pos : pos + _RECORD_HEADER]
        _check_record_start(header, first=pos == 0)
        if len(header) < _RECORD_HEADER:
            _check_size(_need(pos, len(payload), msg_end), max_size)
            return _incomplete(payload, msg_end)
        length = int.from_bytes(header[3:5], "big")
        if length == 0:
            # RFC 8446 §5.1, RFC 5246 §6.2.1: no zero-length handshake fragments.
            raise _bad(f"zero-length handshake record at byte {pos}")
        if length > _MAX_FRAGMENT:
            raise _bad(f"record at byte {pos} declares {length} bytes, over the 2^14 limit")
        end = pos + _RECORD_HEADER + length
        declared = len(payload) + length  # handshake bytes once this record is whole
        payload += buf[pos + _RECORD_HEADER : end]
        if msg_end is None:
            msg_end = _message_end(payload)
        if msg_end is not None and declared > msg_end:
            # RFC 8446 §5.1: a message preceding a key change (the ClientHello
            # does) must end on a record boundary; extra bytes mean the
            # lengths disagree or another message follows in the same record.
            raise _bad(f"record ending at byte {end} runs past the end of the ClientHello")
        _check_size(_need(end, declared, msg_end), max_size)
        if end > len(buf):
            return _incomplete(payload, msg_end)
        if declared == msg_end:
            # Every declared byte is buffered, so no reader can run short here.
            sni, alpn, versions = _parse_body(bytes(payload), msg_end)
            return ClientHello(sni=sni, alpn=alpn, versions=versions, raw=bytes(buf[:end]))
        pos = end


# --- record and handshake framing ---------------------------------------------


def _not_tls(buf: bytes) -> ProtocolError:
    first = buf[0]
    if first & 0x80:
        # SSLv2's record header sets the high bit of the first length byte
        # (e.g. b"\x80\x2e\x01\x03\x01..."). SSLv2-compatible hellos are
        # prohibited by RFC 6176 and carry no extensions, so no SNI.
        reason = f"first byte 0x{first:02x} has the high bit set: an SSLv2-style hello"
    else:
        reason = f"first byte 0x{first:02x} is not a TLS handshake record (0x16)"
    return ProtocolError(f"{reason}; starts {bytes(buf[:8])!r}", "not_tls")


def _check_record_start(header: bytes, *, first: bool) -> None:
    """Reject a record as soon as its first header bytes are buffered."""
    if not first and header and header[0] != _CONTENT_HANDSHAKE:
        # RFC 8446 §5.1: a handshake message split over records must not
        # have any other record type between its fragments.
        raise _bad(f"a record of content type {header[0]} interleaved with the ClientHello")
    if len(header) >= 2 and header[1] != 3:
        # Every SSL 3.0 / TLS record version is 3.x (RFC 5246 Appendix E.1).
        raise _bad(f"record version major {header[1]} is not 3")


def _message_end(payload: bytearray) -> int | None:
    """Check the handshake header so far; return 4 + its length once known."""
    if payload and payload[0] != _CLIENT_HELLO:
        raise _bad(f"handshake message type {payload[0]} is not ClientHello (1)")
    if len(payload) < _HANDSHAKE_HEADER:
        return None
    return _HANDSHAKE_HEADER + int.from_bytes(payload[1:4], "big")


def _need(boundary: int, declared: int, msg_end: int | None) -> int:
    """The fewest buffered bytes that could hold the whole hello.

    The records seen so far end at `boundary` and carry `declared` handshake
    bytes; any shortfall needs at least one more record header. This is a
    lower bound on `len(raw)`, so exceeding `max_size` is final, and it is
    always larger than an incomplete buffer, so a buffer over `max_size` that
    is still incomplete is rejected too.
    """
    missing = (_HANDSHAKE_HEADER if msg_end is None else msg_end) - declared
    return boundary + (_RECORD_HEADER + missing if missing > 0 else 0)


def _check_size(need: int, max_size: int) -> None:
    if need > max_size:
        raise ProtocolError(
            f"the ClientHello needs at least {need} bytes of records; the limit is {max_size}",
            "too_large",
        )


def _incomplete(payload: bytearray, msg_end: int | None) -> NeedMore:
    """NEED_MORE, unless the part of the body already buffered is malformed.

    Parsing the prefix is what makes a hello with, say, a bad SNI length fail
    on the read that brings it in rather than after the rest has arrived.
    """
    if msg_end is not None:
        with suppress(_Truncated):
            _parse_body(bytes(payload), msg_end)
    return NEED_MORE


# --- the ClientHello body -----------------------------------------------------


class _Truncated(Exception):
    """Consistent so far, but the declared bytes are not all buffered yet."""


class _Reader:
    """A bounds-checked cursor over `data[pos:end]`, `end` being a declared length.

    `data` may hold fewer bytes than `end` while the hello is arriving.
    Reading past `end` means lengths contradict each other (bad_hello);
    reading past `len(data)` only means more bytes are needed (`_Truncated`).
    Telling the two apart is what lets a prefix be rejected early.
    """

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self._data = data
        self._pos = pos
        self._end = end

    @property
    def remaining(self) -> int:
        """Declared bytes left, buffered or not."""
        return self._end - self._pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise _bad(f"{what} needs {n} bytes but its enclosing block has {self.remaining}")
        stop = self._pos + n
        if stop > len(self._data):
            raise _Truncated
        out = self._data[self._pos : stop]
        self._pos = stop
        return out

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def vector(self, length_size: int, what: str) -> _Reader:
        """Step over a length-prefixed vector (RFC 8446 §3.4); return a reader over it."""
        n = self.uint(length_size, f"{what} length")
        if n > self.remaining:
            raise _bad(f"{what} declares {n} bytes but its enclosing block has {self.remaining}")
        inner = _Reader(self._data, self._pos, self._pos + n)
        self._pos += n  # may pass len(data); the next take() then reports _Truncated
        return inner

    def rest(self, what: str) -> bytes:
        return self.take(self.remaining, what)

    def done(self, what: str) -> None:
        if self.remaining:
            raise _bad(f"{self.remaining} unexpected bytes after {what}")


def _parse_body(data: bytes, end: int) -> tuple[str | None, tuple[str, ...], tuple[int, ...]]:
    """Parse the ClientHello body in `data[4:end]` (RFC 8446 §4.1.2).

    Raises `_Truncated` if `data` ends before the body does and everything
    buffered is consistent.
    """
    body = _Reader(data, _HANDSHAKE_HEADER, end)
    legacy_version = body.uint(2, "legacy_version")
    if legacy_version >> 8 != 3:
        raise _bad(f"ClientHello version 0x{legacy_version:04x} is not 3.x")
    body.take(32, "random")
    if body.vector(1, "legacy_session_id").remaining > _MAX_SESSION_ID:
        raise _bad("legacy_session_id is longer than 32 bytes")
    suites = body.vector(2, "cipher_suites").remaining
    if suites < 2 or suites % 2:  # CipherSuite cipher_suites<2..2^16-2>
        raise _bad(f"cipher_suites is {suites} bytes, not a non-empty list of 2-byte suites")
    if not body.vector(1, "legacy_compression_methods").remaining:  # <1..2^8-1>
        raise _bad("legacy_compression_methods is empty")

    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] | None = None
    # RFC 5246 §7.4.1.2: a pre-1.3 client may omit the extensions block
    # entirely, which shows as the body ending after the compression methods.
    if body.remaining:
        extensions = body.vector(2, "extensions")
        body.done("the extensions")
        seen: set[int] = set()
        while extensions.remaining:
            ext_type = extensions.uint(2, "extension type")
            ext = extensions.vector(2, f"extension {ext_type}")
            if ext_type in seen:
                # RFC 8446 §4.2, RFC 5246 §7.4.1.4: at most one of each type.
                raise _bad(f"extension {ext_type} appears twice")
            seen.add(ext_type)
            if ext_type == _EXT_SERVER_NAME:
                sni = _server_name(ext)
            elif ext_type == _EXT_ALPN:
                alpn = _alpn(ext)
            elif ext_type == _EXT_SUPPORTED_VERSIONS:
                versions = _supported_versions(ext)
    body.done("the ClientHello")
    return sni, alpn, (legacy_version,) if versions is None else versions


def _server_name(ext: _Reader) -> str | None:
    """RFC 6066 §3: ServerName server_name_list<1..2^16-1>."""
    names = ext.vector(2, "server_name_list")
    ext.done("server_name_list")
    if not names.remaining:
        raise _bad("server_name_list is empty")
    host: str | None = None
    while names.remaining:
        name_type = names.uint(1, "server name type")
        # Every entry is parsed as an opaque<1..2^16-1>, the only layout ever
        # defined; entries of unknown types are skipped, as RFC 6066 §3 allows.
        name = names.vector(2, "server name")
        if name_type != _HOST_NAME:
            continue
        if host is not None:
            raise _bad("server_name_list has more than one host_name")
        host = _host_name(name.rest("host_name"))
    return host


def _host_name(raw: bytes) -> str:
    """Validate and normalise a host_name: ASCII, case-folded, no trailing dot.

    RFC 6066 §3 says the name is ASCII without a trailing dot, with IDNs as
    A-labels. Clients do send the root dot ("example.com."), so it is
    stripped rather than rejected: both name the same host.
    """
    if not raw:
        raise _bad("host_name is empty")
    try:
        name = raw.decode("ascii").lower()
    except UnicodeDecodeError:
        raise _bad(f"host_name {raw[:64]!r} is not ASCII") from None
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > _MAX_HOST_NAME:
        raise _bad(f"host_name is {len(name)} characters, not 1..{_MAX_HOST_NAME}")
    for label in name.split("."):
        if not label or len(label) > _MAX_LABEL or not _HOST_CHARS.issuperset(label):
            raise _bad(f"host_name {name[:64]!r} has an invalid label {label[:64]!r}")
    return name


def _alpn(ext: _Reader) -> tuple[str, ...]:
    """RFC 7301 §3.1: ProtocolName protocol_name_list<2..2^16-1>.

    Protocol names are opaque bytes (RFC 8701 GREASE values are not even
    ASCII), so they are decoded as Latin-1: lossless, never fails, and the
    registered names ("h2", "http/1.1") come out as expected.
    """
    names = ext.vector(2, "protocol_name_list")
    ext.done("protocol_name_list")
    if names.remaining < 2:
        raise _bad("protocol_name_list is shorter than one name")
    protocols: list[str] = []
    while names.remaining:
        name = names.vector(1, "protocol name")
        if not name.remaining:  # ProtocolName<1..2^8-1>
            raise _bad("empty protocol name in ALPN")
        protocols.append(name.rest("protocol name").decode("latin-1"))
    return tuple(protocols)


def _supported_versions(ext: _Reader) -> tuple[int, ...]:
    """RFC 8446 §4.2.1: ProtocolVersion versions<2..254>, GREASE left out.

    RFC 8701 §2 reserves 0x0a0a, 0x1a1a, ... 0xfafa so that servers learn to
    ignore unknown values; they are never versions, so routing never sees them.
    """
    versions = ext.vector(1, "supported_versions")
    ext.done("supported_versions")
    if versions.remaining < 2 or versions.remaining % 2:
        raise _bad(f"supported_versions is {versions.remaining} bytes, not 2..254 and even")
    offered: list[int] = []
    while versions.remaining:
        version = versions.uint(2, "version")
        if version & 0x0F0F != 0x0A0A or version >> 8 != version & 0xFF:
            offered.append(version)
    return tuple(offered)


def _bad(reason: str) -> ProtocolError:
    return ProtocolError(reason, "bad_hello")
