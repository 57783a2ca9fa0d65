"""nexd-compatible proxy rules: `--ingress tcp:80:web:8080`, `--egress udp:53:100.100.0.1:53`.

A rule is `PROTO:LISTEN_PORT:HOST:PORT`: listen on LISTEN_PORT, forward to
HOST:PORT. PROTO is tcp or udp in any case; HOST is an IP literal or a DNS
name, IPv6 literals in brackets (`tcp:80:[fd00::1]:80`). `Rule.parse` turns
the text into a frozen value and `str()` prints it back in canonical form.

`rules_to_config` builds the `Config` the rest of meshgate runs on, with the
nexd semantics: ingress listeners on the mesh address, egress listeners on the
cluster side, and several rules on one protocol and port are one listener
balancing round robin over their targets. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from meshgate.config.merge import listeners_overlap
from meshgate.config.model import (
    AUTO,
    Backend,
    Config,
    Endpoint,
    Listener,
    MeshOptions,
    Protocol,
    check_exact_name,
    check_host,
    format_hostport,
)
from meshgate.errors import ConfigError, ConfigProblem

Direction = Literal["ingress", "egress"]

_FORM = "PROTO:LISTEN_PORT:HOST:PORT (e.g. tcp:80:web:8080, IPv6 hosts as [fd00::1])"
_PROTOCOLS: dict[str, Protocol] = {"tcp": "tcp", "udp": "udp"}


class _Bad(Exception):
    """A rule is malformed; `field` says which part (internal to this module)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Rule:
    """One forwarding rule, as given to `--ingress` or `--egress`."""

    direction: Direction
    protocol: Protocol
    listen_port: int
    host: str  # IP literal (normalised, no brackets) or DNS name
    port: int

    @classmethod
    def parse(cls, text: str, direction: Direction) -> Rule:
        """Parse `PROTO:LISTEN_PORT:HOST:PORT`; a ConfigError names the bad part."""
        try:
            protocol, listen_port, host, port = _split(text.strip())
            return cls(
                direction=direction,
                protocol=_protocol(protocol),
                listen_port=_port(listen_port, "listen_port"),
                host=_host(host),
                port=_port(port, "port"),
            )
        except _Bad as bad:
            raise ConfigError.one(
                source=f"--{direction}", obj=text, field=bad.field, reason=bad.reason
            ) from None

    def __str__(self) -> str:
        return f"{self.protocol}:{self.listen_port}:{format_hostport(self.host, self.port)}"


def _split(text: str) -> tuple[str, str, str, str]:
    """Cut a rule into its four parts; only the bracketed host may hold colons."""
    if not text:
        raise _Bad("rule", f"empty rule; expected {_FORM}")
    parts = text.split(":", 2)
    if len(parts) < 3:
        raise _Bad("rule", f"expected {_FORM}, got {len(parts)} part(s)")
    protocol, listen_port, target = parts
    if target.startswith("["):
        host, closed, rest = target[1:].partition("]")
        if not closed:
            raise _Bad("host", f"missing ']' after the IPv6 address in {target!r}")
        if not rest.startswith(":"):
            raise _Bad("rule", f"expected {_FORM}, got no ':PORT' after [{host}]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Bad("host", f"brackets are only for IPv6 addresses, got [{host}]") from None
        return protocol, listen_port, host, rest[1:]
    host, sep, port = target.rpartition(":")
    if not sep:
        raise _Bad("rule", f"expected {_FORM}, got 3 parts")
    if ":" in host:
        # Either an unbracketed IPv6 literal (say how to write it) or extra parts.
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Bad("rule", f"expected {_FORM}, got {text.count(':') + 1} parts") from None
        raise _Bad("host", f"IPv6 addresses need brackets: [{host}]:{port}")
    return protocol, listen_port, host, port


def _protocol(text: str) -> Protocol:
    protocol = _PROTOCOLS.get(text.lower())
    if protocol is None:
        raise _Bad("protocol", f"unknown protocol {text!r}; expected one of: tcp, udp")
    return protocol


def _port(text: str, field: str) -> int:
    if not text:
        raise _Bad(field, "port is missing")
    # isascii() first: str.isdigit() also accepts digits int() rejects ("²").
    if not (text.isascii() and text.isdigit()):
        raise _Bad(field, f"port {text!r} is not a number")
    digits = text.lstrip("0") or "0"
    # The length check keeps int() away from absurdly long digit strings.
    if len(digits) > 5 or not 1 <= int(digits) <= 65535:
        raise _Bad(field, f"port {text} out of range 1-65535")
    return int(digits)


def _host(text: str) -> str:
    if not text:
        raise _Bad("host", "host is missing")
    try:
        return check_host(text)
    except ValueError as err:
        raise _Bad("host", str(err)) from None


@dataclass
class _Group:
    """Rules sharing direction, protocol and listen port: one listener, one pool."""

    first_text: str  # the first rule as the user wrote it, for error messages
    rules: list[Rule] = field(default_factory=list)


# A Linux interface name: up to 15 characters, no slash, colon or space.
_IFNAME = re.compile(r"[^/:\s]{1,15}")


def _address(
    text: str, flag: str, problems: list[ConfigProblem], interface_ok: bool = False
) -> str:
    """The normalised listen address; a bad one is reported and returned as is.

    With `interface_ok` (`--bind`), an interface name is accepted: it becomes
    `auto` restricted to that interface (see `rules_to_config`).
    """
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        if interface_ok and _IFNAME.fullmatch(text) and text not in (".", ".."):
            return AUTO
        what = (
            "an IP address, an interface name or 'auto'"
            if interface_ok
            else ("an IP address or 'auto'")
        )
        reason = f"listen address must be {what}, got {text!r}"
        problems.append(ConfigProblem(flag, text, flag.lstrip("-").replace("-", "_"), reason))
        return text


def rules_to_config(
    ingress: Sequence[str],
    egress: Sequence[str],
    *,
    bind: str = "127.0.0.1",
    cluster_bind: str = "0.0.0.0",
    dns_name: str | None = None,
) -> Config:
    """Build a Config from nexd-style rules, reporting every bad rule at once.

    `dns_name` (`--dns-name`) is the mesh DNS name of the ingress listeners.

    Ingress listeners bind to `bind` (the mesh address; resolving "auto" is
    the caller's job), egress listeners to `cluster_bind`. Rules with the same
    direction, protocol and listen port share one listener and one backend,
    named like `ingress-tcp-80`, whose endpoints are the rules' targets in the
    order given. A rule repeated (in any spelling that parses to the same
    value) adds its target once, without error: giving one target twice is
    more likely a copy-paste than a wish for double weight.
    """
    problems: list[ConfigProblem] = []
    if dns_name is not None:
        try:
            dns_name = check_exact_name(dns_name)
        except ValueError as exc:
            problems.append(ConfigProblem("--dns-name", dns_name, "dns_name", str(exc)))
            dns_name = None
    addresses: dict[Direction, str] = {
        "ingress": _address(bind, "--bind", problems, interface_ok=True),
        "egress": _address(cluster_bind, "--cluster-bind", problems),
    }
    groups: dict[tuple[Direction, Protocol, int], _Group] = {}
    given: tuple[tuple[Direction, Sequence[str]], ...] = (("ingress", ingress), ("egress", egress))
    for direction, texts in given:
        for text in texts:
            try:
                rule = Rule.parse(text, direction)
            except ConfigError as err:
                problems.extend(err.problems)
                continue
            group = groups.setdefault((direction, rule.protocol, rule.listen_port), _Group(text))
            if rule not in group.rules:
                group.rules.append(rule)
    if problems:
        raise ConfigError(problems)

    built: list[tuple[Direction, _Group, Listener, Backend]] = []
    for (direction, protocol, listen_port), group in groups.items():
        name = f"{direction}-{protocol}-{listen_port}"
        listener = Listener(
            name=name,
            address=addresses[direction],
            port=listen_port,
            protocol=protocol,
            backend=name,
            dns_name=dns_name if direction == "ingress" else None,
        )
        endpoints = tuple(Endpoint(host=rule.host, port=rule.port) for rule in group.rules)
        built.append((direction, group, listener, Backend(name=name, endpoints=endpoints)))

    # Within a direction equal ports were merged above; across directions an
    # ingress and an egress listener may still want the same socket.
    ingress_side = [(group, listener) for d, group, listener, _ in built if d == "ingress"]
    for direction, group, listener, _ in built:
        if direction != "egress":
            continue
        for other_group, other in ingress_side:
            if listeners_overlap(other, listener):
                reason = (
                    f"duplicate listener: {listener.protocol} port {listener.port} on "
                    f"{listener.address} overlaps --ingress {other_group.first_text} "
                    f"on {other.address}"
                )
                problems.append(ConfigProblem("--egress", group.first_text, "listen_port", reason))
    if problems:
        raise ConfigError(problems)
    interface = bind if addresses["ingress"] == AUTO and bind.strip().lower() != AUTO else None
    return Config(
        listeners=tuple(listener for _, _, listener, _ in built),
        backends=tuple(backend for _, _, _, backend in built),
        mesh=MeshOptions(bind_interface=interface) if interface and built else None,
    )
