"""An asyncio transport on a non-blocking socket, TLS included: OpenSSL reads and writes the socket itself.

The proxy (its public port) and ptsh's tunnel use it; the database agent still runs on the loop's
own TLS transport (docs/design-notes.md, "TLS on the socket", says why).

asyncio's and uvloop's own TLS transports run OpenSSL over memory BIOs: every record is
copied from the socket into a BIO, decrypted into a read buffer, and the way back again,
and each connection keeps those buffers. ``SocketTransport`` drives an ``ssl.SSLSocket``
(or a plain socket) from the loop's readiness callbacks instead, so OpenSSL reads from and
writes to the file descriptor directly and frees its record buffers when a connection is
idle. Measured with ``python -m bench.tlsfloor`` (one idle server-side TLS connection):
stock asyncio's TLS transport 264 KiB, uvloop's 44 KiB, this one 16 KiB; the server's CPU
per small round trip 25 µs (uvloop) → 22 µs (docs/design-notes.md, "TLS on the socket").

- ``handshake`` wraps a connected socket and runs the TLS handshake on the loop;
  ``SocketTransport(sock, protocol)`` then carries the protocol (``connection_made`` is
  called at once). ``open_tls``/``accept_tls`` do both.
- ``close`` sends what is buffered, then (TLS) a close_notify, and keeps reading and
  discarding until the peer's close_notify or EOF (at most ``LINGER`` s), so the peer reads
  everything before the socket closes, as asyncio's TLS transport does. A plain socket
  closes after its buffer is sent; ``write_eof`` half-closes it.
- Flow control is asyncio's own (``_FlowControlMixin``): the protocol's ``pause_writing``
  above the high-water mark, ``resume_writing`` below the low one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
import threading
from asyncio.transports import _FlowControlMixin
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pteleport.net")

RECORD = 16 * 1024  # the largest TLS record payload: one SSL_read returns at most this
BULK = 4096  # a read at least this long suggests more is waiting: read again before delivering
READ_MAX = 256 * 1024  # bytes gathered per readiness callback before they are delivered
WRITE_JOIN = 256 * 1024  # queued chunks joined into one write up to this size
LINGER = 2.0  # seconds a closing TLS connection waits for the peer's close_notify
CLOSE_TIMEOUT = 30.0  # seconds a closing connection may take to send what it holds

_buffers = threading.local()  # one read buffer per thread: a loop runs one callback at a time
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class SocketTransport(_FlowControlMixin, asyncio.Transport):
    """``asyncio.Transport`` over a connected non-blocking socket or ``ssl.SSLSocket``."""

    __slots__ = (
        "_buffer",
        "_closed",
        "_closing",
        "_draining",
        "_eof_wanted",
        "_fd",
        "_peername",
        "_protocol",
        "_read_waits_write",
        "_reader_on",
        "_reading",
        "_retry",
        "_size",
        "_sock",
        "_sockname",
        "_timer",
        "_tls",
        "_write_waits_read",
        "_writer_on",
    )  # fmt: skip

    def __init__(self, sock: socket.socket, protocol: asyncio.BaseProtocol) -> None:
        super().__init__(None, asyncio.get_running_loop())
        sock.setblocking(False)
        _no_delay(sock)
        self._sock = sock
        self._fd = sock.fileno()
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._protocol = protocol
        self._reading = True
        self._reader_on = self._writer_on = False
        self._buffer: collections.deque[bytes] | tuple[()] = ()  # a deque only while bytes wait (an idle one costs ~600 B)
        self._size = 0
        self._retry = False  # the first buffered chunk was refused by OpenSSL and must be retried as is
        # OpenSSL may need the other direction to go on (TLS 1.2 renegotiation, a TLS 1.3
        # post-handshake message): a write that waits for the socket to be readable, a read
        # that waits for it to be writable.
        self._write_waits_read = self._read_waits_write = False
        self._closing = self._closed = self._eof_wanted = self._draining = False
        self._timer: asyncio.TimerHandle | None = None
        self._peername = _address(sock.getpeername)
        self._sockname = _address(sock.getsockname)
        try:
            protocol.connection_made(self)
        except BaseException:
            self._closed = self._closing = True
            sock.close()
            raise
        if self._reading and not self._closing:
            self._watch_reads(True)
            if self._tls and sock.pending():
                self._loop.call_soon(self._read_ready)

    # --- asyncio.Transport -----------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sock = self._sock
        if name == "peername":
            return self._peername
        if name == "sockname":
            return self._sockname
        if name == "socket":
            return sock
        if self._tls and not self._closed:
            assert isinstance(sock, ssl.SSLSocket)
            if name == "ssl_object":
                return sock
            if name == "sslcontext":
                return sock.context
            if name == "peercert":
                return sock.getpeercert()
            if name == "cipher":
                return sock.cipher()
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing or self._closed

    def is_reading(self) -> bool:
        return self._reading and not self.is_closing()

    def pause_reading(self) -> None:
        if self._reading and not self.is_closing():
            self._reading = False
            if not self._write_waits_read:  # (a write that waits to read keeps the watch)
                self._watch_reads(False)

    def resume_reading(self) -> None:
        if not self._reading and not self.is_closing():
            self._reading = True
            self._watch_reads(True)
            if self._tls and self._sock.pending():
                self._loop.call_soon(self._read_ready)

    def get_write_buffer_size(self) -> int:
        return self._size

    def can_write_eof(self) -> bool:
        return not self._tls

    def write_eof(self) -> None:
        if self._tls:
            raise NotImplementedError("TLS connections cannot half-close")
        if self.is_closing() or self._eof_wanted:
            return
        self._eof_wanted = True
        if not self._buffer:
            self._shut_write()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self.is_closing() or self._eof_wanted:
            return
        if not self._buffer:
            try:
                sent = self._sock.send(data)
            except ssl.SSLWantReadError:
                sent = 0
                self._retry = self._write_waits_read = True
            except _WOULD_BLOCK:
                sent = 0
                self._retry = self._tls
            except (OSError, ssl.SSLError) as exc:
                self._fail(_write_error(exc))
                return
            if sent == len(data):
                return
            data = data[sent:]
            if self._write_waits_read:
                self._watch_reads(True)
            else:
                self._watch_writes(True)
        if not self._buffer:
            self._buffer = collections.deque()
        self._buffer.append(bytes(data))  # type: ignore[union-attr]
        self._size += len(data)
        self._maybe_pause_protocol()

    def close(self) -> None:
        if self.is_closing():
            return
        self._closing = True
        self._watch_reads(False)
        self._timer = self._loop.call_later(CLOSE_TIMEOUT, self._close_timed_out)
        if not self._buffer:
            self._loop.call_soon(self._after_writes)

    def abort(self) -> None:
        self._finish(None)

    def _close_timed_out(self) -> None:
        self._fail(TimeoutError(f"the peer did not take what was left to send within {CLOSE_TIMEOUT:g} s"))

    def detach(self) -> socket.socket:
        """Stop carrying the socket and hand it back, open (to start TLS on it); nothing may be buffered."""
        if self._buffer or self.is_closing():
            raise ConnectionError("the connection is closing or still has bytes to send")
        self._watch_reads(False)
        self._watch_writes(False)
        self._closed = self._closing = True
        return self._sock

    # --- reading -------------------------------------------------------------------------------
    def _read_ready(self) -> None:
        if self._write_waits_read:
            self._write_waits_read = False
            self._write_ready()
            if self._closed:
                return
        if self._draining:
            self._drain()
            return
        if not self._reading or self.is_closing():
            if not self._reading and not self._write_waits_read:
                self._watch_reads(False)  # it was on only for the write's sake
            return
        view = _read_buffer()
        size = 0
        eof = False
        sock = self._sock
        while size < READ_MAX:
            try:
                got = sock.recv_into(view[size:], RECORD if self._tls else READ_MAX - size)
            except ssl.SSLWantWriteError:
                self._read_waits_write = True
                self._watch_writes(True)
                break
            except _WOULD_BLOCK:
                break
            except ssl.SSLEOFError:  # closed without close_notify: an EOF, as asyncio reports it
                eof = True
                break
            except (OSError, ssl.SSLError) as exc:
                self._deliver(view, size)
                self._fail(exc)
                return
            if not got:
                eof = True
                break
            size += got
            if got < BULK and not (self._tls and sock.pending()):
                break
        self._deliver(view, size)
        if self.is_closing():
            return
        if eof:
            self._eof()
        elif self._tls and self._reading and sock.pending():
            # Stopped at READ_MAX with decrypted bytes still inside OpenSSL: the socket may
            # have nothing more, so no readiness callback would come for them.
            self._loop.call_soon(self._read_ready)

    def _deliver(self, view: memoryview, size: int) -> None:
        if not size or self._closed:
            return
        try:
            self._protocol.data_received(bytes(view[:size]))  # type: ignore[attr-defined]
        except Exception as exc:  # the protocol's bug ends the connection, as in asyncio
            self._fail(exc, report=True)

    def _eof(self) -> None:
        self._watch_reads(False)
        self._reading = False
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        except Exception as exc:
            self._fail(exc, report=True)
            return
        if self._tls or not keep_open:
            self.close()

    # --- writing -------------------------------------------------------------------------------
    def _write_ready(self) -> None:
        if self._read_waits_write:
            self._read_waits_write = False
            self._loop.call_soon(self._read_ready)
        buffer = self._buffer
        while buffer:
            assert isinstance(buffer, collections.deque)
            head = buffer[0]
            if not self._retry and len(buffer) > 1 and len(head) < WRITE_JOIN:
                parts, size = [], 0
                while buffer and size + len(buffer[0]) <= WRITE_JOIN:
                    part = buffer.popleft()
                    parts.append(part)
                    size += len(part)
                if not parts:
                    parts.append(buffer.popleft())
                head = b"".join(parts)
                buffer.appendleft(head)
            try:
                sent = self._sock.send(head)
            except ssl.SSLWantReadError:
                self._retry = self._write_waits_read = True
                self._watch_writes(False)
                self._watch_reads(True)
                return
            except _WOULD_BLOCK:
                self._retry = self._tls
                self._watch_writes(True)
                return
            except (OSError, ssl.SSLError) as exc:
                self._fail(_write_error(exc))
                return
            self._retry = False
            self._size -= sent
            if sent < len(head):
                buffer[0] = head[sent:]
                self._watch_writes(True)
                self._maybe_resume_protocol()
                return
            buffer.popleft()
        self._buffer = ()
        self._watch_writes(False)
        self._maybe_resume_protocol()  # may write again, or close
        if self._buffer or self._closed:  # (what it wrote waits for the next writable callback)
            return
        if self._eof_wanted:
            self._shut_write()
        if self._closing:
            self._after_writes()

    def _shut_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fail(exc)

    # --- closing -------------------------------------------------------------------------------
    def _after_writes(self) -> None:
        """Everything is sent: say close_notify and wait for the peer's (TLS), or close (plain)."""
        if self._closed:
            return
        if not self._tls:
            self._finish(None)
            return
        sock = self._sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.unwrap()  # sends our close_notify; done at once if the peer's already came
        except ssl.SSLWantWriteError:
            self._watch_writes(True)  # _write_ready finds the buffer empty and comes back here
            return
        except ssl.SSLWantReadError:
            pass
        except (OSError, ssl.SSLError, ValueError):
            self._finish(None)
            return
        else:
            self._finish(None)
            return
        self._draining = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(LINGER, self._finish, None)
        self._watch_reads(True)

    def _drain(self) -> None:
        """After our close_notify: discard what the peer still sends until its own or EOF."""
        view = _read_buffer()
        for _ in range(READ_MAX // RECORD):  # then back to the loop: other connections go on
            try:
                got = self._sock.recv_into(view, RECORD)
            except _WOULD_BLOCK:
                return
            except (OSError, ssl.SSLError, ValueError):
                got = 0
            if not got:
                self._finish(None)
                return

    def _fail(self, exc: BaseException, report: bool = False) -> None:
        if report:
            self._loop.call_exception_handler(
                {"message": "protocol callback failed", "exception": exc, "transport": self, "protocol": self._protocol}
            )
        else:
            log.debug("connection %s ended: %r", self._peername, exc)
        self._finish(exc if isinstance(exc, Exception) else None)

    def _finish(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = self._closing = True
        self._watch_reads(False)
        self._watch_writes(False)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buffer = ()
        self._size = 0
        self._sock.close()
        self._loop.call_soon(self._lost, exc)

    def _lost(self, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._protocol = None  # type: ignore[assignment]

    # --- the loop's watches ----------------------------------------------------------------------
    def _watch_reads(self, on: bool) -> None:
        if on and not self._reader_on and not self._closed:
            self._loop.add_reader(self._fd, self._read_ready)
            self._reader_on = True
        elif not on and self._reader_on:
            self._loop.remove_reader(self._fd)
            self._reader_on = False

    def _watch_writes(self, on: bool) -> None:
        if on and not self._writer_on and not self._closed:
            self._loop.add_writer(self._fd, self._write_ready)
            self._writer_on = True
        elif not on and self._writer_on:
            self._loop.remove_writer(self._fd)
            self._writer_on = False


def _read_buffer() -> memoryview:
    """This thread's read buffer: room for READ_MAX and one more whole record."""
    view = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(bytearray(READ_MAX + RECORD))
    return view


def _write_error(exc: BaseException) -> BaseException:
    """A write to a peer that closed is a reset, as asyncio's transports report it (not an SSL error)."""
    if isinstance(exc, ssl.SSLEOFError):
        return ConnectionResetError(f"the peer closed the connection ({exc})")
    return exc


def _no_delay(sock: socket.socket) -> None:
    """Small messages leave at once (no Nagle), as asyncio sets on its TCP transports."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _address(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except OSError:
        return None


async def _ready(fd: int, reading: bool) -> None:
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    (loop.add_reader if reading else loop.add_writer)(fd, wake)
    try:
        await waiter
    finally:
        (loop.remove_reader if reading else loop.remove_writer)(fd)


async def handshake(
    sock: socket.socket,
    ctx: ssl.SSLContext,
    *,
    server_side: bool,
    timeout: float | None,
    server_hostname: str | None = None,
) -> ssl.SSLSocket:
    """TLS on a connected socket, handshake done; the socket is closed if it fails or times out."""
    sock.setblocking(False)
    _no_delay(sock)
    try:
        tls = ctx.wrap_socket(
            sock, server_side=server_side, server_hostname=server_hostname, do_handshake_on_connect=False
        )
    except BaseException:
        sock.close()
        raise
    try:
        async with asyncio.timeout(timeout):  # None: the caller's own deadline
            while True:
                try:
                    tls.do_handshake()
                    return tls
                except ssl.SSLWantReadError:
                    await _ready(tls.fileno(), reading=True)
                except ssl.SSLWantWriteError:
                    await _ready(tls.fileno(), reading=False)
    except BaseException:
        tls.close()
        raise


async def open_socket(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to the first address of ``host`` that answers."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _name, addr in infos:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:  # e.g. an IPv6 address on a host without IPv6
            last = exc
            continue
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, addr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    raise last


def stream_pair(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio's stream reader and writer on a ``SocketTransport``, as ``asyncio.open_connection`` gives."""
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    return reader, asyncio.StreamWriter(SocketTransport(sock, protocol), protocol, reader, asyncio.get_running_loop())


async def open_tls(
    protocol: asyncio.BaseProtocol, host: str, port: int, ctx: ssl.SSLContext, server_hostname: str, timeout: float
) -> SocketTransport:
    """Dial ``host:port``, do the TLS handshake within ``timeout`` s, and carry ``protocol``."""
    async with asyncio.timeout(timeout):
        sock = await open_socket(host, port)
        tls = await handshake(sock, ctx, server_side=False, timeout=None, server_hostname=server_hostname)
    return SocketTransport(tls, protocol)


async def accept_tls(
    sock: socket.socket, ctx: ssl.SSLContext, protocol_factory: Callable[[], asyncio.BaseProtocol], timeout: float
) -> SocketTransport:
    """The server side of ``open_tls`` for an accepted socket."""
    tls = await handshake(sock, ctx, server_side=True, timeout=timeout)
    try:
        protocol = protocol_factory()
    except BaseException:
        tls.close()
        raise
    return SocketTransport(tls, protocol)


async def start_tls(
    transport: asyncio.BaseTransport, ctx: ssl.SSLContext, *, server_side: bool, timeout: float
) -> asyncio.Transport:
    """Upgrade a plain connection to TLS in place (PostgreSQL's SSLRequest); its protocol carries on.

    A ``SocketTransport`` hands its socket over to a new TLS one; any other transport (from
    ``loop.create_server``) goes through the loop's own ``start_tls``.
    """
    protocol = transport.get_protocol()
    if not isinstance(transport, SocketTransport):
        loop = asyncio.get_running_loop()
        upgraded = await loop.start_tls(
            transport,
            protocol,
            ctx,
            server_side=server_side,
            ssl_handshake_timeout=timeout,  # type: ignore[arg-type]
        )
        assert upgraded is not None
        return upgraded
    try:
        tls = await handshake(transport.detach(), ctx, server_side=server_side, timeout=timeout)
    except BaseException as exc:  # the plain connection is gone: its protocol hears so once
        protocol.connection_lost(exc if isinstance(exc, Exception) else None)
        raise
    return SocketTransport(tls, protocol)  # (calls connection_made again, with the TLS transport)
