"""Fuzz the mesh DNS responder's sans-I/O half (meshgate.mesh.dns.respond, read_frame).

Input: one DNS message as a UDP datagram (also answered as over TCP, and read as a TCP
frame). See `contracts.check_dns` for what is checked; run with `make fuzz`.
"""

from __future__ import annotations

from tests.fuzz.harness import run

if __name__ == "__main__":
    run("dns", ["dnslib"])
