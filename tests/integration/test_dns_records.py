"""`--dns-records FILE`: names of other proxies (the operator's ConfigMap,
mounted as a file) answered by the mesh DNS responder, re-read on change."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.harness import free_port, parse_dig, require, running, wait_for


def dig(port: int, name: str) -> tuple[str, list[str]]:
    require("dig")
    options = ["+time=2", "+tries=1", "+noall", "+comments", "+answer"]
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), name, "A", *options],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return parse_dig(out)


def test_records_file_is_served_and_followed(tmp_path: Path) -> None:
    records = tmp_path / "hosts"
    records.write_text("100.64.0.7 db.mesh.internal\n")
    dns, web = free_port(), free_port()
    args = [
        "--ingress", f"tcp:{web}:127.0.0.1:9", "--dns-name", "web.mesh.internal",
        "--dns-listen", f"127.0.0.1:{dns}", "--dns-records", str(records),
    ]  # fmt: skip
    with running(args, tmp_path):
        assert dig(dns, "web.mesh.internal") == ("NOERROR", ["127.0.0.1"])
        assert dig(dns, "db.mesh.internal") == ("NOERROR", ["100.64.0.7"])
        records.write_text("100.64.0.8 db.mesh.internal\nnot-an-ip cache.mesh.internal\n")
        wait_for(lambda: dig(dns, "db.mesh.internal") == ("NOERROR", ["100.64.0.8"]), "new record")
        assert dig(dns, "cache.mesh.internal")[0] == "NXDOMAIN"  # its line was bad
        assert dig(dns, "web.mesh.internal") == ("NOERROR", ["127.0.0.1"])
