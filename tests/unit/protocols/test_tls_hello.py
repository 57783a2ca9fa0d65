"""parse_client_hello: real hellos from the ssl module, split, re-fragmented, corrupted.

The hellos come from CPython's ssl (OpenSSL) writing into a MemoryBIO, so the
parser is checked against what a real client sends; the corrupted ones are
rebuilt from those with the small, independent encoder below.
"""

from __future__ import annotations

import ssl
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.errors import ProtocolError
from meshgate.protocols.result import NEED_MORE, NeedMore
from meshgate.protocols.tls_hello import DEFAULT_MAX_HELLO, ClientHello, parse_client_hello

TLS13 = 0x0304
TLS12 = 0x0303
LABELS = {"not_tls", "bad_hello", "too_large"}


@cache
def make_hello(
    server_hostname: str | None = "example.com",
    *,
    alpn: tuple[str, ...] = (),
    version: ssl.TLSVersion | None = None,
) -> bytes:
    """The bytes an ssl client writes first: its ClientHello records."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_hostname is None:
        ctx.check_hostname = False
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


# --- an independent encoder for re-framed and corrupted hellos ---------------------


def message_of(hello: bytes) -> bytes:
    """The handshake message carried by `hello`'s records."""
    out, pos = b"", 0
    while pos < len(hello):
        length = int.from_bytes(hello[pos + 3 : pos + 5], "big")
        out += hello[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return out


def records(message: bytes, size: int = 2**14, version: bytes = b"\x03\x01") -> bytes:
    """`message` as handshake records of at most `size` bytes of fragment each."""
    chunks = [message[i : i + size] for i in range(0, len(message), size)]
    return b"".join(b"\x16" + version + len(c).to_bytes(2, "big") + c for c in chunks)


def split_hello(hello: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(body up to the extensions block, [(type, data), ...]) of a hello."""
    body = message_of(hello)[4:]
    pos = 2 + 32
    pos += 1 + body[pos]  # session id
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher suites
    pos += 1 + body[pos]  # compression methods
    fixed, block = body[:pos], body[pos + 2 :]
    extensions, i = [], 0
    while i < len(block):
        length = int.from_bytes(block[i + 2 : i + 4], "big")
        extensions.append((int.from_bytes(block[i : i + 2], "big"), block[i + 4 : i + 4 + length]))
        i += 4 + length
    return fixed, extensions


def build_hello(
    fixed: bytes, extensions: list[tuple[int, bytes]] | None, size: int = 2**14
) -> bytes:
    body = fixed
    if extensions is not None:
        block = b"".join(t.to_bytes(2, "big") + u16(d) for t, d in extensions)
        body += u16(block)
    return records(b"\x01" + len(body).to_bytes(3, "big") + body, size)


def with_extension(hello: bytes, ext_type: int, data: bytes) -> bytes:
    """`hello` with extension `ext_type` replaced by (or extended with) `data`."""
    fixed, extensions = split_hello(hello)
    kept = [(t, d) for t, d in extensions if t != ext_type]
    return build_hello(fixed, [*kept, (ext_type, data)])


def ext_data_offset(hello: bytes, ext_type: int) -> int:
    """Where extension `ext_type`'s data starts in a single-record hello."""
    fixed, extensions = split_hello(hello)
    pos = 5 + 4 + len(fixed) + 2
    for t, d in extensions:
        if t == ext_type:
            return pos + 4
        pos += 4 + len(d)
    raise AssertionError(f"no extension {ext_type}")


def u8(data: bytes) -> bytes:
    return len(data).to_bytes(1, "big") + data


def u16(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def sni_ext(*names: tuple[int, bytes]) -> bytes:
    return u16(b"".join(bytes([t]) + u16(n) for t, n in names))


# --- helpers --------------------------------------------------------------------


def parsed(buf: bytes, max_size: int = DEFAULT_MAX_HELLO) -> ClientHello:
    result = parse_client_hello(buf, max_size)
    assert isinstance(result, ClientHello)
    return result


def label_of(buf: bytes, max_size: int = DEFAULT_MAX_HELLO) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_client_hello(buf, max_size)
    return info.value.label


def outcome(buf: bytes, max_size: int = DEFAULT_MAX_HELLO) -> ClientHello | NeedMore | str:
    """The result or the error label; anything other than ProtocolError fails."""
    try:
        result = parse_client_hello(buf, max_size)
    except ProtocolError as exc:
        label = exc.label
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__} escaped the parser: {exc}") from exc
    else:
        if isinstance(result, ClientHello):
            assert buf.startswith(result.raw)
        return result
    assert label in LABELS
    return label


LONG_NAME = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
HELLOS = {
    "tls13": make_hello(),
    "tls12": make_hello(version=ssl.TLSVersion.TLSv1_2),
    "tls13-alpn": make_hello(alpn=("h2", "http/1.1")),
    "tls12-alpn": make_hello(alpn=("h2", "http/1.1"), version=ssl.TLSVersion.TLSv1_2),
    "no-sni": make_hello(None),
    "long-name": make_hello(LONG_NAME),
}


# --- real hellos ------------------------------------------------------------------


def test_tls13_hello() -> None:
    hello = HELLOS["tls13"]
    assert parsed(hello) == ClientHello(
        sni="example.com", alpn=(), versions=(TLS13, TLS12), raw=hello
    )


def test_tls12_only_hello_reports_its_legacy_version() -> None:
    hello = HELLOS["tls12"]
    assert parsed(hello) == ClientHello(sni="example.com", alpn=(), versions=(TLS12,), raw=hello)


@pytest.mark.parametrize(
    ("name", "versions"), [("tls13-alpn", (TLS13, TLS12)), ("tls12-alpn", (TLS12,))]
)
def test_alpn_in_client_order(name: str, versions: tuple[int, ...]) -> None:
    hello = HELLOS[name]
    assert parsed(hello) == ClientHello(
        sni="example.com", alpn=("h2", "http/1.1"), versions=versions, raw=hello
    )


def test_no_sni() -> None:
    hello = HELLOS["no-sni"]
    assert parsed(hello) == ClientHello(sni=None, alpn=(), versions=(TLS13, TLS12), raw=hello)


@pytest.mark.parametrize("name", ["x" * 63 + ".example", LONG_NAME])
def test_long_labels_and_names(name: str) -> None:
    hello = make_hello(name)
    assert parsed(hello) == ClientHello(sni=name, alpn=(), versions=(TLS13, TLS12), raw=hello)


def test_name_over_253_characters_is_rejected() -> None:
    # OpenSSL sends it; DNS has no such name (RFC 1035 §2.3.4).
    assert label_of(make_hello(LONG_NAME + "d")) == "bad_hello"


@pytest.mark.parametrize("sent", ["WWW.Example.COM", "www.example.com.", "Www.Example.Com."])
def test_sni_is_lower_cased_without_trailing_dot(sent: str) -> None:
    hello = make_hello(sent)
    assert sent.encode() in hello  # the client sent it as written
    assert parsed(hello).sni == "www.example.com"


@pytest.mark.parametrize("name", sorted(HELLOS))
def test_every_proper_prefix_needs_more(name: str) -> None:
    hello = HELLOS[name]
    for i in range(len(hello)):
        assert parse_client_hello(hello[:i]) is NEED_MORE, i
    assert parsed(hello).raw == hello


def test_bytes_after_the_hello_are_not_in_raw() -> None:
    hello = HELLOS["tls13-alpn"]
    early_data = b"\x17\x03\x03\x00\x05hello"
    assert parsed(hello + early_data) == parsed(hello)
    assert parsed(hello + b"\x16").raw == hello


# --- a hello fragmented over several records (RFC 8446 §5.1) ------------------------


@pytest.mark.parametrize("size", [1, 3, 50, 100, 511])
def test_hello_over_several_records(size: int) -> None:
    hello = records(message_of(HELLOS["tls13-alpn"]), size=size)
    result = parsed(hello + b"\x16\x03\x01\x00\x05trail")
    assert result.raw == hello
    assert (result.sni, result.alpn, result.versions) == (
        "example.com",
        ("h2", "http/1.1"),
        (TLS13, TLS12),
    )


def test_every_prefix_of_a_fragmented_hello_needs_more() -> None:
    hello = records(message_of(HELLOS["tls12-alpn"]), size=50)
    for i in range(len(hello)):
        assert parse_client_hello(hello[:i]) is NEED_MORE, i
    assert parsed(hello).raw == hello


def test_record_versions_may_differ_in_the_minor() -> None:
    message = message_of(HELLOS["tls13"])
    first, second = records(message[:100], version=b"\x03\x00"), records(message[100:])
    assert parsed(first + second).sni == "example.com"


# --- not TLS ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\n", id="http"),
        pytest.param(b"G", id="one-byte"),
        pytest.param(b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10", id="sslv2"),
        pytest.param(b"\x15\x03\x03\x00\x02\x02\x28", id="alert"),
        pytest.param(b"\x17\x03\x03\x00\x01x", id="application-data"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", id="ssh"),
    ],
)
def test_not_tls(data: bytes) -> None:
    assert label_of(data) == "not_tls"


def test_sslv2_reason_says_so() -> None:
    with pytest.raises(ProtocolError, match="SSLv2") as info:
        parse_client_hello(b"\x80\x2e\x01\x03\x01")
    assert info.value.label == "not_tls"


# --- malformed framing ----------------------------------------------------------------


def test_server_hello_type_is_rejected_from_its_first_byte() -> None:
    message = b"\x02" + message_of(HELLOS["tls13"])[1:]
    hello = records(message)
    assert label_of(hello) == "bad_hello"
    assert label_of(hello[:6]) == "bad_hello"  # one byte of handshake is enough


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x16\x04", id="record-major-4"),
        pytest.param(b"\x16\x02\x00\x00\x10", id="record-major-2"),
        pytest.param(b"\x16\x03\x01\x00\x00", id="zero-length-record"),
        pytest.param(b"\x16\x03\x01\x40\x01", id="record-over-2^14"),
    ],
)
def test_bad_record_headers(data: bytes) -> None:
    assert label_of(data) == "bad_hello"


def test_zero_length_record_between_fragments() -> None:
    message = message_of(HELLOS["tls13"])
    hello = records(message[:10]) + b"\x16\x03\x01\x00\x00" + records(message[10:])
    assert label_of(hello) == "bad_hello"


def test_other_record_interleaved_with_fragments() -> None:
    message = message_of(HELLOS["tls13"])
    alert = b"\x15\x03\x03\x00\x02\x01\x00"
    hello = records(message[:100]) + alert + records(message[100:])
    assert label_of(hello) == "bad_hello"
    assert label_of(records(message[:100]) + b"\x15") == "bad_hello"


def test_record_running_past_the_message() -> None:
    message = message_of(HELLOS["tls13"])
    # A second handshake message in the hello's record, or one stray byte
    # after the hello's last fragment: the hello must end its record.
    assert label_of(records(message + b"\x01\x00\x00\x00")) == "bad_hello"
    split = records(message[:-10]) + records(message[-10:] + b"\x00")
    assert label_of(split) == "bad_hello"
    assert label_of(split[: -len(message[-10:])]) == "bad_hello"  # known from the header


@pytest.mark.parametrize("delta", [-1, 1])
def test_handshake_length_disagreeing_with_the_body(delta: int) -> None:
    # One byte more is known bad without waiting for it: the extensions
    # block, whose length is buffered, already ends the body.
    message = message_of(HELLOS["tls13"])
    length = int.from_bytes(message[1:4], "big") + delta
    assert label_of(records(message[:1] + length.to_bytes(3, "big") + message[4:])) == "bad_hello"


# --- malformed ClientHello bodies -------------------------------------------------------


@pytest.mark.parametrize(
    "delta_at",
    [
        pytest.param(0, id="extension-length"),
        pytest.param(2, id="server-name-list-length"),
        pytest.param(5, id="host-name-length"),
    ],
)
def test_corrupted_sni_lengths_fail_as_soon_as_buffered(delta_at: int) -> None:
    hello = HELLOS["tls13"]
    at = ext_data_offset(hello, 0) - 2 + delta_at  # the two length bytes to corrupt
    one_more = int.from_bytes(hello[at : at + 2], "big") + 1
    # 0xffff overruns the enclosing block at once; one byte more shows once
    # the next length is in (for the extension length: the list length).
    for value, known_at in ((0xFFFF, at + 2), (one_more, at + 4)):
        bad = hello[:at] + value.to_bytes(2, "big") + hello[at + 2 :]
        assert label_of(bad) == "bad_hello"
        for i in range(known_at, len(bad)):
            assert label_of(bad[:i]) == "bad_hello", i


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(sni_ext(), id="empty-list"),
        pytest.param(sni_ext((0, b"")), id="empty-name"),
        pytest.param(sni_ext((0, "bücher.example".encode())), id="non-ascii"),
        pytest.param(sni_ext((0, b"a..b")), id="empty-label"),
        pytest.param(sni_ext((0, b".")), id="only-a-dot"),
        pytest.param(sni_ext((0, b"a" * 64 + b".com")), id="label-64"),
        pytest.param(sni_ext((0, b".".join([b"a" * 63] * 4))), id="name-255"),
        pytest.param(sni_ext((0, b"evil.com/x")), id="slash"),
        pytest.param(sni_ext((0, b"evil.com\x00.good.com")), id="nul"),
        pytest.param(sni_ext((0, b"evil.com:443")), id="port"),
        pytest.param(sni_ext((0, b"a.com"), (0, b"b.com")), id="two-host-names"),
        pytest.param(sni_ext((0, b"a.com")) + b"\x00", id="trailing-byte"),
        pytest.param(u16(b"\x00\x00\x05a.co"), id="host-name-overruns-list"),
        pytest.param(b"\x00", id="one-byte"),
    ],
)
def test_bad_server_names(data: bytes) -> None:
    assert label_of(with_extension(HELLOS["tls13"], 0, data)) == "bad_hello"


def test_server_name_of_unknown_type_is_skipped() -> None:
    hello = with_extension(HELLOS["tls13"], 0, sni_ext((7, b"\xff\xfe"), (0, b"Web.Example")))
    assert parsed(hello).sni == "web.example"
    assert parsed(with_extension(hello, 0, sni_ext((7, b"x")))).sni is None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(u16(b""), id="empty-list"),
        pytest.param(u16(u8(b"h2") + b"\x00"), id="empty-name"),
        pytest.param(u16(u8(b"h2") + b"\x09http/1.1"), id="name-overruns-list"),
        pytest.param(u16(u8(b"h2")) + b"x", id="trailing-byte"),
    ],
)
def test_bad_alpn(data: bytes) -> None:
    assert label_of(with_extension(HELLOS["tls13"], 16, data)) == "bad_hello"


def test_alpn_names_are_opaque_bytes() -> None:
    grease = bytes([0xFA, 0xFA])  # RFC 8701 §2 reserves these as ALPN values too
    hello = with_extension(HELLOS["tls13"], 16, u16(u8(grease) + u8(b"h2")))
    assert parsed(hello).alpn == ("\xfa\xfa", "h2")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(u8(b""), id="empty"),
        pytest.param(u8(b"\x03\x04\x03"), id="odd"),
        pytest.param(u8(b"\x03\x04") + b"\x03\x03", id="trailing"),
        pytest.param(b"\x04\x03\x04", id="overrun"),
    ],
)
def test_bad_supported_versions(data: bytes) -> None:
    assert label_of(with_extension(HELLOS["tls13"], 43, data)) == "bad_hello"


def test_grease_versions_are_left_out() -> None:
    hello = with_extension(HELLOS["tls13"], 43, u8(b"\x5a\x5a\x03\x04\x03\x03\x0a\x0b"))
    assert parsed(hello).versions == (TLS13, TLS12, 0x0A0B)


def test_duplicate_extension() -> None:
    fixed, extensions = split_hello(HELLOS["tls13"])
    hello = build_hello(fixed, [*extensions, (0, sni_ext((0, b"other.example")))])
    assert label_of(hello) == "bad_hello"


def test_hello_without_an_extensions_block() -> None:
    # RFC 5246 §7.4.1.2: extensions may be absent altogether before TLS 1.3.
    fixed, _ = split_hello(HELLOS["tls12"])
    hello = build_hello(fixed, None)
    assert parsed(hello) == ClientHello(sni=None, alpn=(), versions=(TLS12,), raw=hello)
    assert label_of(records(message_of(hello) + b"\x00")) == "bad_hello"  # half a length


def test_bad_legacy_version_and_session_id() -> None:
    fixed, extensions = split_hello(HELLOS["tls13"])
    assert label_of(build_hello(b"\x02\x00" + fixed[2:], extensions)) == "bad_hello"
    long_session = fixed[:34] + u8(b"s" * 33) + fixed[35 + fixed[34] :]
    assert label_of(build_hello(long_session, extensions)) == "bad_hello"


def test_bad_cipher_suites_and_compression() -> None:
    fixed, extensions = split_hello(HELLOS["tls12"])
    sid_end = 35 + fixed[34]
    suites_end = sid_end + 2 + int.from_bytes(fixed[sid_end : sid_end + 2], "big")
    head, compression = fixed[:sid_end], fixed[suites_end:]
    for bad in (head + u16(b"") + compression, head + u16(b"\x13\x01\x13") + compression):
        assert label_of(build_hello(bad, extensions)) == "bad_hello"
    no_compression = fixed[:suites_end] + u8(b"")
    assert label_of(build_hello(no_compression, extensions)) == "bad_hello"


# --- size limits ------------------------------------------------------------------------


def test_padded_hello_over_the_limit() -> None:
    hello = with_extension(HELLOS["tls13"], 21, bytes(DEFAULT_MAX_HELLO))
    assert len(hello) > DEFAULT_MAX_HELLO
    assert label_of(hello) == "too_large"
    assert label_of(hello[:5]) == "too_large"  # the first record header says so
    assert parsed(hello, max_size=len(hello)).raw == hello


def test_small_max_size() -> None:
    hello = HELLOS["tls13"]
    assert parsed(hello, max_size=len(hello)).raw == hello
    assert label_of(hello, max_size=len(hello) - 1) == "too_large"
    assert parse_client_hello(hello[:4], max_size=100) is NEED_MORE
    assert label_of(hello[:5], max_size=100) == "too_large"
    # No hello fits in 8 bytes (a record header and a handshake header alone
    # take 9), so even the first byte is over.
    assert label_of(b"\x16", max_size=8) == "too_large"


def test_incomplete_buffer_over_the_limit() -> None:
    # In 7-byte records a 512-byte message takes 882 bytes. Under a 700-byte
    # limit it looks fine at first; it is rejected once the headers so far
    # plus the handshake bytes still missing exceed the limit (around byte
    # 436), and any incomplete buffer over the limit is rejected at the latest.
    hello = records(message_of(HELLOS["tls13"]), size=7)
    assert (len(message_of(hello)), len(hello)) == (512, 882)
    limit = 700
    results = [outcome(hello[:i], max_size=limit) for i in range(len(hello) + 1)]
    first = results.index("too_large")
    assert 400 < first <= limit
    assert results[:first] == [NEED_MORE] * first
    assert results[first:] == ["too_large"] * (len(results) - first)


def test_declared_message_length_over_the_limit() -> None:
    message = b"\x01\x00\x40\x00" + bytes(10)  # declares 16 KiB of body
    assert label_of(records(message, size=14)) == "too_large"


# --- nothing but a result, NEED_MORE or ProtocolError ------------------------------------------

hellos = st.sampled_from([*sorted(HELLOS.values()), records(message_of(HELLOS["tls13"]), 50)])


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    outcome(data)
    outcome(b"\x16\x03\x01" + data)


@settings(max_examples=300, deadline=None)
@given(hellos, st.data(), st.binary(max_size=300), st.booleans())
def test_valid_prefix_plus_garbage(
    hello: bytes, data: st.DataObject, garbage: bytes, replace: bool
) -> None:
    cut = data.draw(st.integers(0, len(hello)), label="cut")
    rest = hello[cut + len(garbage) :] if replace else b""
    outcome(hello[:cut] + garbage + rest)
    outcome(hello[:cut] + garbage + rest, max_size=data.draw(st.integers(0, 2000)))


@settings(max_examples=300, deadline=None)
@given(hellos, st.data())
def test_single_byte_mutation(hello: bytes, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(hello) - 1), label="at")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != hello[at]), label="value")
    mutated = hello[:at] + bytes([value]) + hello[at + 1 :]
    outcome(mutated)
    # Once a prefix is known bad, no longer prefix can be good: the parser
    # never waits for bytes that cannot help.
    failed_at = None
    for i in range(at, len(mutated) + 1, 3):
        result = outcome(mutated[:i])
        if failed_at is not None:
            assert isinstance(result, str), (failed_at, i)
        elif isinstance(result, str):
            failed_at = i


@settings(max_examples=100, deadline=None)
@given(hellos, st.binary(min_size=1, max_size=100))
def test_a_complete_hello_ignores_what_follows(hello: bytes, extra: bytes) -> None:
    assert parse_client_hello(hello + extra) == parse_client_hello(hello)
