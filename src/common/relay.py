"""Byte relays on asyncio Protocols: a connection you can read from during a handshake, then splice.

``Connection`` buffers what arrives until the handshake code has read what it needs;
``splice`` (or a ``Splice`` you keep a handle on) then swaps both transports over to
``_Pipe`` protocols, which write each chunk straight to the peer transport (no copies, no
per-byte Python work) and use the transports' flow control for backpressure: when one
side's write buffer fills, reading from the other side pauses, so a relay never buffers
without bound.

A ``Splice`` also lets its owner end a relay cleanly in the middle (the database agent
ends sessions of locked users that way): ``tail_from_b`` is the end of what b last sent
to a, ``filter_b_to_a`` transforms what b sends from then on, ``drop_a_to_b`` stops
forwarding a's data, ``write_to_a`` injects bytes, and ``close`` ends both sides after
their pending writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from common.sockets import limit_transport_buffers

READ_LIMIT = 1024 * 1024


class Connection(asyncio.Protocol):
    """A transport with an inbox, for the handshake phase of a relayed connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self.closed: asyncio.Future[None] = asyncio.get_event_loop().create_future()

    @classmethod
    def attach(cls, transport: asyncio.BaseTransport, initial: bytes = b"") -> Connection:
        """Take over a transport whose protocol was something else (e.g. the ALPN router)."""
        conn = cls()
        transport.set_protocol(conn)
        conn.connection_made(transport)  # type: ignore[arg-type]
        if initial:
            conn.data_received(initial)
        return conn

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._wake()
        if len(self._buffer) > READ_LIMIT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # --- reading during a handshake ---------------------------------------------------
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def wait_data(self) -> bool:
        """Until something arrives (True) or the peer closes first (False); no timeout."""
        while not self._buffer:
            if self._eof:
                return False
            await self._wait()
        return True

    async def read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if self._eof:
                raise ConnectionError("the peer closed the connection")
            await self._wait()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def read_line(self, limit: int = 64 * 1024) -> bytes:
        while True:
            idx = self._buffer.find(b"\n")
            if idx >= 0:
                line = bytes(self._buffer[: idx + 1])
                del self._buffer[: idx + 1]
                return line
            if len(self._buffer) > limit:
                raise ValueError("line too long")
            if self._eof:
                raise ConnectionError("the peer closed the connection")
            await self._wait()

    def take_buffer(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    # --- writing ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        if self._write_paused and self.transport is not None and not self.transport.is_closing():
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def peer_cert_der(self) -> bytes | None:
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None

    def peername(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return ""


TAIL = 16  # bytes of the last data forwarded that each pipe remembers


class _Pipe(asyncio.Protocol):
    """Reads from one transport and writes every chunk to the peer transport.

    ``filter`` (normally None) may replace a chunk before it is tapped and forwarded; it
    returns the bytes to send (empty: nothing). ``tap`` sees what is forwarded and may hold a
    chunk back by answering False. ``tail`` keeps the last ``TAIL`` bytes sent.
    """

    def __init__(
        self, peer: asyncio.Transport, done: asyncio.Future[None], tap: Callable[[bytes], bool | None] | None
    ) -> None:
        self.peer = peer
        self.done = done
        self.tap = tap
        self.filter: Callable[[bytes], bytes] | None = None
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.filter is not None:
            try:
                data = self.filter(data)
            except Exception as exc:
                self._finish(exc)
                return
            if not data:
                return
        if self.tap is not None:
            try:
                if self.tap(data) is False:
                    return
            except Exception as exc:  # a tap that fails ends the session
                self._finish(exc)
                return
        self.tail = data[-TAIL:] if len(data) >= TAIL else (self.tail + data)[-TAIL:]
        self.peer.write(data)

    def eof_received(self) -> bool:
        self._finish(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc)

    def pause_writing(self) -> None:
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        if not self.peer.is_closing():
            self.peer.resume_reading()

    def _finish(self, exc: Exception | None) -> None:
        close_gracefully(self.peer)
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(exc)  # type: ignore[arg-type]


LINGER = 2.0  # seconds a closing plain-TCP peer gets to read what was sent and close its side


class _Discard(asyncio.Protocol):
    """After our FIN: throw away what the peer still sends; close on its EOF or after LINGER."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._timer = asyncio.get_running_loop().call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        self._timer.cancel()
        self.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()


def close_gracefully(transport: asyncio.Transport) -> None:
    """Close without a TCP reset, so the peer reads everything we sent (a last FATAL error) first.

    Closing a socket that still holds unread bytes from the peer makes the kernel answer with
    a reset, and a reset makes the peer's kernel drop what it had not read yet. A plain TCP
    transport therefore sends its FIN (``write_eof``), discards what still comes, and closes
    when the peer closes (or after ``LINGER``). TLS transports close with close_notify,
    which already waits for the peer's.
    """
    if transport.is_closing():
        return
    try:
        if transport.get_extra_info("sslcontext") is not None or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
    except (OSError, RuntimeError, NotImplementedError):
        transport.close()
        return
    transport.set_protocol(_Discard(transport))
    transport.resume_reading()


class Splice:
    """A relay between ``a`` and ``b`` that its owner can steer while it runs (see the module doc)."""

    def __init__(
        self,
        a: Connection,
        b: Connection,
        tap_a_to_b: Callable[[bytes], bool | None] | None = None,
        b_leftover: bytes = b"",
        sent_to_a: bytes = b"",
    ) -> None:
        """``sent_to_a``: what the owner already wrote to ``a`` for ``b`` (it starts ``tail_from_b``)."""
        assert a.transport is not None and b.transport is not None
        self._a, self._b = a, b
        self._leftover = b_leftover
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ta, self.tb = a.transport, b.transport
        self.pipe_a, self.pipe_b = _Pipe(self.tb, self.done, tap_a_to_b), _Pipe(self.ta, self.done, None)
        self.pipe_b.tail = sent_to_a[-TAIL:]

    async def run(self) -> Exception | None:
        """Relay until either side closes; the error that ended it, if any."""
        a, b = self._a, self._b
        ta, tb = self.ta, self.tb
        for transport in (ta, tb):  # bound what each hop holds in flight (common.sockets)
            limit_transport_buffers(transport)
        pending_a, pending_b = a.take_buffer(), b.take_buffer() + self._leftover
        ta.set_protocol(self.pipe_a)
        tb.set_protocol(self.pipe_b)
        self.pipe_a.connection_made(ta)
        self.pipe_b.connection_made(tb)
        for t, was_paused in ((ta, a._paused), (tb, b._paused)):
            if was_paused:
                t.resume_reading()
        if pending_a:
            self.pipe_a.data_received(pending_a)
        if pending_b:
            self.pipe_b.data_received(pending_b)
        if a._eof or b._eof:
            self.pipe_a._finish(None)
        result = await self.done
        # Both sides are closing: nothing more is forwarded. A tap or filter usually refers to
        # its owner, which refers to this splice; letting go frees the session at once instead
        # of at the next full garbage collection (the agent's heap grew round after round).
        self.pipe_a.tap = self.pipe_a.filter = self.pipe_b.filter = None
        return result  # type: ignore[return-value]

    @property
    def tail_from_b(self) -> bytes:
        return self.pipe_b.tail

    def drop_a_to_b(self) -> None:
        """Stop forwarding (and tapping) anything more that ``a`` sends."""
        self.pipe_a.filter = lambda _data: b""

    def filter_b_to_a(self, fn: Callable[[bytes], bytes]) -> None:
        self.pipe_b.filter = fn

    def write_to_a(self, data: bytes) -> None:
        if not self.ta.is_closing():
            self.ta.write(data)

    def write_to_b(self, data: bytes) -> None:
        if not self.tb.is_closing():
            self.tb.write(data)

    def close(self) -> None:
        """End both sides; each transport sends what it still holds before it closes."""
        self.pipe_b._finish(None)


async def splice(
    a: Connection, b: Connection, tap_a_to_b: Callable[[bytes], None] | None = None, b_leftover: bytes = b""
) -> Exception | None:
    """Relay a <-> b until either side closes; returns the error that ended it, if any.

    ``tap_a_to_b`` sees every chunk going from a to b (the agent parses queries there);
    if it raises, both connections close.
    """
    return await Splice(a, b, tap_a_to_b, b_leftover).run()


def attach_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[Connection, bytes]:
    """Turn an asyncio stream pair (used for a handshake) into a Connection for ``splice``.

    Returns the connection and any bytes the StreamReader had already buffered.
    """
    leftover = bytes(getattr(reader, "_buffer", b""))
    conn = Connection()
    transport = writer.transport
    transport.set_protocol(conn)
    conn.connection_made(transport)
    return conn, leftover
