"""Fuzz the HTTP/1.1 response parser (meshgate.protocols.http1.ResponseParser).

Input: 4 control bytes as for requests, 1 byte choosing how many responses are expected
and to which methods (GET, HEAD, POST), then the bytes an upstream sends. See
`contracts.check_http_response` for what is checked; run with `make fuzz`.
"""

from __future__ import annotations

from tests.fuzz.harness import run

if __name__ == "__main__":
    run("http_response")
