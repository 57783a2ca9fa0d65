"""Task helpers: the one place tasks are created, so none is dropped silently.

`spawn` keeps a strong reference to every task until it ends (asyncio keeps
only weak ones) and logs any exception the task did not handle.

`Deadlines`: per-connection timeouts (idle, connect, half-closed) at a
fraction of the cost of a loop timer each.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import socket
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

T = TypeVar("T")
log = logging.getLogger("meshgate.aio")

_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """Start `coro` as a named task that is referenced until it finishes."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("task failed", exc_info=exc, extra={"fields": {"task": task.get_name()}})


async def cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait until each has really ended."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


# A Deadlines bucket spans at most this long, and 1/64 of the delay at most
# (a power of two): a 300 ms idle timeout fires at most 4 ms late, a 5 s
# connect timeout 62 ms late, an hour's idle timeout 1 s late.
DEADLINE_MAX_TICK = 1.0
# A loop timer may fire up to a millisecond early (libuv counts whole
# milliseconds); buckets due that soon are run rather than re-armed for.
_EARLY = 0.001


def _tick(delay: float) -> float:
    if delay <= 0:
        return _EARLY
    return min(DEADLINE_MAX_TICK, 2.0 ** math.floor(math.log2(delay / 64)))


def _nothing() -> None:
    pass


class Deadline:
    """One pending call of a `Deadlines`; `cancel()` like a TimerHandle's.

    Once run or cancelled it lets go of its callback: the callback's owner
    usually holds the Deadline, and a cycle per connection would be left
    for the garbage collector instead of freed at once.
    """

    __slots__ = ("_bucket", "_callback")

    def __init__(self, bucket: dict[Deadline, None], callback: Callable[[], object]) -> None:
        self._bucket: dict[Deadline, None] | None = bucket
        self._callback = callback

    def cancel(self) -> None:
        bucket = self._bucket
        if bucket is not None:
            self._bucket = None
            self._callback = _nothing
            del bucket[self]


class Deadlines:
    """Timeouts that may run a little late, for many connections at once.

    A loop timer costs a few microseconds to make and cancel (uvloop: a
    libuv timer handle per call), and a connection has up to three (connect,
    idle, half-closed), nearly always cancelled. Here a call goes into the
    bucket of its due time rounded up to a tick (`_tick`: a power of two
    below 1/64 of the delay, at most DEADLINE_MAX_TICK), and one loop timer,
    for the earliest bucket, serves them all: adding or cancelling is a dict
    operation. Never early: a bucket runs at or after the due time of every
    call in it (give or take the loop's own millisecond).

    Bound to the running loop at the first call.
    """

    __slots__ = ("_armed_at", "_buckets", "_heap", "_loop", "_ticks", "_timer")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticks: dict[float, float] = {}  # delay -> its tick, for the usual delays
        self._buckets: dict[float, dict[Deadline, None]] = {}
        self._heap: list[float] = []  # due times of buckets (emptied ones too)
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def call_later(self, delay: float, callback: Callable[[], object]) -> Deadline:
        """Run `callback()` once `delay` seconds have passed, or a little later."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        tick = self._ticks.get(delay)
        if tick is None:
            tick = _tick(delay)
            if len(self._ticks) < 64:  # configured timeouts, not every remainder
                self._ticks[delay] = tick
        due = math.ceil((loop.time() + delay) / tick) * tick
        bucket = self._buckets.get(due)
        if bucket is None:
            bucket = self._buckets[due] = {}
            heapq.heappush(self._heap, due)
            if due < self._armed_at:
                self._arm(loop, due)
        deadline = Deadline(bucket, callback)
        bucket[deadline] = None
        return deadline

    def __len__(self) -> int:
        """Calls pending (for tests)."""
        return sum(len(b) for b in self._buckets.values())

    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = due
        self._timer = loop.call_at(due, self._run)

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = None
        self._armed_at = math.inf
        heap, buckets = self._heap, self._buckets
        now = loop.time() + _EARLY
        while heap and heap[0] <= now:
            bucket = buckets.pop(heapq.heappop(heap), None)
            if not bucket:
                continue
            for deadline in list(bucket):
                if deadline._bucket is not bucket:
                    continue  # cancelled by an earlier callback of this run
                deadline._bucket = None
                callback, deadline._callback = deadline._callback, _nothing
                try:
                    callback()
                except Exception as exc:
                    loop.call_exception_handler(
                        {"message": "deadline callback failed", "exception": exc}
                    )
        if heap:
            self._arm(loop, heap[0])


class DatagramSide(asyncio.DatagramProtocol):
    """A datagram socket's protocol: the transport, its release, its pressure."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.lost: asyncio.Future[None] = loop.create_future()
        self.paused = False  # the kernel buffer is full: drop rather than queue
        self._abandoned = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not a check: uvloop's UDPTransport is no DatagramTransport subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)
        if self._abandoned:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def abandon(self) -> None:
        """Close the transport, now or as soon as it is made."""
        self._abandoned = True
        if self.transport is not None:
            self.transport.close()


A = TypeVar("A", bound=DatagramSide)


async def adopt_datagram(loop: asyncio.AbstractEventLoop, sock: socket.socket, side: A) -> A:
    """Hand `sock` to a datagram transport whose protocol is `side`.

    Sockets are made by the caller because uvloop's create_datagram_endpoint
    leaks the transport it made when bind or connect fails, and when it is
    cancelled while waiting for connection_made. Here the socket is closed on
    every failure: by us before the transport owns it, by `side` after.
    """
    handed = False

    def factory() -> A:
        nonlocal handed
        handed = True  # from here on the transport owns the socket
        return side

    try:
        await loop.create_datagram_endpoint(factory, sock=sock)
    except BaseException:
        if handed:
            side.abandon()
        else:
            sock.close()
        raise
    return side
