"""Ships the agent's audit events to auth in batches, off the relay's hot path.

``emit`` only appends to an in-memory queue. A background task sends batches. When a
send fails (auth unreachable), the queued events are appended to a spool file in the data
dir (JSON lines, fsynced); so are events past ``MAX_IN_MEMORY`` and those left when the
agent stops. Spooled
events are sent first, oldest first, once auth answers again, also after a restart. Auth
stores events idempotently by ``uid``, so a batch sent twice after a failure is harmless.
Nothing is dropped silently: only a full disk loses events, and that is logged as an error.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("pteleport.dbagent.audit")
BATCH = 500
FLUSH_EVERY = 0.2
MAX_IN_MEMORY = 20_000
SPOOL_NAME = "audit-spool.jsonl"


class AuditShipper:
    def __init__(self, client: Any, spool_dir: Path | None = None) -> None:
        self.client = client
        self.queue: collections.deque[dict] = collections.deque()
        self.spool = (spool_dir / SPOOL_NAME) if spool_dir is not None else None
        self.lost = 0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def emit(self, event: dict) -> None:
        self.queue.append(event)
        if len(self.queue) >= BATCH:
            self._wake.set()
        if len(self.queue) > MAX_IN_MEMORY:
            self.spill()

    def spill(self) -> None:
        """Move every queued event to the spool file (auth unreachable, or the agent stops)."""
        if not self.queue:
            return
        if self.spool is None:
            self.lost += len(self.queue)
            log.error("audit: %d events could not be delivered and there is no spool file", len(self.queue))
            self.queue.clear()
            return
        lines = "".join(json.dumps(event, separators=(",", ":")) + "\n" for event in self.queue)
        try:
            self.spool.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.spool, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, lines.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.lost += len(self.queue)
            log.error("audit: could not spool %d events to %s: %s", len(self.queue), self.spool, exc)
        else:
            log.warning("audit: auth unreachable; %d events kept in %s", len(self.queue), self.spool)
        self.queue.clear()

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
                log.warning("audit: could not send events to auth (%s); will retry", exc)
                self.spill()  # durable on disk until auth answers

    async def flush(self) -> None:
        async with self._lock:
            await self._flush_spool()
            # Only what is queued now: events that arrive during the sends wait for the next
            # round, so a busy agent sends a few large batches, not a stream of tiny ones.
            pending = len(self.queue)
            while pending > 0:
                batch = [self.queue[i] for i in range(min(BATCH, pending))]
                await self.client.post("/v1/events", {"events": batch})
                for _ in batch:
                    self.queue.popleft()
                pending -= len(batch)

    async def _flush_spool(self) -> None:
        if self.spool is None or not self.spool.exists():
            return
        sending = self.spool.with_suffix(".sending")
        if not sending.exists():
            os.replace(self.spool, sending)
        events = []
        for line in sending.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                log.error("audit: skipped a damaged line in %s", sending)
        for start in range(0, len(events), BATCH):
            await self.client.post("/v1/events", {"events": events[start : start + BATCH]})
        sending.unlink()
        log.info("audit: delivered %d spooled events", len(events))
