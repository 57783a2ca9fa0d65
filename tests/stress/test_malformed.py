"""About 2,000 malformed ClientHellos and PROXY headers at the socket.

Inputs, each on its own connection, sent whole and then half-closed:
- real ClientHellos (built by Python's ssl through a MemoryBIO: with an SNI
  that a passthrough route takes, without one for the terminating default
  route, and TLS 1.2 only) truncated at every offset;
- the same hellos re-framed over several TLS records (valid, split at every
  16th byte, and one byte per record), with record and handshake lengths,
  types and versions made wrong, and with single bytes flipped;
- a PROXY v1 line and a v2 header (with an authority TLV) truncated at every
  offset, and broken in their signature, version, command, family, length
  and text;
- every file of tests/fuzz/corpus/tls_hello and .../proxy_protocol.

Every connection must be closed by meshgate cleanly (a FIN, not a reset)
within 1 s of the half-close; meshgate_internal_errors stays 0 and its log
has no traceback; a probe (50 HTTP requests a second on new connections to
another listener) keeps a p99 under 50 ms meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import ssl
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import free_port
from tests.stress.conftest import Procs
from tests.stress.kit import (
    CORPUS,
    CertFiles,
    Figures,
    Gate,
    Pki,
    Probe,
    percentile,
    start_gate,
    start_server,
    terminating_listener,
)

pytestmark = [pytest.mark.stress, pytest.mark.timeout(300)]

CLOSE_WITHIN = 1.0
GIVE_UP = 6.0  # a connection still open this long after its half-close is a "timeout"
IN_FLIGHT = 48
PROBE_RATE = 50
PROBE_P99_MS = 50.0
PASS_SNI = "pass.example"


# -- inputs --------------------------------------------------------------------------


def client_hello(server_name: str | None, tls12_only: bool = False) -> bytes:
    """The first flight of Python's ssl client: one record with a ClientHello."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls12_only:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server's answer
        tls.do_handshake()
    return outgoing.read()


def records(handshake: bytes, sizes: list[int], version: bytes = b"\x03\x01") -> bytes:
    """`handshake` framed as TLS handshake records of the given sizes (the
    last record takes what is left)."""
    out = b""
    rest = handshake
    for size in sizes:
        if not rest:
            break
        chunk, rest = rest[:size], rest[size:]
        out += b"\x16" + version + struct.pack("!H", len(chunk)) + chunk
    if rest:
        out += b"\x16" + version + struct.pack("!H", len(rest)) + rest
    return out


def hello_inputs() -> dict[str, bytes]:
    inputs: dict[str, bytes] = {}
    hellos = {
        "sni": client_hello(PASS_SNI),
        "nosni": client_hello(None),
        "tls12": client_hello("terminate.example", tls12_only=True),
    }
    for name, hello in hellos.items():
        for cut in range(len(hello) + 1):
            inputs[f"{name} truncated at {cut}"] = hello[:cut]
        body = hello[5:]  # the handshake message inside the one record
        for at in range(16, len(body), 16):
            inputs[f"{name} split into records at {at}"] = records(body, [at])
        inputs[f"{name} one byte per record"] = records(body, [1] * len(body))
        length = struct.unpack("!H", hello[3:5])[0]
        hs_len = int.from_bytes(hello[6:9], "big")
        broken = {
            "record length +1": hello[:3] + struct.pack("!H", length + 1) + hello[5:],
            "record length -1": hello[:3] + struct.pack("!H", length - 1) + hello[5:],
            "record length 0": hello[:3] + b"\x00\x00" + hello[5:],
            "record length max": hello[:3] + b"\xff\xff" + hello[5:],
            "content type alert": b"\x15" + hello[1:],
            "content type application data": b"\x17" + hello[1:],
            "record version 0.0": hello[:1] + b"\x00\x00" + hello[3:],
            "handshake type server hello": hello[:5] + b"\x02" + hello[6:],
            "handshake length +1": hello[:6] + (hs_len + 1).to_bytes(3, "big") + hello[9:],
            "handshake length -1": hello[:6] + (hs_len - 1).to_bytes(3, "big") + hello[9:],
            "handshake length max": hello[:6] + b"\xff\xff\xff" + hello[9:],
            "hello twice": hello + hello,
            "record of zero bytes first": b"\x16\x03\x01\x00\x00" + hello,
            "garbage after": hello + b"\x00" * 64,
        }
        for what, data in broken.items():
            inputs[f"{name} {what}"] = data
    for name, step in (("sni", 2), ("nosni", 4)):
        hello = hellos[name]
        for at in range(0, len(hello), step):
            flipped = hello[:at] + bytes([hello[at] ^ 0xFF]) + hello[at + 1 :]
            inputs[f"{name} byte {at} flipped"] = flipped
    for path in sorted((CORPUS / "tls_hello").iterdir()):
        inputs[f"corpus tls_hello/{path.name}"] = path.read_bytes()
    return inputs


V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2(
    command: int = 0x1, family: int = 0x11, body: bytes | None = None, length: int | None = None
) -> bytes:
    if body is None:
        authority = b"app.example.test"
        body = (
            socket.inet_aton("192.0.2.1")
            + socket.inet_aton("198.51.100.2")
            + struct.pack("!HH", 51234, 443)
            + b"\x02"
            + struct.pack("!H", len(authority))
            + authority
        )
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", size) + body


def proxy_inputs() -> dict[str, bytes]:
    inputs: dict[str, bytes] = {}
    v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\n"
    v2 = proxy_v2()
    for name, header in (("v1", v1), ("v2", v2)):
        for cut in range(len(header) + 1):
            inputs[f"{name} truncated at {cut}"] = header[:cut]
        inputs[f"{name} then data"] = header + b"hello\n"
    broken = {
        "v1 TCP6 with IPv4 addresses": b"PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n",
        "v1 UNKNOWN": b"PROXY UNKNOWN\r\n",
        "v1 UNKNOWN with junk": b"PROXY UNKNOWN " + b"x" * 90 + b"\r\n",
        "v1 port out of range": b"PROXY TCP4 192.0.2.1 198.51.100.2 70000 443\r\n",
        "v1 bad address": b"PROXY TCP4 192.0.2.300 198.51.100.2 1 443\r\n",
        "v1 lower case": b"proxy tcp4 192.0.2.1 198.51.100.2 1 443\r\n",
        "v1 no CR": b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\n",
        "v1 line too long": b"PROXY TCP4 " + b"1" * 200 + b"\r\n",
        "v1 NUL inside": b"PROXY TCP4 192.0.2.1\x00198.51.100.2 1 443\r\n",
        "v1 extra field": b"PROXY TCP4 192.0.2.1 198.51.100.2 1 443 5\r\n",
        "v2 version 1": V2_SIGNATURE + b"\x11" + v2[13:],
        "v2 version 3": V2_SIGNATURE + b"\x31" + v2[13:],
        "v2 command 0xF": proxy_v2(command=0xF),
        "v2 LOCAL": proxy_v2(command=0x0, family=0x00, body=b""),
        "v2 unix family": proxy_v2(family=0x31, body=b"\x00" * 216),
        "v2 family 0xFF": proxy_v2(family=0xFF),
        "v2 length shorter than addresses": proxy_v2(body=b"\x00" * 4),
        "v2 length beyond the data": proxy_v2(length=60000),
        "v2 TLV overrunning": proxy_v2(body=v2[16:28] + b"\x02\xff\xff" + b"x"),
        "v2 broken signature": b"\r\n\r\n\x00\r\nQUIT\r" + v2[12:],
        "neither v1 nor v2": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    inputs.update(broken)
    for path in sorted((CORPUS / "proxy_protocol").iterdir()):
        inputs[f"corpus proxy_protocol/{path.name}"] = path.read_bytes()
    return inputs


# -- the sender ----------------------------------------------------------------------


@dataclass
class Outcome:
    closes: Counter[str] = field(default_factory=Counter)  # fin / reset / timeout / connect ...
    seconds: list[float] = field(default_factory=list)  # half-close to close, closed ones
    slow: list[tuple[str, float]] = field(default_factory=list)  # closed after CLOSE_WITHIN
    bad: list[tuple[str, str]] = field(default_factory=list)  # not a clean close in time


@dataclass
class _Conn:
    name: str
    payload: bytes
    sock: socket.socket
    shut_at: float = 0.0


def send_all(port: int, inputs: dict[str, bytes], outcome: Outcome) -> None:
    """Each input on its own connection, IN_FLIGHT at a time."""
    pending = list(inputs.items())
    sel = selectors.DefaultSelector()
    live = 0

    def finish(conn: _Conn, how: str) -> None:
        nonlocal live
        live -= 1
        sel.unregister(conn.sock)
        conn.sock.close()
        outcome.closes[how] += 1
        if how == "fin":
            took = time.monotonic() - conn.shut_at
            outcome.seconds.append(took)
            if took > CLOSE_WITHIN:
                outcome.slow.append((conn.name, round(took, 3)))
        else:
            outcome.bad.append((conn.name, how))

    while pending or live:
        while pending and live < IN_FLIGHT:
            name, payload = pending.pop()
            sock = socket.socket()
            sock.setblocking(False)
            code = sock.connect_ex(("127.0.0.1", port))
            if code not in (0, errno.EINPROGRESS):
                outcome.closes["connect failed"] += 1
                outcome.bad.append((name, errno.errorcode.get(code, str(code))))
                sock.close()
                continue
            sel.register(sock, selectors.EVENT_WRITE, _Conn(name, payload, sock))
            live += 1
        for key, _ in sel.select(timeout=0.2):
            conn: _Conn = key.data
            try:
                if not conn.shut_at:
                    code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        raise OSError(code, errno.errorcode.get(code, str(code)))
                    conn.sock.setblocking(True)
                    conn.sock.settimeout(2.0)
                    conn.sock.sendall(conn.payload)
                    conn.sock.shutdown(socket.SHUT_WR)
                    conn.sock.setblocking(False)
                    conn.shut_at = time.monotonic()
                    sel.modify(conn.sock, selectors.EVENT_READ, conn)
                    continue
                data = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                finish(conn, "reset")
                continue
            except OSError as exc:
                finish(conn, f"error {exc.strerror}")
                continue
            if not data:
                finish(conn, "fin")
        now = time.monotonic()
        for key in list(sel.get_map().values()):
            conn = key.data
            if conn.shut_at and now - conn.shut_at > GIVE_UP:
                finish(conn, "timeout")


def config(ports: dict[str, int], cert: CertFiles) -> dict[str, Any]:
    return {
        "listeners": [
            terminating_listener(
                "edge",
                ports["edge"],
                cert.cert,
                cert.key,
                "echo",
                {"sni": [PASS_SNI], "backend": "echo"},
            ),
            {
                "name": "pp",
                "port": ports["pp"],
                "protocol": "tcp",
                "backend": "echo",
                "proxy_protocol": {"trusted": ["127.0.0.0/8"]},
            },
            {
                "name": "web",
                "port": ports["web"],
                "protocol": "http",
                "http": {"default_backend": "hello", "access_log": False},
            },
        ],
        "backends": [
            {"name": "echo", "endpoints": [f"127.0.0.1:{ports['echo']}"]},
            {"name": "hello", "builtin": "hello"},
        ],
    }


def test_malformed_hellos_and_proxy_headers_are_closed_cleanly(
    tmp_path: Path, procs: Procs, figures: Figures
) -> None:
    echo, echo_port = start_server("echo")
    procs.add(echo)
    ports = {"edge": free_port(), "pp": free_port(), "web": free_port(), "echo": echo_port}
    cert = Pki(tmp_path / "pki").issue()
    gate: Gate = procs.add(start_gate(tmp_path / "meshgate.yaml", config(ports, cert), tmp_path))
    hellos, headers = hello_inputs(), proxy_inputs()
    figures.update(client_hellos=len(hellos), proxy_headers=len(headers))

    probe = procs.add(Probe("http", ports["web"], rate=PROBE_RATE))
    time.sleep(0.5)
    started = time.monotonic()
    outcome = Outcome()
    send_all(ports["edge"], hellos, outcome)
    send_all(ports["pp"], headers, outcome)
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    probed = probe.finish()

    internal = gate.metric("meshgate_internal_errors_total")
    tracebacks = gate.tracebacks()
    figures.update(
        connections=sum(outcome.closes.values()),
        seconds=round(elapsed, 1),
        closes=dict(outcome.closes),
        close_p50_ms=round(percentile(outcome.seconds, 50) * 1000, 1),
        close_p99_ms=round(percentile(outcome.seconds, 99) * 1000, 1),
        close_max_ms=round(max(outcome.seconds, default=0) * 1000, 1),
        closed_late=outcome.slow[:10],
        not_closed_cleanly=outcome.bad[:10],
        tls_rejected=gate.metric("meshgate_tls_rejected_total"),
        proxy_protocol_rejected=gate.metric("meshgate_proxy_protocol_rejected_total"),
        internal_errors=internal,
        tracebacks=len(tracebacks),
        probe=probed.summary(),
    )
    assert gate.proc.poll() is None, f"meshgate exited {gate.proc.returncode}"
    logged = [
        {k: e.get(k) for k in ("event", "context", "error")} for e in gate.events("internal error")
    ]
    assert internal == 0, f"meshgate_internal_errors is {internal:.0f}; its log says: {logged[:3]}"
    assert not tracebacks, f"tracebacks in meshgate's log: {tracebacks[:3]}"
    assert not outcome.bad, (
        f"{len(outcome.bad)} connections were not closed cleanly within {GIVE_UP:g} s "
        f"({dict(outcome.closes)}), e.g. {outcome.bad[:5]}"
    )
    assert not outcome.slow, (
        f"{len(outcome.slow)} connections were closed later than {CLOSE_WITHIN:g} s after "
        f"their input ended, e.g. {outcome.slow[:5]}"
    )
    assert probed.ok == probed.count, f"probe requests failed: {probed.errors}"
    assert probed.p99_ms < PROBE_P99_MS, (
        f"probe p99 {probed.p99_ms:.1f} ms during the malformed inputs (limit {PROBE_P99_MS:g})"
    )
