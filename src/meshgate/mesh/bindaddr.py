"""Which address ingress listeners bind on the mesh (`--bind auto`), and when it changes.

Two halves, kept apart so the first can be tested without a kernel:

- **the decision** (pure): given the interfaces a snapshot saw, `choose` names
  the mesh interface and its addresses, `fallback_choice` says what to bind
  when there is none, `explicit` resolves `--bind IP|IFACE`, and `explain`
  prints the reasoning for `meshgate bindaddr`;
- **netlink I/O** lives in `mesh/netlink.py`: `snapshot` /
  `default_route_addresses` read the kernel's view through pyroute2,
  `AddressWatch` wakes its reader when links or addresses change, and
  `detect` combines them into "wait up to N seconds for the mesh, else fall
  back".

The rules, best first (the Netmaker ingress proxy's order, plus the
configured names and any tunnel-like interface):

1. the names `netmaker`, `wg0`, `wg1`, in that order;
2. names given with `--mesh-interface`, in the order given;
3. any WireGuard or point-to-point interface, by name (wireguard-go devices
   are kind "tun" and are found by their point-to-point flag), unless it
   carries the default route: then it is the uplink, not the mesh;

and an interface only qualifies when it is up and has an address a socket can
bind without a scope (not IPv6 link-local). Every such address is returned,
IPv4 and IPv6, so both families are served. With no mesh interface the
fallback is a private address (RFC 1918, or 100.64.0.0/10 as the meshes use,
RFC 6598) that is not the pod's default-route address; 0.0.0.0 is the last
resort and says so.

This module never binds a socket: it returns `BindChoice` values and the
listeners act on them.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger("meshgate.mesh.bindaddr")

# The names the Netmaker proxy looks for, in its order.
PREFERRED_NAMES: tuple[str, ...] = ("netmaker", "wg0", "wg1")

# How long `--bind auto` waits for the mesh interface by default: the
# netclient sidecar starts with the pod and needs tens of seconds on a slow
# node to join; 60 s is what the Netmaker proxy waits too.
BIND_WAIT = 60.0

# A burst of netlink events (an interface created, brought up, addressed, its
# IPv6 address leaving DAD) is read as one change: the watcher waits this long
# after the first event before it wakes its reader, so one burst costs one
# snapshot, and a change is seen at most this late.
COALESCE_WINDOW = 0.1


# Address ranges the fallback accepts: RFC 1918 and the shared address space
# of RFC 6598, which Netmaker-style and Nexodus (100.100.0.0/16) meshes use.
PRIVATE_NETWORKS: tuple[ipaddress.IPv4Network, ...] = tuple(
    ipaddress.IPv4Network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)

# Linux interface names: 1-15 bytes (IFNAMSIZ 16 with the NUL), no '/', ':'
# or whitespace (net/core/dev.c, dev_valid_name).
_IFNAME = re.compile(r"[^/:\s]{1,15}")

LAST_RESORT = "0.0.0.0"


# ---------------------------------------------------------------------------
# The decision (pure)


@dataclass(frozen=True, slots=True)
class Iface:
    """One network interface as a snapshot saw it."""

    name: str
    index: int
    up: bool  # administratively up (IFF_UP); a tun without its process has no carrier yet
    kind: str  # "wireguard", "tun", "veth", "loopback", "other", ...: the kernel's link kind
    pointopoint: bool  # IFF_POINTOPOINT: tun devices, WireGuard, PPP
    addresses: tuple[str, ...]  # every address, IPv4 first; tentative ones are left out


@dataclass(frozen=True, slots=True)
class BindChoice:
    """Where listeners bind, and why."""

    addresses: tuple[str, ...]
    interface: str | None
    reason: str
    fallback: bool  # True: not on the mesh; /readyz is not ready on a fallback


class Tier(Enum):
    """Why an interface may carry the mesh, best first (the rules above)."""

    PREFERRED = "preferred name"
    CONFIGURED = "--mesh-interface"
    TUNNEL = "WireGuard or point-to-point"


@dataclass(frozen=True, slots=True)
class Assessment:
    """What one interface is to the decision: a candidate (`tier`) or not (`problem`)."""

    tier: Tier | None
    problem: str | None  # why it cannot carry the mesh; None for a candidate
    order: tuple[int, int, str]  # sort key among candidates


def bindable(address: str) -> bool:
    """Can a listener bind this address without more context?

    IPv6 link-local addresses need a scope id, loopback is not reachable from
    the mesh, and wildcard or multicast addresses are not an interface's own.
    """
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.is_link_local:
        return False
    return not (ip.is_loopback or ip.is_unspecified or ip.is_multicast)


def usable_addresses(iface: Iface) -> tuple[str, ...]:
    return tuple(a for a in iface.addresses if bindable(a))


def assess(
    iface: Iface,
    *,
    preferred: Sequence[str] = PREFERRED_NAMES,
    extra: Sequence[str] = (),
    default_route_addresses: Collection[str] = (),
) -> Assessment:
    """Apply the rules to one interface."""
    if iface.name in preferred:
        tier, order = Tier.PREFERRED, (0, list(preferred).index(iface.name), "")
    elif iface.name in extra:
        tier, order = Tier.CONFIGURED, (1, list(extra).index(iface.name), "")
    elif iface.kind == "wireguard" or iface.pointopoint:
        tier, order = Tier.TUNNEL, (2, 0, iface.name)
    elif iface.kind == "loopback":
        return Assessment(None, "loopback", (9, 0, iface.name))
    else:
        problem = f"not a mesh interface ({iface.kind}, not WireGuard or point-to-point)"
        return Assessment(None, problem, (9, 0, iface.name))
    usable = usable_addresses(iface)
    if not iface.up:
        return Assessment(tier, "down", order)
    if not usable:
        return Assessment(tier, "no usable address yet", order)
    # Only for interfaces found by type: a named one is the mesh by convention
    # or by configuration, even when the mesh is also the way out.
    if tier is Tier.TUNNEL and _normalized(default_route_addresses).intersection(usable):
        return Assessment(tier, "carries the default route (the uplink, not the mesh)", order)
    return Assessment(tier, None, order)


def choose(
    ifaces: Sequence[Iface],
    *,
    preferred: Sequence[str] = PREFERRED_NAMES,
    extra: Sequence[str] = (),
    default_route_addresses: Collection[str] = (),
) -> BindChoice | None:
    """The mesh interface's addresses, or None while no interface qualifies."""
    best: tuple[tuple[int, int, str], Iface, Tier] | None = None
    for iface in ifaces:
        a = assess(
            iface, preferred=preferred, extra=extra, default_route_addresses=default_route_addresses
        )
        if a.problem is None and a.tier is not None and (best is None or a.order < best[0]):
            best = (a.order, iface, a.tier)
    if best is None:
        return None
    _, iface, tier = best
    label = _tunnel_label(iface) if tier is Tier.TUNNEL else tier.value
    return BindChoice(
        usable_addresses(iface), iface.name, f"interface {iface.name} ({label})", False
    )


def fallback_choice(
    ifaces: Sequence[Iface], default_route_addresses: Collection[str]
) -> BindChoice:
    """What to bind when no mesh interface appeared in time.

    A private address that is not the default route's: in a pod, not eth0's,
    so a proxy without its mesh never looks as if it served the mesh on the
    cluster network. Interfaces by name, so a pod makes the same choice
    every time.
    """
    default = _normalized(default_route_addresses)
    for iface in sorted(ifaces, key=lambda i: i.name):
        if not iface.up or iface.kind == "loopback":
            continue
        private = tuple(a for a in usable_addresses(iface) if is_private(a) and a not in default)
        if private:
            reason = f"no mesh interface; private address on {iface.name}, off the default route"
            return BindChoice(private, iface.name, reason, True)
    reason = (
        "WARNING: no mesh interface and no private address off the default route; "
        f"listening on {LAST_RESORT} (every IPv4 address, the cluster network too)"
    )
    return BindChoice((LAST_RESORT,), None, reason, True)


def explicit(value: str, ifaces: Sequence[Iface]) -> BindChoice | None:
    """Resolve `--bind IP` or `--bind IFACE` (anything but "auto").

    An IP is taken as given, even one no interface has yet (the listener's
    bind then reports it). An interface gives its addresses once it is up and
    has one; until then None, and the caller waits as for the mesh.
    """
    if value == "auto":
        raise ValueError("--bind auto: use detect(), not explicit()")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return BindChoice((str(ip),), None, "given", False)
    if not _IFNAME.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"--bind {value!r}: neither an IP address nor an interface name")
    for iface in ifaces:
        if iface.name == value and iface.up and (usable := usable_addresses(iface)):
            return BindChoice(usable, value, f"interface {value} (given)", False)
    return None


def explain(
    ifaces: Sequence[Iface],
    choice: BindChoice | None,
    *,
    preferred: Sequence[str] = PREFERRED_NAMES,
    extra: Sequence[str] = (),
    default_route_addresses: Collection[str] = (),
) -> list[str]:
    """Lines for `meshgate bindaddr`: the choice, then every interface and its verdict."""
    if choice is None:
        lines = ["no mesh interface yet (with --wait, detection waits for one)"]
    else:
        where = f" on {choice.interface}" if choice.interface else ""
        kind = "fallback" if choice.fallback else "bind"
        lines = [f"{kind}: {', '.join(choice.addresses)}{where} - {choice.reason}"]
    default = _normalized(default_route_addresses)
    for iface in sorted(ifaces, key=lambda i: i.index):
        a = assess(iface, preferred=preferred, extra=extra, default_route_addresses=default)
        if choice is not None and choice.interface == iface.name:
            verdict = "chosen"
        elif a.problem is not None:
            verdict = a.problem
        elif choice is not None and not choice.fallback:
            verdict = f"qualifies ({a.tier.value if a.tier else ''}), but ranks below the choice"
        else:
            verdict = "qualifies"
        flags = [
            iface.kind,
            "point-to-point" if iface.pointopoint else "",
            "up" if iface.up else "down",
        ]
        addresses = ", ".join(
            addr + (" (default route)" if addr in default else "") for addr in iface.addresses
        )
        lines.append(
            f"  {iface.name}: {', '.join(f for f in flags if f)}; "
            f"{addresses or 'no address'} -> {verdict}"
        )
    return lines


def is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return isinstance(ip, ipaddress.IPv4Address) and any(ip in n for n in PRIVATE_NETWORKS)


def _tunnel_label(iface: Iface) -> str:
    return "WireGuard" if iface.kind == "wireguard" else f"point-to-point, {iface.kind}"


def _normalized(addresses: Collection[str]) -> frozenset[str]:
    return frozenset(str(ipaddress.ip_address(a)) for a in addresses)


# ---------------------------------------------------------------------------
# From netlink records to interfaces (pure; the adapter below feeds it)

# <linux/if.h> and <linux/if_addr.h>
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_POINTOPOINT = 0x10
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
RT_TABLE_MAIN = 254
RTN_UNICAST = 1


@dataclass(frozen=True, slots=True)
class LinkRecord:
    index: int
    name: str
    flags: int  # IFF_*
    kind: str | None  # IFLA_INFO_KIND; physical NICs and lo have none


@dataclass(frozen=True, slots=True)
class AddrRecord:
    index: int
    address: str  # IFA_LOCAL when present: on a point-to-point link IFA_ADDRESS is the peer
    flags: int  # IFA_F_*


@dataclass(frozen=True, slots=True)
class DefaultRoute:
    oifs: tuple[int, ...]  # RTA_OIF, or each RTA_MULTIPATH hop's
    prefsrc: str | None


def assemble(links: Sequence[LinkRecord], addrs: Sequence[AddrRecord]) -> list[Iface]:
    """Interfaces from link and address dumps.

    Addresses still in (or failed) duplicate address detection are left out:
    the kernel refuses to bind them (EADDRNOTAVAIL). When DAD finishes the
    kernel announces the address again, and the watcher sees it.
    """
    by_index: dict[int, list[str]] = {link.index: [] for link in links}
    for rec in addrs:
        if rec.index in by_index and not rec.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
            by_index[rec.index].append(str(ipaddress.ip_address(rec.address)))
    ifaces = []
    for link in links:
        kind = "loopback" if link.flags & IFF_LOOPBACK else (link.kind or "other")
        addresses = sorted(by_index[link.index], key=lambda a: ipaddress.ip_address(a).version)
        ifaces.append(
            Iface(
                name=link.name,
                index=link.index,
                up=bool(link.flags & IFF_UP),
                kind=kind,
                pointopoint=bool(link.flags & IFF_POINTOPOINT),
                addresses=tuple(addresses),
            )
        )
    return ifaces


def route_sources(routes: Sequence[DefaultRoute], ifaces: Sequence[Iface]) -> set[str]:
    """The addresses traffic to the default route leaves from: the pod's own (eth0) addresses."""
    by_index = {i.index: i for i in ifaces}
    sources: set[str] = set()
    for route in routes:
        if route.prefsrc:
            sources.add(str(ipaddress.ip_address(route.prefsrc)))
        for oif in route.oifs:
            if oif in by_index:
                sources.update(usable_addresses(by_index[oif]))
    return sources
