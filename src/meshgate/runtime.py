"""The one place the planes meet: sources -> compile -> Dataplane.apply.

`Runtime.serve()` runs `meshgate run`: it applies the first table, starts the
admin server, then reacts to signals. SIGHUP re-reads every source; a bad new
config is logged and counted and the running table stays. SIGTERM (or SIGINT)
drains: listeners stop accepting, established connections get the drain
deadline, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshgate import aio, settings
from meshgate.admin import AdminServer
from meshgate.config.model import Config
from meshgate.dataplane.certs import CertError, TlsStore, cert_files
from meshgate.dataplane.dataplane import Dataplane
from meshgate.errors import ConfigError
from meshgate.obs.metrics import Metrics
from meshgate.routing.compile import compile_table
from meshgate.routing.table import RouteTable, hostport
from meshgate.sources import ConfigSource, load_all

log = logging.getLogger("meshgate.runtime")


def _stamps(paths: set[str]) -> dict[str, tuple[int, int] | None]:
    out: dict[str, tuple[int, int] | None] = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out[path] = None
        else:
            out[path] = (st.st_mtime_ns, st.st_size)
    return out


def check_tls(table: RouteTable) -> None:
    """Load every certificate the table names; a bad one is a ConfigError
    naming the file (the data plane loads them again, cached, on apply)."""
    try:
        TlsStore().prepare(table)
    except CertError as exc:
        raise ConfigError.one(exc.path, "", "", exc.reason) from None


class StartupError(Exception):
    """The process could not start serving (a listener or the admin server failed to bind)."""


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    admin: tuple[str, int] | None  # None: no admin server
    drain_timeout: float


def resolve_options(
    config: Config, admin_flag: str | None, drain_flag: float | None
) -> tuple[str, float]:
    """Command-line flags win over the file, the file over the defaults."""
    admin = admin_flag or config.admin or settings.ADMIN_LISTEN
    drain = drain_flag or config.drain_timeout or settings.DRAIN_TIMEOUT
    return admin, drain


class Runtime:
    def __init__(
        self, sources: Sequence[ConfigSource], config: Config, options: RuntimeOptions
    ) -> None:
        self.sources = tuple(sources)
        self.prom = Metrics()
        self.dataplane = Dataplane(self.prom, options.drain_timeout)
        self.options = options
        self.started = time.time()
        self.version = 1
        self.table: RouteTable = compile_table(
            config, version=self.version, sources=self.source_names
        )
        self.last_reload: dict[str, Any] = {"time": self.started, "result": "ok", "error": None}
        self.admin_address: str | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(source.name for source in self.sources)

    # -- serving --------------------------------------------------------------
    async def serve(self) -> None:
        failures = await self.dataplane.apply(self.table)
        if failures:
            await self.dataplane.shutdown()
            raise StartupError("; ".join(f"listener {f.listener}: {f.error}" for f in failures))
        self.prom.table_version.set(self.version)
        admin: AdminServer | None = None
        if self.options.admin is not None:
            admin = AdminServer(*self.options.admin, self)
            try:
                host, port = await admin.start()
            except OSError as exc:
                await self.dataplane.shutdown()
                raise StartupError(str(exc)) from exc
            self.admin_address = hostport(host, port)
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_error)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        log.info(
            "meshgate running",
            extra={"fields": {"version": self.version, "listeners": len(self.table.listeners)}},
        )
        reloader = aio.spawn(self._reload_loop(), name="reload")
        watcher = aio.spawn(self._watch_certs(), name="watch certificates")
        try:
            await self._stop.wait()
        finally:
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await aio.cancel_and_wait([reloader, watcher])
            log.info(
                "shutting down", extra={"fields": {"drain_timeout": self.dataplane.drain_timeout}}
            )
            await self.dataplane.shutdown()
            if admin is not None:
                await admin.stop()
            log.info("stopped")

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # A bug in a protocol callback: the loop has already closed that one
        # transport; make it visible instead of letting it pass as a stderr dump.
        self.prom.internal_errors.inc()
        exc = context.get("exception")
        log.error(
            "internal error",
            exc_info=exc if isinstance(exc, BaseException) else None,
            extra={"fields": {"context": context.get("message", "")}},
        )

    def stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def _reload_loop(self) -> None:
        # Signals that arrive during a reload coalesce into one more reload.
        while True:
            await self._reload.wait()
            self._reload.clear()
            await self.reload()

    async def _watch_certs(self) -> None:
        """Reload when a certificate, key or CA file the table uses changes."""
        seen = _stamps(cert_files(self.table))
        while True:
            await asyncio.sleep(settings.CERT_POLL_INTERVAL)
            now = _stamps(cert_files(self.table))
            if now != seen:
                seen = now
                log.info("certificate files changed, reloading")
                self._reload.set()

    async def reload(self) -> bool:
        """Re-read every source and apply the result; keep the old table on error."""
        now = time.time()
        try:
            config = load_all(self.sources)
            table = compile_table(config, version=self.version + 1, sources=self.source_names)
            check_tls(table)
        except ConfigError as exc:
            self.prom.reloads.labels("rejected").inc()
            self.last_reload = {"time": now, "result": "rejected", "error": str(exc)}
            for problem in exc.problems:
                log.error(
                    "reload rejected, keeping the running table",
                    extra={"fields": {"problem": str(problem)}},
                )
            return False
        try:
            failures = await self.dataplane.apply(table)
        except CertError as exc:  # a file changed again since check_tls
            self.prom.reloads.labels("rejected").inc()
            self.last_reload = {"time": now, "result": "rejected", "error": str(exc)}
            log.error(
                "reload rejected, keeping the running table",
                extra={"fields": {"problem": str(exc)}},
            )
            return False
        self.version += 1
        self.table = table
        error = "; ".join(f"listener {f.listener}: {f.error}" for f in failures) or None
        self.last_reload = {
            "time": now,
            "result": "ok" if not failures else "partial",
            "error": error,
        }
        self.prom.reloads.labels("ok" if not failures else "partial").inc()
        log.info(
            "reloaded",
            extra={
                "fields": {
                    "version": self.version,
                    "listeners": len(table.listeners),
                    "failed_binds": len(failures),
                }
            },
        )
        return True

    # -- AdminState -----------------------------------------------------------
    def ready(self) -> tuple[bool, dict[str, Any]]:
        ok, waiting = self.dataplane.ready()
        if ok:
            return True, {"ready": True, "version": self.version}
        return False, {"ready": False, "reason": "listeners not serving", "listeners": waiting}

    def status(self) -> dict[str, Any]:
        return {
            **self.dataplane.status(),
            "version": self.version,
            "started": self.started,
            "sources": list(self.source_names),
            "last_reload": self.last_reload,
            "admin": self.admin_address,
        }

    def config(self) -> dict[str, Any]:
        return self.table.to_json()

    def metrics(self) -> bytes:
        self.dataplane.flush()
        return self.prom.render()
