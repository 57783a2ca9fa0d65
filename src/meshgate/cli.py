"""The command line: argv -> options -> runtime. No logic of its own.

Exit codes: 0 success; 1 could not start (a bind failed) or status could not
reach the admin server; 2 invalid configuration (every problem is printed to
stderr with its source, object and field).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
import uvloop

from meshgate import __version__, aio, settings
from meshgate.admin import AdminServer, load_token, parse_listen
from meshgate.config.model import AUTO, Config, check_listen
from meshgate.errors import ConfigError
from meshgate.mesh.bindaddr import BIND_WAIT
from meshgate.mesh.dns import DnsRecords, coredns_stanza, hosts_lines
from meshgate.obs import logging as mlog
from meshgate.routing.compile import compile_table, needs_mesh
from meshgate.runtime import Runtime, RuntimeOptions, StartupError, check_tls, resolve_options
from meshgate.sources import ConfigSource, load_all
from meshgate.sources.file import FileSource
from meshgate.sources.static import RulesSource
from meshgate.worker import worker_index

if TYPE_CHECKING:
    from rich.console import Console

    from meshgate.config.manifests import IngressOptions
    from meshgate.kube.client import KubeClient
    from meshgate.kube.pod_report import PodReporter
    from meshgate.sources.kube import KubeWatchSource

# Kubernetes and manifest support is imported by the commands and options
# that use it: lightkube, httpx and the manifest translation cost ~25 MB and
# a second of start-up that a plain `run -c file` does not need. So is rich,
# which only messages and `status` use.


def _console(stderr: bool = False, **options: Any) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, **options)


app = typer.Typer(
    name="meshgate",
    help="Join a WireGuard mesh and Kubernetes: L4 proxy rules, listeners and backends.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Ingress = Annotated[
    list[str] | None,
    typer.Option(
        "--ingress",
        metavar="PROTO:PORT:HOST:PORT",
        help="Mesh-side rule (nexd syntax), e.g. tcp:80:web.default.svc.cluster.local:80; "
        "listens on --bind. Repeat it; rules on one port share a round-robin backend.",
    ),
]
Egress = Annotated[
    list[str] | None,
    typer.Option(
        "--egress",
        metavar="PROTO:PORT:HOST:PORT",
        help="Cluster-side rule (nexd syntax), e.g. tcp:80:100.100.0.1:80; "
        "listens on --cluster-bind.",
    ),
]
Files = Annotated[
    list[str] | None,
    typer.Option("--config", "-c", metavar="FILE", help="YAML config file (repeatable)."),
]
Bind = Annotated[
    str,
    typer.Option(
        "--bind",
        metavar="IP|IFACE|auto",
        help="Address ingress rules listen on: an IP, an interface name, or auto, "
        "which detects the mesh interface (netmaker, wg0, wg1, --mesh-interface, then "
        "any WireGuard/point-to-point one) and follows its address changes.",
    ),
]
MeshInterface = Annotated[
    list[str] | None,
    typer.Option(
        "--mesh-interface",
        metavar="NAME",
        help="With 'auto': also accept this interface as the mesh (repeatable).",
    ),
]
DnsName = Annotated[
    str | None,
    typer.Option(
        "--dns-name",
        metavar="NAME",
        help="Mesh DNS name of the ingress rules' listeners, answered with their "
        "(mesh) address by the built-in DNS responder.",
    ),
]
DnsListen = Annotated[
    str | None,
    typer.Option(
        "--dns-listen",
        metavar="ADDR:PORT|auto:PORT|off",
        help="Where the mesh DNS responder listens (UDP and TCP); default auto:53, "
        "the mesh address.",
    ),
]
BindWait = Annotated[
    float | None,
    typer.Option(
        "--bind-wait",
        metavar="SECONDS",
        help="With 'auto': how long to wait at start for the mesh interface before "
        "falling back to a private address (default 60).",
    ),
]
ClusterBind = Annotated[
    str, typer.Option("--cluster-bind", metavar="IP", help="Address egress rules listen on.")
]
LogFormat = Annotated[
    mlog.LogFormat, typer.Option("--log-format", help="Log lines as json or text.")
]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error.")]
AdminTokenFile = Annotated[
    str | None,
    typer.Option(
        "--admin-token-file",
        metavar="FILE",
        help="A bearer token (16+ characters) the admin API asks for (default: "
        "$MESHGATE_ADMIN_TOKEN). Without one, an admin address other than loopback "
        "answers only /healthz, /readyz and /metrics.",
    ),
]


def _admin_token(path: str | None) -> str | None:
    try:
        return load_token(path)
    except ValueError as exc:
        _console(stderr=True).print(f"meshgate: {exc}", markup=False)
        raise typer.Exit(2) from None


Manifests = Annotated[
    list[str] | None,
    typer.Option(
        "--manifests",
        metavar="PATH",
        help="Kubernetes manifests (file or directory, multi-document YAML): Ingress, "
        "IngressClass, Service, EndpointSlice and TLS Secret objects, served as "
        "HTTP/HTTPS ingress (repeatable).",
    ),
]
IngressClass = Annotated[
    str | None,
    typer.Option(
        "--ingress-class", metavar="NAME", help="Ingress class meshgate serves (default meshgate)."
    ),
]
HttpListen = Annotated[
    str | None,
    typer.Option(
        "--http-listen",
        metavar="ADDR:PORT|off",
        help="Where Ingress HTTP traffic is served; default port 80 on the --bind address.",
    ),
]
HttpsListen = Annotated[
    str | None,
    typer.Option(
        "--https-listen",
        metavar="ADDR:PORT|off",
        help="Where Ingress HTTPS traffic is served; default port 443 on the --bind address.",
    ),
]


def _ingress_options(
    bind: str,
    ingress_class: str | None,
    http_listen: str | None,
    https_listen: str | None,
    files: list[str] | None = None,
) -> IngressOptions:
    """Ingress listens on the ingress bind address unless a flag, or the
    `ingress:` section of a -c file (read once, at start), says otherwise."""
    for path in files or []:
        try:
            settings = FileSource(path).load().ingress
        except ConfigError:
            continue  # reported with every other problem when the sources load
        if settings is not None:
            ingress_class = ingress_class or settings.ingress_class
            http_listen = http_listen or settings.http_listen
            https_listen = https_listen or settings.https_listen
    from meshgate.config.manifests import IngressOptions

    try:
        ip = ipaddress.ip_address(bind)
        host = f"[{ip}]" if ip.version == 6 else str(ip)
    except ValueError:
        host = AUTO  # auto, or an interface name (its address is the mesh address)
    return IngressOptions(
        ingress_class=ingress_class or "meshgate",
        http_listen=http_listen or f"{host}:80",
        https_listen=https_listen or f"{host}:443",
    )


def _sources(
    ingress: list[str] | None,
    egress: list[str] | None,
    files: list[str] | None,
    bind: str,
    cluster_bind: str,
    dns_name: str | None = None,
) -> list[ConfigSource]:
    sources: list[ConfigSource] = []
    if ingress or egress:
        sources.append(
            RulesSource(
                ingress or [],
                egress or [],
                bind=bind,
                cluster_bind=cluster_bind,
                dns_name=dns_name,
            )
        )
    sources.extend(FileSource(path) for path in files or [])
    return sources


Kubeconfig = Annotated[
    str | None,
    typer.Option(
        "--kubeconfig",
        metavar="FILE",
        help="Kubernetes client configuration; default: in-cluster, else $KUBECONFIG "
        "or ~/.kube/config.",
    ),
]


def _watch_source(
    kubeconfig: str | None,
    options: IngressOptions,
    namespace: str | None,
    services_bind: str | None = None,
) -> KubeWatchSource:
    from meshgate.sources.kube import KubeWatchSource

    client = _kube_client(kubeconfig)
    return KubeWatchSource(client, options, namespace, services_bind=services_bind)


def _kube_client(kubeconfig: str | None) -> KubeClient:
    """The Kubernetes client, or exit 2 saying why there is none."""
    from meshgate.kube.client import KubeClient, KubeError

    try:
        return KubeClient.from_config(kubeconfig)
    except (KubeError, OSError, ValueError) as exc:
        _console(stderr=True).print(f"meshgate: cannot use Kubernetes: {exc}", markup=False)
        raise typer.Exit(2) from None


def _pod_reporter(kubeconfig: str | None) -> PodReporter | None:
    """In a Pod (POD_NAME/POD_NAMESPACE from the downward API), report the mesh
    address into the Pod's annotation for the operator."""
    if not (os.environ.get("POD_NAME") and os.environ.get("POD_NAMESPACE")):
        return None  # not in a Pod: nothing to report, no client to import
    from meshgate.kube.client import KubeError
    from meshgate.kube.pod_report import PodReporter

    try:
        return PodReporter.from_environment(kubeconfig)
    except (KubeError, OSError, ValueError) as exc:
        warning = f"meshgate: not reporting the mesh address to the pod: {exc}"
        _console(stderr=True).print(warning, markup=False)
        return None


def _manifest_sources(
    manifests: list[str] | None,
    bind: str,
    ingress_class: str | None,
    http_listen: str | None,
    https_listen: str | None,
    files: list[str] | None,
) -> list[ConfigSource]:
    if not manifests:
        return []
    from meshgate.sources.manifests import ManifestSource

    options = _ingress_options(bind, ingress_class, http_listen, https_listen, files)
    return [ManifestSource(manifests, options)]


def _print_notes(sources: list[ConfigSource], console: Console) -> int:
    """Print what manifest sources skipped or ignored; return the problem count."""
    from meshgate.sources.manifests import ManifestSource

    count = 0
    for source in sources:
        if not isinstance(source, ManifestSource):
            continue
        for problem in source.problems:
            console.print(f"problem: {problem}", markup=False)
        for note in source.notes:
            console.print(f"note: {note}", markup=False)
        count += len(source.problems)
    return count


def _load_or_exit(sources: list[ConfigSource]) -> Config:
    err = _console(stderr=True, highlight=False, soft_wrap=True)
    if not sources:
        err.print(
            "meshgate: no configuration: give --ingress/--egress rules, -c FILE or "
            "--manifests PATH, or --watch (see meshgate run --help)"
        )
        raise typer.Exit(2)
    try:
        config = load_all(sources)
        check_tls(compile_table(config, version=0, mesh_addresses=(AUTO,)))
    except ConfigError as exc:
        err.print(f"meshgate: invalid configuration ({len(exc.problems)} problem(s)):")
        for problem in exc.problems:
            err.print(f"  {problem}", markup=False)
        raise typer.Exit(2) from None
    return config


@app.command()
def run(
    ingress: Ingress = None,
    egress: Egress = None,
    config: Files = None,
    bind: Bind = "auto",
    cluster_bind: ClusterBind = "0.0.0.0",
    admin: Annotated[
        str | None,
        typer.Option(
            "--admin",
            metavar="ADDR:PORT|off",
            help="Admin server (/healthz /readyz /metrics /config /status); "
            "port 0 picks a free port; 'off' disables it. Default 127.0.0.1:9901.",
        ),
    ] = None,
    drain_timeout: Annotated[
        float | None,
        typer.Option(
            "--drain-timeout",
            metavar="SECONDS",
            help="How long established connections may finish on SIGTERM "
            "or when a reload removes their listener. Default 30.",
        ),
    ] = None,
    log_format: LogFormat = "text",
    log_level: LogLevel = "info",
    mesh_interface: MeshInterface = None,
    bind_wait: BindWait = None,
    dns_name: DnsName = None,
    dns_listen: DnsListen = None,
    manifests: Manifests = None,
    ingress_class: IngressClass = None,
    http_listen: HttpListen = None,
    https_listen: HttpsListen = None,
    dns_records: Annotated[
        str | None,
        typer.Option(
            "--dns-records",
            metavar="FILE",
            help="More mesh DNS names to answer, as hosts-file lines (IP NAME...); re-read "
            "when it changes (the operator's DNS records ConfigMap, mounted).",
        ),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Serve the Ingresses of --ingress-class (and the Services, EndpointSlices "
            "and TLS Secrets they use) from a live Kubernetes API server; changes apply "
            "as they happen.",
        ),
    ] = False,
    kubeconfig: Kubeconfig = None,
    watch_services: Annotated[
        bool,
        typer.Option(
            "--watch-services",
            help="With --watch: also serve every Service annotated for mesh ingress "
            "(meshgate.io/ingress, netmaker.io/ingress, ...) on --bind, one listener per "
            "port, instead of a proxy per Service from the operator.",
        ),
    ] = False,
    watch_namespace: Annotated[
        str | None,
        typer.Option("--watch-namespace", metavar="NS", help="With --watch: this namespace only."),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Worker processes, each serving every listener (SO_REUSEPORT spreads "
            "connections over them); the admin server adds their figures up. Default 1.",
        ),
    ] = 1,
    admin_token_file: AdminTokenFile = None,
    shutdown_grace: Annotated[
        float,
        typer.Option(
            "--shutdown-grace",
            metavar="SECONDS",
            min=0,
            help="On SIGTERM, fail /readyz but keep serving this long before draining, "
            "so load balancers stop sending new clients first. Default 0.",
        ),
    ] = settings.SHUTDOWN_GRACE,
) -> None:
    """Run the data plane: listen, route and forward until SIGTERM (SIGHUP reloads)."""
    mlog.setup(log_format, log_level)
    index = worker_index()
    token = _admin_token(admin_token_file)
    sources = _sources(ingress, egress, config, bind, cluster_bind, dns_name)
    sources += _manifest_sources(manifests, bind, ingress_class, http_listen, https_listen, config)
    live: list[KubeWatchSource] = []
    if watch:
        ingress_opts = _ingress_options(bind, ingress_class, http_listen, https_listen, config)
        services_bind = bind if watch_services else None
        live.append(_watch_source(kubeconfig, ingress_opts, watch_namespace, services_bind))
    # Static sources are checked before anything starts; the live ones once
    # their first LIST is in.
    cfg = _load_or_exit(sources) if sources or not live else Config()
    admin_text, drain = resolve_options(cfg, admin, drain_timeout)
    try:
        admin_addr = parse_listen(admin_text)
    except ValueError as exc:
        _console(stderr=True).print(f"meshgate: --admin: {exc}", markup=False)
        raise typer.Exit(2) from None
    if workers > 1 and index is None:
        # The configuration was checked above, so a typo fails here once,
        # not in every worker.
        from meshgate.supervisor import Supervisor  # only the supervising process needs it

        supervisor = Supervisor(sys.argv[1:], workers, admin_addr, drain, token)
        raise typer.Exit(uvloop.run(supervisor.run()))
    if index is not None:
        settings.REUSE_PORT = True
        admin_addr = ("127.0.0.1", 0)  # the supervisor reads it and answers for all
    mesh = cfg.mesh
    if dns_listen is not None:
        try:
            dns_listen = check_listen(dns_listen)
        except ValueError as exc:
            _console(stderr=True).print(f"meshgate: --dns-listen: {exc}", markup=False)
            raise typer.Exit(2) from None
    options = RuntimeOptions(
        admin=admin_addr,
        admin_token=token,
        shutdown_grace=shutdown_grace,
        drain_timeout=drain,
        mesh_interfaces=tuple(mesh_interface or (mesh.interfaces if mesh else ())),
        bind_wait=bind_wait if bind_wait is not None else (mesh.bind_wait if mesh else BIND_WAIT),
        bind_interface=mesh.bind_interface if mesh else None,
        dns_listen=dns_listen or (mesh.dns_listen if mesh else None),
        dns_zones=mesh.dns_zones if mesh else (),
        dns_records=dns_records,
    )

    # One worker speaks for the Pod; the others would write the same annotation.
    reporter = _pod_reporter(kubeconfig) if not index else None

    async def main() -> None:
        for source in live:
            await source.start()
        try:
            current = _load_or_exit([*sources, *live]) if live else cfg
            publishers = [reporter] if reporter is not None else []
            await Runtime([*sources, *live], current, options, publishers).serve()
        finally:
            for source in live:
                await source.stop()
            if reporter is not None:
                await reporter.close()

    try:
        uvloop.run(main())
    except StartupError as exc:
        _console(stderr=True).print(f"meshgate: cannot start: {exc}", markup=False)
        raise typer.Exit(1) from None


@app.command()
def check(
    ingress: Ingress = None,
    egress: Egress = None,
    config: Files = None,
    bind: Bind = "auto",
    cluster_bind: ClusterBind = "0.0.0.0",
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
    dns_name: DnsName = None,
    manifests: Manifests = None,
    ingress_class: IngressClass = None,
    http_listen: HttpListen = None,
    https_listen: HttpsListen = None,
) -> None:
    """Validate the configuration and print the routing table it compiles to.

    Exits 2 when the configuration is invalid, 1 when manifests had objects
    that were skipped (each printed with its kind, name and field), else 0.
    """
    from meshgate.statusview import render_config

    sources = _sources(ingress, egress, config, bind, cluster_bind, dns_name)
    sources += _manifest_sources(manifests, bind, ingress_class, http_listen, https_listen, config)
    cfg = _load_or_exit(sources)
    table = compile_table(
        cfg, version=1, sources=tuple(s.name for s in sources), mesh_addresses=(AUTO,)
    )
    if as_json:
        sys.stdout.write(json.dumps(table.to_json(), indent=2) + "\n")
    else:
        render_config(table.to_json(), _console(highlight=False))
    if _print_notes(sources, _console(stderr=True, highlight=False, soft_wrap=True)):
        raise typer.Exit(1)


@app.command()
def status(
    admin: Annotated[
        str, typer.Option("--admin", metavar="ADDR:PORT", help="Admin server to ask.")
    ] = "127.0.0.1:9901",
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
    admin_token_file: AdminTokenFile = None,
) -> None:
    """Show listeners, connections and backend health of a running meshgate."""
    from meshgate.statusview import StatusError, fetch_json, render_status

    token = _admin_token(admin_token_file)
    try:
        data = fetch_json(admin, "/status", token=token)
    except StatusError as exc:
        _console(stderr=True).print(f"meshgate: {exc}", markup=False)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        render_status(data, _console(highlight=False))


@app.command()
def bindaddr(
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            metavar="SECONDS",
            help="Wait this long for a mesh interface to appear (0: look once).",
        ),
    ] = 0.0,
    mesh_interface: Annotated[
        list[str] | None,
        typer.Option(
            "--mesh-interface",
            metavar="NAME",
            help="Also accept this interface name as the mesh (repeatable).",
        ),
    ] = None,
) -> None:
    """Show which mesh address `--bind auto` would use, and why.

    Exits 0 when a mesh interface was found, 1 when only a fallback was.
    """
    from meshgate.mesh.bindaddr import PREFERRED_NAMES, choose, explain, fallback_choice
    from meshgate.mesh.netlink import detect, read_netstate

    extra = tuple(mesh_interface or ())
    if wait > 0:
        mlog.setup("text", "warning")
        choice = uvloop.run(detect(wait=wait, extra=extra))
        state = read_netstate()
    else:
        state = read_netstate()
        routes = state.default_route_addresses
        choice = choose(
            state.ifaces, extra=extra, default_route_addresses=routes
        ) or fallback_choice(state.ifaces, routes)
    for line in explain(
        state.ifaces,
        choice,
        preferred=PREFERRED_NAMES,
        extra=extra,
        default_route_addresses=state.default_route_addresses,
    ):
        sys.stdout.write(line + "\n")
    if choice.fallback:
        raise typer.Exit(1)


dns_app = typer.Typer(
    help="Mesh DNS names as hosts-file lines or a CoreDNS stanza, for your own resolver.",
    no_args_is_help=True,
)
app.add_typer(dns_app, name="dns")


def _dns_records(
    ingress: list[str] | None,
    config: list[str] | None,
    bind: str,
    dns_name: str | None,
    address: list[str] | None,
) -> DnsRecords:
    from meshgate.mesh.bindaddr import choose, fallback_choice
    from meshgate.mesh.names import records_for
    from meshgate.mesh.netlink import read_netstate

    cfg = _load_or_exit(_sources(ingress, None, config, bind, "0.0.0.0", dns_name))
    addresses = tuple(address or ())
    if not addresses and needs_mesh(cfg):
        state = read_netstate()
        routes = state.default_route_addresses
        choice = choose(state.ifaces, default_route_addresses=routes) or fallback_choice(
            state.ifaces, routes
        )
        addresses = choice.addresses
    table = compile_table(cfg, version=0, mesh_addresses=addresses)
    records = records_for(table, addresses, cfg.mesh.dns_zones if cfg.mesh else ())
    if records is None:
        _console(stderr=True).print("meshgate: no listener has a dns_name (or --dns-name)")
        raise typer.Exit(2)
    return records


DnsAddress = Annotated[
    list[str] | None,
    typer.Option("--address", metavar="IP", help="Mesh address to use for 'auto' (repeatable)."),
]


@dns_app.command("hosts")
def dns_hosts(
    ingress: Ingress = None,
    config: Files = None,
    bind: Bind = "auto",
    dns_name: DnsName = None,
    address: DnsAddress = None,
) -> None:
    """Print /etc/hosts lines for the mesh DNS names."""
    for line in hosts_lines(_dns_records(ingress, config, bind, dns_name, address)):
        sys.stdout.write(line + "\n")


@dns_app.command("coredns")
def dns_coredns(
    ingress: Ingress = None,
    config: Files = None,
    bind: Bind = "auto",
    dns_name: DnsName = None,
    address: DnsAddress = None,
) -> None:
    """Print a CoreDNS server block serving the mesh DNS names."""
    sys.stdout.write(coredns_stanza(_dns_records(ingress, config, bind, dns_name, address)))


def _operator_namespace(given: str | None) -> str:
    """--namespace, else the pod's own namespace (in-cluster), else meshgate-system."""
    if given:
        return given
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or "meshgate-system"
    except OSError:
        return "meshgate-system"


@app.command()
def operator(
    kubeconfig: Kubeconfig = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            metavar="NS",
            help="Where proxy Deployments and the mesh token Secret live; default the "
            "operator pod's own namespace, else meshgate-system.",
        ),
    ] = None,
    identity: Annotated[
        str | None,
        typer.Option(
            "--identity",
            metavar="NAME",
            help="Leader election identity (default: $POD_NAME, else the host name).",
        ),
    ] = None,
    admin: Annotated[
        str,
        typer.Option(
            "--admin",
            metavar="ADDR:PORT|off",
            help="Admin server: /healthz, /readyz (informers synced), /status, /metrics.",
        ),
    ] = "127.0.0.1:9901",
    lease_duration: Annotated[
        float,
        typer.Option(
            "--lease-duration",
            metavar="SECONDS",
            min=2.0,
            help="Leader election: a replica takes over when the leader has not renewed "
            "for this long (renewed every third of it).",
        ),
    ] = 15.0,
    takeover: Annotated[
        list[str] | None,
        typer.Option(
            "--kubernetes-endpoint-takeover",
            metavar="IP:PORT",
            help="Point the default/kubernetes EndpointSlices at this meshgate listener "
            "(a TLS listener re-originating to the tenant API server with its SNI) and keep "
            "them there; repeat for IPv4 and IPv6.",
        ),
    ] = None,
    log_format: LogFormat = "text",
    log_level: LogLevel = "info",
    admin_token_file: AdminTokenFile = None,
) -> None:
    """Reconcile Services annotated for the mesh into proxy Deployments, live."""
    from meshgate.kube.takeover import EndpointTakeover, parse_targets

    try:
        targets = parse_targets(takeover or [])
    except ValueError as exc:
        _console(stderr=True).print(
            f"meshgate: --kubernetes-endpoint-takeover: {exc}", markup=False
        )
        raise typer.Exit(2) from None
    import signal
    import socket

    from meshgate.kube.operator import Operator

    mlog.setup(log_format, log_level)
    client = _kube_client(kubeconfig)
    ns = _operator_namespace(namespace)

    try:
        admin_addr = parse_listen(admin)
    except ValueError as exc:
        _console(stderr=True).print(f"meshgate: --admin: {exc}", markup=False)
        raise typer.Exit(2) from None
    who = identity or os.environ.get("POD_NAME") or socket.gethostname()
    token = _admin_token(admin_token_file)

    async def main() -> None:
        op = Operator(client, ns, who, lease_duration=lease_duration)
        server = AdminServer(*admin_addr, op, token) if admin_addr is not None else None
        if server is not None:
            await server.start()
        loop = asyncio.get_running_loop()
        task = aio.spawn(op.run(), name="operator")
        if targets:
            keeper = EndpointTakeover(client, targets, lambda: op.elector.leading)
            side = aio.spawn(keeper.run(), name="kubernetes endpoint takeover")
            task.add_done_callback(lambda _: side.cancel())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            if server is not None:
                await server.stop()
            await client.close()

    uvloop.run(main())


@app.command()
def render(
    namespace: Annotated[
        str, typer.Option("--namespace", metavar="NS", help="Namespace to install into.")
    ] = "meshgate-system",
    image: Annotated[
        str | None, typer.Option("--image", metavar="IMAGE", help="meshgate image to run.")
    ] = None,
) -> None:
    """Print the install manifests: `meshgate render | kubectl apply -f -`."""
    from meshgate.kube.render import render as render_objects
    from meshgate.kube.render import to_yaml

    objects = render_objects(namespace, image) if image else render_objects(namespace)
    sys.stdout.write(to_yaml(objects))


@app.command()
def version() -> None:
    """Print the version."""
    sys.stdout.write(f"meshgate {__version__}\n")


def main() -> None:
    app()
