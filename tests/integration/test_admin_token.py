"""The admin token end to end: the supervisor reads its workers with it, and
`meshgate status` must present it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.integration.harness import Meshgate, free_port

TOKEN = "an-admin-token-for-tests-0123"


def status(admin_port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "meshgate", "status", "--admin", f"127.0.0.1:{admin_port}"]
    return subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=30, check=False)


def test_workers_and_status_behind_a_token(
    tmp_path: Path, socat_server: Callable[[str], int]
) -> None:
    token = tmp_path / "admin-token"
    token.write_text(TOKEN + "\n")
    echo = socat_server("PIPE")
    args = ["--ingress", f"tcp:{free_port()}:127.0.0.1:{echo}", "--admin-token-file", str(token)]
    # Ready only once the supervisor has read both workers, with the token.
    mg = Meshgate([*args, "--workers", "2"], tmp_path).wait_ready()
    try:
        assert mg.get("/status")[0] == 401
        shown = status(mg.admin_port, "--json", "--admin-token-file", str(token))
        assert shown.returncode == 0, shown.stderr
        assert [w["ready"] for w in json.loads(shown.stdout)["workers"]] == [True, True]
        refused = status(mg.admin_port)
        assert refused.returncode == 1
        assert "401" in refused.stderr
        assert TOKEN not in mg.log()  # never logged
    finally:
        mg.stop()


def test_a_weak_token_is_refused_before_anything_starts(tmp_path: Path) -> None:
    token = tmp_path / "admin-token"
    token.write_text("short")
    mg = Meshgate(
        ["--ingress", f"tcp:{free_port()}:127.0.0.1:9", "--admin-token-file", str(token)], tmp_path
    )
    try:
        assert mg.wait_exit() == 2
        assert "at least 16" in mg.log()
    finally:
        mg.stop()
