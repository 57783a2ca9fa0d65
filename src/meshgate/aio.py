"""Task helpers: the one place tasks are created, so none is dropped silently.

`spawn` keeps a strong reference to every task until it ends (asyncio keeps
only weak ones) and logs any exception the task did not handle.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
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
