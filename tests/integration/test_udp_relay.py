"""UDP forwarding through `meshgate run`, with socat on both ends."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.integration.harness import Peer, free_port, require, running

UDP = 2  # socket.SOCK_DGRAM


def test_udp_round_trip_through_socat(peers: Callable[..., Peer], tmp_path: Path) -> None:
    socat = require("socat")
    upstream = free_port(UDP)
    peers([socat, f"UDP-RECVFROM:{upstream},bind=127.0.0.1,fork", "EXEC:cat"], upstream, udp=True)
    port = free_port(UDP)
    with running(
        ["--egress", f"udp:{port}:127.0.0.1:{upstream}", "--cluster-bind", "127.0.0.1"], tmp_path
    ) as mg:
        for word in (b"ping\n", b"pong\n"):
            out = subprocess.run(
                [socat, "-T2", "-", f"UDP:127.0.0.1:{port}"],
                input=word,
                capture_output=True,
                timeout=10,
                check=True,
            )
            assert out.stdout == word
        assert mg.metric("meshgate_udp_flows_total") == 2
        assert mg.metric("meshgate_bytes_in_total", listener=f"egress-udp-{port}") == 10
