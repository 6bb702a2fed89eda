"""Proxy end of the reverse tunnel: which agents are connected, and dialling one for a session.

Several agents may serve one database: ``dial`` tries the live ones in turn (the least
recently used first) and fails over to the next when one does not answer.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field

from common.errors import ConnectionProblem
from common.identity import Identity
from common.relay import Connection
from pteleport.tunnel.protocol import encode, read_message

log = logging.getLogger("pteleport.tunnel")
DIAL_TIMEOUT = 5.0


@dataclass
class AgentLink:
    host_id: str
    hostname: str
    control: Connection
    databases: set[str] = field(default_factory=set)
    last_used: float = 0.0


class TunnelServer:
    def __init__(self) -> None:
        self.agents: dict[str, AgentLink] = {}
        self._pending: dict[str, asyncio.Future[Connection]] = {}

    def serving(self, database: str) -> list[AgentLink]:
        return [a for a in self.agents.values() if database in a.databases and not a.control.closed.done()]

    async def handle(self, conn: Connection, identity: Identity) -> None:
        """A link from an agent whose host certificate was already verified."""
        first = await asyncio.wait_for(read_message(conn), 15)
        if first["type"] == "data":
            fut = self._pending.pop(str(first.get("dial_id")), None)
            if fut is None or fut.done():
                conn.close()
                return
            fut.set_result(conn)
            return
        if first["type"] != "hello":
            conn.close()
            return
        link = AgentLink(identity.username, str(first.get("hostname", "")), conn, set(first.get("databases", [])))
        old = self.agents.get(link.host_id)
        if old is not None:
            old.control.close()
        self.agents[link.host_id] = link
        log.info("agent %s connected, serving %s", link.host_id, sorted(link.databases))
        try:
            while True:
                message = await read_message(conn)
                if message["type"] == "heartbeat":
                    link.databases = set(message.get("databases", []))
                    conn.write(encode({"type": "pong"}))
        except (ConnectionError, ValueError):
            pass
        finally:
            if self.agents.get(link.host_id) is link:
                del self.agents[link.host_id]
            conn.close()
            log.info("agent %s disconnected", link.host_id)

    async def dial(self, database: str) -> Connection:
        candidates = sorted(self.serving(database), key=lambda a: a.last_used)
        if not candidates:
            raise ConnectionProblem(
                f'no database service is serving "{database}" right now; check that its pteleport '
                'db agent is running and connected ("pctl db ls" shows the agents)'
            )
        errors = []
        for agent in candidates:
            agent.last_used = time.monotonic()
            dial_id = secrets.token_hex(12)
            fut: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
            self._pending[dial_id] = fut
            agent.control.write(encode({"type": "dial", "dial_id": dial_id}))
            try:
                return await asyncio.wait_for(fut, DIAL_TIMEOUT)
            except TimeoutError:
                errors.append(agent.host_id)
                log.warning("agent %s did not answer a dial for %s; trying the next", agent.host_id, database)
            finally:
                self._pending.pop(dial_id, None)
        raise ConnectionProblem(
            f'the database service(s) serving "{database}" did not answer; they may be restarting, try again'
        )
