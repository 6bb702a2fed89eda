"""Many database sessions on one tunnel link: streams with their own flow control.

Without it every session costs a TLS connection between proxy and agent (a handshake when
it starts, and OpenSSL's state in both processes while it lasts, ~40 KiB together). On a
*mux link* the proxy opens a stream per session instead. Each frame is a 9-byte header
(``HEADER``: kind, stream id, payload length) and its payload:

- ``OPEN``: the proxy starts stream ``id`` (ids only grow; none is reused on a link);
- ``DATA``: bytes of stream ``id``;
- ``WINDOW``: the sender of the frame has passed this many more bytes (4-byte payload) of
  stream ``id`` to its reader, so the other side may send that many more;
- ``CLOSE``: the sender is done with stream ``id``, in both directions, after the data it
  sent before; the receiver forgets the stream once it has passed that data on;
- ``PING`` (stream 0): the agent is there; it sends one every ``PING_EVERY`` seconds, and the
  proxy opens streams only on a link it heard from lately (``heard_within``).

Only the proxy opens streams; an ``OPEN`` from the agent, like any other break of these
rules, closes the link.

Flow control: each side may have ``WINDOW_SIZE`` bytes of a stream sent and not yet passed
on by the other side. A reader that pauses (its own peer is slow) stops granting window,
so a slow session holds at most that much in flight and its own flow control stalls no
other session (they still share the link's send queue and TCP window: when the transport
under the link pauses, every stream pauses). ``MuxStream`` is an
``asyncio.Transport``, so ``common.relay`` splices it as it splices a socket.

Writes are gathered per turn of the event loop and leave in one write on the link, so when
several sessions are busy their frames share TLS records and system calls.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
from collections.abc import Callable
from typing import Any

from common.relay import Connection

log = logging.getLogger("pteleport.tunnel.mux")

HEADER = struct.Struct("!BII")
OPEN, DATA, WINDOW, CLOSE, PING = 1, 2, 3, 4, 5
PING_EVERY = 10.0
LAST_ID = 0xFFFFFFFF
CLOSE_TIMEOUT = 30.0  # a closing stream whose backlog the other side does not take is aborted
WINDOW_SIZE = 256 * 1024  # bytes of one stream in flight per direction
CREDIT_EVERY = WINDOW_SIZE // 4  # grant window back after passing on this much
MAX_FRAME = 64 * 1024  # DATA payload per frame, so a reader starts before a large write has arrived
WRITE_HIGH, WRITE_LOW = 64 * 1024, 16 * 1024  # a stream's own backlog (waiting for window)


class MuxError(Exception):
    """The other side broke the framing; the link closes."""


class MuxLink(asyncio.Protocol):
    """The protocol of a mux link; ``on_open`` (the agent side) gets each stream the other side opens.

    The side that passes no ``on_open`` (the proxy) refuses streams opened by its peer.
    """

    def __init__(self, on_open: Callable[[MuxStream], None] | None = None) -> None:
        self.on_open = on_open
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, MuxStream] = {}
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.write_paused = False
        self._next_id = 1
        self._inbox = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._retiring = False
        self._loop = asyncio.get_running_loop()
        self.last_heard = self._loop.time()

    @classmethod
    def take_over(cls, conn: Connection, on_open: Callable[[MuxStream], None] | None = None) -> MuxLink | None:
        """Carry on ``conn``'s transport after its first line, with what it had read already; None if it closed."""
        if conn.transport is None or conn._eof:
            conn.close()
            return None
        link = cls(on_open)
        transport, early = conn.transport, conn.take_buffer()
        transport.set_protocol(link)
        link.connection_made(transport)
        if conn._paused:
            transport.resume_reading()
        if early:
            link.data_received(early)
        return link

    # --- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._inbox:
            self._inbox += data
            data = self._inbox  # type: ignore[assignment]
        size, offset = len(data), 0
        self.last_heard = self._loop.time()
        try:
            while size - offset >= HEADER.size and not self.closed.done():
                kind, stream_id, length = HEADER.unpack_from(data, offset)
                end = offset + HEADER.size + length
                if length > WINDOW_SIZE:
                    raise MuxError(f"a frame of {length} bytes")
                if end > size:
                    break
                self._dispatch(kind, stream_id, bytes(data[offset + HEADER.size : end]))
                offset = end
        except MuxError as exc:
            log.warning("closing a tunnel link: %s", exc)
            self.abort()
            return
        if offset == size:
            self._inbox = bytearray()
        elif data is self._inbox:
            del self._inbox[:offset]
        else:
            self._inbox = bytearray(data[offset:])

    def eof_received(self) -> bool:
        return False  # the link is over; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream._lost()
        self._out.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in list(self.streams.values()):
            self._guarded(stream, stream._update_write_pause)

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            self._guarded(stream, stream._update_write_pause)

    @staticmethod
    def _guarded(stream: MuxStream, call: Callable[[], None]) -> None:
        """One session's failure ends that session, not every session on the link."""
        try:
            call()
        except MuxError:
            raise
        except Exception:
            log.exception("a session on a tunnel link failed")
            stream.abort()

    # --- streams -------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """Whether new streams may start here."""
        return not (self._retiring or self.closed.done() or self.transport is None or self.transport.is_closing())

    def heard_within(self, seconds: float) -> bool:
        """Whether anything (a frame, a ``PING``) arrived in the last ``seconds``: a link that went silent is not used."""
        return self._loop.time() - self.last_heard <= seconds

    async def ping(self) -> None:
        """The agent's side: a ``PING`` every ``PING_EVERY`` seconds until the link closes."""
        while not self.closed.done():
            self.send(PING, 0)
            await asyncio.sleep(PING_EVERY)

    def open(self) -> MuxStream:
        """A new stream to the other side (which gets it through its ``on_open``)."""
        if self._next_id > LAST_ID:
            self.retire()  # ids are never reused: the agent opens a new link
        if not self.usable:
            raise ConnectionResetError("the tunnel link is closed")
        stream_id, self._next_id = self._next_id, self._next_id + 1
        stream = MuxStream(self, stream_id)
        self.streams[stream_id] = stream
        self.send(OPEN, stream_id)
        return stream

    def _dispatch(self, kind: int, stream_id: int, payload: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            self._frame(kind, stream_id, payload, None)
        else:
            self._guarded(stream, lambda: self._frame(kind, stream_id, payload, stream))

    def _frame(self, kind: int, stream_id: int, payload: bytes, stream: MuxStream | None) -> None:
        if kind == DATA:
            if stream is not None:  # else: one we closed; what was in flight is dropped
                stream._received(payload)
        elif kind == WINDOW:
            if len(payload) != 4:
                raise MuxError("a WINDOW frame without a 4-byte size")
            if stream is not None:
                stream._credit(int.from_bytes(payload, "big"))
        elif kind == CLOSE:
            if stream is not None:
                stream._remote_closed()
        elif kind == PING:
            pass  # last_heard is updated for every read
        elif kind == OPEN:
            if self.on_open is None:
                raise MuxError("the agent may not open streams")
            if stream_id < self._next_id:
                raise MuxError(f"stream {stream_id} opened twice")
            self._next_id = stream_id + 1
            if self._retiring:
                self.send(CLOSE, stream_id)  # takes no more
                return
            stream = MuxStream(self, stream_id)
            self.streams[stream_id] = stream
            self._guarded(stream, lambda: self.on_open(stream))  # type: ignore[misc]
        else:
            raise MuxError(f"a frame of unknown kind {kind}")

    # --- writing ---------------------------------------------------------------------------
    def send(self, kind: int, stream_id: int, payload: bytes = b"") -> None:
        """Queue one frame; what is queued in one turn of the loop leaves in one write."""
        if self.closed.done():
            return
        self._out.append(HEADER.pack(kind, stream_id, len(payload)))
        if payload:
            self._out.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.transport.is_closing():
            data = b"".join(self._out)
            self._out.clear()
            self.transport.write(data)

    def retire(self) -> None:
        """Start no more streams here; close once the open ones have ended (sessions outlive a control link)."""
        self._retiring = True
        if not self.streams:
            self.close()

    def _stream_gone(self) -> None:
        if self._retiring and not self.streams:
            self.close()

    def close(self) -> None:
        """End the link after what is queued; every open stream is lost."""
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self._out.clear()
        if self.transport is not None:
            self.transport.abort()


class MuxStream(asyncio.Transport):
    """One session on a mux link, as a transport (its protocol is set by whoever takes it)."""

    def __init__(self, link: MuxLink, stream_id: int) -> None:
        super().__init__({"mux_stream": stream_id})
        self._link = link
        self.stream_id = stream_id
        self._protocol: asyncio.BaseProtocol | None = None
        self._send_window = WINDOW_SIZE  # bytes we may still send
        self._backlog = bytearray()  # written, waiting for window
        self._unacked = 0  # bytes received and not yet granted back
        self._passed = 0  # of those, passed on to the protocol
        self._inbox: collections.deque[bytes] | tuple[()] = ()  # a deque only while reading is paused
        self._reading = True
        self._closing = False  # close() was called: no more writes
        self._gone = False  # forgotten by the link; connection_lost done or due
        self._remote_done = False  # the other side sent CLOSE
        self._protocol_paused = False
        self._high, self._low = WRITE_HIGH, WRITE_LOW
        self._delivery_scheduled = False
        self._close_timer: asyncio.TimerHandle | None = None

    # --- asyncio.BaseTransport / ReadTransport ------------------------------------------------
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[return-value]

    def is_closing(self) -> bool:
        return self._closing or self._gone

    def close(self) -> None:
        """Send what is written (as the window allows), then CLOSE; connection_lost follows."""
        if self._closing or self._gone:
            return
        self._closing = True
        self._drop_inbox()
        if not self._backlog:
            self._finish()
        else:  # the backlog leaves as the window allows, or not at all after CLOSE_TIMEOUT
            self._close_timer = self._link._loop.call_later(CLOSE_TIMEOUT, self.abort)

    def abort(self) -> None:
        self._backlog.clear()
        self._closing = True
        self._drop_inbox()
        if not self._gone:
            self._finish()

    def is_reading(self) -> bool:
        return self._reading and not self.is_closing()

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if self._reading:
            return
        self._reading = True
        if (self._inbox or self._remote_done) and not self._delivery_scheduled:
            self._delivery_scheduled = True
            self._link._loop.call_soon(self._deliver)

    # --- asyncio.WriteTransport ----------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._gone or not data:
            return
        if self._backlog:
            self._backlog += data
        else:
            sent = self._send_some(data)
            if sent < len(data):
                self._backlog += memoryview(data)[sent:]
        self._update_write_pause()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False  # a stream closes both ways at once, as a TLS connection does

    def write_eof(self) -> None:
        raise NotImplementedError("a mux stream closes both ways at once")

    def get_write_buffer_size(self) -> int:
        return len(self._backlog)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = WRITE_HIGH if high is None else high
        self._low = (self._high // 4) if low is None else low
        self._update_write_pause()

    # --- the link's side ------------------------------------------------------------------------
    def _send_some(self, data: bytes | bytearray | memoryview) -> int:
        """Frame as much of ``data`` as the window allows; the number of bytes framed."""
        count = min(len(data), self._send_window)
        if count <= 0:
            return 0
        view = memoryview(data)
        for start in range(0, count, MAX_FRAME):
            self._link.send(DATA, self.stream_id, bytes(view[start : min(start + MAX_FRAME, count)]))
        self._send_window -= count
        return count

    def _credit(self, size: int) -> None:
        self._send_window += size
        if self._send_window > WINDOW_SIZE:
            raise MuxError(f"stream {self.stream_id} was granted more window than it may have")
        if self._backlog:
            sent = self._send_some(self._backlog)
            del self._backlog[:sent]
        if self._closing and not self._backlog and not self._gone:
            self._finish()
        else:
            self._update_write_pause()

    def _update_write_pause(self) -> None:
        if self._protocol is None or self._gone:
            return
        size = len(self._backlog)
        if not self._protocol_paused and (self._link.write_paused or size > self._high):
            self._protocol_paused = True
            self._protocol.pause_writing()
        elif self._protocol_paused and not self._link.write_paused and size <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()

    def _received(self, payload: bytes) -> None:
        self._unacked += len(payload)
        if self._unacked > WINDOW_SIZE:
            raise MuxError(f"stream {self.stream_id} sent past its window")
        if self._closing:
            # Nobody reads any more, but the window is granted back: the other side, whose
            # reader may be what this side's backlog waits for, must never block on us.
            self._grant(len(payload), at_once=True)
            return
        if not payload:
            return
        if self._reading and not self._inbox:
            self._pass_on(payload)
            return
        if not self._inbox:
            self._inbox = collections.deque()
        self._inbox.append(payload)  # type: ignore[union-attr]

    def _pass_on(self, payload: bytes) -> None:
        self._protocol.data_received(payload)  # type: ignore[union-attr]
        self._grant(len(payload))

    def _drop_inbox(self) -> None:
        """Nobody will read what is held here: drop it, and give its window back."""
        held = sum(len(payload) for payload in self._inbox)
        self._inbox = ()
        if held:
            self._grant(held, at_once=True)

    def _grant(self, size: int, at_once: bool = False) -> None:
        """``size`` more bytes are off our hands; tell the other side every ``CREDIT_EVERY`` (or now)."""
        self._passed += size
        if (at_once or self._passed >= CREDIT_EVERY) and self._passed and not self._remote_done and not self._gone:
            self._link.send(WINDOW, self.stream_id, self._passed.to_bytes(4, "big"))
            self._unacked -= self._passed
            self._passed = 0

    def _deliver(self) -> None:
        """After resume_reading: what arrived meanwhile, then the other side's CLOSE if it came."""
        self._delivery_scheduled = False
        while self._inbox and self._reading and not self.is_closing():
            self._pass_on(self._inbox.popleft())  # type: ignore[union-attr]
        if not self._inbox:
            self._inbox = ()
        if self._remote_done and not self._inbox and self._reading and not self._gone:
            self._end_of_peer()

    def _remote_closed(self) -> None:
        self._remote_done = True
        self._backlog.clear()  # the other side reads no more
        if self._closing:
            self._forget(None)
        elif self._reading and not self._inbox:
            self._end_of_peer()

    def _end_of_peer(self) -> None:
        """The other side closed and all it sent was passed on: EOF, then connection_lost."""
        if isinstance(self._protocol, asyncio.Protocol):
            self._protocol.eof_received()  # no half-open streams: its answer changes nothing
        self._closing = True
        self._forget(None)

    def _finish(self) -> None:
        """Our side is done: CLOSE goes out after our data; connection_lost is called soon."""
        if not self._remote_done:
            self._link.send(CLOSE, self.stream_id)
        self._forget(None)

    def _forget(self, exc: Exception | None) -> None:
        if self._gone:
            return
        self._gone = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._link.streams.get(self.stream_id) is self:
            del self._link.streams[self.stream_id]
            self._link._stream_gone()
        self._inbox = ()
        self._backlog.clear()
        if self._protocol is not None:
            self._link._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: Exception | None) -> None:
        protocol, self._protocol = self._protocol, None  # no cycle left: the session is freed at once
        if protocol is not None:
            protocol.connection_lost(exc)

    def _lost(self) -> None:
        """The link under this stream closed."""
        self._forget(ConnectionResetError("the tunnel link to the other side closed"))
