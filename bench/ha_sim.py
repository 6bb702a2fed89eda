"""Many simulated database agents in one process, for the HA scale figures (bench/ha_scale.py).

Each simulated agent does what a real one does on the cluster's side: it joins with a
token (a host certificate of its own), heartbeats its databases to auth every 5 s through
the load balancer, and keeps the agent mesh (``tunnel.mesh.TunnelMesh``: a control link and a
mux link to every proxy). It serves no real database: a session it is handed is closed.

    python -m bench.ha_sim --proxy HOST:PORT --token TOKEN --pin PIN --agents 100 --per-agent 10 --data DIR
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.addresses import split_host_port
from common.client import AsyncClusterClient, ClusterCredentials
from common.relay import Connection
from common.tls import ALPN_TUNNEL, client_context
from pteleport.dbagent.join import join
from pteleport.tunnel.mesh import TunnelMesh

HEARTBEAT_EVERY = 5.0


def resources(index: int, per_agent: int) -> list[dict]:
    return [
        {
            "kind": "db",
            "version": "v3",
            "metadata": {
                "name": f"ha-{index:03d}-{i:02d}",
                "description": f"simulated database {i} of agent {index}",
                "labels": {"env": "scale", "agent": f"a{index:03d}", "teleport.dev/origin": "config"},
            },
            "spec": {"protocol": "postgres", "uri": "localhost:5432"},
        }
        for i in range(per_agent)
    ]


async def sim_agent(index: int, ident, proxy: str, per_agent: int) -> None:  # type: ignore[no-untyped-def]
    host_ca = ident.cas.split(b"-----END CERTIFICATE-----", 1)[0] + b"-----END CERTIFICATE-----\n"
    client = AsyncClusterClient(proxy, ClusterCredentials(ident.cert, ident.key, host_ca))
    docs = resources(index, per_agent)

    async def on_session(conn: Connection) -> None:
        conn.close()

    host, port = split_host_port(proxy)
    mesh = TunnelMesh(host, port, client_context(cas=host_ca, cert=ident.cert, key=ident.key, alpn=[ALPN_TUNNEL]),
                      f"sim-agent-{index:03d}", lambda: [d["metadata"]["name"] for d in docs], on_session)
    task = asyncio.get_running_loop().create_task(mesh.run())
    try:
        while True:
            with contextlib.suppress(Exception):
                await client.post("/v1/agents/heartbeat", {"hostname": f"sim-agent-{index:03d}", "databases": docs})
            await asyncio.sleep(HEARTBEAT_EVERY)
    finally:
        task.cancel()
        await mesh.stop()
        await client.aclose()


async def main_async(args: argparse.Namespace) -> None:
    data = Path(args.data)

    def join_one(i: int):  # type: ignore[no-untyped-def]
        return join(data / f"sim-{i:03d}", args.proxy, args.token, [args.pin], f"sim-agent-{i:03d}")

    with ThreadPoolExecutor(8) as pool:
        idents = list(pool.map(join_one, range(args.agents)))
    print(f"joined {len(idents)} agents", flush=True)
    tasks = []
    for i, ident in enumerate(idents):
        tasks.append(asyncio.get_running_loop().create_task(sim_agent(i, ident, args.proxy, args.per_agent)))
        await asyncio.sleep(0.02)  # spread the heartbeats over time, as real agents start at different times
    await asyncio.gather(*tasks)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--pin", required=True)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--per-agent", type=int, default=10)
    parser.add_argument("--data", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
