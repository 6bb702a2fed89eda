"""Reverse tunnel warm links: spare data links kept by the agent and handed out by ``dial``.

In-process: a TLS listener that passes every link to ``TunnelServer.handle`` (as the
proxy's ALPN router does after checking the host certificate) and a ``TunnelAgent``
dialling it, on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common.identity import KIND_HOST, Identity
from common.relay import Connection
from common.tls import INTERNAL_SNI, client_context, server_context
from pteleport.tunnel.agent import TunnelAgent
from pteleport.tunnel.protocol import encode, read_message
from pteleport.tunnel.server import TunnelServer
from tests.pgserver import ThrowawayCA

HOST = Identity("host-1", kind=KIND_HOST)


@asynccontextmanager
async def tunnel_pair(pool_size: int) -> AsyncIterator[tuple[TunnelServer, TunnelAgent, list[dict]]]:
    ca = ThrowawayCA.create("tunnel test CA")
    cert, key = ca.issue("proxy", [INTERNAL_SNI], server=True)
    server = TunnelServer(pool_size=pool_size)
    handlers: set[asyncio.Task[None]] = set()

    def accept() -> Connection:
        conn = Connection()

        def start() -> None:
            task = asyncio.get_running_loop().create_task(server.handle(conn, HOST))
            handlers.add(task)
            task.add_done_callback(handlers.discard)

        asyncio.get_running_loop().call_soon(start)
        return conn

    listener = await asyncio.get_running_loop().create_server(
        accept, "127.0.0.1", 0, ssl=server_context(cert, key, client_auth="none")
    )
    port = listener.sockets[0].getsockname()[1]
    sessions: list[dict] = []

    async def on_session(conn: Connection) -> None:
        header = await read_message(conn)
        sessions.append(header)
        conn.write(b"hello from the agent")
        await conn.closed

    agent = TunnelAgent("127.0.0.1", port, client_context(cas=ca.cert_pem), "agent-1", lambda: ["db1"], on_session)
    run = asyncio.get_running_loop().create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 10)
        yield server, agent, sessions
    finally:
        run.cancel()
        await agent.stop()
        listener.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(run, *handlers, return_exceptions=True)


async def _until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def _use(server: TunnelServer, marker: str) -> Connection:
    link = await server.dial("db1", ["host-1"])
    link.write(encode({"type": "session", "marker": marker}))
    assert await asyncio.wait_for(link.read_exactly(20), 5) == b"hello from the agent"
    return link


def test_agent_keeps_spares_and_dial_hands_one_out_then_it_is_replaced() -> None:
    async def main() -> None:
        async with tunnel_pair(pool_size=2) as (server, _agent, sessions):
            await _until(lambda: "host-1" in server.agents and len(server.agents["host-1"].spares) == 2)
            spares = list(server.agents["host-1"].spares)
            link = await _use(server, "one")
            assert link is spares[0]  # no dial round trip: a spare was used
            assert not server._pending
            assert sessions == [{"type": "session", "marker": "one"}]
            await _until(lambda: len(server.agents["host-1"].spares) == 2)  # refilled
            link.close()

    asyncio.run(main())


def test_without_spares_dial_asks_the_agent_as_before() -> None:
    async def main() -> None:
        async with tunnel_pair(pool_size=0) as (server, _agent, sessions):
            await _until(lambda: "host-1" in server.agents)
            await asyncio.sleep(0.2)
            assert not server.agents["host-1"].spares
            link = await _use(server, "two")
            assert sessions == [{"type": "session", "marker": "two"}]
            link.close()

    asyncio.run(main())


def test_closed_spares_are_skipped_and_dial_falls_back() -> None:
    async def main() -> None:
        async with tunnel_pair(pool_size=1) as (server, _agent, sessions):
            await _until(lambda: "host-1" in server.agents and len(server.agents["host-1"].spares) == 1)
            agent_link = server.agents["host-1"]
            agent_link.spares[0].close()
            await _until(lambda: agent_link.spares[0].closed.done() if agent_link.spares else True)
            link = await _use(server, "three")  # the closed spare is not handed out
            assert sessions[-1] == {"type": "session", "marker": "three"}
            link.close()

    asyncio.run(main())


def test_dial_routes_only_to_registered_hosts_whatever_agents_announce() -> None:
    """The agent announces db1, but a host that auth holds no registration for gets no session."""

    async def main() -> None:
        async with tunnel_pair(pool_size=1) as (server, _agent, sessions):
            await _until(lambda: "host-1" in server.agents)
            from common.errors import ConnectionProblem

            for registered in ([], ["host-2"]):
                try:
                    await server.dial("db1", registered)
                except ConnectionProblem as err:
                    assert 'no database service is serving "db1"' in err.message
                else:
                    raise AssertionError("dialled a host without a registration")
            assert sessions == []

    asyncio.run(main())
