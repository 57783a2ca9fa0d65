"""Fetch documents from a running meshgate's admin endpoint and render them.

Used by `meshgate status` (the live /status document) and `meshgate check`
(a `RouteTable.to_json()` document, compiled locally or fetched from /config).
It is a client: it imports neither aiohttp nor the data plane, so the CLI
starts fast, and it talks to the admin server with the stdlib only.

Every value from a document is put into tables as `rich.text.Text`, never as
markup, so a name or an error such as "[errno 98] ..." prints verbatim. The
output stays plain and readable when stdout is not a terminal.
"""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any, Final

from rich import box
from rich.console import Console, RenderableType
from rich.segment import Segments
from rich.table import Table
from rich.text import Text

from meshgate.routing.table import hostport

# How much of an unexpected (non-JSON) answer to quote in the error.
_SNIPPET: Final = 80

# Wide enough to measure any table at its natural width.
_UNBOUNDED: Final = 10_000

_KIB: Final = 1024
_MINUTE: Final = 60.0
_HOUR: Final = 3600.0

LISTENER_STYLES: Final = {
    "serving": "green",
    "binding": "yellow",
    "draining": "yellow",
    "closed": "dim",
    "failed": "bold red",
}
ENDPOINT_STYLES: Final = {
    "healthy": "green",
    "suspect": "yellow",
    "probing": "cyan",
    "ejected": "bold red",
}
CHECK_STYLES: Final = {
    "healthy": "green",
    "pending": "dim",
    "unhealthy": "bold red",
}


class StatusError(Exception):
    """The admin endpoint could not be reached or gave an unusable answer.

    `status` is the HTTP status when the server answered with an error
    (503 from /readyz, for instance), None when there was no HTTP answer.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def fetch_json(
    admin: str, path: str, timeout: float = 5.0, token: str | None = None
) -> dict[str, Any]:
    """GET http://ADMIN/PATH and return the JSON object it answers with."""
    where = _admin_hostport(admin)
    path = "/" + path.lstrip("/")
    # No proxies: an http_proxy variable set for the outside world must not
    # send a request for a loopback admin port through a corporate proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://{where}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with opener.open(request, timeout=timeout) as response:
            body: bytes = response.read()
            content_type = response.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the socket; closing it avoids a ResourceWarning
            detail = _error_detail(exc)
        raise StatusError(
            f"meshgate admin at {where} answered {path} with HTTP {exc.code}: {detail}",
            status=exc.code,
        ) from exc
    except urllib.error.URLError as exc:
        raise StatusError(_unreachable(where, exc.reason, timeout)) from exc
    except (OSError, http.client.HTTPException) as exc:
        # Failures after the connection was made (a reset, a read timeout, a
        # server that does not speak HTTP) are not wrapped in URLError.
        raise StatusError(_unreachable(where, exc, timeout)) from exc
    try:
        data = json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both
        snippet = body[:_SNIPPET].decode("utf-8", "replace")
        raise StatusError(
            f"meshgate admin at {where} answered {path} with {content_type}, not JSON: "
            f"{snippet!r} — is that really meshgate's admin address?"
        ) from None
    if not isinstance(data, dict):
        raise StatusError(
            f"meshgate admin at {where} answered {path} with a JSON {type(data).__name__}, "
            "not an object"
        )
    return data


def _admin_hostport(admin: str) -> str:
    """Normalise "127.0.0.1:9901", "[::1]:9901", "::1:9901" or a URL to HOST:PORT."""
    text = admin.strip().removeprefix("http://").rstrip("/")
    host, sep, port = text.rpartition(":")
    if text.startswith("[") and host.endswith("]") and port.isdigit():
        return text
    if not sep or not host or not port.isdigit() or text.startswith("["):
        raise StatusError(
            f"invalid admin address {admin!r}: expected HOST:PORT like 127.0.0.1:9901"
        )
    # The last colon separates the port, so an unbracketed IPv6 literal still
    # works on the command line; URLs need it bracketed.
    return hostport(host, int(port))


def _unreachable(where: str, error: object, timeout: float) -> str:
    return (
        f"cannot reach meshgate admin at {where}: {_reason(error, timeout)}"
        " — is `meshgate run` running? use --admin HOST:PORT if it listens elsewhere"
    )


def _reason(error: object, timeout: float) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(error, http.client.RemoteDisconnected):
        return "it closed the connection without answering"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host name ({error.strerror})"
    if isinstance(error, http.client.HTTPException):
        return f"the answer is not HTTP ({type(error).__name__})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error)


def _error_detail(exc: urllib.error.HTTPError) -> str:
    # The admin server answers errors in JSON ({"error": ..., "reason": ...});
    # show its fields, falling back to the raw text from anything else.
    try:
        raw = exc.read()
    except OSError:
        return str(exc.reason)
    try:
        data = json.loads(raw)
    except ValueError:
        return raw[:_SNIPPET].decode("utf-8", "replace").strip() or str(exc.reason)
    if isinstance(data, dict):
        return ", ".join(f"{key}: {value}" for key, value in data.items())
    return str(data)


# -- /status ----------------------------------------------------------------


def render_operator(status: dict[str, Any], console: Console) -> None:
    """Print `meshgate operator`'s status: leadership, proxies, rejected Services."""
    op = status.get("operator") or {}
    role = Text("leader", style="bold green") if op.get("leader") else Text("follower")
    _emit(
        console,
        Text.assemble(
            ("meshgate operator", "bold"),
            f"  namespace {op.get('namespace', '?')}  identity {op.get('identity', '?')}  ",
            role,
            f"  (lease held by {op.get('lease_holder') or 'nobody'})",
            f"  reconciles {op.get('reconciles', 0)}, errors {op.get('errors', 0)}",
        ),
    )
    proxies = _table("Proxies")
    for heading in ("deployment", "service", "ready"):
        proxies.add_column(heading, overflow="fold")
    for item in status.get("proxies") or []:
        proxies.add_row(
            Text(str(item.get("deployment", "?"))),
            Text(str(item.get("service", "?"))),
            Text(str(item.get("ready_replicas") or 0)),
        )
    _emit(console, proxies if proxies.row_count else Text("no proxies", style="dim"))
    rejected = status.get("rejected") or {}
    if rejected:
        table = _table("Rejected Services")
        table.add_column("service")
        table.add_column("why", overflow="fold")
        for service, why in rejected.items():
            table.add_row(Text(str(service)), Text(str(why), style="red"))
        _emit(console, table)


def render_status(status: dict[str, Any], console: Console) -> None:
    """Print a live status document: a header, then listeners and backends."""
    if "operator" in status:
        render_operator(status, console)
        return
    _emit(console, _status_header(status))
    for line in _mesh_lines(status):
        _emit(console, line)
    listeners = status.get("listeners") or []
    backends = status.get("backends") or []
    if listeners:
        _emit(console, _status_listeners(listeners))
        # Errors go under the table, one per line: inside a cell a bind error
        # would squeeze every other column on an 80-column (non-terminal) console.
        for item in listeners:
            if item.get("error"):
                _emit(
                    console,
                    Text.assemble(
                        f"  {item.get('name', '?')} {item.get('state', '?')}: ",
                        (str(item["error"]), "red"),
                    ),
                )
    else:
        _emit(console, Text("no listeners", style="dim"))
    if backends:
        _emit(console, _status_backends(backends))
    else:
        _emit(console, Text("no backends", style="dim"))


def _mesh_lines(status: dict[str, Any]) -> list[Text]:
    """The mesh binding and the mesh DNS names, when the runtime has them."""
    lines: list[Text] = []
    mesh = status.get("mesh")
    if mesh:
        where = f" on {mesh['interface']}" if mesh.get("interface") else ""
        line = Text(f"mesh: {', '.join(mesh.get('addresses') or [])}{where} ({mesh.get('reason')})")
        if mesh.get("fallback"):
            line.append("  FALLBACK: not on the mesh", style="bold red")
        lines.append(line)
    dns = status.get("dns")
    if dns:
        names = ", ".join(
            f"{name} -> {' '.join(addrs)}" for name, addrs in (dns.get("names") or {}).items()
        )
        line = Text(f"mesh DNS on {dns.get('listen') or '-'}: {names}")
        if dns.get("error"):
            line.append(f"  {dns['error']}", style="red")
        lines.append(line)
    return lines


def _status_header(status: dict[str, Any]) -> Text:
    version = status.get("version", "?")
    header = Text.assemble(
        ("meshgate", "bold"),
        f"  table version {version}",
        f"  from {_sources(status.get('sources') or [])}",
    )
    if status.get("started") is not None:
        header.append(f"  up since {_clock(status['started'])}")
    if status.get("admin"):
        header.append(f"  admin {status['admin']}")
    overload = status.get("overload") or {}
    if overload.get("level"):
        # Only when it matters: stage 1 and up change what clients see.
        header.append(
            f"\noverload: {overload.get('stage')} ({overload.get('reason') or '?'}; "
            f"{overload.get('connections', '?')} of {overload.get('max_connections', '?')} "
            "connections)",
            style="bold red",
        )
    header.append("\nlast reload: ")
    reload = status.get("last_reload") or {}
    result = reload.get("result")
    if result is None:
        header.append("none yet", style="dim")
        return header
    header.append(str(result), style="green" if result == "ok" else "bold red")
    if reload.get("time") is not None:
        header.append(f" at {_clock(reload['time'])}")
    if reload.get("error"):
        # A rejected reload leaves the previous table serving; say so, since
        # "rejected" alone reads as if the proxy were down. The error may hold
        # one problem per line (ConfigError), so each gets its own line.
        header.append(f", still serving version {version}")
        for line in str(reload["error"]).splitlines():
            header.append(f"\n  {line}", style="red")
    return header


def _status_listeners(listeners: Iterable[dict[str, Any]]) -> Table:
    table = _table("Listeners")
    for heading in ("name", "listen", "state", "backend"):
        table.add_column(heading, overflow="fold")
    for heading in ("active", "total", "refused", "in", "out", "flows"):
        table.add_column(heading, justify="right", overflow="fold")
    for item in listeners:
        protocol = str(item.get("protocol", "?"))
        state = str(item.get("state", "?"))
        state_text = Text(state, style=LISTENER_STYLES.get(state, ""))
        if item.get("accepting") is False and state == "serving":
            state_text.append(" paused", style="bold yellow")  # at a connection limit
        refused = item.get("refused") or {}
        table.add_row(
            Text(str(item.get("name", "?"))),
            Text(f"{_address(item)}/{protocol}"),
            state_text,
            Text(str(item.get("backend", "?"))),
            Text(str(item.get("active", 0))),
            Text(str(item.get("total", 0))),
            Text(str(sum(v for v in refused.values() if isinstance(v, int)))),
            Text(human_bytes(int(item.get("bytes_in", 0)))),
            Text(human_bytes(int(item.get("bytes_out", 0)))),
            # UDP flows mean nothing for a TCP listener.
            Text(str(item.get("udp_flows", 0)) if protocol == "udp" else "-"),
        )
    return table


def _status_backends(backends: Iterable[dict[str, Any]]) -> Table:
    table = _table("Backends")
    for heading in ("backend", "endpoint", "state", "check"):
        table.add_column(heading, overflow="fold")
    for heading in ("in-flight", "failures"):
        table.add_column(heading, justify="right", overflow="fold")
    for backend in backends:
        name = Text(str(backend.get("name", "?")))
        if backend.get("builtin"):
            # Answered in-process: there is no endpoint that could be unhealthy.
            table.add_row(name, Text(f"builtin:{backend['builtin']}"), Text("-"), "-", "-", "-")
            continue
        endpoints = backend.get("endpoints") or []
        if not endpoints:
            table.add_row(name, Text("no endpoints", style="bold red"), Text("-"), "-", "-", "-")
            continue
        for index, endpoint in enumerate(endpoints):
            table.add_row(
                # The backend name only on its first row: the rest read as its children.
                name if index == 0 else Text(""),
                Text(str(endpoint.get("address", "?"))),
                _endpoint_state(endpoint),
                _endpoint_check(endpoint),
                Text(str(endpoint.get("in_flight", 0))),
                Text(str(endpoint.get("failures", 0))),
            )
    return table


def _endpoint_state(endpoint: dict[str, Any]) -> Text:
    """The passive (outlier) state; an ejection says how long it has left."""
    state = str(endpoint.get("state", "?"))
    text = Text(state, style=ENDPOINT_STYLES.get(state, ""))
    left = endpoint.get("ejected_for")
    if state == "ejected" and isinstance(left, int | float):
        text.append(f" {left:.0f}s")
    return text


def _endpoint_check(endpoint: dict[str, Any]) -> Text:
    """The active health check's verdict, and why an unhealthy one failed."""
    check = endpoint.get("check")
    if check is None:
        return Text("-", style="dim")  # the backend has no health check
    text = Text(str(check), style=CHECK_STYLES.get(str(check), ""))
    if check == "unhealthy" and endpoint.get("check_reason"):
        text.append(f" ({endpoint['check_reason']})")
    return text


# -- /config and `meshgate check` -------------------------------------------


def render_config(table_json: dict[str, Any], console: Console) -> None:
    """Print a `RouteTable.to_json()` document: listeners, then backends."""
    _emit(
        console,
        Text.assemble(
            ("table version ", "bold"),
            (str(table_json.get("version", "?")), "bold"),
            f" from {_sources(table_json.get('sources') or [])}",
        ),
    )
    listeners = _table("Listeners")
    for heading in ("name", "listen", "protocol", "backend"):
        listeners.add_column(heading, overflow="fold")
    for item in table_json.get("listeners") or []:
        protocol = Text(str(item.get("protocol", "?")))
        udp = item.get("udp")
        if udp:
            protocol.append(
                f" (flow idle {_duration(float(udp['flow_idle_timeout']))},"
                f" max {udp['max_flows']} flows)",
                style="dim",
            )
        listeners.add_row(
            Text(str(item.get("name", "?"))),
            Text(_address(item)),
            protocol,
            Text(str(item.get("backend", "?"))),
        )
    _emit(console, listeners)
    _render_routes(table_json, console)
    _render_http_routes(table_json, console)

    backends = _table("Backends")
    for heading in ("name", "balance", "endpoints", "timeouts", "upstream"):
        backends.add_column(heading, overflow="fold")
    for pool in table_json.get("backends") or []:
        if pool.get("builtin"):
            endpoints = Text(f"builtin:{pool['builtin']}")
        elif pool.get("endpoints"):
            endpoints = Text("\n".join(str(ep) for ep in pool["endpoints"]))
        else:
            endpoints = Text("no endpoints", style="bold red")
        backends.add_row(
            Text(str(pool.get("name", "?"))),
            Text(str(pool.get("balance", "?"))),
            endpoints,
            Text(_timeouts(pool.get("timeouts") or {})),
            _upstream(pool),
        )
    _emit(console, backends)


def _render_routes(table_json: dict[str, Any], console: Console) -> None:
    """The SNI routes of tls listeners, in match order within each listener."""
    routes = _table("TLS routes")
    for heading in ("listener", "server names", "mode", "certificate", "backend"):
        routes.add_column(heading, overflow="fold")
    for item in table_json.get("listeners") or []:
        for route in item.get("routes") or []:
            names = ", ".join(route.get("sni") or [])
            if route.get("default"):
                names = f"{names}, (default)" if names else "(default)"
            mode = str(route.get("mode", "?"))
            if route.get("alpn"):
                mode += f" alpn {','.join(route['alpn'])}"
            routes.add_row(
                Text(str(item.get("name", "?"))),
                Text(names),
                Text(mode),
                Text(str(route.get("certificate") or "-")),
                Text(str(route.get("backend", "?"))),
            )
    if routes.row_count:
        _emit(console, routes)


def _http_options(route: dict[str, Any]) -> str:
    """The per-route options that change what a request gets, in short."""
    parts = []
    if route.get("rewrite_target"):
        parts.append(f"rewrite {route['rewrite_target']}")
    if route.get("ssl_redirect"):
        parts.append("ssl-redirect")
    if route.get("app_root"):
        parts.append(f"app-root {route['app_root']}")
    if route.get("allow"):
        parts.append(f"allow {','.join(route['allow'])}")
    if route.get("max_body") is not None:
        parts.append(f"max body {route['max_body']}")
    if route.get("connect_timeout"):
        parts.append(f"connect {_duration(float(route['connect_timeout']))}")
    parts.append(f"read {_duration(float(route.get('read_timeout') or 60))}")
    return ", ".join(parts)


def _render_http_routes(table_json: dict[str, Any], console: Console) -> None:
    """Host and path routes of http/https listeners, and https certificates."""
    routes = _table("HTTP routes")
    for heading in ("listener", "host", "path", "type", "backend", "options", "from"):
        routes.add_column(heading, overflow="fold")
    certs = _table("HTTPS certificates")
    for heading in ("listener", "server names", "certificate"):
        certs.add_column(heading, overflow="fold")
    for item in table_json.get("listeners") or []:
        http = item.get("http")
        if not http:
            continue
        name = Text(str(item.get("name", "?")))
        for route in http.get("routes") or []:
            routes.add_row(
                name,
                Text(str(route.get("host") or "*")),
                Text(str(route.get("path", "/"))),
                Text(str(route.get("path_type", "?"))),
                Text(str(route.get("backend") or "(redirect)")),
                Text(_http_options(route), style="dim"),
                Text(str(route.get("origin") or "-"), style="dim"),
            )
        if http.get("default_backend"):
            routes.add_row(
                name, Text("(default)"), Text("*"), Text("-"), Text(http["default_backend"])
            )
        elif item.get("protocol") in ("http", "https"):
            routes.add_row(name, Text("(default)"), Text("*"), Text("-"), Text("404"))
        certificates = item.get("certificates")
        if certificates:
            for host, origin in (certificates.get("hosts") or {}).items():
                certs.add_row(name, Text(host), Text(str(origin)))
            certs.add_row(name, Text("(default)"), Text(str(certificates.get("default"))))
    if routes.row_count:
        _emit(console, routes)
    if certs.row_count:
        _emit(console, certs)


def _upstream(pool: dict[str, Any]) -> Text:
    """TLS re-origination and PROXY header settings of a backend, or '-'."""
    parts: list[str] = []
    tls = pool.get("tls")
    if tls:
        verify = (
            "NO VERIFY"
            if tls.get("insecure_skip_verify")
            else (f"verify with {tls['ca']}" if tls.get("ca") else "verify with system roots")
        )
        parts.append(f"tls sni {tls.get('sni') or '(endpoint host)'}, {verify}")
    if pool.get("proxy_protocol"):
        parts.append(f"proxy protocol {pool['proxy_protocol']}")
    return Text("; ".join(parts) or "-", style="bold red" if "NO VERIFY" in str(parts) else "")


# -- formatting helpers -----------------------------------------------------


def _emit(console: Console, renderable: RenderableType) -> None:
    """Print; when not on a terminal, at natural width rather than folded.

    Off a terminal rich assumes 80 columns, which is only a guess: there is
    no screen to fit. Folding "127.0.0.1:8080/tcp" over three lines to honour
    it would hurt grep and the reader, so wider content is printed unwrapped
    (as `ps` and `kubectl get` do when piped). A terminal keeps its width.
    """
    if isinstance(renderable, Table):
        console.line()  # a blank line between sections
    if console.is_terminal:
        console.print(renderable)
        return
    wide = console.options.update_width(_UNBOUNDED)
    natural = console.measure(renderable, options=wide).maximum
    if natural <= console.width:
        console.print(renderable)
        return
    lines = console.render_lines(
        renderable, console.options.update_width(natural), pad=False, new_lines=True
    )
    console.print(Segments(itertools.chain.from_iterable(lines)), crop=False, end="")


def _table(title: str) -> Table:
    # SIMPLE_HEAD without edges draws only the rule under the header: it stays
    # legible when piped into a file or a CI log, where full grids are clutter.
    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )


def _address(item: dict[str, Any]) -> str:
    return hostport(str(item.get("address", "?")), int(item.get("port", 0)))


def _sources(sources: Iterable[object]) -> str:
    names = [str(source) for source in sources]
    return ", ".join(names) if names else "no sources"


def _clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(timestamp)))


def _timeouts(timeouts: dict[str, Any]) -> str:
    labels = {"connect": "connect", "idle": "idle", "half_closed": "half-closed"}
    return ", ".join(
        f"{label} {_duration(float(timeouts[key]))}"
        for key, label in labels.items()
        if timeouts.get(key) is not None
    )


def _duration(seconds: float) -> str:
    """5.0 -> "5s", 3600.0 -> "1h", 90.0 -> "90s": whole hours or minutes only."""
    if seconds >= _HOUR and seconds % _HOUR == 0:
        return f"{seconds / _HOUR:g}h"
    if seconds > _MINUTE and seconds % _MINUTE == 0:
        return f"{seconds / _MINUTE:g}m"
    return f"{seconds:g}s"


def human_bytes(count: int) -> str:
    """1234 -> "1.2 KiB": binary units, one decimal, plain bytes below 1 KiB."""
    if count < _KIB:
        return f"{count} B"
    value = float(count) / _KIB
    units = ["KiB", "MiB", "GiB", "TiB"]
    while value >= _KIB and len(units) > 1:
        value /= _KIB
        units.pop(0)
    return f"{value:.1f} {units[0]}"
