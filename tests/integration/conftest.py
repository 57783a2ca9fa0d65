"""Fixtures for integration tests: real peers on loopback, cleaned up after."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.integration.harness import Peer, free_port, require


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def start(argv: list[str], port: int, udp: bool = False) -> Peer:
        require(argv[0])
        peer = Peer(argv, port, udp=udp)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


@pytest.fixture
def socat_server(peers: Callable[..., Peer]) -> Callable[[str], int]:
    """Start `socat TCP-LISTEN:<free port>,fork <address>`; return the port."""

    def start(address: str) -> int:
        port = free_port()
        peers(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", address], port)
        return port

    return start
