"""Server-side TLS done in memory, under a Relay that sees only plaintext.

Why not the loop's `start_tls`: the listener has already read the
ClientHello to choose the route, and `start_tls` cannot be handed bytes that
were read before it started. So the raw socket's protocol here feeds every
byte, the peeked hello first, into an `ssl.SSLObject` over two MemoryBIOs
(as asyncio's own sslproto does), and presents the Relay with a transport
(`PlainTransport`) whose writes are encrypted on their way out.

Flow control passes straight through: the Relay pausing its client pauses
the raw socket, plaintext already decrypted waits until it resumes; the raw
socket's write buffer filling pauses the Relay's upstream reading. The
buffer limits the app sets on its PlainTransport are the raw socket's; the
same high-water mark bounds plaintext held back until the handshake ends.
EOF-handling: a close_notify or a TCP FIN from the client is the Relay's
`eof_received`; the Relay's `write_eof` sends close_notify and a FIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any, cast

from meshgate import settings

log = logging.getLogger("meshgate.tls")

# Plaintext is handed to the Relay in chunks of up to this size.
READ_SIZE = 256 * 1024


class TlsTerminator(asyncio.Protocol):
    """The raw socket's protocol: decrypts into `app`, encrypts what it writes."""

    def __init__(
        self,
        ctx: ssl.SSLContext,
        app: asyncio.Protocol,
        on_handshake: Callable[[ssl.SSLObject | None, str | None], None],
    ) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.ssl = ctx.wrap_bio(self._in, self._out, server_side=True)
        self.app = app
        self.raw: asyncio.Transport | None = None
        self.handshaken = False
        self.reading_paused = False
        self.eof = False
        self.plain = PlainTransport(self)
        self._early_plain: list[bytes] = []
        self._early_size = 0
        self._early_paused = False  # the app paused until the handshake is done
        self._on_handshake = on_handshake  # (ssl object, None) or (None, failure reason)

    # -- raw socket events ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = cast(asyncio.Transport, transport)
        # The Relay starts at once (it connects upstream during the handshake).
        self.app.connection_made(self.plain)

    def data_received(self, data: bytes) -> None:
        self._in.write(data)
        if not self.handshaken:
            try:
                self.ssl.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, ValueError) as exc:
                self._flush()  # the alert, if any
                reason = getattr(exc, "reason", None) or type(exc).__name__
                self._on_handshake(None, str(reason).lower())
                self._abort()
                return
            self.handshaken = True
            self._flush()
            self._on_handshake(self.ssl, None)
            for early in self._early_plain:
                self.encrypt(early)
            self._early_plain.clear()
            self._early_size = 0
            if self._early_paused:
                self._early_paused = False
                raw = self.raw
                if raw is not None and raw.get_write_buffer_size() <= self._high_water():
                    self.app.resume_writing()
        self.pump()

    def pump(self) -> None:
        """Hand decrypted plaintext to the app while it reads."""
        while self.handshaken and not self.reading_paused and not self.eof:
            try:
                chunk = self.ssl.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                self._peer_eof()
                break
            except ssl.SSLError:
                self._abort()
                return
            if not chunk:
                self._peer_eof()
                break
            self.app.data_received(chunk)
        self._flush()  # session tickets, key updates

    def eof_received(self) -> bool:
        if not self.handshaken:
            self._on_handshake(None, "eof_in_handshake")
            return False
        self._peer_eof()
        return True

    def _peer_eof(self) -> None:
        if not self.eof:
            self.eof = True
            if not self.app.eof_received():
                self.plain.close()

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.connection_lost(exc)

    # -- helpers ----------------------------------------------------------------
    def _flush(self) -> None:
        if self._out.pending and self.raw is not None:
            self.raw.write(self._out.read())

    def _abort(self) -> None:
        if self.raw is not None:
            self.raw.abort()

    def _high_water(self) -> int:
        """The raw socket's high-water mark: what the app set through
        PlainTransport (the listener's buffer_limit), else the default."""
        if self.raw is None:
            return settings.WRITE_HIGH_WATER
        return self.raw.get_write_buffer_limits()[1]

    def encrypt(self, data: bytes) -> None:
        if not self.handshaken:
            # An upstream that speaks first (SMTP-style banner) before the
            # client finished its handshake: hold it until then, and past the
            # high-water mark stop reading it (a slow handshake must not let
            # a talkative upstream fill memory).
            self._early_plain.append(data)
            self._early_size += len(data)
            if self._early_size > self._high_water() and not self._early_paused:
                self._early_paused = True
                self.app.pause_writing()
            return
        view = memoryview(data)
        while view:
            try:
                n = self.ssl.write(view)
            except ssl.SSLError:
                self._abort()
                return
            view = view[n:]
        self._flush()

    def shutdown(self) -> None:
        """Send close_notify (TLS's end of data)."""
        if self.handshaken:
            # Our close_notify is written even when unwrap raises: the
            # peer's own close_notify is not needed to end our side.
            with contextlib.suppress(ssl.SSLError):
                self.ssl.unwrap()
        self._flush()


class PlainTransport(asyncio.Transport):
    """What the Relay sees of a terminated client: a plaintext transport."""

    def __init__(self, tls: TlsTerminator) -> None:
        super().__init__()
        self._tls = tls

    def _raw(self) -> asyncio.Transport:
        assert self._tls.raw is not None
        return self._tls.raw

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._tls.encrypt(bytes(data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._tls.shutdown()
        raw = self._raw()
        if raw.can_write_eof():
            raw.write_eof()

    def pause_reading(self) -> None:
        self._tls.reading_paused = True
        self._raw().pause_reading()

    def resume_reading(self) -> None:
        if not self._tls.reading_paused:
            return
        self._tls.reading_paused = False
        self._raw().resume_reading()
        # Plaintext may already sit decrypted in the SSL object.
        asyncio.get_running_loop().call_soon(self._tls.pump)

    def is_reading(self) -> bool:
        return not self._tls.reading_paused

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw().set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._raw().get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw().get_write_buffer_limits()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._tls.ssl
        return self._raw().get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._raw().is_closing()

    def close(self) -> None:
        raw = self._raw()
        if not raw.is_closing():
            self._tls.shutdown()
            raw.close()

    def abort(self) -> None:
        self._raw().abort()
