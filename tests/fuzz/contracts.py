"""What each fuzzed parser promises, as checks shared by the fuzzers and the corpus replay.

One `check_*` per harness: it takes one fuzz input (bytes), runs the parser
on it and returns normally when the parser kept its documented contract,
which for every parser here is "a valid result, or the documented rejection
with a non-empty reason". A broken promise raises `ContractViolation`; any
other exception that escapes is a finding too (the parser failed open, or
crashed instead of rejecting). The atheris harnesses (tests/fuzz/fuzz_*.py)
call these on every input, and tests/unit/test_fuzz_corpus.py replays the
persisted corpus through them, so a regression on a known input fails CI.

Inputs are plain bytes so that the replay needs no atheris. Where a harness
needs choices besides the message (where to split the feeds, which limits,
which request methods a response answers), they are the first bytes of the
input (`HTTP_CONTROL` and so on): the fuzzer mutates them like the rest.

Invariants checked on top of the contract:

- ClientHello: `raw` is a prefix of the input; the SNI is a valid host
  name; every proper prefix of `raw` needs more; bytes after it change
  nothing; `max_size` is exact (a hello of n bytes passes with n, not n-1);
  verdicts are monotonic (a rejected buffer stays rejected as it grows).
- PROXY header: `length` <= the input and the cap; addresses canonical;
  verdicts monotonic; the header re-encoded with our encoder parses back equal.
- HTTP: the verdict and the events do not depend on how the bytes are split
  into feeds; bodies match their Content-Length; an accepted head,
  re-serialised, parses back to the same method/target (status/reason) and
  headers.
- DNS: `respond` never raises; a reply parses, echoes the id, sets QR, fits
  the size the client can take, and its TC bit matches `truncated`.
- YAML config / rules / manifests / annotations: every problem has a reason;
  what is accepted validates, and holds no NaN duration.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from dnslib import DNSRecord

from meshgate.config.annotations import ANNOTATIONS, ParsedAnnotations, parse_annotations
from meshgate.config.files import parse_yaml
from meshgate.config.manifests import TRANSLATION_SOURCE, IngressOptions, translate
from meshgate.config.merge import validate
from meshgate.config.model import Config, check_exact_name
from meshgate.config.rules import Rule, rules_to_config
from meshgate.errors import ConfigError, ConfigProblem, ProtocolError
from meshgate.mesh.dns import (
    EDNS_UDP_SIZE,
    MALFORMED,
    MAX_TCP_MESSAGE,
    MAX_TCP_QUERY,
    RCODE_NAMES,
    UDP_PLAIN_SIZE,
    DnsRecords,
    read_frame,
    respond,
)
from meshgate.protocols.http1 import (
    Data,
    EndOfMessage,
    HttpError,
    Limits,
    RequestEvent,
    RequestHead,
    RequestParser,
    ResponseEvent,
    ResponseHead,
    ResponseParser,
    Upgraded,
    serialize_request_head,
    serialize_response_head,
)
from meshgate.protocols.proxy_protocol import (
    BAD_PROXY_HEADER,
    DEFAULT_MAX_HEADER,
    MAX_V1,
    NO_PROXY_HEADER,
    TOO_LARGE,
    ProxyHeader,
    encode_v1,
    encode_v2,
    parse_proxy_header,
)
from meshgate.protocols.result import NEED_MORE, NeedMore
from meshgate.protocols.tls_hello import DEFAULT_MAX_HELLO, ClientHello, parse_client_hello
from meshgate.sources.manifests import parse_documents

MAX_INPUT: Final = 4096  # the fuzzers' -max_len, and the cap on corpus files


class ContractViolation(AssertionError):
    """A parser broke its documented contract: a finding."""


def require(condition: object, message: str) -> None:
    """`assert`, but kept under `python -O` and with a type of its own."""
    if not condition:
        raise ContractViolation(message)


def _rejection(error: ProtocolError, labels: Iterable[str], what: str) -> None:
    require(error.reason and str(error), f"{what}: rejected without a reason ({error.label})")
    require(error.label in labels, f"{what}: undocumented label {error.label!r}: {error.reason}")


# --- TLS ClientHello ------------------------------------------------------------------

TLS_LABELS: Final = frozenset({"not_tls", "bad_hello", "too_large"})
_HOST_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")

Verdict = ClientHello | ProxyHeader | NeedMore | str  # a result, or an error's label


def _hello(buf: bytes, max_size: int = DEFAULT_MAX_HELLO) -> ClientHello | NeedMore | str:
    try:
        return parse_client_hello(buf, max_size)
    except ProtocolError as error:
        require(type(error) is ProtocolError, f"{type(error).__name__} from parse_client_hello")
        _rejection(error, TLS_LABELS, "parse_client_hello")
        return error.label


def valid_host_name(name: str) -> bool:
    """What tls_hello promises of an SNI: lower-case LDH(+_) labels, no trailing dot."""
    labels = name.split(".")
    return 1 <= len(name) <= 253 and all(
        1 <= len(label) <= 63 and _HOST_CHARS.issuperset(label) for label in labels
    )


def _cuts(data: bytes, length: int, count: int) -> list[int]:
    """A few positions in 1..length-1, chosen by the input's own last bytes."""
    if length < 2:
        return []
    picks = {1, length - 1, length // 2}
    for byte in data[-count:]:
        picks.add(1 + byte * (length - 1) // 256)
    return sorted(p for p in picks if 0 < p < length)


def check_tls_hello(data: bytes) -> None:
    result = _hello(data)
    if isinstance(result, ClientHello):
        raw = result.raw
        require(data.startswith(raw), "raw is not a prefix of the input")
        require(len(raw) <= DEFAULT_MAX_HELLO, f"raw is {len(raw)} bytes, over max_size")
        if result.sni is not None:
            require(valid_host_name(result.sni), f"invalid SNI {result.sni!r}")
        require(all(result.alpn), "an empty ALPN protocol name")
        for version in result.versions:
            require(0 <= version <= 0xFFFF, f"version {version} is not 16 bits")
            grease = version & 0x0F0F == 0x0A0A and version >> 8 == version & 0xFF
            require(not grease, f"GREASE version {version:#06x} reported")
        for cut in _cuts(data, len(raw), 4):
            got = _hello(raw[:cut])
            require(got is NEED_MORE, f"a {cut}-byte prefix of a valid hello gave {got!r}")
        again = _hello(raw + b"\x16\x03\x01\x00")
        require(again == result, "bytes after the hello changed the result")
        require(_hello(data, len(raw)) == result, "a hello of n bytes refused with max_size n")
        if len(raw) > 1:
            got = _hello(data, len(raw) - 1)
            require(got == "too_large", f"a hello of n bytes with max_size n-1 gave {got!r}")
    elif result is NEED_MORE:
        require(len(data) < DEFAULT_MAX_HELLO, "NEED_MORE for a buffer over max_size")
        for cut in _cuts(data, len(data), 2):
            got = _hello(data[:cut])
            require(got is NEED_MORE, f"a {cut}-byte prefix of a valid prefix gave {got!r}")
    else:
        # Rejected stays rejected as bytes arrive; the label may change (a
        # record too long for max_size is too_large before its bytes arrive,
        # and may show a bad_hello once they do).
        got = _hello(data + bytes(8))
        require(isinstance(got, str), f"rejected as {result}, but with 8 more bytes: {got!r}")


# --- PROXY protocol -------------------------------------------------------------------

PROXY_LABELS: Final = frozenset({NO_PROXY_HEADER, BAD_PROXY_HEADER, TOO_LARGE})


def _proxy(buf: bytes, max_size: int = DEFAULT_MAX_HEADER) -> ProxyHeader | NeedMore | str:
    try:
        return parse_proxy_header(buf, max_size)
    except ProtocolError as error:
        require(type(error) is ProtocolError, f"{type(error).__name__} from parse_proxy_header")
        _rejection(error, PROXY_LABELS, "parse_proxy_header")
        return error.label


def _canonical(address: tuple[str, int] | None) -> bool:
    if address is None:
        return True
    host, port = address
    return str(ipaddress.ip_address(host)) == host and 0 <= port <= 0xFFFF


def check_proxy_protocol(data: bytes) -> None:
    result = _proxy(data)
    if isinstance(result, ProxyHeader):
        length = result.length
        require(0 < length <= len(data), f"length {length} for {len(data)} bytes of input")
        require(length <= DEFAULT_MAX_HEADER, f"length {length} over max_size")
        require(result.version in (1, 2), f"version {result.version}")
        if result.version == 1:
            require(length <= MAX_V1, f"v1 header of {length} bytes")
            require(result.authority is None, "v1 with an authority")
        require((result.source is None) == (result.destination is None), "one address only")
        if result.source is not None:
            require(result.command == "proxy", "addresses with LOCAL")
        require(_canonical(result.source), f"source {result.source} not canonical")
        require(_canonical(result.destination), f"destination {result.destination}")
        require(result.authority != "", "an empty authority")
        header = data[:length]
        require(_proxy(header) == result, "the header alone parses differently")
        require(_proxy(header + bytes(16)) == result, "bytes after the header changed it")
        require(_proxy(data, length) == result, "a header of n bytes refused with max_size n")
        for cut in _cuts(data, length, 4):
            got = _proxy(header[:cut])
            require(got is NEED_MORE, f"a {cut}-byte prefix of a valid header gave {got!r}")
        _proxy_round_trip(result)
    elif result is NEED_MORE:
        require(len(data) < DEFAULT_MAX_HEADER, "NEED_MORE at max_size")
        for cut in _cuts(data, len(data), 2):
            got = _proxy(data[:cut])
            require(got is NEED_MORE, f"a {cut}-byte prefix of a valid prefix gave {got!r}")
    else:
        # parse_proxy_header: "whatever this call says, a longer buffer says too".
        got = _proxy(data + b"\r\n" + bytes(16))
        require(got == result, f"rejected as {result}, but with more bytes: {got!r}")


def _proxy_round_trip(header: ProxyHeader) -> None:
    """Our encoders, fed what the parser read, write a header that parses back equal."""
    source, destination = header.source, header.destination
    if header.version == 1 and source is not None and destination is not None:
        again = _proxy(encode_v1(source, destination))
        require(
            isinstance(again, ProxyHeader)
            and (again.source, again.destination) == (source, destination),
            f"encode_v1 of {source} {destination} parses back as {again!r}",
        )
    if header.version == 2 and (header.authority is None or len(header.authority) < 400):
        if header.command == "local":
            source = destination = None
        encoded = encode_v2(source, destination, authority=header.authority)
        again = _proxy(encoded)
        require(
            isinstance(again, ProxyHeader)
            and (again.source, again.destination, again.authority)
            == (source, destination, header.authority),
            f"encode_v2 of {header!r} parses back as {again!r}",
        )


# --- HTTP/1.1 -------------------------------------------------------------------------

HTTP_CONTROL: Final = 4  # flags, then three split points
RESPONSE_CONTROL: Final = HTTP_CONTROL + 1  # and the methods of the expected responses
SMALL_LIMITS: Final = Limits(
    max_request_line=64, max_header_bytes=256, max_headers=6, max_chunk_line=16
)
_SMALL, _EOF, _BYTEWISE = 1, 2, 4  # flag bits
_BYTEWISE_MAX: Final = 600  # byte-at-a-time feeding only for inputs this short

REQUEST_LABELS: Final = frozenset(
    {
        "bad_request_line",
        "bad_method",
        "bad_target",
        "version",
        "connect",
        "missing_host",
        "duplicate_host",
        "bad_host",
        "smuggling_cl_te",
        "duplicate_content_length",
        "bad_content_length",
        "bad_transfer_encoding",
        "unsupported_transfer_coding",
        "obs_fold",
        "bad_header_name",
        "bad_header_value",
        "bad_line_ending",
        "bad_chunk",
        "bad_upgrade",
        "uri_too_long",
        "header_too_large",
        "framing_mismatch",
        "truncated",
        "bad_request",
    }
)
REQUEST_STATUSES: Final = frozenset({400, 405, 414, 431, 501, 505})
# Responses: the request labels renamed as http1._RESPONSE_LABELS says, all "upstream_".
RESPONSE_LABELS: Final = frozenset(
    "upstream_" + label
    for label in (
        (REQUEST_LABELS - {"uri_too_long", "bad_request_line", "bad_request"})
        | {"bad_status_line", "bad_response", "closed"}
    )
)
_METHODS: Final = ("GET", "HEAD", "POST", "GET")

Event = RequestEvent | ResponseEvent
Parser = RequestParser | ResponseParser


def http_pieces(control: bytes, payload: bytes) -> list[bytes]:
    """Split `payload` into feeds as the control bytes say (see HTTP_CONTROL)."""
    size = len(payload)
    if control[0] & _BYTEWISE and size <= _BYTEWISE_MAX:
        return [payload[i : i + 1] for i in range(size)]
    cuts = sorted({byte * (size + 1) // 256 for byte in control[1:HTTP_CONTROL]})
    bounds = [0, *cuts, size]
    return [payload[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _merged(events: Iterable[Event]) -> list[Event]:
    """Adjacent Data joined and empty Data dropped: how Data splits depends on the feeds."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, Data):
            if not event.data:
                continue
            if out and isinstance(out[-1], Data):
                out[-1] = Data(out[-1].data + event.data)
                continue
        out.append(event)
    return out


def _drive(
    parser: Parser, pieces: Sequence[bytes], eof: bool, upstream: bool
) -> tuple[list[Event], HttpError | None]:
    """Feed `pieces` (then EOF): the events, merged, and the HttpError that ended it.

    After Upgraded the parser takes no more bytes: the rest of the input goes
    into that Upgraded's `rest`, so the result does not depend on the split.
    """
    events: list[Event] = []
    error: HttpError | None = None
    for index, piece in enumerate(pieces):
        try:
            got: Sequence[Event] = parser.feed(piece)
        except HttpError as err:
            error = err
            break
        events += got
        if events and isinstance(events[-1], Upgraded):
            rest = events[-1].rest + b"".join(pieces[index + 1 :])
            events[-1] = Upgraded(rest)
            return _merged(events), None
    else:
        error = parser.failed
        if error is None and eof:
            try:
                events += parser.feed_eof()
            except HttpError as err:
                error = err
    if error is not None:
        require(type(error) is HttpError, f"{type(error).__name__} from the parser")
        if upstream:
            require(error.status == 502, f"upstream error with status {error.status}")
            _rejection(error, RESPONSE_LABELS, "ResponseParser")
        else:
            require(error.status in REQUEST_STATUSES, f"status {error.status}: {error.label}")
            _rejection(error, REQUEST_LABELS, "RequestParser")
        require(parser.failed is error, "the parser is not dead after an HttpError")
        try:
            parser.feed(b"x")
        except HttpError as again:
            require(again is error, "a dead parser raised a different error")
        else:
            raise ContractViolation("a dead parser accepted more bytes")
    return _merged(events), error


def _whole_messages(events: list[Event]) -> list[Event]:
    """The events of the messages that ended (what survives an error in any split)."""
    for i in range(len(events) - 1, -1, -1):
        if isinstance(events[i], EndOfMessage | Upgraded):
            return events[: i + 1]
    return []


def _compare_splits(
    make: Callable[[], Parser], control: bytes, payload: bytes, eof: bool, upstream: bool
) -> list[Event]:
    """Feed the payload whole and split; the verdicts must agree. Returns the split run."""
    whole_events, whole_error = _drive(make(), [payload] if payload else [], eof, upstream)
    events, error = _drive(make(), http_pieces(control, payload), eof, upstream)
    if whole_error is None and error is None:
        require(events == whole_events, "the events depend on how the input was split")
    else:
        whole_label = whole_error.label if whole_error else None
        label = error.label if error else None
        require(label == whole_label, f"split feeding gives {label}, one feed {whole_label}")
        require(
            _whole_messages(events) == _whole_messages(whole_events),
            "the messages before the error depend on the split",
        )
    return events


def _check_bodies(events: list[Event], methods: Sequence[str] | None = None) -> None:
    """Per message: Data only where framing allows it, and as much as Content-Length says.

    `methods`: for responses, the methods of the requests they answer, in order.
    """
    head: RequestHead | ResponseHead | None = None
    body = 0
    finals = 0  # final responses seen: the next one answers methods[finals]
    for event in events:
        if isinstance(event, RequestHead | ResponseHead):
            require(head is None, "a head inside a message")
            head = event
            body = 0
            require(
                not (head.chunked and head.content_length is not None),
                "a head with both Content-Length and chunked",
            )
            if head.content_length is not None:
                require(0 <= head.content_length < 2**63, "Content-Length out of range")
        elif isinstance(event, Data):
            require(head is not None, "Data outside a message")
            body += len(event.data)
        elif isinstance(event, EndOfMessage | Upgraded):
            require(head is not None, "end of a message that did not start")
            assert head is not None
            method = None
            if isinstance(head, ResponseHead):
                require(methods is not None and finals < len(methods), "an unexpected response")
                assert methods is not None
                method = methods[finals]
                finals += head.status >= 200 or head.status == 101
            expected = _declared_body(head, method)
            if expected is not None:
                require(body == expected, f"a body of {body} bytes, {expected} declared")
            head = None
        else:
            raise ContractViolation(f"unexpected event {event!r}")


def _declared_body(head: RequestHead | ResponseHead, method: str | None) -> int | None:
    """The body length the head declares; None when only the data says (chunked, close)."""
    if isinstance(head, ResponseHead):
        if head.status < 200 or head.status in (204, 304) or method == "HEAD":
            return 0  # RFC 9112 §6.3: no body, whatever the headers say
    elif not head.chunked and head.content_length is None:
        return 0
    return head.content_length


def check_http_request(data: bytes) -> None:
    if len(data) < HTTP_CONTROL:
        return
    control, payload = data[:HTTP_CONTROL], data[HTTP_CONTROL:]
    limits = SMALL_LIMITS if control[0] & _SMALL else Limits()
    eof = bool(control[0] & _EOF)
    events = _compare_splits(lambda: RequestParser(limits), control, payload, eof, False)
    _check_bodies(events)
    for event in events:
        if isinstance(event, RequestHead):
            _check_request_head(event)
        if isinstance(event, Upgraded):
            heads = [e for e in events if isinstance(e, RequestHead)]
            require(heads[-1].upgrade is not None, "Upgraded without an Upgrade header")


def _check_request_head(head: RequestHead) -> None:
    require(head.method != "CONNECT", "CONNECT accepted")
    require(head.version in ("1.0", "1.1"), f"version {head.version}")
    require(head.version == "1.0" or head.host is not None, "an HTTP/1.1 request without Host")
    require(not (head.chunked and head.version == "1.0"), "chunked in HTTP/1.0")
    require("#" not in head.target, "a fragment in the target")
    if not any(name.lower() == b"host" for name, _ in head.headers):
        return  # re-serialised as HTTP/1.1 it would lack Host
    raw = serialize_request_head(head.method, head.target, head.headers)
    try:
        again = RequestParser().feed(raw)
    except HttpError as error:
        raise ContractViolation(f"re-serialised head refused: {error.label} {error}") from None
    first = again[0] if again else None
    require(
        isinstance(first, RequestHead)
        and (first.method, first.target, first.headers) == (head.method, head.target, head.headers),
        f"re-serialised head parses back as {first!r}, not {head!r}",
    )


def response_methods(control: bytes) -> list[str]:
    """1 to 4 expected responses; methods from the control byte's upper bits."""
    byte = control[HTTP_CONTROL]
    count = 1 + (byte & 3)
    return [_METHODS[(byte >> (2 + 2 * i)) & 3] if i < 3 else "GET" for i in range(count)]


def check_http_response(data: bytes) -> None:
    if len(data) < RESPONSE_CONTROL:
        return
    control, payload = data[:RESPONSE_CONTROL], data[RESPONSE_CONTROL:]
    limits = SMALL_LIMITS if control[0] & _SMALL else Limits()
    eof = bool(control[0] & _EOF)
    methods = response_methods(control)

    def make() -> ResponseParser:
        parser = ResponseParser(limits)
        for method in methods:
            parser.expect(method)
        return parser

    events = _compare_splits(make, control, payload, eof, True)
    _check_bodies(events, methods)
    finals = 0
    for event in events:
        if isinstance(event, ResponseHead):
            _check_response_head(event, methods[min(finals, len(methods) - 1)])
            finals += event.status >= 200 or event.status == 101


def _check_response_head(head: ResponseHead, method: str) -> None:
    require(100 <= head.status <= 599, f"status {head.status}")
    require(head.version in ("1.0", "1.1"), f"version {head.version}")
    require(not (head.until_close and head.keep_alive), "until_close and keep_alive")
    require(
        all(ch == "\t" or not (ord(ch) < 32 or ord(ch) == 127) for ch in head.reason),
        f"control character in reason {head.reason!r}",
    )
    raw = serialize_response_head(head.status, head.reason, head.headers)
    parser = ResponseParser()
    parser.expect(method)
    try:
        again = parser.feed(raw)
    except HttpError as error:
        raise ContractViolation(f"re-serialised head refused: {error.label} {error}") from None
    first = again[0] if again else None
    require(
        isinstance(first, ResponseHead)
        and (first.status, first.reason, first.headers) == (head.status, head.reason, head.headers),
        f"re-serialised head parses back as {first!r}, not {head!r}",
    )


# --- DNS ------------------------------------------------------------------------------

DNS_RECORDS: Final = DnsRecords(
    zones=("mesh.internal", "team.mesh.internal", "svc.test"),
    names={
        "my-app.mesh.internal": ("100.100.0.2",),
        "dual.mesh.internal": ("100.100.0.3", "fd00::3"),
        "v6only.mesh.internal": ("fd00::4",),
        "app.team.mesh.internal": ("100.100.0.5",),
        "deep.a.b.svc.test": ("10.1.2.3",),
        # About 1.6 KB of answers: more than any UDP reply may carry.
        "many.mesh.internal": tuple(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(100)),
    },
)
_RCODES: Final = {name: code for code, name in RCODE_NAMES.items()}


def check_dns(data: bytes) -> None:
    for udp in (True, False):
        response = respond(DNS_RECORDS, data, udp=udp)  # never raises: anything is a finding
        if response is None:
            continue
        query: Any = DNSRecord.parse(data)
        require(not query.header.qr, "answered a response")
        reply: Any = DNSRecord.parse(response.data)
        header = reply.header
        require(header.id == query.header.id, "reply id differs from the query's")
        require(header.qr == 1 and header.ra == 0, "reply without QR, or with RA")
        require(response.rcode in _RCODES, f"rcode {response.rcode!r}")
        opts = [rr for rr in reply.ar if rr.rtype == 41]
        ext = int(opts[0].edns_rcode) if len(opts) == 1 else 0
        require(
            header.rcode | ext << 4 == _RCODES[response.rcode],
            f"header rcode {header.rcode}/{ext} for {response.rcode}",
        )
        require(bool(header.tc) == response.truncated, "TC bit and `truncated` disagree")
        query_opts = [rr for rr in query.ar if rr.rtype == 41]
        limit = MAX_TCP_MESSAGE
        if udp:
            limit = EDNS_UDP_SIZE if len(query_opts) == 1 else UDP_PLAIN_SIZE
        require(len(response.data) <= limit, f"a {len(response.data)}-byte reply, limit {limit}")
        if len(query.questions) == 1:
            require(reply.questions == query.questions, "the question was not echoed")
            qname = query.questions[0].qname
            require(all(rr.rname == qname for rr in reply.rr), "an answer for another name")
    try:
        frame = read_frame(data)
    except ProtocolError as error:
        _rejection(error, {MALFORMED}, "read_frame")
        return
    if frame is not NEED_MORE:
        assert isinstance(frame, bytes)
        require(0 < len(frame) <= MAX_TCP_QUERY, f"a frame of {len(frame)} bytes")
        require(frame == data[2 : 2 + len(frame)], "the frame is not the bytes after the length")


# --- YAML configuration, rules, manifests, annotations --------------------------------


def _text(data: bytes) -> str | None:
    """The input as load_file would read it; None where load_file stops first (not UTF-8)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def _problems_have_reasons(problems: Iterable[ConfigProblem], what: str) -> None:
    for problem in problems:
        require(problem.reason.strip(), f"{what}: a problem without a reason: {problem!r}")
        require(problem.line is None or problem.line >= 1, f"{what}: line {problem.line}")


def _no_nan(value: object, where: str = "") -> None:
    """No NaN anywhere in an accepted value: every timer fed one raises at run time."""
    if isinstance(value, float):
        require(not math.isnan(value), f"NaN accepted at {where or 'the top'}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _no_nan(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _no_nan(item, f"{where}[{index}]")


def _config_accepted(config: Config, what: str) -> None:
    try:
        validate(config, what)
    except ConfigError as error:
        raise ContractViolation(f"{what} returned a Config that fails validate: {error}") from None
    _no_nan(config.model_dump(), "")
    for listener in config.listeners:
        for route in listener.http.routes if listener.http is not None else ():
            _check_route_paths(route.rewrite_target, route.app_root, f"{what}: {listener.name}")


def _check_route_paths(rewrite_target: str | None, app_root: str | None, where: str) -> None:
    """What routing sends on must be sendable: it was accepted, so it cannot fail later.

    A rewrite target becomes the request-target of the forwarded request
    (printable ASCII, no spaces: serialize_request_head refuses anything
    else), an app-root the Location header of a redirect (a field value).
    """
    if rewrite_target is not None:
        require(
            rewrite_target and all("!" <= ch <= "~" for ch in rewrite_target),
            f"{where}: rewrite target {rewrite_target!r} cannot be a request-target",
        )
    if app_root is not None:
        require(
            app_root.startswith("/") and _field_value(app_root),
            f"{where}: app-root {app_root!r} cannot be a Location header",
        )


def check_config(data: bytes) -> None:
    text = _text(data)
    if text is None:
        return
    try:
        config = parse_yaml(text, "fuzz.yaml")
    except ConfigError as error:
        require(error.problems, "a ConfigError without problems")
        require(all(p.source == "fuzz.yaml" for p in error.problems), "a problem's source")
        _problems_have_reasons(error.problems, "parse_yaml")
        return
    _config_accepted(config, "parse_yaml")


def check_rules(data: bytes) -> None:
    """First line: --bind; the others: --ingress and --egress rules, alternately."""
    text = _text(data)
    if text is None or "\x00" in text:  # argv cannot hold NUL
        return
    bind, *lines = text.split("\n")
    for line in lines:
        try:
            rule = Rule.parse(line, "ingress")
        except ConfigError as error:
            require(len(error.problems) == 1, "Rule.parse reports one problem")
            _problems_have_reasons(error.problems, "Rule.parse")
            continue
        require(1 <= rule.listen_port <= 65535 and 1 <= rule.port <= 65535, f"ports of {rule}")
        require(Rule.parse(str(rule), "ingress") == rule, f"{rule} does not parse back")
    try:
        config = rules_to_config(lines[0::2], lines[1::2], bind=bind)
    except ConfigError as error:
        require(error.problems, "a ConfigError without problems")
        _problems_have_reasons(error.problems, "rules_to_config")
        return
    _config_accepted(config, "rules_to_config")


def check_manifests(data: bytes) -> None:
    text = _text(data)
    if text is None:
        return
    objects, problems = parse_documents(text, "fuzz.yaml")
    _problems_have_reasons(problems, "parse_documents")
    translation = translate(objects, IngressOptions())
    _problems_have_reasons(translation.problems, "translate")
    for problem in translation.problems:
        # translate reports its own output failing validation under this source:
        # by its own account a bug in the translation, not in the objects.
        require(problem.source != TRANSLATION_SOURCE, f"translation bug: {problem}")
    _config_accepted(translation.config, "translate")


def annotations_of(text: str) -> dict[str, object]:
    """`key=value` lines; a line without '=' is a non-string value (YAML `true`, `8`)."""
    found: dict[str, object] = {}
    for line in text.split("\n"):
        key, sep, value = line.partition("=")
        found[key] = value if sep else (int(key[-1]) if key[-1:].isdigit() else True)
    return found


_ANNOTATION_FIELDS: Final = frozenset(a.field for a in ANNOTATIONS)


def check_annotations(data: bytes) -> None:
    text = _text(data)
    if text is None:
        return
    given = annotations_of(text)
    parsed: ParsedAnnotations = parse_annotations(given)  # never raises
    for problem in parsed.problems:
        require(problem.key in given, f"a problem for a key not given: {problem.key!r}")
        require(problem.reason.strip(), f"no reason for {problem.key!r}")
    require(set(parsed.keys) <= _ANNOTATION_FIELDS, "an unknown field set")
    values = parsed.values
    for cidr in values.allow:
        require(str(ipaddress.ip_network(cidr)) == cidr, f"allow entry {cidr!r} not canonical")
    require(values.max_body is None or values.max_body > 0, f"max_body {values.max_body}")
    for timeout in (values.connect_timeout, values.read_timeout):
        require(timeout is None or timeout > 0, f"timeout {timeout}")  # False for NaN too
    _check_route_paths(values.rewrite_target, values.app_root, "parse_annotations")
    if values.proxy_ssl_name is not None:
        require(
            check_exact_name(values.proxy_ssl_name) == values.proxy_ssl_name,
            f"proxy-ssl-name {values.proxy_ssl_name!r}",
        )


def _field_value(text: str) -> bool:
    """Whether `text` may appear in an HTTP field value (RFC 9110 §5.5): no CTLs but HTAB."""
    return all(ch == "\t" or (32 <= ord(ch) != 127) for ch in text)


# --- the harnesses by name ------------------------------------------------------------

CHECKS: Final[Mapping[str, Callable[[bytes], None]]] = {
    "tls_hello": check_tls_hello,
    "proxy_protocol": check_proxy_protocol,
    "http_request": check_http_request,
    "http_response": check_http_response,
    "dns": check_dns,
    "config": check_config,
    "rules": check_rules,
    "manifests": check_manifests,
    "annotations": check_annotations,
}
