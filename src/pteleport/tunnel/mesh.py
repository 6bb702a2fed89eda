"""Agent side of the agent mesh: one tunnel to every running proxy.

The agent is given one proxy address (``teleport.proxy_server``: a proxy, or a load
balancer in front of several). It asks there which proxies run (a ``discover`` link; the
answer is a ``proxies`` line: each proxy's host id and the address it advertises), then
keeps one ``TunnelAgent`` per proxy, dialling that proxy's own address, so every proxy
can reach this agent and its sessions (streams on its mux link, or dial-back data links)
return to the proxy that asked for them. Every
proxy repeats the set on the control link whenever it changes; the agent adds tunnels for
new proxies and drops the ones whose proxy left the set and whose link is down (a proxy
that still answers is kept, whatever a lagging view says).

With a single proxy nothing changes: its tunnel dials the configured address. A proxy
that does not answer ``discover`` (it closes the link) gets a single tunnel to the
configured address, as before the mesh. When no tunnel has been up for
``REDISCOVER_AFTER`` seconds the agent asks the configured address again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from common.addresses import split_host_port
from common.backoff import Backoff
from common.errors import BadParameter
from common.relay import Connection
from pteleport.tunnel.agent import BACKOFF_MAX, BACKOFF_MIN, TunnelAgent, dial_tls
from pteleport.tunnel.protocol import encode, read_message

log = logging.getLogger("pteleport.tunnel.mesh")

REDISCOVER_AFTER = 10.0
DISCOVER_TIMEOUT = 10.0
SEED = "(configured address)"


@dataclass
class _Member:
    proxy_id: str
    addr: tuple[str, int]
    agent: TunnelAgent
    task: asyncio.Task[None]


class TunnelMesh:
    """Keeps one tunnel per running proxy; the same surface as one ``TunnelAgent``."""

    def __init__(
        self,
        proxy_host: str,
        proxy_port: int,
        ssl_context: ssl.SSLContext,
        hostname: str,
        databases: Callable[[], list[str]],
        on_session: Callable[[Connection], Awaitable[None]],
        on_control: Callable[[dict], None] | None = None,
        backoff: Callable[[], Backoff] | None = None,
    ) -> None:
        self.seed = (proxy_host, proxy_port)
        self.ssl_context = ssl_context
        self.hostname = hostname
        self.databases = databases
        self.on_session = on_session
        self.on_control = on_control
        self._backoff = backoff or (lambda: Backoff(BACKOFF_MIN, BACKOFF_MAX))
        self.members: dict[str, _Member] = {}
        self.connected = asyncio.Event()
        self._wanted: set[str] = set()

    # --- the surface DatabaseAgent uses ------------------------------------------------------
    def announce(self) -> None:
        for member in list(self.members.values()):
            member.agent.announce()

    async def stop(self) -> None:
        members = list(self.members.values())
        for member in members:
            await member.agent.stop()  # says bye on its control link
            member.task.cancel()
        await asyncio.gather(*(m.task for m in members), return_exceptions=True)  # links closed, bye sent
        self.members.clear()

    @property
    def state(self) -> str:
        return "connected" if self._any_connected() else "connecting"

    # --- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        backoff = self._backoff()
        while True:
            if not self._any_connected():
                try:
                    answer = await self._discover()
                except (OSError, TimeoutError, ssl.SSLError, ConnectionError, ValueError) as exc:
                    if not self.members:
                        delay = backoff.next_delay()
                        log.warning("cannot reach the proxy at %s:%s (%s); retrying in %.1fs",
                                    *self.seed, exc, delay)
                        await backoff.sleep(delay)
                        continue
                    log.warning("could not ask %s:%s which proxies run (%s)", *self.seed, exc)
                else:
                    backoff.reset()
                    self.apply(answer)
            await self._wait_for_trouble()

    async def _wait_for_trouble(self) -> None:
        """Return when no tunnel has been up for ``REDISCOVER_AFTER`` seconds."""
        down_for = 0.0
        step = 0.5
        while down_for < REDISCOVER_AFTER:
            await asyncio.sleep(step)
            down_for = 0.0 if self._any_connected() else down_for + step
            self._prune()
            self._sync_connected()

    def _prune(self) -> None:
        """Drop the tunnels of proxies that left the set once their link is down too."""
        for proxy_id, member in list(self.members.items()):
            if proxy_id not in self._wanted and not member.agent.connected.is_set():
                log.info("proxy %s left the cluster; closing its tunnel", proxy_id)
                self._retire(member)

    def _any_connected(self) -> bool:
        return any(m.agent.connected.is_set() for m in self.members.values())

    def _sync_connected(self) -> None:
        if self._any_connected():
            self.connected.set()
        else:
            self.connected.clear()

    async def _discover(self) -> dict | None:
        """Ask the configured address which proxies run; None if it does not know ``discover``."""
        conn = await dial_tls(*self.seed, self.ssl_context, timeout=DISCOVER_TIMEOUT)
        try:
            conn.write(encode({"type": "discover"}))
            try:
                message = await asyncio.wait_for(read_message(conn), DISCOVER_TIMEOUT)
            except (ConnectionError, asyncio.IncompleteReadError):
                return None
            return message if message.get("type") == "proxies" else None
        finally:
            conn.close()

    # --- the set of proxies ---------------------------------------------------------------------
    def apply(self, message: dict | None) -> None:
        """Bring the tunnels in line with a ``proxies`` line (None: a proxy without the mesh)."""
        wanted: dict[str, tuple[str, int]] = {}
        entries = (message or {}).get("proxies") or []
        for entry in entries:
            try:
                wanted[str(entry["id"])] = split_host_port(str(entry["addr"]))
            except (KeyError, ValueError, TypeError, BadParameter):
                log.warning("ignored a proxy entry without a usable address: %r", entry)
        if len(wanted) <= 1:
            # One proxy (or one that does not speak the mesh): the configured address, as
            # always; a tunnel that is already open to that proxy stays where it is.
            only = next(iter(wanted), SEED)
            wanted = {only: self.members[only].addr if only in self.members else self.seed}
        self._wanted = set(wanted)
        for proxy_id, member in list(self.members.items()):
            if proxy_id in wanted and wanted[proxy_id] != member.addr:
                self._retire(member)  # the same proxy, at another address: dial that one
        self._prune()
        for proxy_id, addr in wanted.items():
            if proxy_id not in self.members:
                self._start(proxy_id, addr)
        # The configured address stood in for a proxy whose id we know now.
        seed = self.members.get(SEED)
        if seed is not None and any(k != SEED for k in self.members) and SEED not in wanted:
            self._retire(seed)

    def _start(self, proxy_id: str, addr: tuple[str, int]) -> None:
        agent = TunnelAgent(
            addr[0],
            addr[1],
            self.ssl_context,
            self.hostname,
            self.databases,
            self.on_session,
            on_control=self._control_from(proxy_id),
            backoff=self._backoff,
        )
        agent.connected = _Watched(self._sync_connected)
        task = asyncio.get_running_loop().create_task(agent.run())
        self.members[proxy_id] = _Member(proxy_id, addr, agent, task)
        if proxy_id != SEED:
            log.info("keeping a tunnel to proxy %s at %s:%s", proxy_id, *addr)

    def _retire(self, member: _Member) -> None:
        """Close a member's control link and spares or mux link; its open sessions run to their end."""
        member.task.cancel()
        member.agent.connected.clear()
        if self.members.get(member.proxy_id) is member:
            del self.members[member.proxy_id]
        self._sync_connected()

    def _control_from(self, proxy_id: str) -> Callable[[dict], None]:
        def on_control(message: dict) -> None:
            if message.get("type") == "proxies":
                landed = str(message.get("self") or "")
                if landed and proxy_id not in (SEED, landed):
                    log.warning(
                        "the tunnel meant for proxy %s reached proxy %s; give each proxy its own "
                        "proxy_service.advertise_addr (not the load balancer's)", proxy_id, landed
                    )
                with contextlib.suppress(Exception):
                    self.apply(message)
                return
            if self.on_control is not None:
                self.on_control(message)

        return on_control


class _Watched(asyncio.Event):
    """An Event that calls ``hook`` after every set/clear (the mesh's ``connected`` follows its members)."""

    def __init__(self, hook: Callable[[], None]) -> None:
        super().__init__()
        self._hook = hook

    def set(self) -> None:
        super().set()
        self._hook()

    def clear(self) -> None:
        super().clear()
        self._hook()
