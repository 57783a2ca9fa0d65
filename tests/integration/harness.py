"""Helpers for integration tests: real processes on loopback.

`Meshgate` runs the real CLI (`python -m meshgate run ...`) as a child process
and waits for /readyz; `Peer` runs a real program (socat, an HTTP server) and
waits until its port accepts. Every wait is bounded by a deadline and polls a
condition; nothing sleeps a fixed time and hopes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

WAIT = 15.0  # seconds any single condition may take before the test fails


_HANDED_OUT: set[int] = set()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on now, never one handed out before in this
    run: the kernel may offer a just-released port twice, and a test that
    asks for two ports (a listener and the admin server) must get two."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is not installed; .ci/run must install it")
        pytest.skip(f"{tool} is not installed")
    return path


class Peer:
    """A real program serving on a port (socat, ...), stopped at the end."""

    def __init__(self, argv: list[str], port: int, udp: bool = False) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if udp:
            time.sleep(0.05)  # nothing to connect to; socat binds at once
        else:
            wait_for(lambda: self.proc.poll() is None and port_open(port), f"{argv[0]} on {port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Meshgate:
    """`meshgate run` as a child process with its own admin port."""

    def __init__(self, args: list[str], tmp: Path, admin_port: int | None = None) -> None:
        self.admin_port = admin_port or free_port()
        self.log_path = tmp / f"meshgate-{self.admin_port}.log"
        self._log = self.log_path.open("wb")
        if "--ingress" in args and "--bind" not in args:
            # Ingress rules bind the mesh address by default (`auto`), which a
            # test machine has not got: these tests serve on loopback.
            args = [*args, "--bind", "127.0.0.1"]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meshgate",
                "run",
                *args,
                "--admin",
                f"127.0.0.1:{self.admin_port}",
                "--log-format",
                "json",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> Meshgate:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"meshgate exited {self.proc.returncode}:\n{self.log()}")
            try:
                return self.get("/readyz")[0] == 200
            except OSError:
                return False

        wait_for(ready, "meshgate /readyz")
        return self

    def get(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def json(self, path: str) -> Any:
        return json.loads(self.get(path)[1])

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.get("/metrics")[1].decode().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def events(self, event: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == event:
                    out.append(record)
        return out

    def wait_exit(self, timeout: float = WAIT) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def running(args: list[str], tmp: Path) -> Iterator[Meshgate]:
    mg = Meshgate(args, tmp)
    try:
        yield mg.wait_ready()
    finally:
        mg.stop()


def parse_dig(output: str) -> tuple[str, list[str]]:
    """(rcode, A answers) from `dig +noall +comments +answer` output."""
    status = output.split("status: ", 1)[1].split(",", 1)[0] if "status: " in output else "NONE"
    answers = [
        line.split()[-1]
        for line in output.splitlines()
        if line and not line.startswith(";") and "\tA\t" in line.replace(" ", "\t")
    ]
    return status, answers


def terminating_config(port: int, cert: object, key: object, backend: int) -> str:
    """YAML for one tls listener whose default route terminates TLS with
    `cert`/`key` and sends plaintext to 127.0.0.1:`backend`."""
    return f"""
listeners:
  - name: edge
    address: 127.0.0.1
    port: {port}
    protocol: tls
    routes:
      - default: true
        mode: terminate
        certificate: {{cert: {cert}, key: {key}}}
        backend: web
backends:
  - {{name: web, endpoints: ["127.0.0.1:{backend}"]}}
"""
