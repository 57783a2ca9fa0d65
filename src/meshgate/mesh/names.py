"""Which mesh DNS names answer with which addresses (pure).

Built from the routing table in use: a listener with a `dns_name` answers
with the address it is bound to; a wildcard bind (0.0.0.0, ::) answers with
the mesh addresses, when known. Zones default to the parent domain of each
name (`my-app.mesh.internal` -> `mesh.internal`), so names beside it get
NXDOMAIN and everything else REFUSED.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from meshgate.mesh.dns import DnsRecords
from meshgate.routing.table import RouteTable


def default_zones(names: Sequence[str]) -> tuple[str, ...]:
    zones = [name.partition(".")[2] or name for name in names]
    return tuple(dict.fromkeys(zones))


def parse_hosts(text: str) -> tuple[dict[str, list[str]], list[str]]:
    """Names from hosts-file lines ("IP NAME [NAME ...]", # comments): the
    format the operator's DNS records ConfigMap holds. Returns the names and
    one message per line that could not be used (that line is skipped)."""
    names: dict[str, list[str]] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        address, *hosts = line.split()
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            problems.append(f"line {number}: not an IP address: {address!r}")
            continue
        if not hosts:
            problems.append(f"line {number}: no name after {address}")
            continue
        for host in hosts:
            names.setdefault(host.lower().rstrip("."), []).append(address)
    return names, problems


def records_for(
    table: RouteTable,
    mesh_addresses: Sequence[str],
    zones: Sequence[str] = (),
    extra: Mapping[str, Sequence[str]] | None = None,
) -> DnsRecords | None:
    """The records the table asks for, plus `extra` names (the operator's
    records of other proxies), or None when there is no name at all."""
    names: dict[str, list[str]] = {name: list(addrs) for name, addrs in (extra or {}).items()}
    for spec in table.listeners:
        if spec.dns_name is None:
            continue
        address = spec.key.address
        addresses = (
            list(mesh_addresses) if ipaddress.ip_address(address).is_unspecified else [address]
        )
        names.setdefault(spec.dns_name, []).extend(addresses)
    if not names:
        return None
    return DnsRecords(
        zones=tuple(zones) or default_zones(list(names)),
        names={name: tuple(dict.fromkeys(addrs)) for name, addrs in names.items()},
    )
