"""meshgate over a real WireGuard tunnel (wireguard-go + wg in network namespaces).

The nexd scenarios, each checked the way a user would: `curl` and `dig` from a
mesh device, `curl` from a cluster, `iperf3` through the tunnel. See netlab.py
for the topology (device, gw with the `netmaker` interface, cluster, and gw2 /
cluster2 for linking).
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import netlab
from tests.e2e.netlab import Lab, Meshgate, Namespace
from tests.integration.harness import parse_dig, require

pytestmark = pytest.mark.needs_root

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "wireguard-iperf3.json"
BACKEND_IP = netlab.GW_CLUSTER[1]  # 10.251.0.2, the cluster's side of the gw link
CLUSTER_SIDE = netlab.GW_CLUSTER[0]  # 10.251.0.1, gw as the cluster sees it


class Run:
    """What a finished meshgate left behind: its exit code."""

    returncode: int | None = None


@contextlib.contextmanager
def meshgate(lab: Lab, ns: Namespace, args: list[str]) -> Iterator[tuple[Meshgate, Run]]:
    """meshgate running in `ns` and ready; SIGTERM on exit, exit code in Run."""
    mg = lab.meshgate(ns, args)
    run = Run()
    try:
        mg.wait_ready()
        yield mg, run
    finally:
        run.returncode = mg.stop()


def curl_bodies(ns: Namespace, url: str, times: int) -> list[str]:
    bodies = []
    for _ in range(times):
        code, body = ns.curl(url)
        assert code == 200, f"GET {url} from {ns.name}: {code} {body!r}"
        bodies.append(body.strip())
    return bodies


def dig(ns: Namespace, server: str, name: str) -> tuple[str, list[str]]:
    """(rcode, A answers) from a real `dig` inside the namespace."""
    out = ns.run(
        "dig", f"@{server}", name, "A", "+time=2", "+tries=2", "+noall", "+comments", "+answer"
    ).stdout
    return parse_dig(out)


def test_ingress_over_wireguard_round_robin_and_mesh_dns(net: Lab) -> None:
    """nexd demo 1 and scenario 7: a mesh device reaches a cluster Service at the
    gateway's mesh IP (found by --bind auto on `netmaker`), the two endpoints take
    turns, and the mesh DNS name resolves to the mesh IP."""
    require("curl")
    require("dig")
    net.http_server(net.cluster, BACKEND_IP, 8001, "backend A\n")
    net.http_server(net.cluster, BACKEND_IP, 8002, "backend B\n")
    args = [
        "--bind",
        "auto",
        "--bind-wait",
        "10",
        "--ingress",
        f"tcp:80:{BACKEND_IP}:8001",
        "--ingress",
        f"tcp:80:{BACKEND_IP}:8002",
        "--dns-name",
        "my-app.mesh.internal",
    ]
    with meshgate(net, net.gw, args) as (mg, run):
        status = mg.get("/status")[1]
        assert status["mesh"]["interface"] == "netmaker", status["mesh"]
        assert status["mesh"]["fallback"] is False
        assert [item["address"] for item in mg.get("/config")[1]["listeners"]] == [netlab.GW_IP]

        bodies = curl_bodies(net.device, f"http://{netlab.GW_IP}/", 6)
        assert set(bodies) == {"backend A", "backend B"}, bodies
        assert all(a != b for a, b in itertools.pairwise(bodies)), bodies

        assert dig(net.device, netlab.GW_IP, "my-app.mesh.internal") == (
            "NOERROR",
            [netlab.GW_IP],
        )
        assert dig(net.device, netlab.GW_IP, "other.mesh.internal")[0] == "NXDOMAIN"
        # The cluster cannot reach the mesh listener: it is bound on the mesh IP only.
        assert net.cluster.curl(f"http://{CLUSTER_SIDE}/", timeout=2)[0] == 0
    assert run.returncode == 0, mg.process.describe()


def test_egress_from_cluster_to_mesh_device(net: Lab) -> None:
    """nexd demo 2: a cluster workload calls meshgate's egress listener and reaches
    an HTTP server on the mesh device, across the tunnel."""
    require("curl")
    net.http_server(net.device, netlab.DEVICE_IP, 8000, "hello from the device\n")
    args = ["--egress", f"tcp:8081:{netlab.DEVICE_IP}:8000", "--cluster-bind", CLUSTER_SIDE]
    with meshgate(net, net.gw, args) as (mg, run):
        code, body = net.cluster.curl(f"http://{CLUSTER_SIDE}:8081/")
        assert (code, body) == (200, "hello from the device\n")
        # Without meshgate the cluster has no route to the mesh at all.
        assert net.cluster.curl(f"http://{netlab.DEVICE_IP}:8000/", timeout=2)[0] == 0
    assert run.returncode == 0, mg.process.describe()


def test_linking_two_clusters_through_egress_and_ingress(net: Lab) -> None:
    """nexd demo 3: a client in cluster2 reaches a service in cluster through
    egress on gw2 -> the mesh (100.100.0.2:80) -> ingress on gw -> the backend."""
    require("curl")
    assert net.gw2 is not None
    assert net.cluster2 is not None
    gw2_cluster_side = netlab.GW2_CLUSTER2[0]
    net.http_server(net.cluster, BACKEND_IP, 8003, "service in cluster one\n")
    ingress = ["--bind", "auto", "--bind-wait", "10", "--ingress", f"tcp:80:{BACKEND_IP}:8003"]
    egress = ["--egress", f"tcp:8082:{netlab.GW_IP}:80", "--cluster-bind", gw2_cluster_side]
    with (
        meshgate(net, net.gw, ingress) as (mg1, run1),
        meshgate(net, net.gw2, egress) as (mg2, run2),
    ):
        for _ in range(3):
            code, body = net.cluster2.curl(f"http://{gw2_cluster_side}:8082/")
            assert (code, body) == (200, "service in cluster one\n")
        # cluster2 has no route to cluster: only the link carries it.
        assert net.cluster2.curl(f"http://{BACKEND_IP}:8003/", timeout=2)[0] == 0
    assert run1.returncode == 0, mg1.process.describe()
    assert run2.returncode == 0, mg2.process.describe()


def iperf3(ns: Namespace, server: str, port: int, seconds: int = 3) -> dict[str, Any]:
    """Run an iperf3 client; the figures of a completed transfer."""
    result = ns.run(
        "iperf3", "-c", server, "-p", str(port), "-t", str(seconds), "-J", timeout=seconds + 20
    )
    try:
        report = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"iperf3 to {server}:{port} exited {result.returncode}: {result.stderr}")
    assert result.returncode == 0, report.get("error", result.stderr)
    assert "error" not in report, report["error"]
    sent, received = report["end"]["sum_sent"], report["end"]["sum_received"]
    return {
        "target": f"{server}:{port}",
        "seconds": round(received["seconds"], 3),
        "bytes": received["bytes"],
        "sender_bits_per_second": sent["bits_per_second"],
        "receiver_bits_per_second": received["bits_per_second"],
        "retransmits": sent.get("retransmits"),
    }


def wireguard_go_version() -> str:
    out = subprocess.run(
        ["wireguard-go", "--version"], capture_output=True, text=True, check=False
    ).stdout
    return out.splitlines()[0] if out else "unknown"


def test_iperf3_tunnel_and_through_meshgate(net: Lab) -> None:
    """Throughput of the tunnel itself and of meshgate's ingress through it, in
    the same run; recorded in bench/results/wireguard-iperf3.json (no speed
    assertion: only that both transfers completed)."""
    require("iperf3")
    tunnel_port, backend_port, listen_port = 5301, 5201, 5202
    net.serve(
        net.gw,
        ["iperf3", "-s", "-B", netlab.GW_IP, "-p", str(tunnel_port)],
        "iperf3-gw",
        tunnel_port,
    )
    net.serve(
        net.cluster,
        ["iperf3", "-s", "-B", BACKEND_IP, "-p", str(backend_port)],
        "iperf3-cluster",
        backend_port,
    )
    tunnel = iperf3(net.device, netlab.GW_IP, tunnel_port)
    args = [
        "--bind",
        "auto",
        "--bind-wait",
        "10",
        "--ingress",
        f"tcp:{listen_port}:{BACKEND_IP}:{backend_port}",
    ]
    with meshgate(net, net.gw, args) as (mg, run):
        proxied = iperf3(net.device, netlab.GW_IP, listen_port)
    assert run.returncode == 0, mg.process.describe()

    results = {
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "what": "iperf3 -t 3 from a mesh device to the gateway over wireguard-go; "
        "tunnel = iperf3 server on the gateway's mesh IP, "
        "through_meshgate = meshgate --bind auto --ingress on the mesh IP "
        "to an iperf3 server in the cluster namespace",
        "tunnel": tunnel,
        "through_meshgate": proxied,
        "ratio": round(proxied["receiver_bits_per_second"] / tunnel["receiver_bits_per_second"], 3),
        "setup": {
            "wireguard": wireguard_go_version(),
            "mtu": netlab.MTU,
            "kernel": platform.release(),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\niperf3 over WireGuard: tunnel {tunnel['receiver_bits_per_second'] / 1e6:.0f} Mbit/s, "
        f"through meshgate {proxied['receiver_bits_per_second'] / 1e6:.0f} Mbit/s "
        f"(written to {RESULTS})"
    )
    for figures in (tunnel, proxied):
        assert figures["bytes"] > 0
        assert figures["sender_bits_per_second"] > 0
        assert figures["receiver_bits_per_second"] > 0
