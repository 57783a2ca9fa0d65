"""Fuzz the TLS ClientHello peek (meshgate.protocols.tls_hello.parse_client_hello).

Input: the bytes a client sends first (seeds: real hellos from openssl and Python ssl).
See `contracts.check_tls_hello` for what is checked; run with `make fuzz`.
"""

from __future__ import annotations

from tests.fuzz.harness import run

if __name__ == "__main__":
    run("tls_hello")
