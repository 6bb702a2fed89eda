"""Ships the agent's audit events to auth in batches, off the relay's hot path; it cannot wedge.

Events travel as JSON lines: ``emit_line`` (called for every event the engine builds, see
``audit_tap``) only appends the line to an in-memory queue: it never writes a file and never
encodes anything. A background task (``run``) sends batches of up to ``BATCH`` events, oldest
first, as one NDJSON body (``POST /v1/events``, ``application/x-ndjson``), and decides from
auth's answer what happens to a batch:

- **accepted**: done. Auth stores events idempotently by ``uid``, so a batch sent twice
  (after a timeout, a crash, a restart) is stored once.
- **refused as malformed** (HTTP 400: a bad field, an unstorable event, a body too large,
  which auth also answers as 400): the batch is split in halves until the refused events
  are found; those alone go to the dead-letter file ``audit-dead-letter.jsonl`` beside the
  spool (one event per line, as sent, 0600), with one ERROR log line and an
  ``audit.events.set_aside`` (TPA00W) event that counts them. Later events keep flowing.
  An HTTP 500 for the same first event five rounds in a row is treated the same way, so a
  batch that trips a bug in auth cannot hold up the rest either.
- **auth unreachable** (connection errors, timeouts, 5xx, 429) and **agent identity
  refused** (401/403: the events are fine, the sender is not; they are kept until the agent
  is joined again): the events stay queued and are retried with backoff
  (``common.backoff``, 0.2 s doubling to 5 s). One WARNING line says delivery stopped, one
  INFO line says it resumed.

While auth is unreachable the queue is written to the spool file ``audit-spool.jsonl``
(0600, fsynced, in a worker thread: never on the relay's callback), at every retry and at
once when the queue passes ``MAX_IN_MEMORY``. Spooled events are sent first, oldest first,
once auth answers, also after an agent restart.

The spool is bounded by ``db_service.audit.spool_max_bytes``. When it is full (or cannot
be written: a read-only or missing directory, a full disk), what does not fit stays in
memory, up to ``HARD_MAX_IN_MEMORY`` events; past that, events of open sessions are
dropped, counted in ``lost``, logged as one ERROR line, and reported by an
``audit.events.lost`` (TPA01E) event as soon as auth answers again. Nothing is lost silently.

New sessions: the engine calls ``refusal()`` before it opens a session. With
``db_service.audit.unaudited_sessions: refuse`` (the default) it returns the sentence to
send the client while events cannot be kept (spool full or unwritable, or memory at its
bound) and None otherwise; with ``allow`` it always returns None, and such sessions run
with the loss counted as above.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.backoff import Backoff
from common.errors import PteleportError
from pteleport.audit import events as ev

log = logging.getLogger("pteleport.dbagent.audit")
BATCH = 2000
BATCH_BYTES = 4 << 20
"""A batch holds at most BATCH events and, past its first event, BATCH_BYTES of them (auth takes 8 MiB bodies)."""
FLUSH_EVERY = 0.2
RETRY_MAX = 5.0
MAX_IN_MEMORY = 20_000
HARD_MAX_IN_MEMORY = 100_000
INTERNAL_ERROR_STRIKES = 5
SPOOL_NAME = "audit-spool.jsonl"
SENDING_NAME = "audit-spool.sending"
DEAD_LETTER_NAME = "audit-dead-letter.jsonl"
DEFAULT_SPOOL_MAX_BYTES = 1 << 30
REFUSED_KINDS = frozenset({"bad_parameter", "usage"})
"""Error kinds (HTTP 400) meaning: auth read the batch and will never store it as it is."""
REFUSAL = (
    "this database service cannot record an audit trail right now (auth is unreachable and "
    "its audit spool is full or cannot be written), so it does not open new sessions; try "
    "again later, or ask an admin to check the service's log"
)
_OWN_EVENTS = frozenset({ev.AUDIT_SET_ASIDE, ev.AUDIT_LOST})


class AuditShipper:
    def __init__(
        self,
        client: Any,
        spool_dir: Path | None = None,
        *,
        settings: Any = None,
        backoff: Backoff | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``settings``: ``config.DbAuditConfig`` (``spool_max_bytes``, ``unaudited_sessions``)."""
        self.client = client
        self.queue: collections.deque[str] = collections.deque()
        """Events as JSON lines (no newline), oldest first."""
        self.spool_dir = spool_dir
        self.spool = (spool_dir / SPOOL_NAME) if spool_dir is not None else None
        self.sending = (spool_dir / SENDING_NAME) if spool_dir is not None else None
        self.dead_letter = (spool_dir / DEAD_LETTER_NAME) if spool_dir is not None else None
        self.spool_max_bytes = getattr(settings, "spool_max_bytes", DEFAULT_SPOOL_MAX_BYTES)
        self.refuse_unaudited = getattr(settings, "unaudited_sessions", "refuse") == "refuse"
        self.lost = 0
        """Events dropped since the start (memory bound reached, spool full or unwritable)."""
        self.set_aside = 0
        """Events auth refused as malformed, written to the dead-letter file."""
        self._clock = clock
        self._backoff = backoff or Backoff(FLUSH_EVERY, RETRY_MAX)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._unreachable = False
        self._problem: str | None = None  # why events cannot be kept on disk right now
        self._unreported_loss = 0
        self._sending_offset = 0  # bytes of the .sending file already delivered
        self._strikes: dict[str, int] = {}  # first uid of a batch -> HTTP 500s in a row
        self._context: dict[str, Any] = {}  # cluster/server fields for our own events
        self._spool_unreadable = False

    # --- the relay side: never blocks, never writes a file --------------------------------
    def emit_line(self, line: str) -> None:
        """Queue one event, already a JSON object on one line."""
        queue = self.queue
        if len(queue) >= HARD_MAX_IN_MEMORY:
            self._drop(1)
            return
        queue.append(line)
        if len(queue) >= BATCH or self._should_spill():
            self._wake.set()

    def emit(self, event: dict) -> None:
        """Queue one event given as a dict."""
        self.emit_line(_line(event))

    def refusal(self) -> str | None:
        """The sentence to refuse a new session with while its events could not be kept, else None."""
        if not self.refuse_unaudited:
            return None
        if self._problem is not None or len(self.queue) >= HARD_MAX_IN_MEMORY:
            return REFUSAL
        return None

    def _should_spill(self) -> bool:
        """Auth is unreachable, memory fills up, and the spool can take events."""
        return self._unreachable and self._problem is None and len(self.queue) >= MAX_IN_MEMORY

    # --- the background task ------------------------------------------------------------------
    async def run(self) -> None:
        delay = FLUSH_EVERY
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._should_spill():
                await self.spill_async()  # before trying auth again, which may take a timeout
            try:
                await self.flush()
            except Exception as exc:
                delay = self._backoff.next_delay()
                if not self._unreachable:
                    self._unreachable = True
                    log.warning("audit: cannot send events to auth (%s); keeping them in the spool, retrying", exc)
                await self.spill_async()
                continue
            delay = FLUSH_EVERY
            self._backoff.reset()
            if self._unreachable:
                self._unreachable = False
                log.info("audit: auth takes events again; delivery resumed")

    async def flush(self) -> None:
        """Send the spool, then what is queued now; raise if auth cannot take them now."""
        async with self._lock:
            await self._deliver_spool()
            # Only what is queued now: events that arrive during the sends wait for the next
            # round, so a busy agent sends a few large batches, not a stream of tiny ones.
            pending = len(self.queue)
            while pending > 0:
                batch = _take(self.queue, min(BATCH, pending))
                await self._send(batch)
                for _ in batch:
                    self.queue.popleft()
                pending -= len(batch)
            self._strikes.clear()
            if not self.queue:
                self._clear_problem()  # everything reached auth: nothing waits for the disk
            self._report_loss()

    # --- sending and sorting out refusals -------------------------------------------------
    async def _send(self, batch: list[str]) -> None:
        self._remember_context(batch)
        try:
            await self.client.post_lines("/v1/events", batch)
        except PteleportError as err:
            if err.kind in REFUSED_KINDS or self._struck_out(batch, err):
                await self._refused(batch, err)
                return
            raise  # not the batch's fault: keep it, retry later

    def _struck_out(self, batch: list[str], err: PteleportError) -> bool:
        """An HTTP 500 for the same first event, round after round: treat it as a refusal."""
        if err.kind != "internal":
            return False
        head = _uid(batch[0])
        self._strikes[head] = self._strikes.get(head, 0) + 1
        if len(self._strikes) > 1000:
            self._strikes = {head: self._strikes[head]}
        return self._strikes[head] >= INTERNAL_ERROR_STRIKES

    async def _refused(self, batch: list[str], err: PteleportError) -> None:
        if len(batch) > 1:  # find the refused events: the others go through
            half = len(batch) // 2
            await self._send(batch[:half])
            await self._send(batch[half:])
            return
        self._strikes.pop(_uid(batch[0]), None)
        await self._set_aside(batch, err.message)

    async def _set_aside(self, events: list[str], reason: str) -> None:
        where = self.dead_letter
        try:
            if where is None:
                raise OSError("the agent has no data directory")
            await asyncio.to_thread(self._append, where, _lines(events), self.spool_max_bytes)
        except OSError as exc:
            self._drop(len(events))
            log.error(
                "audit: auth refused %d events as malformed (%s) and they could not be set aside: %s",
                len(events),
                reason,
                exc,
            )
            return
        self.set_aside += len(events)
        log.error("audit: auth refused %d events as malformed (%s); set aside in %s", len(events), reason, where)
        decoded = [_decode(e) for e in events]
        if not any(e.get("event") in _OWN_EVENTS for e in decoded):
            self.queue.append(
                self._own_event(
                    ev.AUDIT_SET_ASIDE,
                    ev.AUDIT_SET_ASIDE_CODE,
                    count=len(events),
                    error=reason,
                    path=str(where),
                    uids=[str(e.get("uid")) for e in decoded][:100],
                )
            )

    # --- the spool --------------------------------------------------------------------------
    async def _deliver_spool(self) -> None:
        """Send the spooled events; a spool that cannot be read does not hold up the queue."""
        try:
            await self._deliver_spool_files()
        except OSError as exc:
            if not self._spool_unreadable:
                log.warning("audit: cannot read the audit spool %s (%s); its events stay there, new events are sent",
                            self.spool, exc.strerror or exc)
            self._spool_unreadable = True
        else:
            self._spool_unreadable = False

    async def _deliver_spool_files(self) -> None:
        if self.spool is None or self.sending is None:
            return
        while True:
            if not await asyncio.to_thread(self.sending.exists):
                if not await asyncio.to_thread(self.spool.exists):
                    return
                await asyncio.to_thread(os.replace, self.spool, self.sending)
                self._sending_offset = 0
            events, offset, done = await asyncio.to_thread(_read_batch, self.sending, self._sending_offset, BATCH)
            start = 0
            while start < len(events):
                batch = _take(itertools.islice(events, start, None), BATCH)
                await self._send(batch)
                start += len(batch)
            self._sending_offset = offset
            if done:
                await asyncio.to_thread(self.sending.unlink)
                self._sending_offset = 0
                log.info("audit: delivered the spooled events of %s", self.spool)

    async def spill_async(self) -> None:
        """Move the queue to the spool file in a worker thread (the relay keeps running)."""
        async with self._lock:
            count = len(self.queue)
            if not count:
                return
            batch = [self.queue[i] for i in range(count)]
            written = await asyncio.to_thread(self._write_spool, batch)
            for _ in range(written):
                self.queue.popleft()

    def spill(self) -> None:
        """Move every queued event to the spool now, on this thread (when the agent stops)."""
        written = self._write_spool(list(self.queue))
        for _ in range(written):
            self.queue.popleft()
        if self.queue:
            self._drop(len(self.queue))
            self.queue.clear()

    def _write_spool(self, events: list[str]) -> int:
        """Append as many of ``events`` as fit to the spool; how many were written."""
        if self.spool is None:
            self._set_problem("the agent has no data directory for an audit spool")
            return 0
        lines = [e + "\n" for e in events]
        try:
            room = self.spool_max_bytes - _size(self.spool) - _size(self.sending)
            fit, used = 0, 0
            for line in lines:
                size = len(line.encode())
                if used + size > room:
                    break
                fit, used = fit + 1, used + size
            if fit:
                self._append(self.spool, "".join(lines[:fit]), None)
        except OSError as exc:
            self._set_problem(f"cannot write the audit spool {self.spool}: {exc.strerror or exc}")
            return 0
        if fit < len(lines):
            self._set_problem(f"the audit spool {self.spool} is full ({self.spool_max_bytes} bytes)")
        else:
            self._clear_problem()
            log.debug("audit: auth unreachable; %d events kept in %s", fit, self.spool)
        return fit

    @staticmethod
    def _append(path: Path, text: str, max_bytes: int | None) -> None:
        data = text.encode()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if max_bytes is not None and _size(path) + len(data) > max_bytes:
            raise OSError(f"{path} is full ({max_bytes} bytes)")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- problems and losses -----------------------------------------------------------------
    def _set_problem(self, problem: str) -> None:
        if self._problem is None:
            policy = "new sessions are refused" if self.refuse_unaudited else "sessions continue"
            log.error("audit: %s; events wait in memory, %s until it clears", problem, policy)
        self._problem = problem

    def _clear_problem(self) -> None:
        if self._problem is not None:
            log.info("audit: events can be kept again")
        self._problem = None

    def _drop(self, count: int) -> None:
        if not self._unreported_loss:
            log.error(
                "audit: dropping events: auth is unreachable and they cannot be kept (%s)",
                self._problem or f"{HARD_MAX_IN_MEMORY} events wait in memory",
            )
        self.lost += count
        self._unreported_loss += count

    def _report_loss(self) -> None:
        if self._unreported_loss:
            count, self._unreported_loss = self._unreported_loss, 0
            log.error("audit: %d events were lost while auth was unreachable and the spool was full", count)
            self.queue.append(self._own_event(ev.AUDIT_LOST, ev.AUDIT_LOST_CODE, count=count))

    def _remember_context(self, batch: list[str]) -> None:
        """Cluster and server fields for our own events, from the first event of a batch."""
        event = _decode(batch[0]) if batch else {}
        if event.get("cluster_name") and event.get("event") not in _OWN_EVENTS:
            self._context = {k: event[k] for k in ("cluster_name", "server_id", "server_hostname") if k in event}

    def _own_event(self, name: str, code: str, **fields: Any) -> str:
        context = dict(self._context)
        cluster = context.pop("cluster_name", "")
        return _line(ev.make_event(name, code, clock=self._clock, cluster_name=cluster, **context, **fields))


def _take(lines: Iterable[str], count: int) -> list[str]:
    """The first events of ``lines`` for one batch: up to ``count``, and ``BATCH_BYTES`` after the first.

    ``len`` counts characters: event lines are ASCII (every encoder of theirs escapes the rest).
    """
    batch: list[str] = []
    size = 0
    for line in lines:
        size += len(line)
        if len(batch) == count or (batch and size > BATCH_BYTES):
            break
        batch.append(line)
    return batch


def _line(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"))


def _decode(line: str) -> dict:
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def _uid(line: str) -> str:
    return str(_decode(line).get("uid"))


def _lines(events: list[str]) -> str:
    return "".join(e + "\n" for e in events)


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except FileNotFoundError:
        return 0


def _read_batch(path: Path, offset: int, count: int) -> tuple[list[str], int, bool]:
    """Up to ``count`` events (lines) from byte ``offset`` of a spool file: (events, new offset, at end)."""
    events: list[str] = []
    with open(path, "rb") as fh:
        fh.seek(offset)
        while len(events) < count:
            line = fh.readline()
            if not line:
                return events, fh.tell(), True
            if not line.endswith(b"\n"):  # a line cut off by a crash while it was written
                log.error("audit: skipped a damaged last line in %s", path)
                return events, fh.tell(), True
            try:
                text = line.decode().strip()
                if not isinstance(json.loads(text), dict):
                    raise ValueError("not an event")
            except ValueError:
                log.error("audit: skipped a damaged line in %s", path)
                continue
            events.append(text)
        return events, fh.tell(), fh.read(1) == b""
