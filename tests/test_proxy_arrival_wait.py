"""A young proxy waits for an agent's tunnel to arrive; the client may leave, or a drain begin.

In process, real TLS on loopback: the proxy's database handler (``ProxyServer.handle_postgres``)
behind a listener that asks for user certificates, a ``TunnelServer`` young enough to wait
for arrivals (tests/test_tunnel_pool.py has the waits themselves), and an agent whose tunnel
arrives a second late.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from cryptography import x509

from common.identity import DatabaseRoute, Identity
from common.relay import Connection
from common.tls import INTERNAL_SNI, client_context, generate_private_key, private_key_pem, server_context
from pteleport.ca.authority import new_authority, sign_identity
from pteleport.proxy.server import ClusterView, ProxyServer
from pteleport.tunnel.agent import TunnelAgent
from tests.pgserver import ThrowawayCA
from tests.test_tunnel_pool import HOST, tunnel_pair

DRAINING = "the proxy is shutting down; connect again to reach another proxy"


def _startup() -> bytes:
    body = struct.pack("!i", 196608) + b"user\x00alice\x00database\x00postgres\x00\x00"
    return struct.pack("!i", len(body) + 4) + body


async def _proxy_front(proxy: ProxyServer) -> tuple[int, bytes, bytes, bytes, asyncio.AbstractServer]:
    """A listener handing each client to ``handle_postgres``; (port, CA, user cert, user key, server)."""
    now = datetime.now(UTC)
    user_ca = new_authority("user", "test", now - timedelta(hours=1))
    key = generate_private_key()
    route = DatabaseRoute("db1", "postgres", "alice", "postgres")
    cert = sign_identity(user_ca, key.public_key(), Identity("alice", roles=("access",), route=route),
                         now - timedelta(minutes=5), now + timedelta(hours=1))
    proxy.cluster.ca_cert = lambda _kind: x509.load_pem_x509_certificate(user_ca.cert_pem)
    web = ThrowawayCA.create("proxy front CA")
    front_cert, front_key = web.issue("proxy", [INTERNAL_SNI], server=True)

    handlers: set[asyncio.Task[None]] = set()

    class Accepted(Connection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:  # (after the TLS handshake)
            super().connection_made(transport)
            task = asyncio.get_running_loop().create_task(proxy.handle_postgres(self))
            handlers.add(task)
            task.add_done_callback(handlers.discard)

    ctx = server_context(front_cert, front_key, client_cas=user_ca.cert_pem, client_auth="required")
    server = await asyncio.get_running_loop().create_server(Accepted, "127.0.0.1", 0, ssl=ctx)
    return server.sockets[0].getsockname()[1], web.cert_pem, cert, private_key_pem(key), server


async def _client(port: int, ca: bytes, cert: bytes, key: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx = client_context(cas=ca, cert=cert, key=key)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=INTERNAL_SNI)
    writer.write(_startup())
    await writer.drain()
    return reader, writer


def _proxy(server: object) -> ProxyServer:
    async def no_refusal(_identity: Identity) -> None:
        return None

    view = ClusterView(ca_cert=lambda _kind: None, refusal=no_refusal,  # type: ignore[arg-type]
                       registered_hosts=lambda _db: [HOST.username], emit=lambda *a, **k: None)
    return ProxyServer(server, view, lambda: datetime.now(UTC))  # type: ignore[arg-type]


@asynccontextmanager
async def _waiting_client() -> AsyncIterator[tuple[ProxyServer, TunnelAgent, list[dict], asyncio.StreamReader,
                                                   asyncio.StreamWriter]]:
    """A young proxy and a client whose session it is waiting on; the agent's tunnel comes 1 s late."""
    async with tunnel_pair(pool_size=0, agent_after=1.0) as (server, agent, sessions):
        proxy = _proxy(server)
        port, ca, cert, key, front = await _proxy_front(proxy)
        try:
            reader, writer = await _client(port, ca, cert, key)
            await asyncio.sleep(0.3)  # the proxy is now waiting for the agent's tunnel
            yield proxy, agent, sessions, reader, writer
        finally:
            front.close()


def test_a_client_that_leaves_while_the_proxy_waits_starts_no_session() -> None:
    async def main() -> None:
        async with _waiting_client() as (proxy, agent, sessions, _reader, writer):
            writer.close()
            await asyncio.wait_for(agent.connected.wait(), 10)
            await asyncio.sleep(1.0)  # time for a session line to reach the agent, were one sent
            assert sessions == [], "a session was started for a client that had left"
            assert proxy.active_sessions == 0

    asyncio.run(main())


def test_a_drain_that_begins_while_the_proxy_waits_refuses_the_session() -> None:
    async def main() -> None:
        async with _waiting_client() as (proxy, _agent, sessions, reader, _writer):
            proxy.closing = DRAINING  # what proxy/drain.py does on SIGTERM
            answer = await asyncio.wait_for(reader.read(65536), 20)
            assert answer[:1] == b"E" and DRAINING.encode() in answer, answer
            assert sessions == []

    asyncio.run(main())
