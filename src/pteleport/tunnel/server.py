"""Proxy end of the reverse tunnel: which agents are connected, and reaching one for a session.

A session reaches an agent as a stream on its mux link (below) when it has one, else over a
*data link*: a spare, or one the agent dials back on request.

Several agents may serve one database: ``dial`` tries the live ones in turn (the least
recently used first) and fails over to the next when one does not answer. Which agents may
serve a database is not theirs to say: the caller passes the host ids that auth holds a
live registration for, and only those are dialled.

Warm links: after ``hello`` the proxy tells the agent how many *spare* data links to keep
open (``pool``). A spare is a data link dialled in advance (``spare`` line); ``dial`` hands
one out at once instead of asking the agent over the control link and waiting for it to
dial back (a round trip and a TLS handshake per session). Spares are used only while the
agent's control link is up and was heard from recently; otherwise ``dial`` asks as before.
Agents that do not know ``pool`` never send spares.

Mux links (``tunnel.mux``): after ``hello`` the proxy also offers ``mux``; an agent that
knows it opens one link whose first line is ``mux`` and which then carries every session
as a stream, and leaves spares alone. ``dial`` opens a stream on it: no round trip, no
handshake, and no TLS connection per session in either process. Dial-back and spares remain
for agents that ignore the offer. A mux link outlives the control link it came with until
its sessions end (as data links do); new sessions go to the agent's current one.

The agent mesh (docs/design-notes.md "Every proxy reaches every agent"): the proxy knows
the set of running proxies (``set_proxies``, from the proxy registry) and tells each agent
on its control link (``proxies`` line, right after ``hello`` and whenever the set changes);
a link whose first line is ``discover`` gets that line and is closed. An agent keeps one
tunnel to each proxy in the set.

Arrivals: a proxy that has just started (or that has just lost an agent's tunnel) holds
registrations for agents whose tunnels are still on their way (an agent redials with
jittered backoff, up to ~15 s apart after a proxy was down). Behind a load balancer such
a proxy takes sessions at once, so ``dial`` waits up to ``ARRIVAL_WAIT`` for a registered
agent it has not seen yet during the proxy's first ``WARMUP`` seconds, and up to
``REDIAL_WAIT`` for one whose tunnel dropped less than ``WARMUP`` seconds ago, instead of
refusing a session another proxy would have carried. After that, or when the agent said ``bye``
(it is stopping), an absent tunnel is refused at once. The price: a dead agent whose
registration has not expired yet makes such dials wait before the same refusal.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field

from common.backoff import Backoff
from common.errors import ConnectionProblem
from common.identity import Identity
from common.relay import Connection
from pteleport.tunnel.agent import BACKOFF_MAX, BACKOFF_MIN
from pteleport.tunnel.mux import MuxLink
from pteleport.tunnel.protocol import encode, read_message

log = logging.getLogger("pteleport.tunnel")
DIAL_TIMEOUT = 5.0
POOL_SIZE = 2  # spare data links each agent keeps open
SPARE_FRESH = 30.0  # use spares only if the control link was heard from within this many seconds
WARMUP = 30.0  # a proxy this young, or an agent gone this recently, may be about to (re)connect
# How long a dial on a young proxy waits: an agent's longest redial delay (15 s), and a handshake.
ARRIVAL_WAIT = Backoff(BACKOFF_MIN, BACKOFF_MAX).longest + 1.0
# How long a dial waits for an agent whose tunnel just dropped: one whose link had stayed up
# redials in ~0.25 s; one that was flapping backs off longer and is refused after this.
REDIAL_WAIT = 3.0


@dataclass
class AgentLink:
    host_id: str
    hostname: str
    control: Connection
    databases: set[str] = field(default_factory=set)
    last_used: float = 0.0
    last_seen: float = field(default_factory=time.monotonic)
    spares: collections.deque[Connection] = field(default_factory=collections.deque)
    leaving: bool = False  # the agent said ``bye``: it is stopping, not redialling
    mux: MuxLink | None = None

    def alive(self) -> bool:
        """The control link is up and was heard from lately (a link to a frozen agent may look open)."""
        return not self.control.closed.done() and time.monotonic() - self.last_seen <= SPARE_FRESH

    def open_stream(self) -> Connection | None:
        """A new session stream on the agent's mux link, if it has a usable one that was heard from lately."""
        if self.mux is None or not self.mux.usable or not self.alive() or not self.mux.heard_within(SPARE_FRESH):
            return None  # (a silent link, e.g. one a NAT forgot: dial-back instead, which fails over)
        return Connection.attach(self.mux.open())

    def take_spare(self) -> Connection | None:
        """A warm data link, if one is open and the agent is alive."""
        if not self.alive():
            return None
        while self.spares:
            conn = self.spares.popleft()
            if not conn.closed.done() and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def close_links(self) -> None:
        """Close the spares; the mux link takes no new sessions and closes after its last one."""
        while self.spares:
            self.spares.popleft().close()
        if self.mux is not None:
            self.mux.retire()


class TunnelServer:
    def __init__(self, pool_size: int = POOL_SIZE, warmup: float = WARMUP, mux: bool = True) -> None:
        self.agents: dict[str, AgentLink] = {}
        self.pool_size = pool_size
        self.mux = mux
        self.warmup = warmup
        self.started = time.monotonic()
        self._left: dict[str, tuple[float, bool]] = {}  # host id -> (when its link closed, said bye)
        self._arrival = asyncio.Event()  # set (and replaced) whenever an agent says hello
        self._pending: dict[str, asyncio.Future[Connection]] = {}
        self.self_id = ""
        self.proxies: list[dict[str, str]] = []  # {"id", "addr"} of every running proxy

    def set_proxies(self, self_id: str, proxies: list[dict[str, str]]) -> None:
        """The running proxies changed (or are known for the first time): tell every agent."""
        self.self_id, self.proxies = self_id, list(proxies)
        self.broadcast(self.proxies_line())

    def proxies_line(self) -> dict:
        return {"type": "proxies", "self": self.self_id, "proxies": self.proxies}

    def connected(self, host_ids: list[str]) -> list[AgentLink]:
        """The agents among ``host_ids`` with a live control link to this proxy."""
        links = (self.agents.get(h) for h in host_ids)
        return [a for a in links if a is not None and not a.control.closed.done()]

    def broadcast(self, message: dict) -> None:
        """Send one control line to every connected agent (e.g. "the access snapshot changed")."""
        line = encode(message)
        for link in list(self.agents.values()):
            if not link.control.closed.done():
                link.control.write(line)

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
        if first["type"] == "spare":
            self._add_spare(conn, identity)
            return
        if first["type"] == "mux":
            self._add_mux(conn, identity)
            return
        if first["type"] == "discover":
            conn.write(encode(self.proxies_line()))
            conn.close()  # after what was written is sent
            return
        if first["type"] != "hello":
            conn.close()
            return
        link = AgentLink(identity.username, str(first.get("hostname", "")), conn, set(first.get("databases", [])))
        old = self.agents.get(link.host_id)
        if old is not None:
            old.control.close()
            old.close_links()
        self.agents[link.host_id] = link
        self._left.pop(link.host_id, None)
        self._arrival.set()
        self._arrival = asyncio.Event()
        log.info("agent %s (%s) connected, serving %s", link.host_id, link.hostname, sorted(link.databases))
        if self.mux:
            conn.write(encode({"type": "mux"}))  # before ``pool``: an agent that takes it opens no spares
        if self.pool_size > 0:
            conn.write(encode({"type": "pool", "size": self.pool_size}))
        if self.proxies:
            conn.write(encode(self.proxies_line()))
        try:
            while True:
                message = await read_message(conn)
                link.last_seen = time.monotonic()
                if message["type"] == "heartbeat":
                    link.databases = set(message.get("databases", []))
                    conn.write(encode({"type": "pong"}))
                elif message["type"] == "bye":
                    link.leaving = True
                    break
        except (ConnectionError, ValueError):
            pass
        finally:
            if self.agents.get(link.host_id) is link:
                del self.agents[link.host_id]
                now = time.monotonic()
                self._left = {h: gone for h, gone in self._left.items() if now - gone[0] < self.warmup}
                self._left[link.host_id] = (now, link.leaving)
            link.close_links()
            conn.close()
            log.info("agent %s (%s) disconnected", link.host_id, link.hostname)

    def _add_spare(self, conn: Connection, identity: Identity) -> None:
        link = self.agents.get(identity.username)
        if link is None or link.control.closed.done():
            conn.close()
            return
        # Forget spares that closed meanwhile; refuse more than twice what we asked for.
        link.spares = collections.deque(c for c in link.spares if not c.closed.done())
        if len(link.spares) >= 2 * max(self.pool_size, 1):
            conn.close()
            return
        link.spares.append(conn)

    def _add_mux(self, conn: Connection, identity: Identity) -> None:
        link = self.agents.get(identity.username)
        if not self.mux or link is None or link.control.closed.done():
            conn.close()
            return
        mux = MuxLink.take_over(conn)
        if mux is None:
            return
        if link.mux is not None:
            link.mux.retire()
        link.mux = mux

    async def dial(self, database: str, host_ids: list[str]) -> Connection:
        """A session link (a mux stream or a data link) to one of ``host_ids`` (the hosts registered for ``database``), failing over.

        What agents announce on their control link never decides routing: only the
        registrations auth holds (``host_ids``) do.
        """
        candidates = sorted(self.connected(host_ids) or await self._arrived(host_ids), key=lambda a: a.last_used)
        if not candidates:
            raise ConnectionProblem(
                f'no database service is serving "{database}" right now; check that its pteleport '
                'db agent is running and connected ("pctl db ls" shows the agents)'
            )
        for agent in candidates:
            agent.last_used = time.monotonic()
            link = await self._link(agent)
            if link is not None:
                return link
            log.warning("agent %s did not answer a dial for %s; trying the next", agent.host_id, database)
        raise ConnectionProblem(
            f'the database service(s) serving "{database}" did not answer; they may be restarting, try again'
        )

    def _may_arrive(self, host_ids: list[str]) -> float:
        """Seconds to wait for one of ``host_ids`` to connect: 0 unless one may be on its way.

        One is on its way when its tunnel dropped lately without a ``bye``, or when this proxy
        is young and has not seen it yet.
        """
        now = time.monotonic()
        wait = 0.0
        for host_id in host_ids:
            if host_id in self._left:
                when, said_bye = self._left[host_id]
                if not said_bye and now - when < self.warmup:
                    wait = max(wait, REDIAL_WAIT)
            elif now - self.started < self.warmup:
                wait = max(wait, ARRIVAL_WAIT)
        return wait

    async def _arrived(self, host_ids: list[str]) -> list[AgentLink]:
        """The agents among ``host_ids`` that connect within the arrival wait (none if it does not apply)."""
        wait = self._may_arrive(host_ids)
        if wait <= 0:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not (links := self.connected(host_ids)) and (left := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrival.wait(), left)
        return links

    async def dial_each(self, host_ids: list[str]) -> list[Connection]:
        """A session link to every connected agent among ``host_ids`` (for a cancel, whose session only one holds)."""
        links = await asyncio.gather(*(self._link(agent) for agent in self.connected(host_ids)))
        return [link for link in links if link is not None]

    async def _link(self, agent: AgentLink) -> Connection | None:
        """A stream on ``agent``'s mux link, a warm spare, or a new data link it dials back; None if it does not answer."""
        ready = agent.open_stream() or agent.take_spare()
        if ready is not None:
            return ready
        dial_id = secrets.token_hex(12)
        fut: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
        self._pending[dial_id] = fut
        agent.control.write(encode({"type": "dial", "dial_id": dial_id}))
        try:
            return await asyncio.wait_for(fut, DIAL_TIMEOUT)
        except TimeoutError:
            return None
        finally:
            self._pending.pop(dial_id, None)
