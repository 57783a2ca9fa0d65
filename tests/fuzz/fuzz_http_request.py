"""Fuzz the HTTP/1.1 request parser (meshgate.protocols.http1.RequestParser).

Input: 4 control bytes (flags: small limits, EOF, byte-at-a-time; three split points),
then the bytes a client sends, pipelined requests and chunked bodies included. See
`contracts.check_http_request` for what is checked; run with `make fuzz`.
"""

from __future__ import annotations

from tests.fuzz.harness import run

if __name__ == "__main__":
    run("http_request")
