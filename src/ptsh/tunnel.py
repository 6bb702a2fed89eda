"""The local authenticated tunnel: plain Postgres on 127.0.0.1, mTLS to the proxy.

psql (or any client) connects without TLS; the tunnel answers its SSLRequest/GSSENCRequest
with "N", then opens one mTLS connection per client connection to the proxy (ALPN
``pteleport-postgres``) with the user's database certificate, and splices the bytes.
psql's Ctrl+C arrives as a CancelRequest on a new plain connection; it travels the same
way, so the proxy always sees a certificate and cancel works.

No Typer here: ``ptsh db connect`` and ``ptsh proxy db`` drive it, and tests can too.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections.abc import Callable, Coroutine
from typing import Any

from common.relay import Connection, splice
from common.tls import ALPN_POSTGRES, INTERNAL_SNI, client_context

log = logging.getLogger("ptsh.tunnel")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (cheaper TLS connections), else asyncio's."""
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(coro: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(coro)


SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
MAX_STARTUP = 10000


class CertSource:
    """Where the tunnel gets the current certificate; ``refresh`` may re-issue it."""

    def __init__(
        self, cert: bytes, key: bytes, host_cas: bytes, refresh: Callable[[], tuple[bytes, bytes]] | None = None
    ) -> None:
        self.host_cas = host_cas
        self.refresh = refresh
        self._ctx = self._make(cert, key)

    def _make(self, cert: bytes, key: bytes) -> ssl.SSLContext:
        return client_context(cas=self.host_cas, cert=cert, key=key, alpn=[ALPN_POSTGRES])

    def context(self) -> ssl.SSLContext:
        return self._ctx

    def renew(self) -> None:
        if self.refresh is not None:
            cert, key = self.refresh()
            self._ctx = self._make(cert, key)


class LocalTunnel:
    def __init__(
        self, proxy_host: str, proxy_port: int, certs: CertSource, on_error: Callable[[str], None] | None = None
    ) -> None:
        self.proxy_host = proxy_host
        self.proxy_port = proxy_port
        self.certs = certs
        self.on_error = on_error
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Accepted(self), host, port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, conn: Connection) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, client: Connection) -> None:
        try:
            first = await self._negotiate(client)
        except (ConnectionError, ValueError):
            client.close()
            return
        try:
            upstream = await self._dial()
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            message = f"cannot reach the proxy at {self.proxy_host}:{self.proxy_port}: {exc}"
            if self.on_error:
                self.on_error(message)
            client.write(_error(message))
            client.close()
            return
        upstream.write(first)
        await splice(client, upstream)

    async def _negotiate(self, client: Connection) -> bytes:
        """Answer SSLRequest/GSSENCRequest with N; return the next startup packet as is."""
        for _ in range(3):
            head = await asyncio.wait_for(client.read_exactly(8), 60)
            length, code = struct.unpack("!ii", head)
            if length < 8 or length > MAX_STARTUP:
                raise ValueError("not a Postgres client")
            if length == 8 and code in (SSL_REQUEST, GSSENC_REQUEST):
                client.write(b"N")
                continue
            return head + await asyncio.wait_for(client.read_exactly(length - 8), 60)
        raise ValueError("too many negotiation requests")

    async def _dial(self) -> Connection:
        loop = asyncio.get_running_loop()
        _transport, conn = await asyncio.wait_for(
            loop.create_connection(
                Connection,
                self.proxy_host,
                self.proxy_port,
                ssl=self.certs.context(),
                server_hostname=INTERNAL_SNI,
                ssl_handshake_timeout=15,
            ),
            20,
        )
        return conn


class _Accepted(Connection):
    def __init__(self, tunnel: LocalTunnel) -> None:
        super().__init__()
        self.tunnel = tunnel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.tunnel._spawn(self)


def _error(message: str) -> bytes:
    fields = b"SFATAL\x00C08006\x00M" + message.encode() + b"\x00\x00"
    return b"E" + struct.pack("!i", len(fields) + 4) + fields
