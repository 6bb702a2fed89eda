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
RUNS: dict[int, asyncio.Task[None]] = {}  # id(agent) -> the task running it, for tests that stop it


@asynccontextmanager
async def tunnel_pair(
    pool_size: int, warmup: float = 30.0, agent_after: float | None = None, mux: bool = False
) -> AsyncIterator[tuple[TunnelServer, TunnelAgent, list[dict]]]:
    """A tunnel server and an agent dialling it; ``agent_after``: the agent starts that late, unawaited.

    ``mux``: the server offers mux links (tests/test_tunnel_mux.py); off here, so these
    tests drive dial-back and spares, which agents that ignore the offer still use.
    """
    ca = ThrowawayCA.create("tunnel test CA")
    cert, key = ca.issue("proxy", [INTERNAL_SNI], server=True)
    server = TunnelServer(pool_size=pool_size, warmup=warmup, mux=mux)
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
        while await conn.wait_data():  # echo what follows the greeting
            conn.write(conn.take_buffer())
        conn.close()

    agent = TunnelAgent("127.0.0.1", port, client_context(cas=ca.cert_pem), "agent-1", lambda: ["db1"], on_session)
    async def run_agent() -> None:
        if agent_after is not None:
            await asyncio.sleep(agent_after)
        await agent.run()

    run = asyncio.get_running_loop().create_task(run_agent())
    RUNS[id(agent)] = run
    try:
        if agent_after is None:
            await asyncio.wait_for(agent.connected.wait(), 10)
        yield server, agent, sessions
    finally:
        run.cancel()
        await agent.stop()
        listener.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(run, *handlers, return_exceptions=True)
        RUNS.pop(id(agent), None)


async def _until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def _refused_at_once(server: TunnelServer, host_ids: list[str]) -> None:
    """``dial`` refuses ``db1`` on ``host_ids`` with the sentence users see, without waiting."""
    from common.errors import ConnectionProblem

    started = asyncio.get_running_loop().time()
    try:
        await server.dial("db1", host_ids)
    except ConnectionProblem as err:
        assert 'no database service is serving "db1"' in err.message
    else:
        raise AssertionError(f"dialled {host_ids} though none may serve db1 now")
    assert asyncio.get_running_loop().time() - started < 0.3


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
        async with tunnel_pair(pool_size=1, warmup=0) as (server, _agent, sessions):
            await _until(lambda: "host-1" in server.agents)
            for registered in ([], ["host-2"]):
                await _refused_at_once(server, registered)
            assert sessions == []

    asyncio.run(main())


def test_a_young_proxy_waits_for_a_registered_agent_whose_tunnel_is_on_its_way() -> None:
    """Behind a load balancer a proxy that just started takes sessions before the agents redial it."""

    async def main() -> None:
        async with tunnel_pair(pool_size=0, agent_after=0.5) as (server, _agent, sessions):
            assert "host-1" not in server.agents
            started = asyncio.get_running_loop().time()
            link = await _use(server, "early")
            assert asyncio.get_running_loop().time() - started >= 0.4  # it did wait for the agent
            assert sessions == [{"type": "session", "marker": "early"}]
            link.close()

    asyncio.run(main())


def test_past_its_warm_up_a_proxy_refuses_an_absent_agent_at_once() -> None:
    async def main() -> None:
        async with tunnel_pair(pool_size=0, agent_after=0.5) as (server, _agent, sessions):
            server.started -= 60  # an old proxy that never saw host-1
            await _refused_at_once(server, ["host-1"])
            assert sessions == []

    asyncio.run(main())


def test_an_agent_whose_tunnel_just_dropped_is_waited_for_while_it_redials() -> None:
    async def main() -> None:
        async with tunnel_pair(pool_size=0) as (server, _agent, sessions):
            server.started -= 60  # an old proxy: only the agent's recent absence makes it wait
            await _until(lambda: "host-1" in server.agents)
            server.agents["host-1"].control.close()  # the tunnel drops; the agent redials with backoff
            await _until(lambda: "host-1" not in server.agents)
            link = await _use(server, "after-drop")
            assert sessions == [{"type": "session", "marker": "after-drop"}]
            link.close()

    asyncio.run(main())


def test_an_agent_that_says_bye_is_refused_at_once_even_by_a_young_proxy() -> None:
    async def main() -> None:
        async with tunnel_pair(pool_size=0) as (server, agent, sessions):
            await _until(lambda: "host-1" in server.agents)
            await agent.stop()  # the agent stops (as on SIGTERM): it says bye
            RUNS[id(agent)].cancel()
            await _until(lambda: "host-1" not in server.agents)
            await _refused_at_once(server, ["host-1"])
            assert sessions == []

    asyncio.run(main())
