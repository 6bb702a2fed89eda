"""The proxy registry: every running proxy announces itself in the backend, with an expiry.

Each auth+proxy process stores ``proxies/<host id>`` (a ``proxy`` resource: its host id,
hostname and the address agents dial to reach *this* proxy) every ``HEARTBEAT_EVERY``
seconds with an expiry ``PROXY_TTL`` ahead, and deletes it when it stops. A proxy killed
outright drops out of the set when its record expires. The set is what agents learn over
their tunnel (the agent mesh, docs/design-notes.md "Every proxy reaches every agent"):
they keep one tunnel to each proxy in it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from common.errors import NotFound
from pteleport.services.store import JsonStore
from pteleport.storage.base import Backend

log = logging.getLogger("pteleport.auth.proxies")

HEARTBEAT_EVERY = 5.0
PROXY_TTL = timedelta(seconds=15)
PREFIX = "proxies"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProxyMetadata(_Strict):
    name: str  # the proxy's host id
    expires: str | None = None


class ProxySpec(_Strict):
    hostname: str
    addr: str  # HOST:PORT agents dial to reach this proxy (proxy_service.advertise_addr)
    version: str = ""


class ProxyServer(_Strict):
    """One running proxy, as stored and as ``pctl get proxies`` shows it."""

    kind: Literal["proxy"] = "proxy"
    version: Literal["v2"] = "v2"
    metadata: ProxyMetadata
    spec: ProxySpec

    @classmethod
    def make(cls, host_id: str, hostname: str, addr: str, version: str = "") -> ProxyServer:
        return cls(metadata=ProxyMetadata(name=host_id), spec=ProxySpec(hostname=hostname, addr=addr, version=version))

    @property
    def host_id(self) -> str:
        return self.metadata.name

    @property
    def addr(self) -> str:
        return self.spec.addr

    def tunnel_entry(self) -> dict[str, str]:
        """What an agent hears about this proxy on its tunnel."""
        return {"id": self.host_id, "addr": self.addr}


class ProxyRegistry:
    """Announce this proxy, withdraw it, and read the live set (blocking: call off the event loop)."""

    def __init__(self, backend: Backend, clock: Callable[[], datetime]) -> None:
        self.store = JsonStore(backend, PREFIX)
        self.clock = clock

    def announce(self, me: ProxyServer) -> None:
        expires = self.clock() + PROXY_TTL
        doc = me.model_dump(mode="json", exclude_none=True)
        doc["metadata"]["expires"] = expires.isoformat()
        self.store.put(me.host_id, doc, expires=expires)

    def withdraw(self, host_id: str) -> None:
        try:
            self.store.delete(host_id)
        except NotFound:
            pass

    def live(self) -> list[ProxyServer]:
        """The proxies whose record has not expired, sorted by host id."""
        found = []
        for doc in self.store.list():
            try:
                found.append(ProxyServer.model_validate(doc))
            except ValidationError:
                log.warning("skipped an unreadable proxy record %s", (doc.get("metadata") or {}).get("name"))
        return sorted(found, key=lambda p: p.host_id)

    async def run(self, me: ProxyServer, on_set: Callable[[list[ProxyServer]], None],
                  wake: asyncio.Event | None = None) -> None:
        """Heartbeat ``me`` and report the live set to ``on_set`` whenever it changes.

        ``wake`` (a change notice from the backend's change feed) makes it read the set now.
        """
        seen: list[tuple[str, str]] | None = None
        beat_due = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() >= beat_due:
                    await asyncio.to_thread(self.announce, me)
                    beat_due = loop.time() + HEARTBEAT_EVERY
                proxies = await asyncio.to_thread(self.live)
            except Exception as exc:
                log.warning("could not renew this proxy's record in storage: %s", exc)
            else:
                if all(p.host_id != me.host_id for p in proxies):
                    proxies = sorted([*proxies, me], key=lambda p: p.host_id)
                key = [(p.host_id, p.addr) for p in proxies]
                if key != seen:
                    seen = key
                    log.info("proxies in this cluster: %s", ", ".join(f"{h} at {a}" for h, a in key))
                    on_set(proxies)
            if wake is None:
                await asyncio.sleep(HEARTBEAT_EVERY)
            else:
                try:
                    await asyncio.wait_for(wake.wait(), HEARTBEAT_EVERY)
                except TimeoutError:
                    pass
                wake.clear()
