"""Annotated Services served by one gateway (`run --watch --watch-services`)."""

from __future__ import annotations

from typing import Any

from meshgate.kube.service_routes import services_config


def svc(name: str, ports: list[tuple[str, int]], stamp: str, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": "apps",
            "creationTimestamp": stamp,
            "annotations": {"netmaker.io/ingress": "enabled", **annotations},
        },
        "spec": {"ports": [{"port": p, "protocol": proto} for proto, p in ports]},
    }


def test_one_listener_per_port_forwarding_to_the_service() -> None:
    listeners, backends, problems = services_config(
        [svc("dns", [("UDP", 5353), ("TCP", 5353)], "2026-01-01T00:00:00Z",
             **{"netmaker.io/ingress-dns-name": "dns.mesh.internal"})],
        "auto",
    )  # fmt: skip
    assert problems == []
    assert [(x.protocol, x.address, x.port, x.dns_name) for x in listeners] == [
        ("udp", "auto", 5353, "dns.mesh.internal"),
        ("tcp", "auto", 5353, "dns.mesh.internal"),
    ]
    assert [str(b.endpoints[0]) for b in backends] == ["dns.apps.svc.cluster.local:5353"] * 2


def test_the_older_service_keeps_a_port_and_the_other_is_reported() -> None:
    older = svc("a", [("TCP", 8080)], "2026-01-01T00:00:00Z")
    newer = svc("b", [("TCP", 8080), ("TCP", 9090)], "2026-02-01T00:00:00Z")
    listeners, _, problems = services_config(
        [newer, older], "127.0.0.1", [("127.0.0.1", 80, False)]
    )
    assert [(x.name, x.port) for x in listeners] == [
        ("svc.apps.a.tcp.8080", 8080),
        ("svc.apps.b.tcp.9090", 9090),
    ]
    [problem] = problems
    assert problem.object == "Service apps/b"
    assert "TCP port 8080 is served for Service apps/a already" in problem.reason
    # A port another listener (the Ingress HTTP listener) holds is reported too.
    _, _, clash = services_config(
        [svc("web", [("TCP", 80)], "x")], "127.0.0.1", [("127.0.0.1", 80, False)]
    )
    assert "served for another listener" in clash[0].reason


def test_rejected_and_unrelated_services() -> None:
    bad = svc("bad", [("TCP", 80)], "x", **{"netmaker.io/ingress-bind-ip": "300.1.1.1"})
    plain = svc("plain", [("TCP", 80)], "x")
    plain["metadata"]["annotations"] = {}
    listeners, _, problems = services_config([bad, plain], "auto")
    assert listeners == []
    [problem] = problems
    assert problem.object == "Service apps/bad"
    assert "ingress-bind-ip" in problem.field
