"""bench/suite.py: the configs it gives meshgate stay valid, and its verdicts add up.

`make bench` runs for about ten minutes and not in CI, so a change to
meshgate's config schema that breaks the benchmark's configs, or a slip in
how ratios become TARGETS verdicts, would go unseen until someone runs it.
These tests start no server: `meshgate check` validates each meshgate
config, and the summaries are fed samples made up here.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
MESHGATE = Path(sys.executable).with_name("meshgate")


@pytest.fixture(scope="module")
def suite() -> Iterator[ModuleType]:
    # The benchmark's scripts import each other as top-level modules.
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("suite")
    finally:
        sys.path.remove(str(BENCH))
        for name in ("suite", "harness"):
            sys.modules.pop(name, None)


def _ctx(suite: ModuleType, tmp: Path) -> Any:
    harness = importlib.import_module("harness")
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs openssl for the benchmark's certificate")
    pki = harness.make_pki(openssl, tmp, "ec", suite.TLS_NAME)
    backends = {"iperf3": 1001, "http": 1002, "https": 1003, "echo": 1004, "hold": 1005}
    tools = {"meshgate": str(MESHGATE), "haproxy": "haproxy", "nginx": "nginx", "socat": "socat"}
    return suite.Ctx(tools, tmp, backends, pki, 20000)


def test_every_meshgate_contender_gets_a_config_meshgate_accepts(
    suite: ModuleType, tmp_path: Path
) -> None:
    if not MESHGATE.exists():
        pytest.skip("meshgate is not installed next to this Python")
    ctx = _ctx(suite, tmp_path)
    contenders = [c for c in suite.with_worker_twins(2) if c.name.startswith("meshgate")]
    assert {c.base for c in contenders} == {
        "meshgate-tcp",
        "meshgate-http",
        "meshgate-https",
        "meshgate-tls-term",
        "meshgate-passthrough",
    }
    for c in contenders:
        targets = sorted({w.target for w in suite.WORKLOADS if w.group == c.group})
        launch = suite.plan_launch(ctx, c, targets, "test")
        [(argv, ports)] = launch.procs
        assert sorted(ports) == sorted(launch.ports.values())
        # `check` takes `run`'s sources; drop what only `run` knows.
        sources = [a for a in argv[2:] if a not in ("--workers", "2")]
        for flag in ("--admin", "--log-level", "--drain-timeout"):
            index = sources.index(flag)
            del sources[index : index + 2]
        done = subprocess.run(
            [str(MESHGATE), "check", *sources],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{c.name}: {done.stdout}{done.stderr}"
        for port in launch.ports.values():
            assert f":{port}" in done.stdout, f"{c.name}: listener {port} missing"


def _sample(suite: ModuleType, workload: str, contender: str, value: float, **detail: Any) -> Any:
    return suite.Sample(workload, contender, 0, value, [], detail)


def test_ratios_and_verdicts(suite: ModuleType) -> None:
    l4 = [c for c in suite.CONTENDERS if c.group == "l4"]
    by_name = {w.name: w for w in suite.WORKLOADS}
    samples = [
        _sample(suite, "bulk1", "direct", 40e9),
        _sample(suite, "bulk1", "haproxy-splice", 10e9),
        _sample(suite, "bulk1", "meshgate-tcp", 12e9),
        _sample(suite, "pingpong", "direct", 20.0, p99_us=40.0),
        _sample(suite, "pingpong", "haproxy-tcp", 40.0, p99_us=80.0),
        _sample(suite, "pingpong", "meshgate-tcp", 50.0, p99_us=86.0),
    ]
    rows = [
        row
        for name in ("bulk1", "pingpong")
        for row in suite.summarize(by_name[name], l4, samples)
        if row.runs
    ]
    got = {(r.workload, r.contender): r for r in rows}
    assert got["bulk1", "meshgate-tcp"].median == pytest.approx(12.0)  # Gbit/s
    assert got["bulk1", "meshgate-tcp"].vs_direct == pytest.approx(0.3)
    assert got["bulk1", "haproxy-splice"].mg_vs == pytest.approx(1.2)
    # Ping-pong compares added latency: (50-20)/(40-20) and (86-40)/(80-40).
    assert got["pingpong", "haproxy-tcp"].mg_vs == pytest.approx(1.5)
    assert got["pingpong", "haproxy-tcp"].mg_p99_vs == pytest.approx(1.15)
    verdicts = {v.target: v for v in suite.judge(rows, (1000,))}
    assert verdicts["L4 bulk, 1 stream"].met is True
    assert verdicts["L4 ping-pong added p50"].met is False  # 1.5x, goal <= 1.0x
    assert verdicts["L4 ping-pong added p99"].met is True  # 1.15x, goal <= 1.2x
    assert "L4 new connections/s" not in verdicts  # not measured
