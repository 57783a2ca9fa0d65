"""`meshgate run --workers N`: N worker processes behind one admin server.

Python runs one event loop per process on one core; a second process is how
meshgate uses a second core (nginx and HAProxy scale the same way). The
supervisor starts N copies of the same `meshgate run` command. Each worker
binds every listener with SO_REUSEPORT, so the kernel spreads new
connections over them, and runs its own reloads, mesh detection and health
checks from the same sources, so all of them serve the same table.

The supervisor itself serves no traffic. It
- forwards SIGHUP (reload) to every worker, and on SIGTERM/SIGINT stops them
  (each drains) and exits 0 once all have exited cleanly;
- restarts a worker that dies, after a back-off, and counts it;
- serves the admin API at the configured address: /metrics and /status add
  the workers' figures up (obs/aggregate.py), /readyz is ready when every
  worker is, /config is worker 0's. Each worker's own admin server listens on
  a free loopback port it reports through a file; the supervisor reads the
  workers' documents every `POLL` seconds.
A worker that fails while starting (a listener that cannot bind, a bad
config) stops the whole group with its exit status, as one process would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from meshgate import aio, settings
from meshgate.admin import AdminServer
from meshgate.obs.aggregate import merge_metrics, merge_status
from meshgate.routing.table import hostport

log = logging.getLogger("meshgate.supervisor")

WORKER_INDEX: Final = settings.WORKER_INDEX_ENV
WORKER_REPORT: Final = settings.WORKER_REPORT_ENV
POLL: Final = 0.5  # seconds between reads of the workers' admin documents
RESTART_BACKOFF: Final = (1.0, 30.0)  # first and longest wait before a restart
STARTUP_GRACE: Final = 10.0  # a worker that dies sooner after its start fails the group
KILL_AFTER: Final = 5.0  # seconds past the drain timeout before SIGKILL


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the supervisor dies (even by
    SIGKILL), so no orphan worker keeps the ports."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG: Final = 1  # linux/prctl.h


@dataclass
class Worker:
    index: int
    report: Path
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    admin: str | None = None  # host:port, once reported
    status: dict[str, Any] | None = None
    ready: tuple[bool, dict[str, Any]] | None = None
    config: dict[str, Any] | None = None
    metrics: str = ""
    errors: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": self.process.pid if self.process is not None else None,
            "running": self.process is not None and self.process.returncode is None,
            "ready": bool(self.ready and self.ready[0]),
            "restarts": self.restarts,
            "admin": self.admin,
        }


class Supervisor:
    """Runs the workers and answers for them (implements admin.AdminState)."""

    def __init__(
        self,
        argv: list[str],
        count: int,
        admin: tuple[str, int] | None,
        drain_timeout: float,
        token: str | None = None,
    ) -> None:
        self.argv = argv
        self.count = count
        self.admin_at = admin
        self.drain_timeout = drain_timeout
        self.token = token  # the admin API's; the workers load the same one
        self.started = time.time()
        self._dir = Path(tempfile.mkdtemp(prefix="meshgate-workers-"))
        self.workers = [Worker(i, self._dir / f"worker-{i}.addr") for i in range(count)]
        self._stopping = False
        self._failed: int | None = None  # exit status of a worker that failed at start
        self._stop = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self.admin_address: str | None = None  # where our admin server listens

    # -- lifecycle ----------------------------------------------------------------
    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT or a failed start; the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else None
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=2.0), headers=auth
        )
        admin: AdminServer | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            if self.admin_at is not None:
                # Bound first: a port in use fails the start before any worker runs.
                admin = AdminServer(*self.admin_at, self, self.token)
                try:
                    host, port = await admin.start()
                except OSError as exc:
                    admin = None
                    log.error("cannot start", extra={"fields": {"error": str(exc)}})
                    return 1
                self.admin_address = hostport(host, port)
            for worker in self.workers:
                await self._spawn(worker)
            tasks = [aio.spawn(self._watch(w), name=f"worker {w.index}") for w in self.workers]
            tasks.append(aio.spawn(self._poll_forever(), name="read workers"))
            log.info("workers running", extra={"fields": {"workers": self.count}})
            await self._stop.wait()
            return await self._shutdown()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self._stopping = True
            await self._terminate_all()
            await aio.cancel_and_wait(tasks)
            if admin is not None:
                await admin.stop()
            await self._session.close()
            shutil.rmtree(self._dir, ignore_errors=True)

    async def _spawn(self, worker: Worker) -> None:
        with contextlib.suppress(FileNotFoundError):
            worker.report.unlink()
        worker.admin = None
        env = {**os.environ, WORKER_INDEX: str(worker.index), WORKER_REPORT: str(worker.report)}
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshgate", *self.argv, env=env, preexec_fn=_die_with_parent
        )
        worker.started = time.monotonic()
        log.info(
            "worker started",
            extra={"fields": {"worker": worker.index, "pid": worker.process.pid}},
        )

    async def _watch(self, worker: Worker) -> None:
        """Restart the worker whenever it exits, unless the group is stopping."""
        delay = RESTART_BACKOFF[0]
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if self._stopping:
                return
            lived = time.monotonic() - worker.started
            if worker.admin is None and lived < STARTUP_GRACE and worker.restarts == 0:
                # It never served: a bad config or a port in use. Retrying
                # would fail the same way; stop the group as one process would.
                log.error(
                    "worker failed to start",
                    extra={"fields": {"worker": worker.index, "exit_code": code}},
                )
                self._failed = code or 1
                self._stop.set()
                return
            worker.restarts += 1
            log.error(
                "worker exited; restarting",
                extra={
                    "fields": {
                        "worker": worker.index,
                        "exit_code": code,
                        "restarts": worker.restarts,
                        "delay": delay,
                    }
                },
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_BACKOFF[1]) if lived < 60 else RESTART_BACKOFF[0]
            await self._spawn(worker)

    def _forward(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(sig)

    async def _shutdown(self) -> int:
        self._stopping = True
        log.info("stopping workers", extra={"fields": {"drain_timeout": self.drain_timeout}})
        codes = await self._terminate_all()
        if self._failed is not None:
            return self._failed
        return 0 if all(code == 0 for code in codes) else 1

    async def _terminate_all(self) -> list[int]:
        self._forward(signal.SIGTERM)
        procs = [w.process for w in self.workers if w.process is not None]
        try:
            return list(
                await asyncio.wait_for(
                    asyncio.gather(*(p.wait() for p in procs)), self.drain_timeout + KILL_AFTER
                )
            )
        except TimeoutError:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
            return [await p.wait() for p in procs]

    # -- reading the workers ---------------------------------------------------------
    async def _poll_forever(self) -> None:
        while True:
            await asyncio.gather(*(self._poll(w) for w in self.workers))
            await asyncio.sleep(POLL)

    async def _poll(self, worker: Worker) -> None:
        if worker.admin is None:
            try:
                worker.admin = worker.report.read_text().strip() or None
            except FileNotFoundError:
                return
        assert self._session is not None
        base = f"http://{worker.admin}"
        try:
            async with self._session.get(f"{base}/status") as resp:
                worker.status = await resp.json()
            async with self._session.get(f"{base}/readyz") as resp:
                worker.ready = (resp.status == 200, await resp.json())
            async with self._session.get(f"{base}/config") as resp:
                worker.config = await resp.json()
            async with self._session.get(f"{base}/metrics") as resp:
                worker.metrics = await resp.text()
            async with self._session.get(f"{base}/api/errors") as resp:
                worker.errors = await resp.json()
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            worker.ready = (False, {"ready": False, "reason": f"worker unreachable: {exc}"})

    # -- AdminState --------------------------------------------------------------------
    def ready(self) -> tuple[bool, dict[str, Any]]:
        waiting = [w.index for w in self.workers if not (w.ready and w.ready[0])]
        if waiting:
            reasons = {
                str(w.index): (w.ready[1] if w.ready else {"reason": "starting"})
                for w in self.workers
                if w.index in waiting
            }
            return False, {"ready": False, "reason": "workers not ready", "workers": reasons}
        first = self.workers[0].ready
        return True, {**(first[1] if first else {}), "ready": True, "workers": self.count}

    def status(self) -> dict[str, Any]:
        docs = [w.status for w in self.workers if w.status is not None]
        merged = merge_status(docs)
        merged["admin"] = self.admin_address
        merged["workers"] = [w.to_json() for w in self.workers]
        merged.setdefault("started", self.started)
        return merged

    def config(self) -> dict[str, Any]:
        first = next((w.config for w in self.workers if w.config is not None), None)
        return first or {}

    def recent_errors(self) -> dict[str, Any]:
        errors = [e for w in self.workers for e in w.errors.get("errors", [])]
        errors.sort(key=lambda e: e.get("time", 0), reverse=True)
        capacity = max((w.errors.get("capacity", 0) for w in self.workers), default=0)
        return {
            "capacity": capacity,
            "seen": sum(w.errors.get("seen", 0) for w in self.workers),
            "errors": errors[:capacity],
        }

    def metrics(self) -> bytes:
        running = GaugeMetricFamily(
            "meshgate_workers", "Worker processes running under this supervisor"
        )
        running.add_metric(
            [], sum(1 for w in self.workers if w.process and w.process.returncode is None)
        )
        restarts = GaugeMetricFamily(
            "meshgate_worker_restarts", "Times a worker process was restarted", labels=["worker"]
        )
        for worker in self.workers:
            restarts.add_metric([str(worker.index)], worker.restarts)
        extra: list[Metric] = [running, restarts]
        return merge_metrics([w.metrics for w in self.workers if w.metrics], extra)

    def metric_families(self) -> list[Metric]:
        # The merged text read back: slower than a registry, but the
        # supervisor serves no traffic that the parse could hold up.
        return list(text_string_to_metric_families(self.metrics().decode()))
