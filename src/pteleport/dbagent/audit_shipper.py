"""Ships the agent's audit events to auth in batches, off the relay's hot path.

``emit`` only appends to a queue. A background task sends batches; when auth cannot be
reached the events stay queued (up to ``MAX_QUEUED``) and go out when it is back.
Nothing is dropped silently: past the bound, the oldest events are dropped and the
count is logged as an error.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from common.client import AsyncClusterClient

log = logging.getLogger("pteleport.dbagent.audit")
BATCH = 500
FLUSH_EVERY = 0.2
MAX_QUEUED = 200_000


class AuditShipper:
    def __init__(self, client: AsyncClusterClient) -> None:
        self.client = client
        self.queue: collections.deque[dict] = collections.deque()
        self.dropped = 0
        self._wake = asyncio.Event()

    def emit(self, event: dict) -> None:
        if len(self.queue) >= MAX_QUEUED:
            self.queue.popleft()
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.error("audit queue full: %d events dropped so far (auth unreachable?)", self.dropped)
        self.queue.append(event)
        if len(self.queue) >= BATCH:
            self._wake.set()

    async def run(self) -> None:
        backoff = FLUSH_EVERY
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), backoff)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
                backoff = FLUSH_EVERY
            except Exception as exc:
                backoff = min(backoff * 2, 5.0)
                log.warning("could not send %d audit events to auth (%s); will retry", len(self.queue), exc)

    async def flush(self) -> None:
        while self.queue:
            batch = [self.queue[i] for i in range(min(BATCH, len(self.queue)))]
            await self.client.post("/v1/events", {"events": batch})
            for _ in batch:
                self.queue.popleft()
