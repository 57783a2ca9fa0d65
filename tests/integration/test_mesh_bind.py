"""`--bind auto` inside a network namespace of its own (needs root): wait for
the mesh interface, bind its address, follow an address change, fall back
visibly when there is no mesh. The mesh interface is a tun device, which is
what wireguard-go creates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import parse_dig, require, wait_for


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv], stdout=out, stderr=subprocess.STDOUT
            )

    def get(self, path: str) -> tuple[int, dict[str, object]]:
        result = self.run("curl", "-s", "-w", "\n%{http_code}", f"http://127.0.0.1:9901{path}")
        body, _, code = result.stdout.rpartition("\n")
        try:
            return int(code or 0), json.loads(body) if body else {}
        except ValueError:
            return int(code or 0), {}

    def ask(self, address: str, port: int) -> str:
        return self.run("socat", "-T2", "-", f"TCP:{address}:{port}").stdout


@pytest.fixture
def ns() -> Iterator[Namespace]:
    if os.geteuid() != 0:
        pytest.skip("needs root for ip netns")
    name = f"mg-mesh-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield Namespace(name)
    finally:
        ip("netns", "del", name)


@pytest.fixture
def backend(ns: Namespace, tmp_path: Path) -> Iterator[int]:
    """A real server inside the namespace: socat answering 'cluster'."""
    proc = ns.popen(
        ["socat", "TCP-LISTEN:7000,bind=127.0.0.1,reuseaddr,fork", "SYSTEM:'echo cluster'"],
        tmp_path / "socat.log",
    )
    try:
        wait_for(lambda: ns.ask("127.0.0.1", 7000) == "cluster\n", "backend up")
        yield 7000
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def meshgate() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
        proc.wait(10)


def start(
    ns: Namespace, tmp_path: Path, extra: list[str], bind: str = "auto"
) -> subprocess.Popen[bytes]:
    return ns.popen(
        [
            sys.executable,
            "-m",
            "meshgate",
            "run",
            "--ingress",
            "tcp:8080:127.0.0.1:7000",
            "--bind",
            bind,
            "--admin",
            "127.0.0.1:9901",
            "--log-format",
            "json",
            *extra,
        ],
        tmp_path / "meshgate.log",
    )


def dig(ns: Namespace, server: str, name: str) -> tuple[str, list[str]]:
    """(rcode, A answers) from a real `dig` inside the namespace."""
    require("dig")
    out = ns.run(
        "dig", f"@{server}", name, "A", "+time=2", "+tries=1", "+noall", "+comments", "+answer"
    ).stdout
    return parse_dig(out)


def add_mesh(ns: Namespace, address: str) -> None:
    ip("-n", ns.name, "tuntap", "add", "dev", "netmaker", "mode", "tun")
    ip("-n", ns.name, "addr", "add", f"{address}/16", "dev", "netmaker")
    ip("-n", ns.name, "link", "set", "netmaker", "up")


def listening_on(ns: Namespace) -> list[str]:
    _, config = ns.get("/config")
    listeners = config.get("listeners", [])
    assert isinstance(listeners, list)
    return [str(item["address"]) for item in listeners]


def test_waits_for_the_mesh_then_follows_an_address_change(
    ns: Namespace, backend: int, meshgate: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    proc = start(ns, tmp_path, ["--bind-wait", "30", "--dns-name", "my-app.mesh.internal"])
    meshgate.append(proc)
    # Nothing is served until the mesh interface exists: not even the admin port.
    assert ns.get("/readyz")[0] == 0
    add_mesh(ns, "100.100.0.2")
    wait_for(lambda: ns.get("/readyz")[0] == 200, "ready on the mesh", timeout=20)
    assert listening_on(ns) == ["100.100.0.2"]
    assert ns.ask("100.100.0.2", 8080) == "cluster\n"
    status = ns.get("/status")[1]
    mesh = status["mesh"]
    assert isinstance(mesh, dict)
    assert mesh["interface"] == "netmaker"
    assert mesh["fallback"] is False
    # The mesh DNS name answers with the mesh address, on the mesh address.
    assert dig(ns, "100.100.0.2", "my-app.mesh.internal") == ("NOERROR", ["100.100.0.2"])
    assert dig(ns, "100.100.0.2", "other.mesh.internal")[0] == "NXDOMAIN"
    assert dig(ns, "100.100.0.2", "example.com")[0] == "REFUSED"

    # Replace the address (delete, then add: as a mesh agent does).
    ip("-n", ns.name, "addr", "del", "100.100.0.2/16", "dev", "netmaker")
    ip("-n", ns.name, "addr", "add", "100.100.0.3/16", "dev", "netmaker")
    wait_for(lambda: listening_on(ns) == ["100.100.0.3"], "listener moved", timeout=20)
    assert ns.ask("100.100.0.3", 8080) == "cluster\n"
    assert ns.get("/readyz")[0] == 200
    # ...and the DNS answer followed, served from the new address.
    wait_for(
        lambda: dig(ns, "100.100.0.3", "my-app.mesh.internal") == ("NOERROR", ["100.100.0.3"]),
        "DNS follows the address",
    )
    assert proc.poll() is None


def test_no_mesh_interface_falls_back_and_is_not_ready(
    ns: Namespace, backend: int, meshgate: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    meshgate.append(start(ns, tmp_path, ["--bind-wait", "0.5"]))
    wait_for(lambda: ns.get("/readyz")[0] == 503, "fallback reported", timeout=20)
    code, body = ns.get("/readyz")
    assert code == 503
    assert "fallback" in str(body["reason"])
    # Still serving, on the last-resort address, so nothing is lost.
    assert listening_on(ns) == ["0.0.0.0"]
    assert ns.ask("127.0.0.1", 8080) == "cluster\n"
    # When a mesh interface appears later, the listener moves onto it.
    add_mesh(ns, "100.100.0.9")
    wait_for(lambda: ns.get("/readyz")[0] == 200, "moved onto the mesh", timeout=20)
    assert listening_on(ns) == ["100.100.0.9"]


def test_bind_interface_takes_that_interface_only_and_follows_it(
    ns: Namespace, backend: int, meshgate: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    add_mesh(ns, "100.100.0.2")  # a preferred name, which --bind IFACE must ignore
    ip("-n", ns.name, "link", "add", "lan7", "type", "veth", "peer", "name", "lan7p")
    ip("-n", ns.name, "link", "set", "lan7p", "up")
    ip("-n", ns.name, "addr", "add", "10.7.0.1/24", "dev", "lan7")
    ip("-n", ns.name, "link", "set", "lan7", "up")
    meshgate.append(start(ns, tmp_path, ["--bind-wait", "10"], bind="lan7"))
    wait_for(lambda: ns.get("/readyz")[0] == 200, "ready on lan7", timeout=20)
    assert listening_on(ns) == ["10.7.0.1"]
    assert ns.ask("10.7.0.1", 8080) == "cluster\n"
    ip("-n", ns.name, "addr", "add", "10.7.0.9/24", "dev", "lan7")
    wait_for(lambda: sorted(listening_on(ns)) == ["10.7.0.1", "10.7.0.9"], "second address bound")


def test_sigterm_while_waiting_for_the_mesh_exits_0(
    ns: Namespace, meshgate: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    proc = start(ns, tmp_path, ["--bind-wait", "60"])
    log = tmp_path / "meshgate.log"
    wait_for(lambda: "waiting for the mesh interface" in log.read_text(), "waiting logged")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert "stopped before the mesh address was found" in log.read_text()
