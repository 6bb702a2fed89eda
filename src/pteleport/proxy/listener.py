"""The one public TLS port: routes each connection by ALPN (DESIGN.md "One public port").

``http/1.1`` or no ALPN -> the aiohttp API and web pages; ``pteleport-postgres`` -> the
database proxy; ``pteleport-reversetunnel`` -> agents dialling in. Clients that send the
SNI name ``pteleport.cluster.local`` get the proxy's host certificate (signed by the
cluster's host CA) instead of the web certificate.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable

from common.relay import Connection
from common.tls import ALPN_HTTP, ALPN_POSTGRES, ALPN_TUNNEL, INTERNAL_SNI, server_context

log = logging.getLogger("pteleport.proxy")

ConnHandler = Callable[[Connection], Awaitable[None]]


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
            task = asyncio.get_running_loop().create_task(self.listener.run(handler, conn))
            self.listener.tasks.add(task)
            task.add_done_callback(self.listener.tasks.discard)
            return
        http = self.listener.http_factory()
        transport.set_protocol(http)
        http.connection_made(transport)


class PublicListener:
    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        http_factory: Callable[[], asyncio.Protocol],
        postgres: ConnHandler,
        tunnel: ConnHandler,
    ) -> None:
        self.ssl_context = ssl_context
        self.http_factory = http_factory
        self.postgres = postgres
        self.tunnel = tunnel
        self.server: asyncio.base_events.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self, handler: ConnHandler, conn: Connection) -> None:
        try:
            await handler(conn)
        except Exception:
            log.exception("connection from %s failed", conn.peername())
            conn.close()

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Router(self),
            host,
            port,
            ssl=self.ssl_context,
            ssl_handshake_timeout=15,
            reuse_address=True,
            backlog=1024,
        )
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
