"""Zero-copy relay of a bulk TCP connection: os.splice through kernel pipes.

A Relay hands a direction over here once it proves to be a bulk flow (see
`Relay._bulk_read`), with its source transport's reading paused and its
destination transport's write buffer empty. From then on that direction's
bytes never enter Python: `splice(source socket -> pipe)` then
`splice(pipe -> destination socket)`, up to a pipe's size (1 MiB) per call,
driven by `add_reader` / `add_writer` on the loop. The other direction stays
with the transports until it qualifies too: each socket-direction has one
owner, the transport or the splice, never both.

uvloop owns the transports' descriptors and refuses `add_reader` on them, so
the sockets are `dup()`ed: the copies share the open sockets, and are
registered with the loop instead. The transports stay open until the Relay
closes them; their descriptors and ours must all be closed before the kernel
closes a socket.

What the relay guaranteed still holds:
- backpressure: a direction reads its source only while its pipe is empty;
  when the destination cannot take everything, reading stops until it can.
  The pipe is the only buffer, in the kernel, bounded by its size;
- half-close: end of file from a source is passed on, once its pipe is
  empty, with shutdown(SHUT_WR) of the destination; the other direction
  keeps flowing;
- the owner hears of every byte read (its counters and idle timer), of each
  end of file passed on, and of a failed socket (reset, broken pipe);
- `close()` passes on what the pipes hold to destinations that still work,
  then releases everything; `abort()` releases everything now. After either,
  no descriptor of ours is open and none is registered with the loop.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
from collections.abc import Callable
from typing import Any, Protocol

from meshgate import settings

# os.splice (Python 3.10, Linux) and pipe sizing; without them the relay
# stays in user space.
AVAILABLE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if AVAILABLE else 0
# Pipefuls one reader callback moves at most before it lets the loop run
# other callbacks (then it continues from call_soon).
_TURN = 4
# The smallest pipe worth asking for when the per-user pipe quota refuses a
# larger one; below it the kernel's default (64 KiB) is kept.
_MIN_PIPE = 64 * 1024


class SpliceOwner(Protocol):
    """What a Splice reports to (the Relay)."""

    def spliced(self, from_client: bool, n: int) -> None:
        """`n` bytes were read from the client (`from_client`) or the upstream."""

    def spliced_eof(self, from_client: bool) -> None:
        """That side sent FIN, and everything before it (and the FIN) was passed on."""

    def spliced_error(self, client_side: bool) -> None:
        """The client's (or upstream's) socket failed: reset, broken pipe."""


class _Flow:
    """One direction: source socket -> pipe -> destination socket."""

    __slots__ = (
        "dst",
        "from_client",
        "pending",
        "pipe_r",
        "pipe_w",
        "reading",
        "size",
        "src",
        "src_eof",
        "writing",
    )

    def __init__(self, src: int, dst: int, from_client: bool, pipe: tuple[int, int, int]) -> None:
        self.src = src
        self.dst = dst
        self.from_client = from_client
        self.pipe_r, self.pipe_w, self.size = pipe
        self.pending = 0  # bytes in the pipe, not yet written to dst
        self.src_eof = False
        self.reading = False  # registered with the loop as a reader of src
        self.writing = False  # registered as a writer of dst (dst was full)


def _pipe() -> tuple[int, int, int]:
    """A non-blocking pipe as large as allowed: (read end, write end, size).

    Raises OSError when no pipe can be made, or only one too small to be
    worth it (a user over the kernel's pipe quota gets 8 KiB pipes).
    """
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = settings.SPLICE_PIPE_SIZE
        while size >= _MIN_PIPE:
            try:
                return r, w, fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
            except OSError:  # EPERM: over pipe-max-size or the per-user quota
                size //= 4
        size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        if size < _MIN_PIPE:
            raise OSError(errno.ENOBUFS, f"pipe of {size} bytes only")
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    return r, w, size


def _dup(sock: Any) -> socket.socket:
    """Our own descriptor of a transport's socket (uvloop's or asyncio's)."""
    return socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))


class Splice:
    """The spliced directions of one connection.

    Made with our own descriptors of both sockets; each direction is added
    (`add`) once it qualifies, with a pipe of its own; a direction not added
    stays with the transports, in user space. Raises OSError when it cannot
    be set up (descriptors exhausted); nothing is left open then.
    """

    __slots__ = (
        "_broken",
        "_client",
        "_closing",
        "_fds",
        "_flows",
        "_loop",
        "_owner",
        "_then",
        "_upstream",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, owner: SpliceOwner, client: Any, upstream: Any
    ) -> None:
        self._loop = loop
        self._owner = owner
        self._client = _dup(client)
        try:
            self._upstream = _dup(upstream)
        except BaseException:
            self._client.close()
            raise
        self._fds: list[int] | None = []  # the pipes' ends; None once released
        self._flows: list[_Flow] = []
        self._closing = False
        self._broken: bool | None = None  # the side whose socket failed (True: client)
        self._then: Callable[[], None] | None = None

    @property
    def active(self) -> bool:
        """Whether descriptors are still held (False once released)."""
        return self._fds is not None

    def add(self, from_client: bool) -> None:
        """Splice the direction from the client (or from the upstream) from now on."""
        fds = self._fds
        if fds is None or self._closing:
            return
        cfd, ufd = self._client.fileno(), self._upstream.fileno()
        pipe = _pipe()
        fds += pipe[:2]
        flow = _Flow(cfd, ufd, True, pipe) if from_client else _Flow(ufd, cfd, False, pipe)
        self._flows.append(flow)
        self._read_on(flow)

    @property
    def flows(self) -> int:
        """How many directions are spliced."""
        return len(self._flows)

    def has(self, from_client: bool) -> bool:
        """Whether the direction from the client (or the upstream) is spliced."""
        return any(flow.from_client is from_client for flow in self._flows)

    # -- registration with the loop ---------------------------------------------
    # uvloop closes a descriptor's poll handle after an error event on it (and
    # keeps it in its table until removed); registering anew then raises
    # RuntimeError. The socket is broken then: treated as such.
    def _read_on(self, flow: _Flow) -> None:
        if not flow.reading:
            flow.reading = True
            try:
                self._loop.add_reader(flow.src, self._readable, flow)
            except RuntimeError:
                flow.reading = False
                self._fail(flow.from_client)

    def _read_off(self, flow: _Flow) -> None:
        if flow.reading:
            flow.reading = False
            self._loop.remove_reader(flow.src)

    def _write_on(self, flow: _Flow) -> None:
        if not flow.writing:
            flow.writing = True
            try:
                self._loop.add_writer(flow.dst, self._write, flow)
            except RuntimeError:
                flow.writing = False
                self._fail(not flow.from_client)

    def _write_off(self, flow: _Flow) -> None:
        if flow.writing:
            flow.writing = False
            self._loop.remove_writer(flow.dst)

    # -- moving bytes ------------------------------------------------------------
    def _readable(self, flow: _Flow) -> None:
        """Move what src has to dst, until src has no more (EAGAIN), dst is
        full, or this turn's share is used up.

        Reading on until EAGAIN is not only fewer wake-ups: after an error
        event (a reset) uvloop calls the reader once more and closes its poll
        handle, so a reader that returned while still registered would never
        be called again. A socket with an error never answers EAGAIN: it
        answers with its data, then the error.
        """
        if not flow.reading:
            return  # unregistered since (a continuation from call_soon)
        for _ in range(_TURN):
            try:
                n = os.splice(flow.src, flow.pipe_w, flow.size, flags=_FLAGS)
            except BlockingIOError:
                return
            except OSError:
                self._fail(flow.from_client)
                return
            if n == 0:
                flow.src_eof = True
                self._read_off(flow)
                self._pass_eof(flow)
                return
            flow.pending += n
            self._owner.spliced(flow.from_client, n)
            self._write(flow)
            if not flow.reading:
                return  # dst is full (or we are closing): no reading until then
        # More may be there: let other connections have their turn, then go on
        # (not through the poll handle, which an error event may have closed).
        self._loop.call_soon(self._readable, flow)

    def _write(self, flow: _Flow) -> None:
        """Write what the pipe holds; when dst is full, wait for it instead of reading."""
        try:
            flow.pending -= os.splice(flow.pipe_r, flow.dst, flow.pending, flags=_FLAGS)
        except BlockingIOError:
            pass
        except OSError:
            self._fail(not flow.from_client)
            return
        if flow.pending:
            self._read_off(flow)
            self._write_on(flow)
            return
        self._write_off(flow)
        if flow.src_eof:
            self._pass_eof(flow)
        elif self._closing:
            self._maybe_done()
        else:
            self._read_on(flow)

    def _pass_eof(self, flow: _Flow) -> None:
        """The source ended: once its pipe is empty, end the destination's side too."""
        if flow.pending:
            return  # _write comes back here
        if self._closing:
            self._maybe_done()
            return
        sock = self._upstream if flow.from_client else self._client
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._fail(not flow.from_client)
            return
        self._owner.spliced_eof(flow.from_client)

    def _fail(self, client_side: bool) -> None:
        if self._broken is None:
            self._broken = client_side
        if not self._closing:
            self._owner.spliced_error(client_side)  # which closes us
            return
        # A destination failed while close() was passing data on: drop it.
        self._drop_towards(client_side)
        self._maybe_done()

    def _drop_towards(self, client_side: bool) -> None:
        for flow in self._flows:
            if flow.from_client is not client_side:  # its destination is that side
                flow.pending = 0
                self._write_off(flow)

    # -- ending ------------------------------------------------------------------
    def close(self, then: Callable[[], None]) -> None:
        """Stop reading; pass on what the pipes hold to destinations that still
        work; then release everything and call `then`."""
        if self._fds is None or self._closing:
            return
        self._closing = True
        self._then = then
        for flow in self._flows:
            self._read_off(flow)
        if self._broken is not None:
            self._drop_towards(self._broken)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if any(flow.pending for flow in self._flows):
            return  # _write comes back here once the pipe is empty
        then = self._then
        self.release()
        if then is not None:
            then()

    def abort(self) -> None:
        """Release everything now, dropping what the pipes hold (and call the
        `then` of a close() still passing data on)."""
        then = self._then
        self.release()
        if then is not None:
            then()

    def release(self) -> None:
        fds = self._fds
        if fds is None:
            return
        self._fds = None
        self._closing = True
        self._then = None
        for flow in self._flows:
            flow.reading = flow.writing = False
            flow.pending = 0
        # Unregister first: the loop must never poll a closed descriptor. Both
        # ways on both, whatever our flags say: uvloop keeps a poll handle an
        # error event closed in its table until it is removed, and a later
        # descriptor with the same number would trip over it.
        loop = self._loop
        for sock in (self._client, self._upstream):
            fd = sock.fileno()
            loop.remove_reader(fd)
            loop.remove_writer(fd)
        self._client.close()
        self._upstream.close()
        for fd in fds:
            os.close(fd)
