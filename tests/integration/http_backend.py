"""A real HTTP/1.1 backend for integration tests: it says which "service"
answered and what request it saw.

Runs `http.server.ThreadingHTTPServer` (keep-alive capable) in a thread on a
127.0.0.x address. Every answer is JSON: the service name, method, path as
received, headers, body length and SHA-256, and the number of the TCP
connection it arrived on (so a test can count keep-alive reuse). Special
paths:
- `/bytes/N` answers N bytes (streamed in 64 KiB writes, Content-Length);
- `/chunked/N` answers N bytes chunked;
- `/close` answers without a length and closes (body until close);
- `/status/CODE` answers that status;
- `/sleep/SECONDS` waits before answering.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1
            self.conn_id = self.server.connections

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _body(self) -> tuple[int, str]:
        digest = hashlib.sha256()
        total = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    piece = self.rfile.read(min(left, 1 << 16))
                    digest.update(piece)
                    total += len(piece)
                    left -= len(piece)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                piece = self.rfile.read(min(left, 1 << 16))
                if not piece:
                    break
                digest.update(piece)
                total += len(piece)
                left -= len(piece)
        return total, digest.hexdigest()

    def _handle(self) -> None:
        length, sha = self._body()
        seen = {
            "service": self.server.name,
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_length": length,
            "body_sha256": sha,
            "connection": self.conn_id,
        }
        with self.server.lock:
            self.server.requests.append(seen)
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[0] == "sleep" and len(parts) == 2:
            time.sleep(float(parts[1]))
        if parts[0] == "bytes" and len(parts) == 2:
            self._send_bytes(int(parts[1]), chunked=False)
            return
        if parts[0] == "chunked" and len(parts) == 2:
            self._send_bytes(int(parts[1]), chunked=True)
            return
        if parts[0] == "close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(json.dumps(seen).encode())
            self.close_connection = True
            return
        status = int(parts[1]) if parts[0] == "status" and len(parts) == 2 else 200
        body = json.dumps(seen).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_bytes(self, size: int, *, chunked: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        block = b"x" * (1 << 16)
        left = size
        while left:
            piece = block[: min(left, len(block))]
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
            left -= len(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], name: str) -> None:
        super().__init__(addr, _Handler)
        self.name = name
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[dict[str, Any]] = []


class HttpBackend:
    """`with HttpBackend("web", "127.0.0.2") as web:` serves until the block ends."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = _Server((host, port), name)
        self.host = host
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self.server.lock:
            return list(self.server.requests)

    @property
    def connections(self) -> int:
        return self.server.connections

    def __enter__(self) -> HttpBackend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
