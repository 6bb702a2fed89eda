"""The first session of ``ptsh db connect``, opened and relayed without asyncio.

Importing asyncio (and uvloop, logging, concurrent.futures with it) costs more than
PostgreSQL takes to open a session, and psql waits for it. So ``ptsh db connect`` opens its
first session with a blocking TLS socket (``FirstSession.open``: the preflight of
docs/design-notes.md, with the same sentences and exit codes as the asyncio tunnel's, from
``ptsh.pgstartup``), and ``serve`` relays psql's first connection with ``selectors`` in the
main thread. psql's later connections (its Ctrl+C, which sends a CancelRequest on a new
connection; ``\\connect``; a reconnect) are handed, with the listening socket, to the asyncio
tunnel, started only then (``more``), which renews the certificate when it is due.
"""

from __future__ import annotations

import os
import select
import selectors
import socket
import ssl

from common.errors import BadParameter, InternalError, PteleportError
from common.sockets import limit_buffers
from common.tlsctx import INTERNAL_SNI
from ptsh.pgstartup import (
    DIAL_TIMEOUT,
    GREETING_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    NO_STARTUP,
    TERMINATE,
    Greeting,
    ProxyTrouble,
    is_cancel,
    refusal,
    startup_packet,
    startup_params,
    startup_rest,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

CHUNK = 256 * 1024  # bytes read per call, as the asyncio relay does
HIGH_WATER = 1024 * 1024  # pending bytes for one side past which the other side is not read
STARTUP_TIMEOUT = 60.0  # seconds for psql to send its startup message


class FirstSession:
    """One session to the proxy with the user's database certificate, opened before psql uses it."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, trouble: ProxyTrouble) -> None:
        self.host = host
        self.port = port
        self.ctx = ctx
        self.trouble = trouble
        self.params: dict[str, str] | None = None
        self.upstream: ssl.SSLSocket | None = None
        self.greeting = b""

    def dial(self) -> ssl.SSLSocket:
        """A TLS connection to the proxy (ALPN ``pteleport-postgres``); raises the sentence for what failed."""
        # (Names as bytes when they are ASCII: a str goes through the IDNA codec, an import.)
        host = self.host.encode() if self.host.isascii() else self.host
        try:
            raw = socket.create_connection((host, self.port), DIAL_TIMEOUT)
        except OSError as exc:
            raise self.trouble.dial_failed(exc) from None
        try:
            raw.settimeout(HANDSHAKE_TIMEOUT)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the handshake's flights at once
            return self.ctx.wrap_socket(raw, server_hostname=INTERNAL_SNI.encode())
        except TimeoutError:
            raw.close()
            raise self.trouble.unreachable(f"the TLS handshake took longer than {HANDSHAKE_TIMEOUT:.0f} seconds") from None
        except OSError as exc:
            raw.close()
            raise self.trouble.dial_failed(exc) from None

    def open(self, params: dict[str, str]) -> None:
        """Open a session with ``params`` and read the answer up to ReadyForQuery (see ``LocalTunnel.preflight``).

        Raises pteleport's refusals and "cannot reach" with their exit codes; a refusal by
        PostgreSQL itself leaves no session (psql then connects and reports it).
        """
        upstream = self.dial()
        greeting = Greeting(self.trouble)
        try:
            upstream.settimeout(GREETING_TIMEOUT)
            upstream.sendall(startup_packet(params))
            while True:
                head = _read_exactly(upstream, 5)
                if (done := greeting.take(head, _read_exactly(upstream, greeting.payload_length(head)))) is not None:
                    break
            if not done:  # PostgreSQL's own refusal: psql shows it, as connected directly
                upstream.close()
                return
        except TimeoutError:
            upstream.close()
            raise self.trouble.no_greeting() from None
        except PteleportError:
            upstream.close()
            raise
        except OSError as exc:  # closed, reset, or a TLS alert (the proxy refused the certificate)
            upstream.close()
            raise self.trouble.closed_without_answer(exc if isinstance(exc, ssl.SSLError) else None) from None
        self.params, self.upstream, self.greeting = params, upstream, bytes(greeting.data)

    def discard(self) -> None:
        """End the opened session cleanly (Terminate), if it was not handed to psql."""
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            try:
                upstream.settimeout(1)
                upstream.sendall(TERMINATE)
            except OSError:
                pass
            upstream.close()

    def take(self, first: bytes) -> tuple[ssl.SSLSocket, bytes]:
        """The upstream for a client whose startup packet is ``first``, and what to answer it first.

        The opened session when the client asks for what it was opened with and nothing came
        on it since (a session the proxy or the agent ended meanwhile is not handed on);
        otherwise that one is ended, a new one is dialled, ``first`` goes to it unchanged, and
        its first answer is waited for (a proxy that closes without one is a sentence).
        """
        if self.upstream is not None and startup_params(first) == self.params and _quiet(self.upstream):
            upstream, self.upstream = self.upstream, None
            return upstream, self.greeting
        self.discard()
        upstream = self.dial()
        try:
            upstream.settimeout(GREETING_TIMEOUT)
            upstream.sendall(first)
            answer = b"" if is_cancel(first) else upstream.recv(CHUNK)
            if not answer and not is_cancel(first):
                raise ConnectionResetError("closed without an answer")
        except TimeoutError:
            upstream.close()
            raise self.trouble.no_greeting() from None
        except OSError as exc:
            upstream.close()
            raise self.trouble.closed_without_answer(exc if isinstance(exc, ssl.SSLError) else None) from None
        return upstream, answer


def _quiet(upstream: ssl.SSLSocket) -> bool:
    """Nothing arrived on ``upstream`` since its ReadyForQuery (no bytes, no close)."""
    if upstream.pending():
        return False
    readable, _, _ = select.select([upstream], [], [], 0)
    return not readable


def serve(listening: socket.socket, pid: int, session: FirstSession, more: Callable[[], None]) -> int:
    """Relay psql's first connection until psql (process ``pid``) exits; its exit code.

    A second connection on ``listening`` calls ``more()`` once, which must start serving
    ``listening`` elsewhere (the asyncio tunnel); this loop then stops watching it. When
    ``more()`` raises instead, every later connection gets the error as an ErrorResponse
    (psql, and its first session, go on). Nothing here raises once psql runs.
    """
    sel = selectors.DefaultSelector()
    exited = _watch_exit(sel, pid)
    listening.setblocking(False)
    sel.register(listening, selectors.EVENT_READ, "listening")
    relay: _Relay | None = None
    refused: PteleportError | None = None
    code: int | None = None
    try:
        while code is None:
            for key, _mask in sel.select(None if exited is not None else 0.05):
                if key.data == "exited":
                    code = _reap(pid, block=True)
                elif key.data == "listening":
                    if relay is None:
                        relay = _first_client(listening, session, sel)
                    elif refused is not None:
                        _refuse_next(listening, refused)
                    else:
                        try:
                            sel.unregister(listening)
                            more()
                        except Exception as exc:  # no tunnel: each later connection gets the sentence
                            refused = exc if isinstance(exc, PteleportError) else InternalError(
                                f"the local tunnel could not take a new connection ({exc}); psql's first "
                                "session goes on, start ptsh db connect again for more")
                            sel.register(listening, selectors.EVENT_READ, "listening")
                else:
                    relay.on_event(key.data, _mask)  # type: ignore[union-attr]
            if exited is None:
                code = _reap(pid, block=False)
        return code
    finally:
        if relay is not None:
            relay.finish()
        session.discard()
        if exited is not None:
            os.close(exited)
        sel.close()


def _first_client(listening: socket.socket, session: FirstSession, sel: selectors.BaseSelector) -> _Relay | None:
    try:
        client, _addr = listening.accept()
    except (BlockingIOError, InterruptedError):
        return None
    try:
        client.setblocking(True)
        client.settimeout(STARTUP_TIMEOUT)
        first = _negotiate(client)
        upstream, answer = session.take(first)
    except PteleportError as err:
        _refuse(client, err)
        return _Relay.ended()
    except OSError:
        client.close()
        return _Relay.ended()
    relay = _Relay(client, upstream, sel)
    if answer:
        relay.send_to_client(answer)
    return relay


def _refuse_next(listening: socket.socket, err: PteleportError) -> None:
    try:
        client, _addr = listening.accept()
    except (BlockingIOError, InterruptedError):
        return
    client.setblocking(True)
    client.settimeout(2)  # (psql sends at once; the first session's relay waits meanwhile)
    try:
        _negotiate(client)  # (read what it sends first: closing on unread bytes would reset it)
    except (PteleportError, OSError):
        pass
    _refuse(client, err)


def _negotiate(client: socket.socket) -> bytes:
    """Answer SSLRequest/GSSENCRequest with N; the startup packet (raises BadParameter for anything else)."""
    requests = 0
    try:
        while (rest := startup_rest(head := _read_exactly(client, 8), requests)) is None:
            requests += 1
            client.sendall(b"N")
        return head + _read_exactly(client, rest)
    except TimeoutError:
        raise BadParameter(NO_STARTUP) from None


def _refuse(client: socket.socket, err: PteleportError) -> None:
    try:
        client.sendall(refusal(err))
    except OSError:
        pass
    client.close()


class _Relay:
    """psql's connection and its session upstream, spliced in both directions without blocking.

    Per side: the bytes still to be written to it, whether it finished sending (``eof``),
    whether it can no longer be written to (``broken``: what is for it is dropped, and what
    it sent before is still read and delivered), and TLS's inversions: a read that must
    wait until the socket can be written (``SSLWantWriteError``, e.g. answering a key
    update) and a write that must wait until it can be read.
    """

    def __init__(self, client: socket.socket | None, upstream: ssl.SSLSocket | None,
                 sel: selectors.BaseSelector | None) -> None:
        self.sel = sel
        self.socks = {"client": client, "upstream": upstream}
        self.pending = {"client": bytearray(), "upstream": bytearray()}  # to write to that side
        self.eof = {"client": False, "upstream": False}
        self.broken = {"client": False, "upstream": False}
        self.read_needs_write = {"client": False, "upstream": False}
        self.write_needs_read = {"client": False, "upstream": False}
        self.wanted: dict[str, int] = {}
        if client is not None and upstream is not None:
            for sock in (client, upstream):
                sock.setblocking(False)
                if sock.family != socket.AF_UNIX:  # (psql's side is a Unix socket: ptsh.connect)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                limit_buffers(sock)  # as the asyncio relay does (common.sockets)
            self._update()

    @classmethod
    def ended(cls) -> _Relay:
        return cls(None, None, None)

    def send_to_client(self, data: bytes) -> None:
        self.pending["client"] += data
        self._flush("client")
        self._update()

    def on_event(self, side: str, mask: int) -> None:
        if self.sel is None:  # closed by an earlier event of the same select()
            return
        if mask & selectors.EVENT_WRITE:
            if self.read_needs_write[side]:
                self._read(side)
            self._flush(side)
        if mask & selectors.EVENT_READ:
            if self.write_needs_read[side]:
                self._flush(side)
            self._read(side)
        self._update()

    def _read(self, side: str) -> None:
        other = "upstream" if side == "client" else "client"
        sock = self.socks[side]
        assert sock is not None
        self.read_needs_write[side] = False
        while not self.eof[side]:
            try:
                data = sock.recv(CHUNK)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                break
            except ssl.SSLWantWriteError:
                self.read_needs_write[side] = True
                break
            except OSError:  # reset, or TLS trouble: it sends no more
                data = b""
            if not data:
                self.eof[side] = True
                break
            if not self.broken[other]:
                self.pending[other] += data
            if not isinstance(sock, ssl.SSLSocket) or not sock.pending():
                break
        self._flush(other)

    def _flush(self, side: str) -> None:
        sock, buf = self.socks[side], self.pending[side]
        self.write_needs_read[side] = False
        while buf and sock is not None:
            try:
                sent = sock.send(buf[:CHUNK])
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                return
            except ssl.SSLWantReadError:
                self.write_needs_read[side] = True
                return
            except OSError:  # it is gone: drop what was for it, keep reading what it sent
                buf.clear()
                self.broken[side] = True
                return
            del buf[:sent]

    def _update(self) -> None:
        """Watch each side for what it needs now; close both once either side ended and its bytes are out."""
        if self.sel is None:
            return
        for side, other in (("client", "upstream"), ("upstream", "client")):
            if self.eof[side] and not self.pending[other]:
                self.close()
                return
        for side, other in (("client", "upstream"), ("upstream", "client")):
            sock = self.socks[side]
            events = 0
            room = len(self.pending[other]) < HIGH_WATER
            if (not self.eof[side] and room) or self.write_needs_read[side]:
                events |= selectors.EVENT_READ
            if (self.pending[side] and not self.write_needs_read[side]) or self.read_needs_write[side]:
                events |= selectors.EVENT_WRITE
            before = self.wanted.get(side, 0)
            if events == before:
                continue
            if before and events:
                self.sel.modify(sock, events, side)
            elif events:
                self.sel.register(sock, events, side)
            else:
                self.sel.unregister(sock)
            self.wanted[side] = events

    def finish(self, timeout: float = 1.0) -> None:
        """psql has exited: forward what it sent last (its Terminate, say), then close both sides.

        Its exit can be seen before the bytes it wrote just before it; without this the
        session would end with a dropped connection instead of psql's goodbye.
        """
        client, upstream = self.socks["client"], self.socks["upstream"]
        if client is not None and upstream is not None and not self.eof["client"]:
            try:
                client.settimeout(timeout)
                while data := client.recv(CHUNK):
                    self.pending["upstream"] += data
            except OSError:
                pass
        if upstream is not None and self.pending["upstream"] and not self.broken["upstream"]:
            try:
                upstream.settimeout(timeout)
                upstream.sendall(self.pending["upstream"])
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        for side, sock in self.socks.items():
            if sock is None:
                continue
            if self.sel is not None and self.wanted.get(side):
                self.sel.unregister(sock)
            sock.close()
        self.socks = {"client": None, "upstream": None}
        self.wanted.clear()
        self.sel = None


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    return bytes(data)


def _watch_exit(sel: selectors.BaseSelector, pid: int) -> int | None:
    """A pidfd for ``pid`` registered in ``sel`` (Linux 5.3+), else None (then the loop polls)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
    sel.register(fd, selectors.EVENT_READ, "exited")
    return fd


def _reap(pid: int, *, block: bool) -> int | None:
    """psql's exit code once it has exited (a signal ``-N``, as subprocess reports it), else None."""
    done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)
