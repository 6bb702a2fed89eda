"""The agent mesh in-process: one agent, several ``TunnelServer`` proxies on loopback TLS.

The agent is given one address (here: proxy 0's); it learns the set from there and keeps a
tunnel to each proxy, follows changes of the set, and keeps serving through the others
when one goes away. With a single proxy it dials only the configured address.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from common.addresses import split_host_port
from common.identity import KIND_HOST, Identity
from common.relay import Connection
from common.tls import INTERNAL_SNI, client_context, server_context
from pteleport.tunnel import mesh
from pteleport.tunnel.mesh import TunnelMesh
from pteleport.tunnel.protocol import encode, read_message
from pteleport.tunnel.server import TunnelServer
from tests.pgserver import ThrowawayCA

HOST = Identity("host-1", kind=KIND_HOST)
CA = ThrowawayCA.create("mesh test CA")


@dataclass
class FakeProxy:
    """A TLS listener handing every link to a TunnelServer, as the proxy's ALPN router does."""

    server: TunnelServer
    listener: asyncio.Server
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.listener.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        self.listener.close()
        for link in list(self.server.agents.values()):
            link.control.close()
        for task in list(self.handlers):
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)


async def start_proxy(ca: ThrowawayCA, port: int = 0) -> FakeProxy:
    cert, key = ca.issue("proxy", [INTERNAL_SNI], server=True)
    server = TunnelServer(pool_size=1)
    proxy: FakeProxy

    def accept() -> Connection:
        conn = Connection()

        def start() -> None:
            task = asyncio.get_running_loop().create_task(server.handle(conn, HOST))
            proxy.handlers.add(task)
            task.add_done_callback(proxy.handlers.discard)

        asyncio.get_running_loop().call_soon(start)
        return conn

    listener = await asyncio.get_running_loop().create_server(
        accept, "127.0.0.1", port, ssl=server_context(cert, key, client_auth="none"), reuse_address=True
    )
    proxy = FakeProxy(server, listener)
    return proxy


def publish(proxies: list[FakeProxy], members: list[FakeProxy] | None = None) -> None:
    """What the registry does: every running proxy learns the set (and tells its agents)."""
    entries = [{"id": f"p{i}", "addr": p.addr} for i, p in enumerate(proxies) if members is None or p in members]
    for i, proxy in enumerate(proxies):
        proxy.server.set_proxies(f"p{i}", entries)


@asynccontextmanager
async def mesh_of(count: int) -> AsyncIterator[tuple[list[FakeProxy], TunnelMesh, list[dict]]]:
    proxies = [await start_proxy(CA) for _ in range(count)]
    publish(proxies)
    sessions: list[dict] = []

    async def on_session(conn: Connection) -> None:
        sessions.append(await read_message(conn))
        conn.write(b"served")
        await conn.closed

    host, port = split_host_port(proxies[0].addr)
    agent = TunnelMesh(host, port, client_context(cas=CA.cert_pem), "agent-1", lambda: ["db1"], on_session)
    run = asyncio.get_running_loop().create_task(agent.run())
    try:
        yield proxies, agent, sessions
    finally:
        run.cancel()
        await agent.stop()
        for proxy in proxies:
            await proxy.close()
        await asyncio.gather(run, return_exceptions=True)


async def until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def reaches(proxy: FakeProxy) -> bool:
    link = proxy.server.agents.get("host-1")
    return link is not None and not link.control.closed.done()


async def session_through(proxy: FakeProxy, marker: str) -> None:
    link = await proxy.server.dial("db1", ["host-1"])
    link.write(encode({"type": "session", "marker": marker}))
    assert await asyncio.wait_for(link.read_exactly(6), 5) == b"served"
    link.close()


def test_an_agent_given_one_proxy_keeps_a_tunnel_to_each_and_serves_through_every_one() -> None:
    async def main() -> None:
        async with mesh_of(3) as (proxies, _agent, sessions):
            await until(lambda: all(reaches(p) for p in proxies))
            for i, proxy in enumerate(proxies):
                await session_through(proxy, f"via {i}")
            assert [s["marker"] for s in sessions] == ["via 0", "via 1", "via 2"]

    asyncio.run(main())


def test_a_new_proxy_gets_a_tunnel_and_one_that_dies_leaves_the_rest_serving() -> None:
    async def main() -> None:
        async with mesh_of(2) as (proxies, agent, sessions):
            await until(lambda: all(reaches(p) for p in proxies))
            # A third proxy joins: the others announce it, and the agent dials it.
            third = await start_proxy(CA)
            proxies.append(third)
            publish(proxies)
            await until(lambda: reaches(third))
            await session_through(third, "new proxy")
            # Proxy 1 dies: its tunnel drops; the others keep serving.
            dead = proxies[1]
            await dead.close()
            await session_through(proxies[0], "after the death")
            await session_through(third, "after the death too")
            # Its record expires: the set no longer names it, and the agent stops dialling it.
            publish(proxies, members=[proxies[0], third])
            await until(lambda: "p1" not in agent.members)
            assert {s["marker"] for s in sessions} >= {"new proxy", "after the death", "after the death too"}

    asyncio.run(main())


def test_with_a_single_proxy_the_agent_dials_only_the_configured_address() -> None:
    async def main() -> None:
        async with mesh_of(1) as (proxies, agent, _sessions):
            # The proxy advertises an address nobody listens on: with one proxy it is not used.
            proxies[0].server.set_proxies("p0", [{"id": "p0", "addr": "127.0.0.1:1"}])
            await until(lambda: reaches(proxies[0]))
            assert [m.addr for m in agent.members.values()] == [agent.seed]
            await session_through(proxies[0], "single")

    asyncio.run(main())


def test_a_proxy_that_does_not_answer_discover_gets_one_tunnel_to_the_configured_address() -> None:
    async def main() -> None:
        async with mesh_of(1) as (proxies, agent, _sessions):
            proxies[0].server.proxies = []  # as before the mesh: no proxies line
            await until(lambda: reaches(proxies[0]))
            assert list(agent.members) in (["p0"], [mesh.SEED])
            await session_through(proxies[0], "legacy")

    asyncio.run(main())
