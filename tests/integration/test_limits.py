"""Accept-side limits and staged overload, on real loopback sockets.

In-process (a Dataplane applied from a compiled config), so a test can take
an overload sample when it wants one instead of waiting for the sampler;
the descriptor-exhaustion test runs `meshgate run` as a child process with
a low RLIMIT_NOFILE.

What a user would notice, each time: a client served or not (echo answered,
connection closed at once, connection queued until a slot frees), the
listener's `accepting` in /status, the refusal counters and gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshgate.config.model import Config
from meshgate.dataplane.dataplane import Dataplane
from meshgate.dataplane.overload import Stage
from meshgate.obs import process as process_module
from meshgate.obs.metrics import Metrics
from meshgate.routing.compile import compile_table
from meshgate.routing.table import RouteTable
from tests.integration.harness import WAIT, free_port, wait_for

# How long a client that must NOT be answered is given before the test
# decides it was not (a negative can only be observed for some time).
QUIET = 0.3

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def table(listeners: list[dict[str, Any]], limits: dict[str, Any] | None = None) -> RouteTable:
    backends = [{"name": "echo", "builtin": "echo"}, {"name": "hello", "builtin": "hello"}]
    config = Config.model_validate({"listeners": listeners, "backends": backends, "limits": limits})
    return compile_table(config, version=1)


def echo_listener(port: int, name: str = "e", **extra: Any) -> dict[str, Any]:
    return {"name": name, "port": port, "protocol": "tcp", "backend": "echo", **extra}


@contextlib.asynccontextmanager
async def plane(tbl: RouteTable) -> AsyncIterator[Dataplane]:
    dp = Dataplane(Metrics(), drain_timeout=1.0)
    try:
        assert await dp.apply(tbl) == []
        yield dp
    finally:
        await dp.shutdown()


_opened: list[Conn] = []  # every client of the running test, closed after it


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    await close(*_opened)
    _opened.clear()


async def connect(port: int) -> Conn:
    conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
    _opened.append(conn)
    return conn


async def echoed(conn: Conn, data: bytes = b"ping", wait: float = WAIT) -> bool:
    """Whether `data` comes back within `wait` seconds (False: closed or silent)."""
    reader, writer = conn
    writer.write(data)
    got = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(wait):
            while len(got) < len(data):
                chunk = await reader.read(len(data) - len(got))
                if not chunk:
                    break
                got += chunk
    return got == data


async def closed_at_once(conn: Conn) -> bool:
    """Whether meshgate closes the connection without a byte of answer."""
    reader, _ = conn
    try:
        return await asyncio.wait_for(reader.read(100), WAIT) == b""
    except ConnectionError:
        return True  # reset: closed as well


async def close(*conns: Conn) -> None:
    for _, writer in conns:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def until(condition: Any, what: str) -> None:
    """Poll `condition` (a state of the data plane, which has no event to
    wait on) until it holds, for WAIT seconds at most."""
    try:
        async with asyncio.timeout(WAIT):
            while not condition():  # noqa: ASYNC110 - polled state, no event to wait on
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def stage_of(dp: Dataplane) -> Stage:
    return dp.ctx.overload.stage  # a call: the type checker keeps no earlier narrowing


def reason_of(dp: Dataplane) -> str:
    return dp.ctx.overload.reason


def status_of(dp: Dataplane, name: str) -> dict[str, Any]:
    (found,) = [lst for lst in dp.status()["listeners"] if lst["name"] == name]
    result: dict[str, Any] = found
    return result


def sample(dp: Dataplane, metric: str, **labels: str) -> float:
    value = dp.ctx.metrics.registry.get_sample_value(metric, labels)
    return 0.0 if value is None else value


def refused(dp: Dataplane, listener: str, reason: str) -> float:
    return sample(dp, "meshgate_connections_refused_total", listener=listener, reason=reason)


# -- connection caps ---------------------------------------------------------------------
async def test_listener_cap_pauses_accepting_and_a_queued_client_is_served_when_a_slot_frees() -> (
    None
):
    port = free_port()
    async with plane(table([echo_listener(port, limits={"max_connections": 2})])) as dp:
        first, second = await connect(port), await connect(port)
        assert await echoed(first)
        assert await echoed(second)
        await until(lambda: not status_of(dp, "e")["accepting"], "the listener to pause")
        assert sample(dp, "meshgate_listener_accepting", listener="e") == 0
        assert status_of(dp, "e")["max_connections"] == 2

        # The kernel completes the handshake (the socket still listens), but
        # nobody serves the client while the listener is at its cap.
        third = await connect(port)
        assert not await echoed(third, b"wait", wait=QUIET)

        await close(first)
        # The queued client is taken into the freed slot, its early bytes too.
        reader, _ = third
        assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"wait"
        assert await echoed(third)
        # No refusal: queued, not turned away.
        assert refused(dp, "e", "listener_limit") == 0

        await close(second, third)
        await until(lambda: status_of(dp, "e")["connections"] == 0, "both to end")
        assert status_of(dp, "e")["accepting"]
        assert sample(dp, "meshgate_listener_accepting", listener="e") == 1
        assert await echoed(await connect(port))


async def test_queued_clients_that_left_are_dropped_without_being_served() -> None:
    port = free_port()
    async with plane(table([echo_listener(port, limits={"max_connections": 1})])) as dp:
        held = await connect(port)
        assert await echoed(held)
        await until(lambda: not status_of(dp, "e")["accepting"], "the listener to pause")
        # A flood that gives up while queued, then one client that stays.
        gone = [await connect(port) for _ in range(30)]
        await close(*gone)
        alive = await connect(port)
        await close(held)
        # The dead ones are closed unserved as the queue drains: the live
        # client gets the slot at once, not after 30 relays came and went.
        assert await echoed(alive)
        assert refused(dp, "e", "client_gone") == 30
        assert status_of(dp, "e")["total"] == 2  # only `held` and `alive` were served
        await close(alive)


async def test_many_queued_clients_wait_their_turn_instead_of_being_refused() -> None:
    port = free_port()
    async with plane(table([echo_listener(port, limits={"max_connections": 3})])) as dp:
        held = [await connect(port) for _ in range(3)]
        for conn in held:
            assert await echoed(conn)
        queued = [await connect(port) for _ in range(10)]
        for conn in held:
            await close(conn)
        # Three at a time, every queued client is served in turn.
        for i in range(0, 10, 3):
            batch = queued[i : i + 3]
            for conn in batch:
                assert await echoed(conn)
            await close(*batch)
        assert refused(dp, "e", "listener_limit") == 0
        assert sum(status_of(dp, "e")["refused"].values()) == 0


async def test_clients_arriving_together_at_the_cap_are_queued_not_refused() -> None:
    # Five clients arrive within one loop iteration, two slots are free: the
    # listener pauses right after the second, the other three wait queued.
    port = free_port()
    async with plane(table([echo_listener(port, limits={"max_connections": 2})])) as dp:
        raw = []
        for _ in range(5):  # no await in between: all queued before the loop looks
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            raw.append(s)
        conns = [await asyncio.open_connection(sock=s) for s in raw]
        _opened.extend(conns)
        served = [await echoed(conn, wait=QUIET) for conn in conns]
        assert served.count(True) == 2
        assert status_of(dp, "e")["connections"] == 2
        assert status_of(dp, "e")["refused"] == {}
        # As slots free, the queued ones are served, their early bytes too.
        waiting = [c for c, ok in zip(conns, served, strict=True) if not ok]
        await close(*(c for c, ok in zip(conns, served, strict=True) if ok))
        for conn in waiting:
            reader, _ = conn
            assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"ping"
            await close(conn)
        assert refused(dp, "e", "listener_limit") == 0


async def test_pause_and_resume_are_logged_once_per_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # At its cap a listener pauses and resumes with every connection: one
    # line when that begins, one when it is over, whatever happens between.
    caplog.set_level(logging.DEBUG, logger="meshgate")
    port = free_port()
    async with plane(table([echo_listener(port, limits={"max_connections": 1})])) as dp:
        for _ in range(5):
            conn = await connect(port)
            assert await echoed(conn)
            await close(conn)
            await until(lambda: status_of(dp, "e")["accepting"], "the listener to resume")
        dp.sample()
        dp.sample()  # a whole interval without a pause
        paused = [r for r in caplog.records if r.getMessage() == "listener paused"]
        resumed = [r for r in caplog.records if r.getMessage() == "listener resumed"]
        assert [r.levelno for r in paused + resumed] == [logging.WARNING, logging.WARNING]
        fields = resumed[0].__dict__["fields"]
        assert fields["pauses"] == 5
        assert fields["reason"] == "listener_limit"
        assert fields["max_connections"] == 1


async def test_refusals_are_not_logged_above_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meshgate")
    port = free_port()
    async with plane(table([echo_listener(port, allow=["10.0.0.0/8"])])) as dp:
        for _ in range(20):
            assert await closed_at_once(await connect(port))
        assert refused(dp, "e", "not_allowed") == 20
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 20
    assert {r.levelno for r in refusals} == {logging.DEBUG}


async def test_global_cap_pauses_every_listener() -> None:
    a, b = free_port(), free_port()
    tbl = table([echo_listener(a, "a"), echo_listener(b, "b")], {"max_connections": 2})
    async with plane(tbl) as dp:
        on_a, on_b = await connect(a), await connect(b)
        assert await echoed(on_a)
        assert await echoed(on_b)
        await until(
            lambda: not status_of(dp, "a")["accepting"] and not status_of(dp, "b")["accepting"],
            "both listeners to pause",
        )
        assert status_of(dp, "a")["max_connections"] == 2
        assert dp.status()["overload"]["max_connections"] == 2
        waiting = await connect(b)
        assert not await echoed(waiting, b"w", wait=QUIET)
        await close(on_a)  # a slot frees on the other listener
        reader, _ = waiting
        assert await asyncio.wait_for(reader.readexactly(1), WAIT) == b"w"
        await close(on_b, waiting)


async def test_default_global_cap_follows_the_descriptor_limit() -> None:
    port = free_port()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    async with plane(table([echo_listener(port)], {"fd_reserve": 100})) as dp:
        expected = None if soft == resource.RLIM_INFINITY else (soft - 100) // 2
        assert dp.status()["overload"]["max_connections"] == expected
        assert status_of(dp, "e")["max_connections"] == expected


# -- allow-lists --------------------------------------------------------------------------
async def test_client_outside_the_allow_list_is_closed_before_any_upstream_work() -> None:
    upstream_accepts = 0

    async def count(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal upstream_accepts
        upstream_accepts += 1
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    up = server.sockets[0].getsockname()[1]
    port = free_port()
    config = Config.model_validate(
        {
            "listeners": [
                {"name": "t", "port": port, "backend": "up", "allow": ["10.0.0.0/8"]},
            ],
            "backends": [{"name": "up", "endpoints": [f"127.0.0.1:{up}"]}],
        }
    )
    try:
        async with plane(compile_table(config, version=1)) as dp:
            assert await closed_at_once(await connect(port))
            assert refused(dp, "t", "not_allowed") == 1
            assert status_of(dp, "t")["refused"] == {"not_allowed": 1}
            assert upstream_accepts == 0
            assert status_of(dp, "t")["total"] == 0  # never became a connection
            await until(lambda: status_of(dp, "t")["connections"] == 0, "the socket counted out")
    finally:
        server.close()
        await server.wait_closed()


async def test_allow_list_admits_clients_in_range() -> None:
    port = free_port()
    async with plane(table([echo_listener(port, allow=["127.0.0.0/8"])])) as dp:
        conn = await connect(port)
        assert await echoed(conn)
        await close(conn)
        assert refused(dp, "e", "not_allowed") == 0


async def test_http_listener_allow_list_closes_without_an_answer() -> None:
    port = free_port()
    listener = {
        "name": "web",
        "port": port,
        "protocol": "http",
        "http": {"default_backend": "hello"},
        "allow": ["10.0.0.0/8"],
    }
    async with plane(table([listener])) as dp:
        reader, writer = await connect(port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await closed_at_once((reader, writer))  # no status line at all
        assert refused(dp, "web", "not_allowed") == 1
        await close((reader, writer))


async def test_allow_list_applies_to_the_address_a_proxy_header_announces() -> None:
    port = free_port()
    listener = echo_listener(
        port,
        allow=["10.0.0.0/8"],
        proxy_protocol={"trusted": ["127.0.0.0/8"]},
    )
    async with plane(table([listener])) as dp:
        inside = await connect(port)
        inside[1].write(b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 80\r\n")
        assert await echoed(inside)  # the socket's peer (127.0.0.1) is not in range
        outside = await connect(port)
        outside[1].write(b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 80\r\nping")
        assert await closed_at_once(outside)
        assert refused(dp, "e", "not_allowed") == 1
        await close(inside, outside)
        await until(lambda: status_of(dp, "e")["connections"] == 0, "sockets counted out")


# -- per-client limits ----------------------------------------------------------------------
async def test_per_client_connections_are_capped() -> None:
    port = free_port()
    limits = {"per_client": {"max_connections": 2}}
    async with plane(table([echo_listener(port, limits=limits)])) as dp:
        one, two = await connect(port), await connect(port)
        assert await echoed(one)
        assert await echoed(two)
        assert await closed_at_once(await connect(port))
        assert refused(dp, "e", "client_limit") == 1
        assert status_of(dp, "e")["accepting"]  # the listener itself is not at a cap
        await close(one)
        await until(lambda: status_of(dp, "e")["active"] == 1, "the first connection to end")
        three = await connect(port)
        assert await echoed(three)
        await close(two, three)


async def test_per_client_limit_counts_the_address_a_proxy_header_announces() -> None:
    port = free_port()
    listener = echo_listener(
        port,
        proxy_protocol={"trusted": ["127.0.0.0/8"]},
        limits={"per_client": {"max_connections": 1}},
    )
    async with plane(table([listener])) as dp:
        conns = []
        for client in ("10.0.0.1", "10.0.0.2"):  # one socket peer, two real clients
            conn = await connect(port)
            conn[1].write(f"PROXY TCP4 {client} 127.0.0.1 5555 80\r\n".encode())
            assert await echoed(conn)
            conns.append(conn)
        again = await connect(port)
        again[1].write(b"PROXY TCP4 10.0.0.1 127.0.0.1 5556 80\r\n")
        assert await closed_at_once(again)
        assert refused(dp, "e", "client_limit") == 1
        await close(*conns, again)


async def test_per_client_connection_rate_refuses_past_the_burst() -> None:
    port = free_port()
    limits = {"per_client": {"connection_rate": 0.5, "burst": 2}}
    async with plane(table([echo_listener(port, limits=limits)])) as dp:
        first, second = await connect(port), await connect(port)
        assert await echoed(first)
        assert await echoed(second)
        assert await closed_at_once(await connect(port))
        assert refused(dp, "e", "client_rate") == 1
        await close(first, second)


# -- overload ---------------------------------------------------------------------------------
async def test_overload_stages_follow_the_connection_count() -> None:
    port = free_port()
    limits = {"max_connections": 20, "overload": {"disable_keepalive": 0.5, "reject_requests": 0.6}}
    async with plane(table([echo_listener(port)], limits)) as dp:
        held: list[Conn] = []

        async def hold(n: int) -> None:
            while len(held) < n:
                conn = await connect(port)
                assert await echoed(conn)
                held.append(conn)

        await hold(10)
        dp.sample()
        assert stage_of(dp) is Stage.NO_KEEPALIVE
        assert reason_of(dp) == "connections"
        assert sample(dp, "meshgate_overload_stage") == 1
        await hold(12)
        dp.sample()
        assert stage_of(dp) is Stage.REJECT_REQUESTS
        assert dp.status()["overload"]["stage"] == "reject_requests"
        assert dp.status()["overload"]["connections"] == 12
        assert status_of(dp, "e")["accepting"]  # stages 1 and 2 still accept
        await close(*held)
        await until(lambda: dp.ctx.admission.total.open == 0, "every connection to end")
        dp.sample()
        assert stage_of(dp) is Stage.NORMAL
        assert reason_of(dp) == ""


async def test_overload_stage_three_pauses_accepting_until_it_is_over() -> None:
    port = free_port()
    udp_port = free_port(socket.SOCK_DGRAM)
    udp = {"name": "u", "port": udp_port, "protocol": "udp", "backend": "up"}
    listeners = [echo_listener(port), udp]

    def tbl(memory_limit: int) -> RouteTable:
        config = Config.model_validate(
            {
                "listeners": listeners,
                "backends": [
                    {"name": "echo", "builtin": "echo"},
                    {"name": "up", "endpoints": ["127.0.0.1:9"]},
                ],
                "limits": {"memory_limit": memory_limit},
            }
        )
        return compile_table(config, version=1)

    # A memory limit far below what the process holds: stage 3 at once.
    async with plane(tbl(1 << 20)) as dp:
        assert stage_of(dp) is Stage.STOP_ACCEPTING
        assert reason_of(dp) == "memory"
        assert dp.status()["overload"]["rss"] > 1 << 20
        assert sample(dp, "meshgate_resident_memory_bytes") > 1 << 20
        await until(lambda: not status_of(dp, "e")["accepting"], "the listener to pause")
        assert status_of(dp, "e")["paused"] == "overload"
        waiting = await connect(port)
        assert not await echoed(waiting, b"w", wait=QUIET)
        assert not status_of(dp, "u")["accepting"]
        assert sample(dp, "meshgate_listener_accepting", listener="u") == 0
        # A UDP datagram that would open a new flow is dropped too.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", ("127.0.0.1", udp_port))
        await until(
            lambda: (
                sample(dp, "meshgate_udp_datagrams_dropped_total", listener="u", reason="overload")
                == 1
            ),
            "the datagram dropped",
        )

        # Plenty of memory again: the stage falls and the queued client is served.
        await dp.apply(tbl(1 << 40))
        dp.sample()
        assert stage_of(dp) is Stage.NORMAL
        reader, _ = waiting
        assert await asyncio.wait_for(reader.readexactly(1), WAIT) == b"w"
        assert status_of(dp, "e")["accepting"]
        await close(waiting)


async def test_memory_limit_defaults_to_the_cgroup_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A container's cgroup is the mount's root inside it: memory.max there.
    (tmp_path / "memory.max").write_text("1048576\n")
    monkeypatch.setattr(process_module, "CGROUP_ROOT", tmp_path)
    port = free_port()
    async with plane(table([echo_listener(port)])) as dp:
        assert dp.status()["overload"]["memory_limit"] == 1 << 20
        # This process holds far more than 1 MiB: overloaded by memory.
        assert stage_of(dp) is Stage.STOP_ACCEPTING
        assert reason_of(dp) == "memory"
        # A configured limit wins over the cgroup's.
        await dp.apply(table([echo_listener(port)], {"memory_limit": 1 << 40}))
        dp.sample()
        assert dp.status()["overload"]["memory_limit"] == 1 << 40
        assert stage_of(dp) is Stage.NORMAL
        assert await echoed(await connect(port))


async def test_without_a_cgroup_limit_memory_is_not_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "memory.max").write_text("max\n")
    monkeypatch.setattr(process_module, "CGROUP_ROOT", tmp_path)
    async with plane(table([echo_listener(free_port())])) as dp:
        assert dp.status()["overload"]["memory_limit"] is None
        assert stage_of(dp) is Stage.NORMAL


async def test_udp_datagrams_from_outside_the_allow_list_are_dropped() -> None:
    port = free_port(socket.SOCK_DGRAM)
    config = Config.model_validate(
        {
            "listeners": [
                {
                    "name": "u",
                    "port": port,
                    "protocol": "udp",
                    "backend": "up",
                    "allow": ["10.0.0.0/8"],
                }
            ],
            "backends": [{"name": "up", "endpoints": ["127.0.0.1:9"]}],
        }
    )
    async with plane(compile_table(config, version=1)) as dp:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(3):
                s.sendto(b"x", ("127.0.0.1", port))
        await until(
            lambda: (
                sample(
                    dp, "meshgate_udp_datagrams_dropped_total", listener="u", reason="not_allowed"
                )
                == 3
            ),
            "three datagrams dropped",
        )
        assert status_of(dp, "u")["udp_flows"] == 0


# -- drain ------------------------------------------------------------------------------------
async def test_a_paused_listener_that_is_removed_frees_its_port() -> None:
    port, other = free_port(), free_port()
    async with plane(table([echo_listener(port, limits={"max_connections": 1})])) as dp:
        held = await connect(port)
        assert await echoed(held)
        await until(lambda: not status_of(dp, "e")["accepting"], "the listener to pause")
        queued = await connect(port)
        await dp.apply(table([echo_listener(other, "o")]))
        # The port is free at once, though a connection still drains on it.
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        assert await closed_at_once(queued)  # the queue went with the socket
        assert await echoed(held)  # the established one finishes
        await close(held, queued)


async def test_drain_waits_for_and_ends_connections_still_in_their_hello() -> None:
    port = free_port()
    listener = {
        "name": "tls",
        "port": port,
        "protocol": "tls",
        "routes": [{"default": True, "backend": "echo"}],
        "tls": {"hello_timeout": 30},
    }
    dp = Dataplane(Metrics(), drain_timeout=0.3)
    assert await dp.apply(table([listener])) == []
    try:
        silent = await connect(port)  # never sends its ClientHello
        await until(lambda: status_of(dp, "tls")["active"] == 1, "the hello phase tracked")
        assert status_of(dp, "tls")["connections"] == 1
        started = asyncio.get_running_loop().time()
        await dp.shutdown()
        # The drain waited for it until the deadline, then closed it.
        assert asyncio.get_running_loop().time() - started >= 0.25
        assert await closed_at_once(silent)
        await close(silent)
    finally:
        await dp.shutdown()


# -- descriptor exhaustion ----------------------------------------------------------------------
NOFILE = 256

# Sets RLIMIT_NOFILE to argv[1], then becomes the rest of argv (a Python
# command line): the limit is in force from meshgate's start, as with
# `ulimit -n`, without a preexec_fn in a test process that may have threads.
_LOW_NOFILE = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


@contextlib.contextmanager
def meshgate_with_nofile(tmp: Path, port: int, limits: str) -> Iterator[subprocess.Popen[bytes]]:
    """`meshgate run` with RLIMIT_NOFILE = NOFILE, serving echo on `port`."""
    config = tmp / "mg.yaml"
    config.write_text(
        f"listeners:\n  - {{name: e, port: {port}, backend: echo}}\n"
        "backends:\n  - {name: echo, builtin: echo}\n"
        f"limits: {limits}\n"
    )
    argv = ["-m", "meshgate", "run", "-c", str(config), "--admin", "off"]
    log = (tmp / "mg.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOW_NOFILE, str(NOFILE), *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _serves(port), "meshgate to serve")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _serves(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"x")
            return s.recv(1) == b"x"
    except OSError:
        return False


@pytest.mark.parametrize(
    "limits",
    [
        # The default global cap, from the descriptor limit: paused before
        # running out, the flood waits in the backlog.
        "{fd_reserve: 56}",
        # A cap above what the descriptors allow: accept() itself fails with
        # EMFILE; the listener must neither crash nor spin.
        "{max_connections: 5000}",
    ],
)
def test_flood_past_the_descriptor_limit_then_a_new_client_is_served_at_once(
    tmp_path: Path, limits: str
) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2 * NOFILE + 64:
        pytest.skip("this test process needs more descriptors than the flood")
    port = free_port()
    with meshgate_with_nofile(tmp_path, port, limits) as proc:
        flood = []
        for _ in range(2 * NOFILE):  # twice what meshgate may have open
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            flood.append(s)
        cpu_before = _cpu_seconds(proc.pid)
        time.sleep(1.0)  # meshgate sits at its limit for a while
        cpu_during = _cpu_seconds(proc.pid) - cpu_before
        assert proc.poll() is None, "meshgate exited"
        assert cpu_during < 0.5, f"meshgate spun at its descriptor limit ({cpu_during:.2f}s CPU)"
        for s in flood:
            s.close()
        stopped = time.monotonic()
        deadline = stopped + 1.0
        served = False
        while not served and time.monotonic() < deadline:
            served = _serves(port, timeout=max(0.05, deadline - time.monotonic()))
        assert served, "no new client served within 1 s after the flood stopped"
        assert proc.poll() is None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")
