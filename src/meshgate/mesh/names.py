"""Which mesh DNS names answer with which addresses (pure).

Built from the routing table in use: a listener with a `dns_name` answers
with the address it is bound to; a wildcard bind (0.0.0.0, ::) answers with
the mesh addresses, when known. Zones default to the parent domain of each
name (`my-app.mesh.internal` -> `mesh.internal`), so names beside it get
NXDOMAIN and everything else REFUSED.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from meshgate.mesh.dns import DnsRecords
from meshgate.routing.table import RouteTable


def default_zones(names: Sequence[str]) -> tuple[str, ...]:
    zones = [name.partition(".")[2] or name for name in names]
    return tuple(dict.fromkeys(zones))


def records_for(
    table: RouteTable, mesh_addresses: Sequence[str], zones: Sequence[str] = ()
) -> DnsRecords | None:
    """The records the table asks for, or None when no listener has a name."""
    names: dict[str, list[str]] = {}
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
