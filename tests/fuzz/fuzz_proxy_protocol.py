"""Fuzz the PROXY protocol v1/v2 header parser (meshgate.protocols.proxy_protocol).

Input: the first bytes of a connection, header and what follows. See
`contracts.check_proxy_protocol` for what is checked; run with `make fuzz`.
"""

from __future__ import annotations

from tests.fuzz.harness import run

if __name__ == "__main__":
    run("proxy_protocol")
