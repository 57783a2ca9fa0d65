"""Backends for the stress tests, each a process of its own (standard library,
plus uvloop when the interpreter has it).

    python tests/stress/servers.py echo PORT     # TCP echo, any number of connections
    python tests/stress/servers.py http PORT     # HTTP/1.1 keep-alive backend

`echo` echoes every byte back and closes when its peer does (a FIN is passed
on as a FIN once everything is echoed). It runs on `selectors` (epoll), so it
holds thousands of connections in one thread; a write that does not fit in
the socket buffer waits for it, nothing is dropped.

`http` reads each request head and its body (Content-Length only), then answers:
- `/sleep/SECONDS`: after that many seconds, a short body (a slow backend);
- `/bytes/N`: N bytes, written in 64 KiB pieces with backpressure (memory
  stays bounded however slowly the reader takes them);
- anything else: `ok\\n`.
Keep-alive unless the request says `Connection: close`; a body read waits as
long as the client takes (the proxy's timeouts are what is tested).

Both raise their descriptor limit to the hard limit and stop on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import resource
import selectors
import signal
import socket
import sys
from types import FrameType

CHUNK = 64 * 1024
MAX_HEAD = 64 * 1024


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


class _EchoConn:
    __slots__ = ("eof", "pending", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = bytearray()
        self.eof = False


def serve_echo(port: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)

    def close(conn: _EchoConn) -> None:
        sel.unregister(conn.sock)
        conn.sock.close()

    def interest(conn: _EchoConn) -> None:
        events = selectors.EVENT_WRITE if conn.pending else selectors.EVENT_READ
        sel.modify(conn.sock, events, conn)

    while True:
        for key, events in sel.select():
            if key.data is None:
                while True:
                    try:
                        sock, _ = listener.accept()
                    except OSError:  # nothing left to accept (or it was aborted)
                        break
                    sock.setblocking(False)
                    sel.register(sock, selectors.EVENT_READ, _EchoConn(sock))
                continue
            conn: _EchoConn = key.data
            try:
                if events & selectors.EVENT_READ and not conn.pending:
                    data = conn.sock.recv(CHUNK)
                    if not data:
                        conn.eof = True
                    conn.pending += data
                if conn.pending:
                    sent = conn.sock.send(conn.pending)
                    del conn.pending[:sent]
            except BlockingIOError:
                pass
            except OSError:
                close(conn)
                continue
            if conn.eof and not conn.pending:
                close(conn)
            else:
                interest(conn)


# -- http ----------------------------------------------------------------------------


async def _respond(writer: asyncio.StreamWriter, path: str, keep_alive: bool) -> None:
    connection = b"keep-alive" if keep_alive else b"close"
    if path.startswith("/bytes/"):
        size = int(path.removeprefix("/bytes/"))
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\nConnection: %s\r\n\r\n" % (size, connection)
        )
        piece = b"x" * CHUNK
        while size > 0:
            writer.write(piece[: min(size, CHUNK)])
            size -= CHUNK
            await writer.drain()
        return
    if path.startswith("/sleep/"):
        await asyncio.sleep(float(path.removeprefix("/sleep/")))
    body = b"ok\n"
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
        b"Connection: %s\r\n\r\n%s" % (len(body), connection, body)
    )
    await writer.drain()


async def _serve_http_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                return
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or "0")
            if length:
                await reader.readexactly(length)
            keep_alive = headers.get("connection", "").lower() != "close"
            await _respond(writer, parts[1], keep_alive)
            if not keep_alive:
                return
    except (OSError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _serve_http(port: int) -> None:
    server = await asyncio.start_server(
        _serve_http_conn, "127.0.0.1", port, backlog=4096, limit=MAX_HEAD, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def serve_http(port: int) -> None:
    try:
        import uvloop
    except ImportError:  # plain asyncio does the same, a little slower
        asyncio.run(_serve_http(port))
    else:
        uvloop.run(_serve_http(port))


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("echo", "http"):
        print(__doc__, file=sys.stderr)
        return 2
    _raise_nofile()
    signal.signal(signal.SIGTERM, _stop)
    port = int(argv[2])
    try:
        (serve_echo if argv[1] == "echo" else serve_http)(port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"port {port} is in use", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
