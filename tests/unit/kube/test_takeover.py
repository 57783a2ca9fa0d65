"""default/kubernetes endpoint takeover: slices rewritten to meshgate and
put back after the API server's reconciler rewrites them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshgate import aio
from meshgate.kube.client import KubeClient
from meshgate.kube.takeover import EndpointTakeover, desired_slice, parse_targets
from tests.kube.fake_apiserver import FakeApiServer


def apiserver_slice(name: str, family: str, address: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes"},
        },
        "addressType": family,
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    }


def test_targets_are_checked() -> None:
    assert parse_targets(["10.0.0.5:7443", "[fd00::5]:7443"]) == [
        ("10.0.0.5", 7443),
        ("fd00::5", 7443),
    ]
    for bad in ("10.0.0.5", "host:443", "10.0.0.5:0", "[fd00::5]"):
        with pytest.raises(ValueError, match="not IP:PORT"):
            parse_targets([bad])


def test_each_family_gets_its_own_targets_and_a_match_is_left_alone() -> None:
    targets = [("10.0.0.5", 7443), ("fd00::5", 7443)]
    v4 = desired_slice(apiserver_slice("kubernetes", "IPv4", "172.18.0.2"), targets)
    assert v4 is not None
    assert v4["endpoints"] == [{"addresses": ["10.0.0.5"], "conditions": {"ready": True}}]
    assert v4["ports"] == [{"name": "https", "port": 7443, "protocol": "TCP"}]
    assert desired_slice(v4, targets) is None
    v6 = desired_slice(apiserver_slice("kubernetes-v6", "IPv6", "fd00::2"), targets)
    assert v6 is not None
    assert v6["endpoints"][0]["addresses"] == ["fd00::5"]
    assert desired_slice(apiserver_slice("k", "IPv6", "fd00::2"), [("10.0.0.5", 1)]) is None


async def test_slice_is_taken_over_and_kept(
    fake_api: FakeApiServer, fake_client: KubeClient
) -> None:
    fake_api.put(apiserver_slice("kubernetes", "IPv4", "172.18.0.2"))
    leading = True
    keeper = EndpointTakeover(fake_client, [("10.0.0.5", 7443)], lambda: leading)
    task = aio.spawn(keeper.run(recheck=0.2), name="takeover")

    async def points_at(address: str) -> None:
        for _ in range(100):
            obj = fake_api.get_object("endpointslices", "default", "kubernetes")
            if obj and obj["endpoints"][0]["addresses"] == [address]:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"default/kubernetes does not point at {address}")

    try:
        await points_at("10.0.0.5")
        # The API server's endpoint reconciler writes its own address back ...
        fake_api.put(apiserver_slice("kubernetes", "IPv4", "172.18.0.2"))
        await points_at("10.0.0.5")  # ... and it is taken over again.
        leading = False  # a follower never writes
        fake_api.put(apiserver_slice("kubernetes", "IPv4", "172.18.0.2"))
        await asyncio.sleep(0.5)
        await points_at("172.18.0.2")
        assert keeper.rewrites == 2
    finally:
        await aio.cancel_and_wait([task])
