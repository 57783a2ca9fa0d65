"""Cross-reference checks within one Config, and merging several into one.

`validate` checks what a single model object cannot see on its own: names that
repeat, listeners that would fight over one socket, listeners pointing at a
backend nobody defined. `merge` joins the Configs of several sources (rules,
files) and reports what clashes between them, naming both sources.

Each source is self-contained: a listener must name a backend defined in the
same source, so one file can be read and checked without the others. Pure: no
I/O, every problem found is collected into one `ConfigError`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from meshgate.config.model import AUTO, Backend, Config, Listener
from meshgate.errors import ConfigError, ConfigProblem

T = TypeVar("T")


def listeners_overlap(a: Listener, b: Listener) -> bool:
    """Whether two listeners would need the same socket.

    They do when protocol and port are equal and the addresses are equal, or
    either one is the wildcard (0.0.0.0, ::) of the other's IP family: the
    second bind would fail with EADDRINUSE.
    """
    # tcp and tls listeners are both TCP sockets; udp ones are not.
    if (a.protocol == "udp") != (b.protocol == "udp") or a.port != b.port:
        return False
    if AUTO in (a.address, b.address):
        # The mesh address is known only at run time: it clashes with itself
        # and with any wildcard, never with a fixed address of another interface.
        other = b.address if a.address == AUTO else a.address
        return other == AUTO or ipaddress.ip_address(other).is_unspecified
    ip_a, ip_b = ipaddress.ip_address(a.address), ipaddress.ip_address(b.address)
    if ip_a.version != ip_b.version:
        return False
    return ip_a == ip_b or ip_a.is_unspecified or ip_b.is_unspecified


def listener_label(index: int, listener: Listener) -> str:
    return f"listeners[{index}] ({listener.name})"


def backend_label(index: int, backend: Backend) -> str:
    return f"backends[{index}] ({backend.name})"


def _socket(listener: Listener) -> str:
    return f"{listener.protocol} port {listener.port} on {listener.address}"


def _line(lines: Mapping[str, int], path: str) -> int | None:
    """The line of `path`, or of its nearest parent that has one."""
    while path:
        if path in lines:
            return lines[path]
        path = _parent(path)
    return lines.get("")


def _parent(path: str) -> str:
    """ "listeners[1].name" -> "listeners[1]" -> "listeners" -> "" (always shorter)."""
    if path.endswith("]") and "[" in path:
        return path[: path.rindex("[")]
    return path.rpartition(".")[0]


def validate(config: Config, source: str, lines: Mapping[str, int] | None = None) -> None:
    """Raise one ConfigError listing every cross-reference problem in `config`.

    `lines` maps dotted field paths ("listeners[1].name") to the line they
    came from, so problems in a file point at the offending line.
    """
    where: Mapping[str, int] = lines or {}
    problems: list[ConfigProblem] = []

    def add(obj: str, field: str, reason: str) -> None:
        problems.append(ConfigProblem(source, obj, field, reason, _line(where, field)))

    listener_names: dict[str, int] = {}
    for i, listener in enumerate(config.listeners):
        first = listener_names.setdefault(listener.name, i)
        if first != i:
            add(
                listener_label(i, listener),
                f"listeners[{i}].name",
                f"duplicate listener name '{listener.name}' (also listeners[{first}])",
            )
        # One report per listener is enough: it names the first one it hits.
        for j, earlier in enumerate(config.listeners[:i]):
            if listeners_overlap(earlier, listener):
                add(
                    listener_label(i, listener),
                    f"listeners[{i}].port",
                    f"duplicate listener: {_socket(listener)} overlaps "
                    f"{listener_label(j, earlier)} on {earlier.address}",
                )
                break

    backends: dict[str, Backend] = {}
    backend_index: dict[str, int] = {}
    for i, backend in enumerate(config.backends):
        first = backend_index.setdefault(backend.name, i)
        if first != i:
            add(
                backend_label(i, backend),
                f"backends[{i}].name",
                f"duplicate backend name '{backend.name}' (also backends[{first}])",
            )
        else:
            backends[backend.name] = backend

    for i, listener in enumerate(config.listeners):
        refs = (
            [(f"listeners[{i}].backend", listener.backend)]
            if listener.backend is not None
            else [
                (f"listeners[{i}].routes[{j}].backend", r.backend)
                for j, r in enumerate(listener.routes)
            ]
        )
        if listener.http is not None:
            refs.extend(
                (f"listeners[{i}].http.routes[{j}].backend", r.backend)
                for j, r in enumerate(listener.http.routes)
                if r.backend is not None
            )
            if listener.http.default_backend is not None:
                refs.append((f"listeners[{i}].http.default_backend", listener.http.default_backend))
        for field, name in refs:
            target = backends.get(name)
            if target is None:
                known = ", ".join(sorted(backends)) or "none are defined"
                add(
                    listener_label(i, listener),
                    field,
                    f"unknown backend '{name}'; known backends: {known}",
                )
            elif (
                listener.protocol != "tcp"
                and target.builtin is not None
                and ".http." not in field  # HTTP routes answer built-ins in-process
            ):
                add(
                    listener_label(i, listener),
                    field,
                    f"backend '{target.name}' is the builtin '{target.builtin}', which "
                    f"answers plain TCP only; a {listener.protocol} listener needs a "
                    "backend with endpoints",
                )

    if problems:
        raise ConfigError(problems)


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a merged listener or backend came from, for error messages."""

    source: str
    label: str


def merge(parts: Sequence[tuple[str, Config]]) -> Config:
    """Join the Configs of several sources, each already validated on its own.

    Listeners and backends are concatenated in source order. A backend
    defined identically in two sources is kept once; any other repeat of a
    name, an overlapping listener, or two different `admin`/`drain_timeout`/`limits`
    values is an error naming both sources.
    """
    problems: list[ConfigProblem] = []
    listeners: list[tuple[_Origin, Listener]] = []
    backends: dict[str, tuple[_Origin, Backend]] = {}

    for source, config in parts:
        for i, listener in enumerate(config.listeners):
            here = _Origin(source, listener_label(i, listener))
            for there, other in listeners:
                # Clashes inside one source were reported by its own validate().
                if there.source == source:
                    continue
                if other.name == listener.name:
                    reason = (
                        f"listener name '{listener.name}' is also defined in "
                        f"{there.source} ({there.label})"
                    )
                    problems.append(
                        ConfigProblem(source, here.label, f"listeners[{i}].name", reason)
                    )
                    break
                if listeners_overlap(other, listener):
                    reason = (
                        f"duplicate listener: {_socket(listener)} overlaps "
                        f"{there.source} {there.label} on {other.address}"
                    )
                    problems.append(
                        ConfigProblem(source, here.label, f"listeners[{i}].port", reason)
                    )
                    break
            listeners.append((here, listener))

        for i, backend in enumerate(config.backends):
            here = _Origin(source, backend_label(i, backend))
            seen = backends.get(backend.name)
            if seen is None:
                backends[backend.name] = (here, backend)
            elif seen[1] != backend and seen[0].source != source:
                reason = (
                    f"backend '{backend.name}' is also defined, differently, in "
                    f"{seen[0].source} ({seen[0].label})"
                )
                problems.append(ConfigProblem(source, here.label, f"backends[{i}].name", reason))

    admin = _one_value("admin", [(s, c.admin) for s, c in parts], problems)
    drain = _one_value("drain_timeout", [(s, c.drain_timeout) for s, c in parts], problems)
    mesh = _one_value("mesh", [(s, c.mesh) for s, c in parts], problems)
    ingress = _one_value("ingress", [(s, c.ingress) for s, c in parts], problems)
    limits = _one_value("limits", [(s, c.limits) for s, c in parts], problems)
    resolve: dict[str, str] = {}
    resolve_origin: dict[str, str] = {}
    for source, config in parts:
        for name, address in config.resolve.items():
            if resolve.setdefault(name, address) != address:
                reason = (
                    f"'{name}' resolves to {address} here but to {resolve[name]} in "
                    f"{resolve_origin[name]}"
                )
                problems.append(ConfigProblem(source, "resolve", f"resolve.{name}", reason))
            resolve_origin.setdefault(name, source)
    if problems:
        raise ConfigError(problems)
    return Config(
        listeners=tuple(listener for _, listener in listeners),
        backends=tuple(backend for _, backend in backends.values()),
        admin=admin,
        drain_timeout=drain,
        resolve=resolve,
        mesh=mesh,
        ingress=ingress,
        limits=limits,
    )


def _one_value(
    field: str, values: Sequence[tuple[str, T | None]], problems: list[ConfigProblem]
) -> T | None:
    """The value set by any source; two sources setting different ones clash."""
    chosen: tuple[str, T] | None = None
    for source, value in values:
        if value is None:
            continue
        if chosen is None:
            chosen = (source, value)
        elif value != chosen[1]:
            reason = f"{field} is {value!r} here but {chosen[1]!r} in {chosen[0]}"
            problems.append(ConfigProblem(source, "", field, reason))
    return None if chosen is None else chosen[1]
