"""A backend that accepts connections and holds them: the memory workload's.

    python bench/holder.py PORT

Listens on 127.0.0.1:PORT, accepts every connection, reads and discards
whatever arrives, and closes a connection when its peer does. It never
answers, so a proxy in front of it holds idle connections both ways. Runs
until SIGTERM. Standard library only (selectors: epoll on Linux).
"""

from __future__ import annotations

import resource
import selectors
import signal
import socket
import sys
from types import FrameType


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(port: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                while True:
                    try:
                        conn, _ = listener.accept()
                    except OSError:  # none left (or one aborted meanwhile)
                        break
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    serve(int(sys.argv[1]))
