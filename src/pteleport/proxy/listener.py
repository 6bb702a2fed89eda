"""The one public port: TLS routed by ALPN, or PostgreSQL's own protocol (DESIGN.md "One public port").

The listener looks at the first byte a client sends before anything reads it (``MSG_PEEK``).
A TLS record (``0x16``) starts TLS on the socket and routes by ALPN: ``http/1.1`` or no ALPN
-> the aiohttp API and web pages; ``pteleport-postgres`` -> the database proxy;
``pteleport-reversetunnel`` -> agents dialling in. Clients that send the SNI name
``pteleport.cluster.local`` get the proxy's host certificate (signed by the cluster's host
CA) instead of the web certificate. Anything else is a PostgreSQL client speaking its own
protocol (an SSLRequest, a CancelRequest, a GSSENCRequest), handed in plain text to the
native handler, which answers the SSLRequest and starts TLS itself (docs/design-notes.md,
"PostgreSQL's own protocol on the public port").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

from common.relay import Connection
from common.sockettransport import SocketTransport, accept_tls
from common.tls import ALPN_HTTP, ALPN_POSTGRES, ALPN_TUNNEL, INTERNAL_SNI, server_context

log = logging.getLogger("pteleport.proxy")

ConnHandler = Callable[[Connection], Awaitable[None]]
TLS_HANDSHAKE_RECORD = 0x16
FIRST_BYTE_TIMEOUT = 15.0  # as long as a TLS handshake may take
ACCEPT_BATCH = 64
ACCEPT_PAUSE = 1.0  # seconds without accepting after running out of file descriptors


def build_contexts(
    web_cert: bytes, web_key: bytes, host_cert: bytes, host_key: bytes, client_cas: bytes
) -> ssl.SSLContext:
    alpn = [ALPN_HTTP, ALPN_POSTGRES, ALPN_TUNNEL]
    web = server_context(web_cert, web_key, client_cas=client_cas, client_auth="optional", alpn=alpn)
    internal = server_context(host_cert, host_key, client_cas=client_cas, client_auth="optional", alpn=alpn)

    def pick(ssl_obj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if server_name == INTERNAL_SNI:
            ssl_obj.context = internal
        return None

    web.sni_callback = pick  # type: ignore[assignment]
    return web


class _Router(asyncio.Protocol):
    """Lives only until the handshake is done, then hands the transport to the right protocol."""

    def __init__(self, listener: PublicListener) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn in (ALPN_POSTGRES, ALPN_TUNNEL):
            handler = self.listener.postgres if alpn == ALPN_POSTGRES else self.listener.tunnel
            conn = Connection.attach(transport)
            self.listener._spawn(self.listener.run(handler, conn))
            return
        http = self.listener.http_factory()
        transport.set_protocol(http)
        http.connection_made(transport)


class PublicListener:
    """Accepts on its own sockets so it can see each client's first byte before TLS starts."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        http_factory: Callable[[], asyncio.Protocol],
        postgres: ConnHandler,
        tunnel: ConnHandler,
        native: ConnHandler | None = None,
    ) -> None:
        self.ssl_context = ssl_context
        self.http_factory = http_factory
        self.postgres = postgres
        self.tunnel = tunnel
        self.native = native
        self.sockets: list[socket.socket] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self._waiting: dict[socket.socket, asyncio.TimerHandle] = {}
        self._paused: asyncio.TimerHandle | None = None

    async def run(self, handler: ConnHandler, conn: Connection) -> None:
        try:
            await handler(conn)
        except Exception:
            log.exception("connection from %s failed", conn.peername())
            conn.close()

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _name, addr in dict.fromkeys(infos):
            sock = None
            try:
                sock = socket.socket(family, kind, proto)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and self.sockets:  # every address on the port the first one got
                    addr = (addr[0], self.sockets[0].getsockname()[1], *addr[2:])
                sock.bind(addr)
                sock.listen(1024)
                sock.setblocking(False)
            except OSError as exc:
                if sock is not None:
                    sock.close()
                self._close_sockets()
                # The words asyncio's create_server uses, which the start-up error quotes.
                reason = (exc.strerror or str(exc)).lower()
                raise OSError(exc.errno, f"error while attempting to bind on address {addr!r}: {reason}") from None
            self.sockets.append(sock)
            loop.add_reader(sock.fileno(), self._accept, sock)
        return self.sockets[0].getsockname()[1]

    def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors or memory: the socket stays readable, so stop
                    # watching it for a while instead of failing in a tight loop.
                    log.warning("cannot accept connections (%s); trying again in %.0f s", exc, ACCEPT_PAUSE)
                    loop.remove_reader(listening.fileno())
                    self._paused = loop.call_later(ACCEPT_PAUSE, self._resume_accepting, listening)
                else:
                    log.debug("accept failed: %s", exc)  # e.g. the client reset before we accepted
                return
            sock.setblocking(False)
            self._waiting[sock] = loop.call_later(FIRST_BYTE_TIMEOUT, self._give_up, sock)
            loop.add_reader(sock.fileno(), self._first_byte, sock)

    def _resume_accepting(self, listening: socket.socket) -> None:
        self._paused = None
        if listening in self.sockets:
            asyncio.get_running_loop().add_reader(listening.fileno(), self._accept, listening)

    def _stop_waiting(self, sock: socket.socket) -> None:
        timer = self._waiting.pop(sock, None)
        if timer is not None:
            timer.cancel()
        asyncio.get_running_loop().remove_reader(sock.fileno())

    def _give_up(self, sock: socket.socket) -> None:
        self._stop_waiting(sock)
        sock.close()

    def _first_byte(self, sock: socket.socket) -> None:
        try:
            head = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            head = b""
        self._stop_waiting(sock)
        if not head:
            sock.close()
            return
        self._spawn(self._serve(sock, head[0] == TLS_HANDSHAKE_RECORD))

    def _spawn(self, job: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(job)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, sock: socket.socket, tls: bool) -> None:
        if not tls:
            if self.native is None:
                sock.close()  # not TLS, and PostgreSQL's own protocol is not served here
                return
            conn = Connection()
            SocketTransport(sock, conn)
            await self.run(self.native, conn)
            return
        try:
            await accept_tls(sock, self.ssl_context, lambda: _Router(self), FIRST_BYTE_TIMEOUT)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.debug("TLS handshake failed: %s", exc)
            sock.close()

    def _close_sockets(self) -> None:
        loop = asyncio.get_running_loop()
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        for sock in self.sockets:
            with contextlib.suppress(Exception):
                loop.remove_reader(sock.fileno())
            sock.close()
        self.sockets.clear()

    async def stop(self) -> None:
        self._close_sockets()
        for sock in list(self._waiting):
            self._give_up(sock)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
