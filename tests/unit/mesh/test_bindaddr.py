"""Bind-address detection: the rules on made-up interfaces, then netlink in a namespace.

The netlink tests build a network namespace per test with `ip netns`, a tun
device named `netmaker` (this kernel has no dummy links; a tun device is
point-to-point like a wireguard-go one) and veth pairs, and run the code
under test in a thread that has entered the namespace (setns is per thread,
and the threads that thread starts, such as the loop's executor, inherit it).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from meshgate import aio
from meshgate.mesh.bindaddr import (
    IFA_F_DADFAILED,
    IFA_F_TENTATIVE,
    IFF_LOOPBACK,
    IFF_POINTOPOINT,
    IFF_UP,
    LAST_RESORT,
    AddrRecord,
    BindChoice,
    DefaultRoute,
    Iface,
    LinkRecord,
    assemble,
    choose,
    explain,
    explicit,
    fallback_choice,
    is_private,
    route_sources,
)
from meshgate.mesh.netlink import (
    AddressWatch,
    default_route_addresses,
    detect,
    read_netstate,
    snapshot,
)

T = TypeVar("T")


def iface(
    name: str,
    *addresses: str,
    kind: str = "other",
    up: bool = True,
    p2p: bool = False,
    index: int = 0,
) -> Iface:
    return Iface(name, index, up, kind, p2p, addresses)


def tun(name: str, *addresses: str, up: bool = True, index: int = 0) -> Iface:
    return iface(name, *addresses, kind="tun", p2p=True, up=up, index=index)


def wg(name: str, *addresses: str, index: int = 0) -> Iface:
    return iface(name, *addresses, kind="wireguard", p2p=True, index=index)


ETH0 = iface("eth0", "10.244.1.7", "fd00:10:244::7", "fe80::1", kind="veth")
POD_DEFAULT = {"10.244.1.7", "fd00:10:244::7"}


# --- choose: the order of the rules ------------------------------------------


def test_preferred_names_win_in_their_order_whatever_the_snapshot_order() -> None:
    ifaces = [tun("wg1", "10.9.0.1"), tun("wg0", "10.8.0.1"), tun("netmaker", "100.100.0.2")]
    assert choose(ifaces) == BindChoice(
        ("100.100.0.2",), "netmaker", "interface netmaker (preferred name)", False
    )
    assert choose(ifaces[:2]) == BindChoice(
        ("10.8.0.1",), "wg0", "interface wg0 (preferred name)", False
    )


def test_the_preferred_list_can_be_replaced() -> None:
    ifaces = [tun("netmaker", "100.100.0.2"), tun("nexodus", "100.100.0.9")]
    choice = choose(ifaces, preferred=("nexodus",))
    assert choice is not None
    assert choice.interface == "nexodus"


def test_configured_names_come_after_preferred_ones_in_their_order() -> None:
    ifaces = [iface("mesh-b", "10.2.0.1"), iface("mesh-a", "10.1.0.1"), ETH0]
    choice = choose(ifaces, extra=("mesh-b", "mesh-a"))
    assert choice == BindChoice(
        ("10.2.0.1",), "mesh-b", "interface mesh-b (--mesh-interface)", False
    )
    with_preferred = choose([*ifaces, tun("wg1", "10.9.0.1")], extra=("mesh-b",))
    assert with_preferred is not None
    assert with_preferred.interface == "wg1"


def test_a_configured_name_is_taken_whatever_its_kind() -> None:
    choice = choose([ETH0], extra=("eth0",))
    assert choice is not None
    assert choice.addresses == ("10.244.1.7", "fd00:10:244::7")


def test_a_configured_name_beats_any_tunnel() -> None:
    choice = choose([wg("a-wg", "10.1.0.1"), iface("mesh", "10.2.0.1")], extra=("mesh",))
    assert choice is not None
    assert choice.interface == "mesh"


def test_a_down_interface_is_skipped() -> None:
    choice = choose([tun("netmaker", "100.100.0.2", up=False), tun("wg0", "10.8.0.1")])
    assert choice is not None
    assert choice.interface == "wg0"
    assert choose([tun("netmaker", "100.100.0.2", up=False)]) is None


def test_an_interface_without_an_address_is_skipped() -> None:
    assert choose([tun("netmaker"), ETH0]) is None
    choice = choose([tun("netmaker"), tun("wg1", "10.9.0.1")])
    assert choice is not None
    assert choice.interface == "wg1"


def test_an_ipv6_link_local_address_alone_does_not_qualify() -> None:
    assert choose([tun("netmaker", "fe80::1")]) is None
    choice = choose([tun("netmaker", "fe80::1", "fd00::2")])
    assert choice is not None
    assert choice.addresses == ("fd00::2",)


def test_both_families_are_returned() -> None:
    choice = choose([tun("netmaker", "100.100.0.2", "fd6d:6573:6800::2", "fe80::2")])
    assert choice is not None
    assert choice.addresses == ("100.100.0.2", "fd6d:6573:6800::2")


def test_a_wireguard_interface_is_picked_when_no_name_is_known() -> None:
    choice = choose([ETH0, wg("mesh7", "10.7.0.1")], default_route_addresses=POD_DEFAULT)
    assert choice == BindChoice(("10.7.0.1",), "mesh7", "interface mesh7 (WireGuard)", False)


def test_a_point_to_point_interface_is_picked_when_no_name_is_known() -> None:
    choice = choose([ETH0, tun("nexd0", "100.100.0.5")], default_route_addresses=POD_DEFAULT)
    assert choice is not None
    assert choice.interface == "nexd0"
    assert choice.reason == "interface nexd0 (point-to-point, tun)"


def test_tunnels_found_by_type_are_ranked_by_name() -> None:
    ifaces = [wg("zz-wg", "10.1.0.1"), tun("aa-tun", "10.2.0.1"), wg("mm-wg", "10.3.0.1")]
    for order in (ifaces, ifaces[::-1]):
        choice = choose(order)
        assert choice is not None
        assert choice.interface == "aa-tun"


def test_a_tunnel_carrying_the_default_route_is_the_uplink_not_the_mesh() -> None:
    uplink = tun("ppp0", "198.51.100.4")
    assert choose([uplink], default_route_addresses={"198.51.100.4"}) is None
    # ...but a name that says "mesh" is trusted, even as the way out
    named = tun("netmaker", "100.100.0.2")
    assert choose([named], default_route_addresses={"100.100.0.2"}) is not None


def test_ordinary_interfaces_and_loopback_never_qualify() -> None:
    lo = iface("lo", "127.0.0.1", "::1", kind="loopback")
    assert choose([lo, ETH0, iface("br0", "192.168.1.1", kind="bridge")]) is None


_names = st.sampled_from(["netmaker", "wg0", "wg1", "mesh", "tun0", "a-wg", "eth0", "lo"])
_addresses = st.sampled_from(["100.100.0.2", "10.0.0.1", "203.0.113.9", "fd00::1", "fe80::1"])
_ifaces = st.lists(
    st.builds(
        Iface,
        name=_names,
        index=st.integers(1, 9),
        up=st.booleans(),
        kind=st.sampled_from(["wireguard", "tun", "veth", "loopback", "other"]),
        pointopoint=st.booleans(),
        addresses=st.lists(_addresses, unique=True, max_size=3).map(tuple),
    ),
    unique_by=lambda i: i.name,
    max_size=6,
)


@given(ifaces=_ifaces, default=st.sets(_addresses), data=st.data())
def test_the_choice_is_deterministic_and_bindable(
    ifaces: list[Iface], default: set[str], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(ifaces))
    choice = choose(ifaces, extra=("mesh",), default_route_addresses=default)
    assert choice == choose(shuffled, extra=("mesh",), default_route_addresses=default)
    if choice is not None:
        chosen = next(i for i in ifaces if i.name == choice.interface)
        assert chosen.up
        assert choice.addresses
        assert set(choice.addresses) <= set(chosen.addresses) - {"fe80::1"}
        assert not choice.fallback
    fallback = fallback_choice(ifaces, default)
    assert fallback.fallback
    assert not set(fallback.addresses) & default
    assert fallback == fallback_choice(shuffled, default)


# --- fallback_choice -----------------------------------------------------------


def test_fallback_takes_a_private_address_that_is_not_the_default_routes() -> None:
    ifaces = [ETH0, iface("eth1", "172.16.5.5", "fd01::5", kind="veth")]
    choice = fallback_choice(ifaces, POD_DEFAULT)
    assert choice.addresses == ("172.16.5.5",)
    assert choice.interface == "eth1"
    assert choice.fallback
    assert "eth1" in choice.reason


@pytest.mark.parametrize(
    ("address", "private"),
    [
        ("10.1.2.3", True),
        ("172.31.255.255", True),
        ("172.32.0.1", False),
        ("192.168.0.1", True),
        ("100.64.0.1", True),
        ("100.100.0.2", True),
        ("100.127.255.254", True),
        ("100.128.0.1", False),
        ("203.0.113.9", False),
        ("127.0.0.1", False),
        ("fd00::1", False),
    ],
)
def test_private_means_rfc1918_and_the_shared_address_space(address: str, private: bool) -> None:
    assert is_private(address) is private


def test_fallback_counts_100_64_as_private() -> None:
    choice = fallback_choice([ETH0, iface("nexd", "100.100.0.7")], POD_DEFAULT)
    assert choice.addresses == ("100.100.0.7",)


def test_fallback_skips_loopback_down_and_public_addresses() -> None:
    ifaces = [
        iface("lo", "127.0.0.1", kind="loopback"),
        iface("a-down", "10.3.0.1", up=False),
        iface("b-public", "203.0.113.9"),
        ETH0,
    ]
    choice = fallback_choice(ifaces, POD_DEFAULT)
    assert choice == BindChoice((LAST_RESORT,), None, choice.reason, True)
    assert choice.reason.startswith("WARNING")


def test_fallback_to_0_0_0_0_when_nothing_at_all() -> None:
    choice = fallback_choice([], ())
    assert choice.addresses == ("0.0.0.0",)
    assert choice.fallback


def test_fallback_compares_default_route_addresses_by_value() -> None:
    pod = iface("eth0", "fd00::7", "10.0.0.7")
    assert fallback_choice([pod], {"10.0.0.7"}).addresses == (LAST_RESORT,)
    assert fallback_choice([pod], {"fd00:0::7"}).addresses == ("10.0.0.7",)


# --- explicit ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "address"),
    [("100.100.0.2", "100.100.0.2"), ("fd00:0::1", "fd00::1"), ("0.0.0.0", "0.0.0.0")],
)
def test_an_explicit_ip_is_taken_as_given(given: str, address: str) -> None:
    assert explicit(given, []) == BindChoice((address,), None, "given", False)


def test_an_explicit_interface_gives_its_addresses() -> None:
    assert explicit("eth0", [ETH0]) == BindChoice(
        ("10.244.1.7", "fd00:10:244::7"), "eth0", "interface eth0 (given)", False
    )


@pytest.mark.parametrize(
    "ifaces",
    [[], [tun("mesh0")], [tun("mesh0", "fe80::1")], [tun("mesh0", "10.0.0.1", up=False)]],
    ids=["absent", "no address", "link-local only", "down"],
)
def test_an_explicit_interface_that_is_not_ready_gives_none(ifaces: list[Iface]) -> None:
    assert explicit("mesh0", ifaces) is None


@pytest.mark.parametrize("value", ["eth/0", "has space", "x" * 16, "", "..", "auto"])
def test_explicit_rejects_what_is_neither_ip_nor_interface(value: str) -> None:
    with pytest.raises(ValueError, match="--bind"):
        explicit(value, [])


# --- explain -------------------------------------------------------------------


def test_explain_names_the_choice_and_a_verdict_for_every_interface() -> None:
    ifaces = [
        iface("lo", "127.0.0.1", kind="loopback", index=1),
        iface("eth0", "10.244.1.7", kind="veth", index=2),
        tun("netmaker", "100.100.0.2", "fd00::2", index=3),
        tun("wg0", "10.8.0.1", up=False, index=4),
        wg("other-wg", "10.7.0.1", index=5),
    ]
    choice = choose(ifaces, default_route_addresses={"10.244.1.7"})
    lines = explain(ifaces, choice, default_route_addresses={"10.244.1.7"})
    assert lines[0] == (
        "bind: 100.100.0.2, fd00::2 on netmaker - interface netmaker (preferred name)"
    )
    assert len(lines) == 1 + len(ifaces)
    by_name = {line.split(":")[0].strip(): line for line in lines[1:]}
    assert by_name["lo"].endswith("-> loopback")
    assert "10.244.1.7 (default route)" in by_name["eth0"]
    assert "not a mesh interface (veth" in by_name["eth0"]
    assert by_name["netmaker"].endswith("-> chosen")
    assert by_name["wg0"].endswith("-> down")
    assert "ranks below the choice" in by_name["other-wg"]


def test_explain_without_a_choice_and_with_a_fallback() -> None:
    ifaces = [tun("netmaker"), ETH0]
    assert explain(ifaces, None)[0].startswith("no mesh interface yet")
    assert "no usable address yet" in explain(ifaces, None)[1]
    fallback = fallback_choice(ifaces, POD_DEFAULT)
    assert explain(ifaces, fallback)[0].startswith("fallback: 0.0.0.0 - WARNING")


# --- from netlink records ------------------------------------------------------


def test_assemble_maps_flags_and_kinds_and_drops_unbindable_addresses() -> None:
    links = [
        LinkRecord(1, "lo", IFF_UP | IFF_LOOPBACK, None),
        LinkRecord(2, "netmaker", IFF_UP | IFF_POINTOPOINT, "tun"),
        LinkRecord(3, "eth0", 0, None),
    ]
    addrs = [
        AddrRecord(2, "fd00::2", 0),
        AddrRecord(2, "100.100.0.2", 0),
        AddrRecord(2, "fd00::3", IFA_F_TENTATIVE),
        AddrRecord(2, "fd00::4", IFA_F_DADFAILED),
        AddrRecord(9, "10.9.9.9", 0),  # its link was gone by the link dump
        AddrRecord(1, "127.0.0.1", 0),
    ]
    lo, netmaker, eth0 = assemble(links, addrs)
    assert lo == Iface("lo", 1, True, "loopback", False, ("127.0.0.1",))
    assert netmaker == Iface("netmaker", 2, True, "tun", True, ("100.100.0.2", "fd00::2"))
    assert eth0 == Iface("eth0", 3, False, "other", False, ())


def test_route_sources_are_prefsrc_and_the_outgoing_interfaces_addresses() -> None:
    ifaces = [
        iface("eth0", "10.0.0.7", "fe80::7", index=2),
        iface("eth1", "10.1.0.7", index=3),
        iface("eth2", "10.2.0.7", index=4),
    ]
    routes = [DefaultRoute((2,), None), DefaultRoute((3,), "192.0.2.1"), DefaultRoute((99,), None)]
    assert route_sources(routes, ifaces) == {"10.0.0.7", "10.1.0.7", "192.0.2.1"}


# --- netlink, in a network namespace -------------------------------------------

CLONE_NEWNET = 0x40000000


def _enter_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(name: str, fn: Callable[[], T], *, timeout: float = 30.0) -> T:
    """Run fn in a new thread that has entered the namespace; other threads stay put."""
    results: list[T] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            _enter_netns(name)
            results.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body, name=f"in-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"still running in {name} after {timeout} s")
    if errors:
        raise errors[0]
    return results[0]


def run_in_netns(name: str, main: Callable[[], Awaitable[T]]) -> T:
    async def wrapped() -> T:
        return await main()

    def run() -> T:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(wrapped())

    return in_netns(name, run)


def ip(ns: str, *args: str) -> None:
    done = subprocess.run(
        ["ip", "-n", ns, *args], capture_output=True, text=True, timeout=10, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"ip -n {ns} {' '.join(args)}: {done.stderr.strip()}")


async def aip(ns: str, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "ip", "-n", ns, *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"ip -n {ns} {' '.join(args)}: {stderr.decode().strip()}")


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with lo up, deleted afterwards whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (ip)")
    name = f"mg-bindaddr-{uuid.uuid4().hex[:10]}"
    created = subprocess.run(
        ["ip", "netns", "add", name], capture_output=True, text=True, check=False
    )
    if created.returncode != 0:
        pytest.skip(f"ip netns add does not work here: {created.stderr.strip()}")
    try:
        ip(name, "link", "set", "lo", "up")
        yield name
    finally:
        # Deleting the namespace deletes the tun and veth devices in it.
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def add_pod_network(ns: str) -> None:
    """eth0 as in a pod: a veth with the default route through it."""
    ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    ip(ns, "link", "set", "peer0", "up")
    ip(ns, "link", "set", "eth0", "up")
    ip(ns, "addr", "add", "10.1.0.5/24", "dev", "eth0")
    ip(ns, "route", "add", "default", "via", "10.1.0.1", "dev", "eth0", "onlink")


# The "peer" form, as point-to-point links are addressed: IFA_ADDRESS is then
# the peer's address and IFA_LOCAL ours.
MESH_ADDRESS = ("addr", "add", "100.100.0.2", "peer", "100.100.0.1", "dev", "netmaker")


def add_mesh_tun(ns: str, *, address: bool = True) -> None:
    ip(ns, "tuntap", "add", "dev", "netmaker", "mode", "tun")
    ip(ns, "link", "set", "netmaker", "up")
    if address:
        ip(ns, *MESH_ADDRESS)


NETMAKER = BindChoice(("100.100.0.2",), "netmaker", "interface netmaker (preferred name)", False)

needs_root = pytest.mark.needs_root


@needs_root
def test_snapshot_reads_a_tun_device_with_its_local_addresses(netns: str) -> None:
    add_pod_network(netns)
    add_mesh_tun(netns)
    ip(netns, "addr", "add", "fd00:6d67::2/64", "dev", "netmaker", "nodad")

    state = in_netns(netns, read_netstate)
    ifaces = {i.name: i for i in state.ifaces}
    netmaker = ifaces["netmaker"]
    assert (netmaker.kind, netmaker.pointopoint, netmaker.up) == ("tun", True, True)
    assert netmaker.addresses == ("100.100.0.2", "fd00:6d67::2")
    assert (ifaces["eth0"].kind, ifaces["eth0"].pointopoint) == ("veth", False)
    assert ifaces["lo"].kind == "loopback"
    assert state.default_route_addresses == {"10.1.0.5"}
    assert in_netns(netns, default_route_addresses) == {"10.1.0.5"}
    assert {i.name for i in in_netns(netns, snapshot)} == set(ifaces)


@needs_root
def test_detect_returns_at_once_when_the_mesh_is_there(netns: str) -> None:
    add_pod_network(netns)
    add_mesh_tun(netns)

    async def main() -> BindChoice:
        async with asyncio.timeout(5):  # far below the wait: it did not wait
            return await detect(wait=30)

    assert run_in_netns(netns, main) == NETMAKER


@needs_root
@pytest.mark.parametrize("late", ["address", "interface"])
def test_detect_waits_for_the_mesh_and_returns_when_it_appears(netns: str, late: str) -> None:
    add_pod_network(netns)
    if late == "address":
        add_mesh_tun(netns, address=False)

    async def main() -> BindChoice:
        with AddressWatch() as watch:
            task = aio.spawn(detect(wait=30, watch=watch), name="detect")
            try:
                done, _ = await asyncio.wait({task}, timeout=0.5)
                assert not done, f"nothing qualified, yet detect returned {task.result()}"
                if late == "interface":
                    await aip(netns, "tuntap", "add", "dev", "netmaker", "mode", "tun")
                    await aip(netns, "link", "set", "netmaker", "up")
                await aip(netns, *MESH_ADDRESS)
                async with asyncio.timeout(10):  # far below the wait: the watch woke it
                    return await task
            finally:
                await aio.cancel_and_wait([task])

    assert run_in_netns(netns, main) == NETMAKER


@needs_root
@pytest.mark.parametrize(
    ("other", "expected"),
    [(("eth1", "100.64.7.7/10"), ("100.64.7.7",)), (None, (LAST_RESORT,))],
    ids=["private", "last resort"],
)
def test_detect_falls_back_after_the_wait(
    netns: str, other: tuple[str, str] | None, expected: tuple[str, ...]
) -> None:
    add_pod_network(netns)
    add_mesh_tun(netns, address=False)  # there, but never gets an address
    if other is not None:
        name, address = other
        ip(netns, "link", "add", name, "type", "veth", "peer", "name", f"{name}-peer")
        ip(netns, "link", "set", name, "up")
        ip(netns, "addr", "add", address, "dev", name)

    async def main() -> BindChoice:
        async with asyncio.timeout(5):
            return await detect(wait=0.3)

    choice = run_in_netns(netns, main)
    assert choice.addresses == expected  # never eth0's 10.1.0.5: the default route's
    assert choice.fallback


@needs_root
def test_the_watch_reports_a_burst_once_even_if_it_came_before_the_await(netns: str) -> None:
    add_mesh_tun(netns, address=False)  # IPv4 only on a tun: no DAD events trickle in later

    async def main() -> None:
        with AddressWatch() as watch:
            # The kernel queues multicast events on the socket as the change
            # happens, so the whole burst is waiting when the batch exits.
            batch = "".join(f"addr add 10.77.0.{n}/32 dev netmaker\n" for n in range(1, 41))
            proc = await asyncio.create_subprocess_exec(
                "ip", "-n", netns, "-batch", "-", stdin=subprocess.PIPE
            )
            await proc.communicate(batch.encode())
            assert proc.returncode == 0
            async with asyncio.timeout(5):
                await watch.changed()
            second = aio.spawn(watch.changed(), name="second change")
            try:
                done, _ = await asyncio.wait({second}, timeout=0.3)
                assert not done, "the burst was reported more than once"
                await aip(netns, "addr", "del", "10.77.0.1/32", "dev", "netmaker")
                async with asyncio.timeout(5):
                    await second
            finally:
                await aio.cancel_and_wait([second])

    run_in_netns(netns, main)
