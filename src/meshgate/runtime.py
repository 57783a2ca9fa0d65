"""The one place the planes meet: sources -> compile -> Dataplane.apply.

`Runtime.serve()` runs `meshgate run`: it applies the first table, starts the
admin server, then reacts to signals. SIGHUP re-reads every source; a bad new
config is logged and counted and the running table stays. SIGTERM (or SIGINT)
drains: listeners stop accepting, established connections get the drain
deadline, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.metrics_core import Metric

from meshgate import aio, settings
from meshgate.admin import AdminServer
from meshgate.config.model import Config
from meshgate.dataplane.certs import CertError, TlsStore, cert_files
from meshgate.dataplane.dataplane import Dataplane
from meshgate.errors import ConfigError
from meshgate.mesh.bindaddr import BIND_WAIT, BindChoice, choose, explicit, fallback_choice
from meshgate.mesh.dns import DnsServer
from meshgate.mesh.names import parse_hosts, records_for
from meshgate.obs.metrics import Metrics
from meshgate.obs.process import process_json, raise_descriptor_limit
from meshgate.obs.recent import RecentErrors
from meshgate.routing.compile import compile_table, needs_mesh
from meshgate.routing.table import RouteTable, hostport
from meshgate.sources import ConfigSource, load_all
from meshgate.worker import report_admin

if TYPE_CHECKING:
    from meshgate.mesh.netlink import NetState

# _NETLINK_LAZY: meshgate.mesh.netlink is imported where it is used, when a
# listener binds the mesh address: pyroute2 costs ~20 MB of memory that a
# proxy on loopback or on fixed addresses does not need.

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


class Publisher(Protocol):
    """Something told the addresses meshgate serves on, after every apply."""

    async def publish(self, addresses: Sequence[str]) -> None: ...


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    admin: tuple[str, int] | None  # None: no admin server
    drain_timeout: float
    mesh_interfaces: tuple[str, ...] = ()  # accepted besides netmaker, wg0, wg1
    bind_wait: float = BIND_WAIT  # how long `auto` waits for the mesh at start
    bind_interface: str | None = None  # `--bind IFACE`: only this interface
    dns_listen: str | None = None  # "HOST:PORT", "auto:PORT" (the mesh address), "off"
    dns_zones: tuple[str, ...] = ()  # default: the parent domain of each name
    # A hosts-format file of more names to answer (the operator's ConfigMap).
    dns_records: str | None = None
    admin_token: str | None = None  # a bearer token the admin API asks for
    shutdown_grace: float = settings.SHUTDOWN_GRACE  # not ready, still serving, on SIGTERM


def resolve_options(
    config: Config, admin_flag: str | None, drain_flag: float | None
) -> tuple[str, float]:
    """Command-line flags win over the file, the file over the defaults."""
    admin = admin_flag or config.admin or settings.ADMIN_LISTEN
    drain = drain_flag or config.drain_timeout or settings.DRAIN_TIMEOUT
    return admin, drain


class Runtime:
    def __init__(
        self,
        sources: Sequence[ConfigSource],
        config: Config,
        options: RuntimeOptions,
        publishers: Sequence[Publisher] = (),
    ) -> None:
        self.sources = tuple(sources)
        # Told where we serve after each apply (a proxy Pod's own annotation).
        self.publishers = tuple(publishers)
        self.prom = Metrics()
        self.recent = RecentErrors()  # for the dashboard, collected while serve() runs
        self.dataplane = Dataplane(self.prom, options.drain_timeout)
        self.options = options
        self.started = time.time()
        self.version = 1
        self.current_config = config
        # The detected mesh binding, when some listener binds `auto`.
        self.mesh: BindChoice | None = None
        self.table: RouteTable = RouteTable(version=0, listeners=())
        self.dns: DnsServer | None = None
        self.dns_at: tuple[str, int] | None = None
        self.dns_error: str | None = None
        self._records_problems: list[str] = []
        self.last_reload: dict[str, Any] = {"time": self.started, "result": "ok", "error": None}
        self.admin_address: str | None = None
        self._stop = asyncio.Event()
        self.stopping = False  # SIGTERM came: /readyz fails while we finish
        self._reload = asyncio.Event()

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(source.name for source in self.sources)

    # -- serving --------------------------------------------------------------
    def _compile(self, config: Config, version: int) -> RouteTable:
        addresses = self.mesh.addresses if self.mesh is not None else ()
        return compile_table(
            config, version=version, sources=self.source_names, mesh_addresses=addresses
        )

    async def _detect_mesh(self) -> BindChoice:
        from meshgate.mesh import netlink  # see _NETLINK_LAZY

        if self.options.bind_interface is None:
            return await netlink.detect(
                wait=self.options.bind_wait, extra=self.options.mesh_interfaces
            )
        choice, state = await netlink.wait_for(self._decide, wait=self.options.bind_wait)
        return choice or fallback_choice(state.ifaces, state.default_route_addresses)

    async def _await_mesh(self) -> bool:
        """Detect the mesh address; False when stopped (SIGTERM/SIGINT) first.

        Waiting for the mesh can take a minute: the process must still stop
        cleanly (exit 0) meanwhile.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info(
            "waiting for the mesh interface",
            extra={
                "fields": {
                    "bind_wait": self.options.bind_wait,
                    "interface": self.options.bind_interface or "auto",
                }
            },
        )
        detecting = aio.spawn(self._detect_mesh(), name="detect mesh address")
        stopping = aio.spawn(self._stop.wait(), name="stop while detecting")
        try:
            await asyncio.wait({detecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await aio.cancel_and_wait([stopping])
        if not detecting.done():
            await aio.cancel_and_wait([detecting])
            log.info("stopped before the mesh address was found")
            return False
        self.mesh = detecting.result()
        self._log_mesh("mesh address")
        return True

    def report_skipped(self) -> None:
        """Log what sources skipped (invalid Kubernetes objects) and ignored."""
        problems = self.skipped()["problems"]
        self.prom.objects_skipped.set(len(problems))
        for problem in problems:
            log.warning("object skipped", extra={"fields": {"problem": problem}})
        for note in self.skipped()["notes"]:
            log.info("object ignored", extra={"fields": {"note": note}})

    def skipped(self) -> dict[str, list[str]]:
        problems: list[str] = []
        notes: list[str] = []
        for source in self.sources:
            problems.extend(str(p) for p in getattr(source, "problems", ()))
            notes.extend(getattr(source, "notes", ()))
        return {"problems": problems, "notes": notes}

    async def serve(self) -> None:
        with self.recent.attached(logging.getLogger("meshgate")):
            await self._serve()

    async def _serve(self) -> None:
        raise_descriptor_limit()
        self.report_skipped()
        if needs_mesh(self.current_config) and not await self._await_mesh():
            return
        self.table = self._compile(self.current_config, self.version)
        failures = await self.dataplane.apply(self.table)
        if failures:
            await self.dataplane.shutdown()
            raise StartupError("; ".join(f"listener {f.listener}: {f.error}" for f in failures))
        self.prom.table_version.set(self.version)
        await self._sync_dns()
        await self._publish()
        admin: AdminServer | None = None
        if self.options.admin is not None:
            admin = AdminServer(*self.options.admin, self, self.options.admin_token)
            try:
                host, port = await admin.start()
            except OSError as exc:
                await self.dataplane.shutdown()
                raise StartupError(str(exc)) from exc
            self.admin_address = hostport(host, port)
            report_admin(self.admin_address)  # tells a supervisor, if any
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
        watchers = [aio.spawn(self._watch_certs(), name="watch certificates")]
        for source in self.sources:
            changed = getattr(source, "changed", None)  # live sources (Kubernetes)
            if isinstance(changed, asyncio.Event):
                watchers.append(aio.spawn(self._follow_source(changed), name="follow source"))
        if self.mesh is not None:
            watchers.append(aio.spawn(self._follow_mesh(), name="follow mesh address"))
        try:
            await self._stop.wait()
            await self._grace()
        finally:
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await aio.cancel_and_wait([reloader, *watchers])
            log.info(
                "shutting down", extra={"fields": {"drain_timeout": self.dataplane.drain_timeout}}
            )
            await self.dataplane.shutdown()
            if self.dns is not None:
                await self.dns.stop()
            if admin is not None:
                await admin.stop()
            log.info("stopped")

    async def _grace(self) -> None:
        """Not ready, still serving, for `shutdown_grace` (or until a second signal)."""
        self.stopping = True
        grace = self.options.shutdown_grace
        if grace <= 0:
            return
        log.info("shutting down: not ready, still serving", extra={"fields": {"grace": grace}})
        self._stop.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), grace)

    def _log_mesh(self, event: str) -> None:
        assert self.mesh is not None
        fields = {
            "addresses": ",".join(self.mesh.addresses),
            "interface": self.mesh.interface or "-",
            "reason": self.mesh.reason,
        }
        if self.mesh.fallback:
            log.warning(event + " (fallback)", extra={"fields": fields})
        else:
            log.info(event, extra={"fields": fields})

    async def _follow_mesh(self) -> None:
        """Move `auto` listeners when the mesh address changes (no restart):
        new sockets on the new address, the old ones drain."""
        from meshgate.mesh import netlink  # see _NETLINK_LAZY

        with netlink.AddressWatch() as watch:
            async for _ in watch:
                choice = self._decide(await netlink.netstate())
                # No mesh interface right now (it is being replaced?): keep
                # what is bound until one qualifies again.
                if choice is None or (
                    self.mesh is not None and choice.addresses == self.mesh.addresses
                ):
                    continue
                self.mesh = choice
                self._log_mesh("mesh address changed")
                await self._apply_config(self.current_config, "mesh address changed")

    def _decide(self, state: NetState) -> BindChoice | None:
        """The mesh binding `state` offers: the given interface, or the ranking."""
        if self.options.bind_interface is not None:
            return explicit(self.options.bind_interface, state.ifaces)
        return choose(
            state.ifaces,
            extra=self.options.mesh_interfaces,
            default_route_addresses=state.default_route_addresses,
        )

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

    async def _reload_loop(self) -> None:
        # Signals that arrive during a reload coalesce into one more reload.
        while True:
            await self._reload.wait()
            self._reload.clear()
            await self.reload()

    def _extra_records(self) -> dict[str, list[str]]:
        """Names from --dns-records; a missing or bad file adds none (logged)."""
        path = self.options.dns_records
        if path is None:
            return {}
        try:
            with open(path) as f:
                names, problems = parse_hosts(f.read())
        except OSError as exc:
            names, problems = {}, [f"cannot read: {exc.strerror or exc}"]
        if problems != self._records_problems:
            self._records_problems = problems
            for problem in problems:
                log.warning(
                    "dns records skipped", extra={"fields": {"file": path, "problem": problem}}
                )
        return names

    async def _publish(self) -> None:
        """Tell live sources where we serve (Ingress status for `--watch`)."""
        addresses = self._public_addresses()
        for source in self.sources:
            publish = getattr(source, "publish", None)
            if callable(publish):
                await publish(addresses)
        for publisher in self.publishers:
            await publisher.publish(addresses)

    def _public_addresses(self) -> list[str]:
        """The mesh address; else the addresses the listeners are bound to."""
        if self.mesh is not None and not self.mesh.fallback:
            return list(self.mesh.addresses)
        found = {spec.key.address for spec in self.table.listeners}
        return sorted(a for a in found if not ipaddress.ip_address(a).is_unspecified)

    async def _follow_source(self, changed: asyncio.Event) -> None:
        """Reload when a live source says its objects changed."""
        while True:
            await changed.wait()
            changed.clear()
            self._reload.set()

    async def _watch_certs(self) -> None:
        """Reload when a certificate, key or CA file the table uses changes."""

        def watched() -> set[str]:
            files = cert_files(self.table)
            if self.options.dns_records is not None:
                files.add(self.options.dns_records)
            return files

        seen = _stamps(watched())
        while True:
            await asyncio.sleep(settings.CERT_POLL_INTERVAL)
            now = _stamps(watched())
            if now != seen:
                seen = now
                log.info("certificate or DNS record files changed, reloading")
                self._reload.set()

    async def reload(self) -> bool:
        """Re-read every source and apply the result; keep the old table on error."""
        try:
            config = load_all(self.sources)
        except ConfigError as exc:
            self._rejected(exc)
            return False
        self.report_skipped()
        if needs_mesh(config) and self.mesh is None:
            # A reload added the first `auto` listener: look once, no waiting.
            from meshgate.mesh import netlink  # see _NETLINK_LAZY

            state = await netlink.netstate()
            self.mesh = self._decide(state) or fallback_choice(
                state.ifaces, state.default_route_addresses
            )
            self._log_mesh("mesh address")
        return await self._apply_config(config, "reloaded")

    def _dns_address(self) -> tuple[str, int] | None:
        """Where the mesh DNS responder listens: as given, or on the mesh address."""
        text = self.options.dns_listen or "auto:53"
        if text.lower() == "off":
            return None
        host, _, port_text = text.rpartition(":")
        host = host.strip("[]")
        if host.lower() == "auto":
            candidates = list(self.mesh.addresses) if self.mesh is not None else []
            candidates += [
                spec.key.address for spec in self.table.listeners if spec.dns_name is not None
            ]
            usable = [a for a in candidates if not ipaddress.ip_address(a).is_unspecified]
            # IPv4 first: every resolver on the mesh can reach it.
            usable.sort(key=lambda a: ":" in a)
            host = usable[0] if usable else "127.0.0.1"
        return host, int(port_text)

    async def _sync_dns(self) -> None:
        """Start, move, update or stop the mesh DNS responder to match the table."""
        addresses = self.mesh.addresses if self.mesh is not None else ()
        records = records_for(self.table, addresses, self.options.dns_zones, self._extra_records())
        where = self._dns_address() if records is not None else None
        if records is None or where is None:
            if self.dns is not None:
                await self.dns.stop()
                self.dns = self.dns_at = None
            return
        if self.dns is not None and self.dns_at == where:
            self.dns.update(records)
            return
        if self.dns is not None:
            await self.dns.stop()
        self.dns = DnsServer(
            records, on_query=lambda rcode: self.prom.dns_queries.labels(rcode).inc()
        )
        try:
            self.dns_at = await self.dns.start(*where)
        except OSError as exc:
            self.dns, self.dns_at = None, None
            self.dns_error = f"cannot listen on {hostport(*where)}: {exc.strerror or exc}"
            log.error("mesh DNS not served", extra={"fields": {"error": self.dns_error}})
            return
        self.dns_error = None
        log.info(
            "mesh DNS serving",
            extra={
                "fields": {
                    "address": hostport(*self.dns_at),
                    "names": ",".join(sorted(records.names)),
                }
            },
        )

    def _rejected(self, exc: ConfigError | CertError) -> None:
        self.prom.reloads.labels("rejected").inc()
        self.last_reload = {"time": time.time(), "result": "rejected", "error": str(exc)}
        problems = exc.problems if isinstance(exc, ConfigError) else (exc,)
        for problem in problems:
            log.error(
                "reload rejected, keeping the running table",
                extra={"fields": {"problem": str(problem)}},
            )

    async def _apply_config(self, config: Config, event: str) -> bool:
        """Compile `config` as the next version and apply it; on a certificate
        problem nothing changes."""
        try:
            table = self._compile(config, self.version + 1)
            check_tls(table)
            failures = await self.dataplane.apply(table)
        except ConfigError as exc:
            self._rejected(exc)
            return False
        except CertError as exc:  # a file changed again since check_tls
            self._rejected(exc)
            return False
        self.version += 1
        self.table = table
        self.current_config = config
        await self._sync_dns()
        await self._publish()
        error = "; ".join(f"listener {f.listener}: {f.error}" for f in failures) or None
        result = "ok" if not failures else "partial"
        self.last_reload = {"time": time.time(), "result": result, "error": error}
        self.prom.reloads.labels(result).inc()
        log.info(
            event,
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
        if self.stopping:
            return False, {"ready": False, "reason": "shutting down"}
        ok, waiting = self.dataplane.ready()
        if not ok:
            return False, {"ready": False, "reason": "listeners not serving", "listeners": waiting}
        if self.mesh is not None and self.mesh.fallback:
            # Serving, but not on the mesh: peers on the mesh cannot reach us.
            return False, {
                "ready": False,
                "reason": "no mesh interface: listening on a fallback address",
                "mesh": self._mesh_json(),
            }
        detail: dict[str, Any] = {"ready": True, "version": self.version}
        if self.last_reload and self.last_reload.get("result") != "ok":
            # Still ready (the previous table serves), but a rejected or
            # partial reload is what an operator looking here wants to see.
            detail["last_reload"] = self.last_reload
        return True, detail

    def _mesh_json(self) -> dict[str, Any] | None:
        if self.mesh is None:
            return None
        return {
            "addresses": list(self.mesh.addresses),
            "interface": self.mesh.interface,
            "reason": self.mesh.reason,
            "fallback": self.mesh.fallback,
        }

    def status(self) -> dict[str, Any]:
        return {
            **self.dataplane.status(),
            "version": self.version,
            "started": self.started,
            "sources": list(self.source_names),
            "last_reload": self.last_reload,
            "admin": self.admin_address,
            "mesh": self._mesh_json(),
            "dns": self._dns_json(),
            "skipped": self.skipped(),
            "process": process_json(),
        }

    def _dns_json(self) -> dict[str, Any] | None:
        addresses = self.mesh.addresses if self.mesh is not None else ()
        records = records_for(self.table, addresses, self.options.dns_zones, self._extra_records())
        if records is None:
            return None
        return {
            "listen": hostport(*self.dns_at) if self.dns_at else None,
            "zones": list(records.zones),
            "names": {name: list(addrs) for name, addrs in records.names.items()},
            "error": self.dns_error,
        }

    def config(self) -> dict[str, Any]:
        return self.table.to_json()

    def _refresh(self) -> None:
        """Bring scrape-time figures up to date."""
        self.dataplane.flush()
        self.prom.objects_skipped.set(len(self.skipped()["problems"]))
        process = process_json()
        self.prom.tasks.set(process["tasks"])
        if process["open_fds"] is not None:
            self.prom.open_fds.set(process["open_fds"])

    def metrics(self) -> bytes:
        self._refresh()
        return self.prom.render()

    def metric_families(self) -> Iterable[Metric]:
        self._refresh()
        return list(self.prom.registry.collect())

    def recent_errors(self) -> dict[str, Any]:
        return self.recent.to_json()
