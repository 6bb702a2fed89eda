"""The proxy registry: proxies announce themselves with an expiry, withdraw when they stop,
and a proxy killed outright drops out of the set when its record expires."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from pteleport.auth.proxies import PROXY_TTL, ProxyRegistry, ProxyServer
from pteleport.storage.memory import MemoryBackend


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_announced_proxies_are_live_until_withdrawn_or_expired() -> None:
    clock = Clock()
    backend = MemoryBackend(clock=clock)
    a, b = ProxyRegistry(backend, clock), ProxyRegistry(backend, clock)
    pa = ProxyServer.make("id-a", "proxy-a", "10.0.0.1:443")
    pb = ProxyServer.make("id-b", "proxy-b", "10.0.0.2:443")
    a.announce(pa)
    b.announce(pb)
    assert [(p.host_id, p.addr) for p in a.live()] == [("id-a", "10.0.0.1:443"), ("id-b", "10.0.0.2:443")]
    b.withdraw("id-b")  # a proxy that stops
    assert [p.host_id for p in a.live()] == ["id-a"]
    b.announce(pb)
    clock.now += PROXY_TTL - timedelta(seconds=1)
    a.announce(pa)  # a renews; b was killed and does not
    clock.now += timedelta(seconds=2)
    assert [p.host_id for p in a.live()] == ["id-a"]


def test_run_reports_the_set_when_it_changes_and_always_includes_this_proxy() -> None:
    async def main() -> None:
        backend = MemoryBackend()
        registry = ProxyRegistry(backend, lambda: datetime.now(UTC))
        me = ProxyServer.make("id-a", "proxy-a", "127.0.0.1:3081")
        seen: list[list[str]] = []
        wake = asyncio.Event()
        task = asyncio.get_running_loop().create_task(
            registry.run(me, lambda ps: seen.append([p.host_id for p in ps]), wake))
        try:
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
            assert seen == [["id-a"]]
            ProxyRegistry(backend, lambda: datetime.now(UTC)).announce(ProxyServer.make("id-b", "b", "127.0.0.1:3082"))
            wake.set()  # what the change feed does for "proxies"
            for _ in range(100):
                if len(seen) > 1:
                    break
                await asyncio.sleep(0.02)
            assert seen[-1] == ["id-a", "id-b"]
        finally:
            task.cancel()

    asyncio.run(main())
