"""A small WireGuard lab in network namespaces, for the end-to-end tests.

Topology (one lab per test module; every name carries a random id)::

    cluster2 --veth-- gw2 ==wg== gw(netmaker) ==wg== device
                                 |
                               veth
                                 |
                              cluster

- `device`  is a mesh device: WireGuard interface `wgdev<id>`, 100.100.0.1/16;
- `gw`      is where meshgate runs: WireGuard interface `netmaker`, 100.100.0.2/16;
- `cluster` hosts the backends, reachable from `gw` only (10.251.0.0/30);
- `gw2`     (linking) a second gateway, WireGuard interface `wggw2<id>`, 100.100.0.3/16;
- `cluster2` (linking) the second cluster, reachable from `gw2` only (10.253.0.0/30).

WireGuard is wireguard-go (userspace, a tun device) configured with `wg`; its
UDP packets travel over veth pairs (10.250.0.0/30 device<->gw, 10.252.0.0/30
gw2<->gw). wireguard-go's control socket is /var/run/wireguard/<ifname>.sock,
shared by every namespace, so only one lab at a time may own the name
`netmaker`: `open_lab` holds a file lock for the lab's whole life.

Every wait polls a condition against a deadline; teardown (in `finally`) stops
every process the lab started, deletes its namespaces (which removes their
interfaces) and removes the control sockets of its interfaces.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MESH_PREFIX = 16
MESH = f"100.100.0.0/{MESH_PREFIX}"
MTU = 1420
WG_PORT = 51820
SOCKET_DIR = Path("/var/run/wireguard")
GW_IFACE = "netmaker"
LOCK_PATH = Path("/run/lock") / "meshgate-e2e-wireguard.lock"
LOCK_WAIT = 90.0  # another lab (a parallel run) may hold `netmaker` this long
WAIT = 20.0  # any single lab condition (socket, handshake, port) may take this long

DEVICE_IP = "100.100.0.1"
GW_IP = "100.100.0.2"
GW2_IP = "100.100.0.3"
# underlay and cluster links: (left address, right address), each a /30
DEVICE_GW = ("10.250.0.1", "10.250.0.2")
GW_CLUSTER = ("10.251.0.1", "10.251.0.2")
GW2_GW = ("10.252.0.1", "10.252.0.2")
GW2_CLUSTER2 = ("10.253.0.1", "10.253.0.2")


class LabError(RuntimeError):
    """The lab could not be built (a tool failed, a wait ran out)."""


def missing_requirements() -> str | None:
    """Why this machine cannot build the lab, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (ip netns, wireguard-go)"
    for tool in ("ip", "wireguard-go", "wg"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: wireguard-go, wireguard-tools, iproute2)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing (wireguard-go needs a tun device)"
    return None


def poll(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Return once `condition()` holds; raise LabError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _run(argv: list[str], input_text: str | None = None, timeout: float = 10) -> str:
    result = subprocess.run(
        argv, input=input_text, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise LabError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def ip(*args: str) -> None:
    _run(["ip", *args])


class Process:
    """A process the lab started (inside a namespace), with its log file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, wait up to `timeout`, then SIGKILL; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid}, exit {self.returncode}):\n{self.log()}"


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, *argv: str, timeout: float = 10, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace; never raises on a non-zero exit."""
        try:
            return subprocess.run(
                self.argv(*argv),
                input=input_text,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
            return subprocess.CompletedProcess(exc.cmd, 124, out, f"timed out after {timeout}s")

    def check(self, *argv: str, timeout: float = 10, input_text: str | None = None) -> str:
        """Run a command inside the namespace; its stdout, or LabError."""
        return _run(self.argv(*argv), input_text=input_text, timeout=timeout)

    def listening(self, port: int, udp: bool = False) -> bool:
        """Whether something in the namespace listens on `port` (read with `ss`)."""
        flags = "-Hlnu" if udp else "-Hlnt"
        out = self.run("ss", flags, f"sport = :{port}").stdout
        return bool(out.strip())

    def curl(self, url: str, timeout: float = 5) -> tuple[int, str]:
        """(HTTP status, body) of a GET with `curl` from this namespace; 0 when it failed."""
        result = self.run(
            "curl",
            "-s",
            "--max-time",
            str(timeout),
            "-w",
            "\n%{http_code}",
            url,
            timeout=timeout + 5,
        )
        body, _, code = result.stdout.rpartition("\n")
        try:
            return int(code or 0), body
        except ValueError:
            return 0, body


class Meshgate:
    """`python -m meshgate run ...` inside a namespace, with its admin port there."""

    def __init__(self, process: Process, ns: Namespace, admin_port: int) -> None:
        self.process = process
        self.ns = ns
        self.admin_port = admin_port

    def get(self, path: str) -> tuple[int, Any]:
        code, body = self.ns.curl(f"http://127.0.0.1:{self.admin_port}{path}", timeout=3)
        try:
            return code, json.loads(body) if body else None
        except ValueError:
            return code, body

    def ready(self) -> bool:
        if not self.process.alive():
            raise LabError(f"meshgate exited before it was ready: {self.process.describe()}")
        return self.get("/readyz")[0] == 200

    def wait_ready(self, timeout: float = WAIT) -> Meshgate:
        poll(self.ready, f"meshgate /readyz in {self.ns.name}", timeout)
        return self

    def stop(self) -> int:
        return self.process.stop()


class WgInterface:
    def __init__(self, ns: Namespace, name: str, address: str) -> None:
        self.ns = ns
        self.name = name
        self.address = address
        self.private_key = _run(["wg", "genkey"]).strip()
        self.public_key = _run(["wg", "pubkey"], input_text=self.private_key + "\n").strip()
        self.process: Process | None = None

    @property
    def socket_path(self) -> Path:
        return SOCKET_DIR / f"{self.name}.sock"

    def handshakes(self) -> dict[str, int]:
        out = self.ns.run("wg", "show", self.name, "latest-handshakes").stdout
        stamps: dict[str, int] = {}
        for line in out.splitlines():
            key, _, stamp = line.partition("\t")
            if stamp.strip().isdigit():
                stamps[key] = int(stamp)
        return stamps


def socket_in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


class Lab:
    def __init__(self, workdir: Path, linking: bool = True) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.workdir = workdir
        self.linking = linking
        self.namespaces: list[Namespace] = []
        self.processes: list[Process] = []
        self.interfaces: list[WgInterface] = []
        self.device = self._namespace("device")
        self.gw = self._namespace("gw")
        self.cluster = self._namespace("cluster")
        self.gw2 = self._namespace("gw2") if linking else None
        self.cluster2 = self._namespace("cluster2") if linking else None
        self.wg_device = WgInterface(self.device, f"wgdev{self.id}", DEVICE_IP)
        self.wg_gw = WgInterface(self.gw, GW_IFACE, GW_IP)
        self.wg_gw2 = WgInterface(self.gw2, f"wggw2{self.id}", GW2_IP) if self.gw2 else None

    def _namespace(self, role: str) -> Namespace:
        return Namespace(f"mge-{self.id}-{role}")

    # -- building -----------------------------------------------------------------

    def build(self) -> None:
        for ns in (self.device, self.gw, self.cluster, self.gw2, self.cluster2):
            if ns is not None:
                ip("netns", "add", ns.name)
                self.namespaces.append(ns)
                ip("-n", ns.name, "link", "set", "lo", "up")
        self._veth(self.device, "to-gw", self.gw, "to-device", DEVICE_GW)
        self._veth(self.gw, "to-cluster", self.cluster, "to-gw", GW_CLUSTER)
        if self.gw2 is not None and self.cluster2 is not None:
            self._veth(self.gw2, "to-gw", self.gw, "to-gw2", GW2_GW)
            self._veth(self.gw2, "to-cluster2", self.cluster2, "to-gw2", GW2_CLUSTER2)

        device, gw, gw2 = self.wg_device, self.wg_gw, self.wg_gw2
        for iface in (device, gw, gw2):
            if iface is not None:
                self._start_wireguard(iface)
        # A mesh device and a second gateway reach the whole mesh through gw,
        # gw reaches each of them by its own address.
        self._configure(device, [(gw, MESH, DEVICE_GW[1])])
        peers_of_gw = [(device, f"{DEVICE_IP}/32", DEVICE_GW[0])]
        if gw2 is not None:
            peers_of_gw.append((gw2, f"{GW2_IP}/32", GW2_GW[0]))
            self._configure(gw2, [(gw, MESH, GW2_GW[1])])
        self._configure(gw, peers_of_gw)
        self._handshake(device, gw)
        if gw2 is not None:
            self._handshake(gw2, gw)

    def _veth(
        self, left: Namespace, lname: str, right: Namespace, rname: str, addrs: tuple[str, str]
    ) -> None:
        link = f"link add {lname} type veth peer name {rname} netns {right.name}"
        ip("-n", left.name, *link.split())
        for ns, name, address in ((left, lname, addrs[0]), (right, rname, addrs[1])):
            ip("-n", ns.name, "addr", "add", f"{address}/30", "dev", name)
            ip("-n", ns.name, "link", "set", name, "up")

    def _start_wireguard(self, iface: WgInterface) -> None:
        path = iface.socket_path
        if path.exists():
            if socket_in_use(path):
                raise LabError(
                    f"{path} is in use by a wireguard-go this lab did not start; "
                    f"stop it (or wait for the other test run) and retry"
                )
            path.unlink()  # stale: left by a run that was killed
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1")
        iface.process = self.spawn(
            iface.ns, ["wireguard-go", "-f", iface.name], f"wireguard-go-{iface.name}", env=env
        )
        proc = iface.process

        def up() -> bool:
            if not proc.alive():
                raise LabError(f"wireguard-go exited: {proc.describe()}")
            return path.exists() and iface.ns.run("wg", "show", iface.name).returncode == 0

        poll(up, f"wireguard-go control socket {path}")
        self.interfaces.append(iface)

    def _configure(self, iface: WgInterface, peers: list[tuple[WgInterface, str, str]]) -> None:
        """Keys, listen port and peers: (peer, its allowed-ips, its underlay address)."""
        argv = ["wg", "set", iface.name, "private-key", "/dev/stdin", "listen-port", str(WG_PORT)]
        for peer, allowed, endpoint in peers:
            argv += ["peer", peer.public_key, "allowed-ips", allowed]
            argv += ["endpoint", f"{endpoint}:{WG_PORT}"]
        iface.ns.check(*argv, input_text=iface.private_key + "\n")
        ns = iface.ns.name
        ip("-n", ns, "addr", "add", f"{iface.address}/{MESH_PREFIX}", "dev", iface.name)
        ip("-n", ns, "link", "set", iface.name, "mtu", str(MTU), "up")

    def _handshake(self, initiator: WgInterface, responder: WgInterface) -> None:
        """Send traffic over the tunnel until both ends report a handshake."""
        last_sent = 0.0

        def done() -> bool:
            nonlocal last_sent
            if (
                initiator.handshakes().get(responder.public_key, 0) > 0
                and responder.handshakes().get(initiator.public_key, 0) > 0
            ):
                return True
            if time.monotonic() - last_sent > 1.0:
                last_sent = time.monotonic()
                send_udp(initiator.ns, responder.address, 9)
            return False

        poll(done, f"WireGuard handshake {initiator.name} -> {responder.name}")

    # -- processes ----------------------------------------------------------------

    def spawn(
        self, ns: Namespace, argv: list[str], name: str, env: dict[str, str] | None = None
    ) -> Process:
        log = self.workdir / f"{name}-{len(self.processes)}.log"
        process = Process(name, ns.argv(*argv), log, env)
        self.processes.append(process)
        return process

    def serve(self, ns: Namespace, argv: list[str], name: str, port: int) -> Process:
        """Start a server and wait until it listens on `port` (TCP)."""
        process = self.spawn(ns, argv, name)

        def listening() -> bool:
            if not process.alive():
                raise LabError(f"{name} exited: {process.describe()}")
            return ns.listening(port)

        poll(listening, f"{name} listening on {port} in {ns.name}")
        return process

    def http_server(self, ns: Namespace, address: str, port: int, body: str) -> Process:
        """A Python HTTP server on address:port whose / answers `body`."""
        root = self.workdir / f"www-{ns.name}-{port}"
        root.mkdir(exist_ok=True)
        (root / "index.html").write_text(body)
        argv = [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            address,
            "--directory",
            str(root),
        ]
        return self.serve(ns, argv, f"http-{port}", port)

    def meshgate(self, ns: Namespace, args: list[str], admin_port: int = 9901) -> Meshgate:
        argv = [
            sys.executable,
            "-m",
            "meshgate",
            "run",
            *args,
            "--admin",
            f"127.0.0.1:{admin_port}",
            "--log-format",
            "json",
        ]
        return Meshgate(self.spawn(ns, argv, f"meshgate-{ns.name}"), ns, admin_port)

    @contextlib.contextmanager
    def scope(self) -> Iterator[Lab]:
        """Stop, on exit, every process started inside the block."""
        mark = len(self.processes)
        try:
            yield self
        finally:
            started, self.processes = self.processes[mark:], self.processes[:mark]
            for process in reversed(started):
                process.stop()

    # -- teardown -----------------------------------------------------------------

    def close(self) -> None:
        errors: list[str] = []
        for process in reversed(self.processes):
            try:
                process.stop(timeout=5)
            except (OSError, subprocess.SubprocessError) as exc:
                errors.append(f"stopping {process.name}: {exc}")
        self.processes.clear()
        for ns in self.namespaces:
            # Anything still inside (a server's forked child) was started by this lab.
            for pid in self._pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for ns in reversed(self.namespaces):
            try:
                ip("netns", "del", ns.name)
            except (LabError, subprocess.SubprocessError) as exc:
                errors.append(str(exc))
        self.namespaces.clear()
        for iface in self.interfaces:
            with contextlib.suppress(FileNotFoundError):
                iface.socket_path.unlink()
        self.interfaces.clear()
        if errors:
            raise LabError("lab teardown: " + "; ".join(errors))

    @staticmethod
    def _pids(ns: Namespace) -> list[int]:
        result = subprocess.run(
            ["ip", "netns", "pids", ns.name], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in result.stdout.split() if pid.isdigit()]


def send_udp(ns: Namespace, address: str, port: int) -> None:
    """One UDP datagram from inside `ns` (what makes WireGuard start a handshake)."""
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.sendto(b'hello', (sys.argv[1], int(sys.argv[2])))\n"
    )
    ns.run(sys.executable, "-c", code, address, str(port))


@contextlib.contextmanager
def exclusive(path: Path = LOCK_PATH, timeout: float = LOCK_WAIT) -> Iterator[None]:
    """Hold an exclusive fcntl lock on `path` (poll, bounded by `timeout`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise LabError(
                        f"{path} stayed locked for {timeout}s: another WireGuard lab "
                        f"(interface {GW_IFACE!r}) is running"
                    ) from exc
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def open_lab(workdir: Path, linking: bool = True) -> Iterator[Lab]:
    """Build a lab under the `netmaker` lock; tear it down whatever happens."""
    with exclusive():
        lab = Lab(workdir, linking=linking)
        try:
            lab.build()
            yield lab
        finally:
            lab.close()
