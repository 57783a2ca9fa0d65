"""Netlink I/O for mesh bind-address detection (the decision is in `bindaddr`).

`read_netstate` reads links, addresses and default routes through pyroute2
(blocking, in its own selector loop: pyroute2's asyncio API fails on uvloop);
`AddressWatch` is a plain netlink socket subscribed to link and address
groups, read with `loop.sock_recv`, that wakes its reader on any change
(bursts coalesced); `detect` waits up to `wait` seconds for a mesh interface,
then falls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK

from meshgate.mesh.bindaddr import (
    BIND_WAIT,
    COALESCE_WINDOW,
    PREFERRED_NAMES,
    RT_TABLE_MAIN,
    RTN_UNICAST,
    AddrRecord,
    BindChoice,
    DefaultRoute,
    Iface,
    LinkRecord,
    assemble,
    choose,
    fallback_choice,
    route_sources,
)

log = logging.getLogger("meshgate.mesh.netlink")

# Netlink datagrams are at most a page or two; the watcher does not parse them.
_RECV_SIZE = 65536


@dataclass(frozen=True, slots=True)
class NetState:
    """One consistent read: the interfaces and the default route's source addresses."""

    ifaces: tuple[Iface, ...]
    default_route_addresses: frozenset[str]


class _Rtnl:
    """The pyroute2 calls this module makes, returning typed records.

    pyroute2 0.9 runs each call on an asyncio loop. Its netlink endpoint is a
    datagram transport on an AF_NETLINK socket, which uvloop cannot host
    (svinota/pyroute2#1335, MagicStack/uvloop#676), and a loop cannot run
    inside the thread's running one either. So every read gets a private
    stdlib selector loop in the calling thread, and async callers go through
    `run_in_executor` (`netstate`).
    """

    def __init__(self, ipr: Any) -> None:
        self._ipr = ipr

    def links(self) -> list[LinkRecord]:
        return [
            LinkRecord(
                index=int(m["index"]),
                name=str(m.get("ifname")),
                flags=int(m["flags"]),
                kind=_opt_str(m.get(("linkinfo", "kind"))),
            )
            for m in self._ipr.link("dump")
        ]

    def addrs(self) -> list[AddrRecord]:
        records = []
        for m in self._ipr.addr("dump"):
            address = m.get("local") or m.get("address")
            if address is None:
                continue
            flags = m.get("IFA_FLAGS")  # 32-bit; the header's ifa_flags holds only 8
            records.append(
                AddrRecord(
                    int(m["index"]), str(address), int(flags if flags is not None else m["flags"])
                )
            )
        return records

    def default_routes(self) -> list[DefaultRoute]:
        routes = []
        for m in self._ipr.route("dump"):
            if m["dst_len"] != 0 or m["type"] != RTN_UNICAST or m.get("table") != RT_TABLE_MAIN:
                continue
            oif = m.get("oif")
            oifs = [int(oif)] if oif is not None else []
            oifs += [int(hop["oif"]) for hop in m.get("multipath") or () if hop.get("oif")]
            routes.append(DefaultRoute(tuple(oifs), _opt_str(m.get("prefsrc"))))
        return routes


@contextlib.contextmanager
def _rtnl() -> Iterator[_Rtnl]:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("netlink reads block: call them through run_in_executor (netstate())")
    loop = asyncio.SelectorEventLoop()
    try:
        ipr = IPRoute(use_event_loop=loop, groups=0)
        try:
            yield _Rtnl(ipr)
        finally:
            ipr.close()
            # Let the closed transport finish; pyroute2 leaves that to the
            # loop's owner, and an unfinished one warns when collected.
            loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


def read_netstate() -> NetState:
    """Read interfaces, addresses and default routes (blocking)."""
    with _rtnl() as rtnl:
        ifaces = assemble(rtnl.links(), rtnl.addrs())
        routes = rtnl.default_routes()
    return NetState(tuple(ifaces), frozenset(route_sources(routes, ifaces)))


def snapshot() -> list[Iface]:
    """The interfaces of this network namespace (blocking)."""
    return list(read_netstate().ifaces)


def default_route_addresses() -> set[str]:
    """The addresses the default routes leave from (blocking)."""
    return set(read_netstate().default_route_addresses)


async def netstate() -> NetState:
    """`read_netstate` in the loop's default executor."""
    return await asyncio.get_running_loop().run_in_executor(None, read_netstate)


class AddressWatch:
    """Wakes its reader when links or addresses change.

    Level-triggered: it says *that* something changed, never what, and the
    reader takes a fresh snapshot. So nothing is lost by coalescing, and a
    receive-buffer overrun (ENOBUFS: the kernel dropped events) is just one
    more change.

    The subscription is made when the object is built, before any snapshot:
    a change between subscribing and the first snapshot is then either in
    that snapshot or announced afterwards, never missed. It is a plain
    non-blocking netlink socket on the running loop (any loop, uvloop too):
    it sends no request and parses nothing, so it needs no pyroute2.
    """

    GROUPS: int = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR

    def __init__(self, *, coalesce: float = COALESCE_WINDOW) -> None:
        self._coalesce = coalesce
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE
        )
        try:
            self._sock.bind((0, self.GROUPS))
        except OSError:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> AddressWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def changed(self) -> None:
        """Return once a change has happened and its burst has settled."""
        with _overrun_is_a_change():
            await asyncio.get_running_loop().sock_recv(self._sock, _RECV_SIZE)
        await asyncio.sleep(self._coalesce)
        while True:
            try:
                with _overrun_is_a_change():
                    self._sock.recv(_RECV_SIZE)
            except BlockingIOError:
                return

    def __aiter__(self) -> AddressWatch:
        return self

    async def __anext__(self) -> None:
        if self._sock.fileno() == -1:
            raise StopAsyncIteration
        await self.changed()


@contextlib.contextmanager
def _overrun_is_a_change() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOBUFS:
            raise


async def wait_for(
    decide: Callable[[NetState], BindChoice | None],
    *,
    wait: float,
    watch: AddressWatch | None = None,
) -> tuple[BindChoice | None, NetState]:
    """Re-read and re-decide on every change until `decide` returns a choice or
    `wait` seconds pass. Returns the choice (None on time-out) and the last read.

    `decide` is `choose` for `--bind auto`, `explicit` for `--bind IFACE`.
    """
    with contextlib.ExitStack() as stack:
        if watch is None:
            watch = stack.enter_context(AddressWatch())
        state = await netstate()
        choice = decide(state)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(wait, 0.0)):
                while choice is None:
                    await watch.changed()
                    state = await netstate()
                    choice = decide(state)
        return choice, state


async def detect(
    *,
    wait: float = BIND_WAIT,
    preferred: Sequence[str] = PREFERRED_NAMES,
    extra: Sequence[str] = (),
    watch: AddressWatch | None = None,
) -> BindChoice:
    """`--bind auto`: the mesh choice as soon as one qualifies, else after
    `wait` seconds the fallback (logged; a 0.0.0.0 fallback as a warning)."""

    def decide(state: NetState) -> BindChoice | None:
        return choose(
            state.ifaces,
            preferred=preferred,
            extra=extra,
            default_route_addresses=state.default_route_addresses,
        )

    choice, state = await wait_for(decide, wait=wait, watch=watch)
    if choice is not None:
        return choice
    choice = fallback_choice(state.ifaces, state.default_route_addresses)
    fields = {"addresses": list(choice.addresses), "reason": choice.reason, "waited": wait}
    if choice.interface is None:
        log.warning("no mesh interface: binding every address", extra={"fields": fields})
    else:
        log.info("no mesh interface: binding a private address", extra={"fields": fields})
    return choice


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)
