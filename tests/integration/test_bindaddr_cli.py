"""`meshgate bindaddr` in a network namespace of its own (needs root)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for ip netns")
    name = f"mg-cli-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        ip("netns", "del", name)


def bindaddr(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "meshgate", "bindaddr", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_finds_the_netmaker_interface_and_says_why(netns: str) -> None:
    ip("-n", netns, "tuntap", "add", "dev", "netmaker", "mode", "tun")
    ip("-n", netns, "addr", "add", "100.100.0.2/16", "dev", "netmaker")
    ip("-n", netns, "link", "set", "netmaker", "up")
    result = bindaddr(netns)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("bind: 100.100.0.2 on netmaker - interface netmaker")
    assert "netmaker: tun, point-to-point, up; 100.100.0.2 -> chosen" in result.stdout


def test_without_a_mesh_interface_reports_the_fallback_and_exits_1(netns: str) -> None:
    result = bindaddr(netns)
    assert result.returncode == 1
    assert result.stdout.startswith("fallback: 0.0.0.0")
    assert "WARNING" in result.stdout


def test_extra_interface_names_are_accepted(netns: str) -> None:
    ip("-n", netns, "link", "add", "mesh7", "type", "veth", "peer", "name", "mesh7p")
    ip("-n", netns, "addr", "add", "10.77.0.1/24", "dev", "mesh7")
    ip("-n", netns, "link", "set", "mesh7", "up")
    ip("-n", netns, "link", "set", "mesh7p", "up")
    result = bindaddr(netns, "--mesh-interface", "mesh7", "--wait", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("bind: 10.77.0.1 on mesh7")
