"""Client processes for the stress tests (standard library only).

    python tests/stress/clients.py hold tcp|http PORT COUNT
    python tests/stress/clients.py probe tcp|http|tls PORT RATE [SECONDS]

`hold` opens COUNT connections (in batches, so the proxy's accept queue is not
what is tested), makes one exchange on each (a ping echoed back, or one HTTP
request answered 200 with keep-alive), prints one JSON line, then holds them
and answers commands read from stdin, one JSON line each:
- `ping`: one more exchange on every connection still open (echo / request);
- `poll`: without sending anything, look for connections the other side
  closed since the last look: a FIN (graceful), a reset, or unexpected bytes;
- `close`: close everything and exit.
Each answer has cumulative counts: `open`, `fin`, `reset`, `failed` (with
reasons). Thousands of sockets live in one process on `selectors` (epoll):
no thread per connection. A test spreads more connections than one process
may hold descriptors for over several of these processes.

`probe` makes RATE requests a second, each on a new connection (connect,
one exchange, close), for SECONDS or until SIGTERM, then prints one JSON
line: counts, failure reasons, and every successful request's latency in ms.
`tcp` and `tls` send a line and expect it echoed (`tls`: through a
terminating listener, no certificate check); `http` expects 200.
"""

from __future__ import annotations

import errno
import json
import resource
import selectors
import signal
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import FrameType

HOST = "127.0.0.1"
BATCH = 500  # connections opened at once
CONNECT_TIMEOUT = 10.0
EXCHANGE_TIMEOUT = 30.0  # one round over every connection
REQUEST = b"GET / HTTP/1.1\r\nHost: stress.test\r\nUser-Agent: stress-hold\r\n\r\n"

Done = Callable[[bytes], str | None]  # None: more bytes needed; else the outcome


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def http_done(buf: bytes) -> str | None:
    """The outcome once a whole response is in `buf`: "ok" for a 200."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if len(buf) < end + 4 + length:
        return None
    status = head[0].split(" ")[1] if " " in head[0] else "?"
    return "ok" if status == "200" else f"status {status}"


def echo_done(expected: bytes) -> Done:
    def done(buf: bytes) -> str | None:
        if len(buf) < len(expected):
            return None
        return "ok" if buf == expected else "wrong echo"

    return done


def error_name(exc: OSError) -> str:
    """ "reset" for a connection the peer aborted, else the errno's name."""
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def open_many(port: int, count: int, failures: Counter[str]) -> list[socket.socket]:
    """`count` connected non-blocking sockets (fewer when some failed)."""
    opened: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    left = count
    while left > 0:
        batch = []
        for _ in range(min(BATCH, left)):
            sock = socket.socket()
            sock.setblocking(False)
            code = sock.connect_ex((HOST, port))
            if code not in (0, errno.EINPROGRESS):
                failures[errno.errorcode.get(code, str(code))] += 1
                sock.close()
                continue
            batch.append(sock)
            sel.register(sock, selectors.EVENT_WRITE, sock)
        left -= BATCH
        deadline = time.monotonic() + CONNECT_TIMEOUT
        waiting = set(batch)
        while waiting and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                sock = key.data
                sel.unregister(sock)
                waiting.discard(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    failures[errno.errorcode.get(code, str(code))] += 1
                    sock.close()
                else:
                    opened.append(sock)
        for sock in waiting:
            failures["connect timeout"] += 1
            sel.unregister(sock)
            sock.close()
    sel.close()
    return opened


def exchange(
    socks: list[socket.socket], payload: Callable[[int], bytes], done: Callable[[int], Done]
) -> dict[socket.socket, str]:
    """Send `payload(i)` on the i-th socket and read until `done(i)` decides;
    every socket at once. Returns each socket's outcome ("ok", "fin" when the
    peer closed first, "reset", "timeout", ...)."""
    outcome: dict[socket.socket, str] = {}
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, tuple[int, bytearray, bytearray]] = {}
    for i, sock in enumerate(socks):
        out = bytearray(payload(i))
        state[sock] = (i, out, bytearray())
        sel.register(sock, selectors.EVENT_WRITE, sock)

    def finish(sock: socket.socket, result: str) -> None:
        outcome[sock] = result
        sel.unregister(sock)

    deadline = time.monotonic() + EXCHANGE_TIMEOUT
    while len(outcome) < len(socks) and time.monotonic() < deadline:
        for key, events in sel.select(timeout=0.5):
            sock = key.data
            i, out, buf = state[sock]
            try:
                if events & selectors.EVENT_WRITE:
                    del out[: sock.send(out)]
                    if not out:
                        sel.modify(sock, selectors.EVENT_READ, sock)
                    continue
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                finish(sock, error_name(exc))
                continue
            if not data:
                finish(sock, "fin")
                continue
            buf += data
            result = done(i)(bytes(buf))
            if result is not None:
                finish(sock, result)
    for sock in socks:
        if sock not in outcome:
            finish(sock, "timeout")
    sel.close()
    return outcome


class Holder:
    def __init__(self, kind: str, port: int, count: int) -> None:
        self.kind = kind
        self.port = port
        self.count = count
        self.open: list[socket.socket] = []
        self.closed: Counter[str] = Counter()  # fin / reset / data, seen by poll or ping
        self.failed: Counter[str] = Counter()  # connects and exchanges that failed
        self.rounds = 0

    def round(self) -> dict[str, int]:
        """One exchange on every open connection; drop those that failed."""
        self.rounds += 1
        if self.kind == "tcp":
            pings = [b"ping %d.%d\n" % (self.rounds, i) for i in range(len(self.open))]
            outcome = exchange(self.open, pings.__getitem__, lambda i: echo_done(pings[i]))
        else:
            outcome = exchange(self.open, lambda i: REQUEST, lambda i: http_done)
        results = Counter(outcome.values())
        for sock, result in outcome.items():
            if result == "ok":
                continue
            if result in ("fin", "reset"):
                self.closed[result] += 1
            else:
                self.failed[result] += 1
            sock.close()
        self.open = [s for s in self.open if outcome[s] == "ok"]
        return dict(results)

    def poll(self) -> None:
        """Connections closed by the other side since the last look."""
        gone: set[socket.socket] = set()
        with selectors.DefaultSelector() as sel:
            for sock in self.open:
                sel.register(sock, selectors.EVENT_READ, sock)
            for key, _ in sel.select(timeout=0):
                sock = key.data
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self.closed[error_name(exc)] += 1
                else:
                    self.closed["fin" if not data else "unexpected data"] += 1
                gone.add(sock)
                sock.close()
        self.open = [s for s in self.open if s not in gone]

    def report(self, **extra: object) -> None:
        doc = {
            "open": len(self.open),
            "fin": self.closed["fin"],
            "reset": self.closed["reset"],
            "closed": dict(self.closed),
            "failed": dict(self.failed),
            **extra,
        }
        print(json.dumps(doc), flush=True)

    def run(self) -> None:
        started = time.monotonic()
        self.open = open_many(self.port, self.count, self.failed)
        first = self.round()
        self.report(event="ready", seconds=round(time.monotonic() - started, 3), round=first)
        for line in sys.stdin:
            command = line.strip()
            if command == "close":
                break
            started = time.monotonic()
            if command == "ping":
                self.poll()
                result = self.round()
                self.report(
                    event="ping", seconds=round(time.monotonic() - started, 3), round=result
                )
            elif command == "poll":
                self.poll()
                self.report(event="poll")
            else:
                self.report(event="error", error=f"unknown command {command!r}")
        for sock in self.open:
            sock.close()


# -- probe ---------------------------------------------------------------------------

_stopping = threading.Event()


def _stop(signum: int, frame: FrameType | None) -> None:
    _stopping.set()


def probe_once(kind: str, port: int, timeout: float) -> str:
    """One request on a new connection: "ok" or why not."""
    line = b"probe %d\n" % time.monotonic_ns()
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as raw:
            sock: socket.socket = raw
            if kind == "tls":
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                sock = ctx.wrap_socket(raw, server_hostname="localhost")
            if kind == "http":
                sock.sendall(REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
                done: Done = http_done
            else:
                sock.sendall(line)
                done = echo_done(line)
            buf = b""
            while (result := done(buf)) is None:
                data = sock.recv(65536)
                if not data:
                    return "closed early"
                buf += data
            return result
    except TimeoutError:
        return "timeout"
    except ssl.SSLError as exc:
        return f"tls: {exc.reason}"
    except OSError as exc:
        return error_name(exc)


def probe(kind: str, port: int, rate: float, seconds: float | None) -> None:
    signal.signal(signal.SIGTERM, _stop)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    first_failures: list[dict[str, object]] = []
    started = time.monotonic()
    next_at = started
    while not _stopping.is_set() and (seconds is None or time.monotonic() - started < seconds):
        now = time.monotonic()
        if now < next_at:
            time.sleep(min(next_at - now, 0.2))
            continue
        next_at = max(next_at + 1 / rate, now)  # late: no burst to catch up
        t0 = time.perf_counter()
        result = probe_once(kind, port, timeout=5.0)
        elapsed = (time.perf_counter() - t0) * 1000
        if result == "ok":
            latencies.append(round(elapsed, 3))
        else:
            errors[result] += 1
            if len(first_failures) < 10:
                first_failures.append({"at": round(now - started, 3), "error": result})
    # A SIGTERM arriving while the (long) line waits on a full pipe would cut
    # it short: the report is written with the signal ignored.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(
        json.dumps(
            {
                "count": len(latencies) + sum(errors.values()),
                "ok": len(latencies),
                "errors": dict(errors),
                "first_failures": first_failures,
                "latencies_ms": latencies,
            }
        ),
        flush=True,
    )


def main(argv: list[str]) -> int:
    raise_nofile()
    if len(argv) == 5 and argv[1] == "hold" and argv[2] in ("tcp", "http"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        Holder(argv[2], int(argv[3]), int(argv[4])).run()
        return 0
    if len(argv) in (5, 6) and argv[1] == "probe" and argv[2] in ("tcp", "http", "tls"):
        seconds = float(argv[5]) if len(argv) == 6 else None
        probe(argv[2], int(argv[3]), float(argv[4]), seconds)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
