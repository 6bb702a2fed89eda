"""The agent's audit shipper: keeps events while auth is unreachable, sets aside what auth
refuses as malformed, stays bounded, and never stops delivering."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from common.errors import AccessDenied, BadParameter, ConnectionProblem, InternalError, NotLoggedIn
from pteleport.dbagent import audit_shipper
from pteleport.dbagent.audit_shipper import (
    DEAD_LETTER_NAME,
    REFUSAL,
    SENDING_NAME,
    SPOOL_NAME,
    AuditShipper,
)


class FakeAuth:
    """Stands in for the auth API: stores events once per uid, as auth does.

    ``down`` refuses every post as unreachable; ``error`` (a callable) may refuse a batch
    with any error; events whose uid is in ``poison`` make a batch a 400, as auth answers a
    batch it cannot store."""

    def __init__(self) -> None:
        self.down = False
        self.poison: set[str] = set()
        self.error: Callable[[list[dict]], Exception | None] | None = None
        self.stored: dict[str, dict] = {}
        self.order: list[str] = []
        self.posts = 0

    async def post_lines(self, path: str, lines: list[str]) -> dict:
        assert path == "/v1/events"
        assert all("\n" not in line for line in lines)  # one event per NDJSON line
        self.posts += 1
        batch = [json.loads(line) for line in lines]
        if self.down:
            raise ConnectionProblem("cannot reach the cluster at 127.0.0.1:3080")
        if self.error is not None and (err := self.error(batch)) is not None:
            raise err
        bad = [e["uid"] for e in batch if e["uid"] in self.poison]
        if bad:
            raise BadParameter(f"audit event {bad[0]} cannot be stored: 'time' is not an RFC 3339 time")
        for event in batch:
            if event["uid"] not in self.stored:
                self.stored[event["uid"]] = event
                self.order.append(event["uid"])
        return {"accepted": len(batch)}

    def uids(self) -> list[str]:
        """Uids of the events stored, leaving out the shipper's own reports."""
        return [u for u in self.order if not str(self.stored[u].get("event", "")).startswith("audit.")]


def events(start: int, count: int) -> list[dict]:
    return [
        {"event": "db.session.query", "uid": f"e{i}", "ei": i, "cluster_name": "c1"}
        for i in range(start, start + count)
    ]


def names(n: int, start: int = 0) -> list[str]:
    return [f"e{i}" for i in range(start, start + n)]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def on_disk(spool_dir: Path) -> list[str]:
    """Uids kept in the spool files, oldest first."""
    found = []
    for name in (SENDING_NAME, SPOOL_NAME):
        path = spool_dir / name
        if path.exists():
            found += [json.loads(line)["uid"] for line in path.read_text().splitlines()]
    return found


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# --- outages and restarts --------------------------------------------------------------------


def test_events_survive_an_outage_and_an_agent_restart_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        auth = FakeAuth()
        shipper = AuditShipper(auth, tmp_path)
        auth.down = True
        for event in events(0, 700):
            shipper.emit(event)
        with pytest.raises(ConnectionProblem):
            await shipper.flush()
        await shipper.spill_async()  # what run() does after a failed send
        assert on_disk(tmp_path) == names(700)
        assert (tmp_path / SPOOL_NAME).stat().st_mode & 0o777 == 0o600
        for event in events(700, 10):
            shipper.emit(event)
        shipper.spill()  # the agent stops while auth is still down
        # A new agent process on the same data dir, with auth back:
        auth.down = False
        fresh = AuditShipper(auth, tmp_path)
        fresh.emit({"uid": "after-restart", "ei": 0})
        await fresh.flush()
        assert auth.order == [*names(710), "after-restart"]  # spooled (older) first, then the queue
        assert not list(tmp_path.iterdir())

    run(scenario)


def test_run_loop_spools_on_failure_and_delivers_when_auth_returns(tmp_path: Path) -> None:
    async def scenario() -> None:
        auth = FakeAuth()
        auth.down = True
        shipper = AuditShipper(auth, tmp_path)
        task = asyncio.create_task(shipper.run())
        for event in events(0, 50):
            shipper.emit(event)
        await until(lambda: on_disk(tmp_path) == names(50) and not shipper.queue)
        for event in events(50, 5):
            shipper.emit(event)
        auth.down = False
        await until(lambda: len(auth.stored) == 55)
        task.cancel()
        assert auth.order == names(55)
        assert shipper.refusal() is None and shipper.lost == 0

    run(scenario)


def test_a_delivery_cut_off_half_way_resumes_and_stores_nothing_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Auth fails after some spooled batches were stored: the rest follows later; resent
    batches are stored once (auth keys events by uid)."""
    monkeypatch.setattr(audit_shipper, "BATCH", 500)

    async def scenario() -> None:
        auth = FakeAuth()
        auth.down = True
        shipper = AuditShipper(auth, tmp_path)
        for event in events(0, 1_800):
            shipper.emit(event)
        shipper.spill()
        auth.down = False
        posts = {"n": 0}

        def fail_third(batch: list[dict]) -> Exception | None:
            posts["n"] += 1
            return ConnectionProblem("connection reset") if posts["n"] == 3 else None

        auth.error = fail_third
        with pytest.raises(ConnectionProblem):
            await shipper.flush()
        assert len(auth.stored) == 1_000
        await shipper.flush()
        assert auth.order == names(1_800)
        # An agent that restarts in the middle of a delivery sends the .sending file again:
        for event in events(1_800, 600):
            shipper.emit(event)
        shipper.spill()
        (tmp_path / SPOOL_NAME).rename(tmp_path / SENDING_NAME)
        await AuditShipper(auth, tmp_path).flush()
        await AuditShipper(auth, tmp_path).flush()
        assert auth.order == names(2_400)

    run(scenario)


def test_batches_stay_within_the_byte_cap_and_a_large_event_goes_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Auth takes bodies of 8 MiB: a batch stops at BATCH_BYTES, from the queue and from the spool alike."""
    monkeypatch.setattr(audit_shipper, "BATCH_BYTES", 10_000)

    def sized(start: int, count: int, pad: int) -> list[dict]:
        return [dict(e, db_query="x" * pad) for e in events(start, count)]

    async def scenario() -> None:
        auth = FakeAuth()
        sizes: list[int] = []
        auth.error = lambda batch: sizes.append(len(batch))  # type: ignore[func-returns-value]
        shipper = AuditShipper(auth, tmp_path)
        for event in [*sized(0, 30, 900), *sized(30, 1, 50_000), *sized(31, 5, 900)]:
            shipper.emit(event)
        await shipper.flush()
        assert sizes == [10, 10, 10, 1, 5]
        auth.down = True
        for event in sized(36, 25, 900):
            shipper.emit(event)
        shipper.spill()
        auth.down = False
        sizes.clear()
        await shipper.flush()
        assert sizes == [10, 10, 5]
        assert auth.order == names(61)

    run(scenario)


def test_emit_never_writes_a_file_even_past_the_memory_mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay calls emit: it must not fsync. Past MAX_IN_MEMORY it only wakes the task."""
    monkeypatch.setattr(audit_shipper, "MAX_IN_MEMORY", 100)
    shipper = AuditShipper(FakeAuth(), tmp_path)
    shipper._unreachable = True
    for event in events(0, 150):
        shipper.emit(event)
    assert not list(tmp_path.iterdir())
    assert shipper._wake.is_set() and len(shipper.queue) == 150


def test_the_task_spills_at_the_memory_mark_without_waiting_for_the_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_shipper, "MAX_IN_MEMORY", 100)

    async def scenario() -> None:
        auth = FakeAuth()
        auth.down = True
        shipper = AuditShipper(auth, tmp_path)
        task = asyncio.create_task(shipper.run())
        shipper.emit(events(0, 1)[0])
        await until(lambda: shipper._unreachable)
        for _ in range(20):  # let the backoff grow to seconds
            shipper._backoff.next_delay()
        for event in events(1, 150):
            shipper.emit(event)
        await until(lambda: len(on_disk(tmp_path)) == 151)
        task.cancel()

    run(scenario)


# --- refusals: dead letters, not a wedge -------------------------------------------------------


def test_a_poison_event_is_set_aside_and_later_events_keep_flowing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        auth = FakeAuth()
        auth.poison = {"e300"}
        shipper = AuditShipper(auth, tmp_path)
        for event in events(0, 1_200):
            shipper.emit(event)
        with caplog.at_level(logging.ERROR, logger="pteleport.dbagent.audit"):
            await shipper.flush()
        assert auth.uids() == [u for u in names(1_200) if u != "e300"]
        dead = [json.loads(line) for line in (tmp_path / DEAD_LETTER_NAME).read_text().splitlines()]
        assert [e["uid"] for e in dead] == ["e300"]
        assert (tmp_path / DEAD_LETTER_NAME).stat().st_mode & 0o777 == 0o600
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "refused 1 events as malformed" in errors[0].message
        assert "set aside in" in errors[0].message
        assert shipper.set_aside == 1
        for event in events(1_200, 10):
            shipper.emit(event)
        await shipper.flush()
        assert auth.uids()[-10:] == names(10, 1_200)
        note = [e for e in auth.stored.values() if e["event"] == "audit.events.set_aside"]
        assert len(note) == 1 and note[0]["code"] == "TPA00W" and note[0]["count"] == 1
        assert note[0]["uids"] == ["e300"] and note[0]["cluster_name"] == "c1"
        assert not (tmp_path / SPOOL_NAME).exists()

    run(scenario)


def test_a_poison_event_in_the_spool_does_not_hold_up_the_rest(tmp_path: Path) -> None:
    async def scenario() -> None:
        auth = FakeAuth()
        auth.down = True
        shipper = AuditShipper(auth, tmp_path)
        for event in events(0, 40):
            shipper.emit(event)
        shipper.spill()
        auth.down = False
        auth.poison = {"e0", "e39"}
        fresh = AuditShipper(auth, tmp_path)
        fresh.emit(events(40, 1)[0])
        await fresh.flush()
        assert auth.uids() == [*names(38, 1), "e40"]
        assert on_disk(tmp_path) == []

    run(scenario)


def test_an_internal_error_on_the_same_event_round_after_round_is_set_aside(tmp_path: Path) -> None:
    async def scenario() -> None:
        auth = FakeAuth()
        auth.error = lambda batch: InternalError("internal error") if any(e["uid"] == "e7" for e in batch) else None
        shipper = AuditShipper(auth, tmp_path)
        for event in events(0, 20):
            shipper.emit(event)
        for _ in range(40):
            try:
                await shipper.flush()
                break
            except InternalError:
                continue
        assert auth.uids() == [u for u in names(20) if u != "e7"]
        assert shipper.set_aside == 1

    run(scenario)


@pytest.mark.parametrize(
    "refusal",
    [
        NotLoggedIn("the cluster refused your certificate"),
        AccessDenied("a db identity may not create event"),
        ConnectionProblem("the PostgreSQL audit database failed; try again"),
        InternalError("the cluster answered HTTP 502"),
    ],
)
def test_an_identity_refusal_or_an_outage_keeps_events(tmp_path: Path, refusal: Exception) -> None:
    """401/403 (the agent, not the events, is refused) and 5xx spool; nothing is set aside."""

    async def scenario() -> None:
        auth = FakeAuth()
        auth.error = lambda batch: refusal
        shipper = AuditShipper(auth, tmp_path)
        for event in events(0, 5):
            shipper.emit(event)
        with pytest.raises(type(refusal)):
            await shipper.flush()
        await shipper.spill_async()
        assert on_disk(tmp_path) == names(5)
        assert not (tmp_path / DEAD_LETTER_NAME).exists()
        auth.error = None
        await shipper.flush()
        assert auth.order == names(5)

    run(scenario)


# --- bounds: an unwritable or full spool ----------------------------------------------------------


def test_an_unwritable_spool_refuses_new_sessions_and_loses_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")

    async def scenario() -> None:
        auth = FakeAuth()
        auth.down = True
        shipper = AuditShipper(auth, blocker / "agent")  # mkdir fails, even for root
        assert shipper.refusal() is None
        for event in events(0, 30):
            shipper.emit(event)
        with pytest.raises(ConnectionProblem):
            await shipper.flush()
        await shipper.spill_async()
        assert shipper.refusal() == REFUSAL
        assert len(shipper.queue) == 30 and shipper.lost == 0  # kept in memory meanwhile
        auth.down = False
        await shipper.flush()
        assert auth.order == names(30)
        assert shipper.refusal() is None

    run(scenario)


def test_a_full_spool_keeps_the_rest_in_memory_then_counts_what_it_drops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_shipper, "HARD_MAX_IN_MEMORY", 60)
    room = sum(len(json.dumps(e, separators=(",", ":"))) + 1 for e in events(0, 20)) + 5  # 20 events fit

    async def scenario() -> None:
        auth = FakeAuth()
        auth.down = True
        shipper = AuditShipper(
            auth, tmp_path, settings=SimpleNamespace(spool_max_bytes=room, unaudited_sessions="refuse")
        )
        for event in events(0, 50):
            shipper.emit(event)
        await shipper.spill_async()
        assert on_disk(tmp_path) == names(20)  # as many as fit
        assert len(shipper.queue) == 30 and shipper.refusal() == REFUSAL
        assert (tmp_path / SPOOL_NAME).stat().st_size <= room
        for event in events(50, 40):  # 30 + 40 > 60 in memory: 10 dropped, counted
            shipper.emit(event)
        assert shipper.lost == 10 and len(shipper.queue) == 60
        auth.down = False
        await shipper.flush()
        await shipper.flush()  # delivers the loss report queued by the first
        assert auth.uids() == names(80)
        lost = [e for e in auth.stored.values() if e["event"] == "audit.events.lost"]
        assert len(lost) == 1 and lost[0]["count"] == 10 and lost[0]["code"] == "TPA01E"
        assert shipper.refusal() is None

    run(scenario)


def test_with_unaudited_sessions_allowed_a_full_spool_refuses_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        auth = FakeAuth()
        auth.down = True
        settings = SimpleNamespace(spool_max_bytes=0, unaudited_sessions="allow")
        shipper = AuditShipper(auth, tmp_path, settings=settings)
        shipper.emit(events(0, 1)[0])
        await shipper.spill_async()
        assert shipper._problem is not None and shipper.refusal() is None

    run(scenario)


def test_the_dead_letter_file_is_bounded_too(tmp_path: Path) -> None:
    async def scenario() -> None:
        auth = FakeAuth()
        auth.poison = {"e1", "e2"}
        line = len(json.dumps(events(1, 1)[0], separators=(",", ":"))) + 1
        shipper = AuditShipper(
            auth, tmp_path, settings=SimpleNamespace(spool_max_bytes=line + 1, unaudited_sessions="refuse")
        )
        for event in events(0, 4):
            shipper.emit(event)
        await shipper.flush()
        assert auth.uids() == ["e0", "e3"]
        assert shipper.set_aside == 1 and shipper.lost == 1

    run(scenario)


def test_a_damaged_spool_line_is_skipped(tmp_path: Path) -> None:
    (tmp_path / SPOOL_NAME).write_text('{"uid": "e0"}\nnot json\n{"uid": "e1"}\n{"uid": "e2", "cut')

    async def scenario() -> None:
        auth = FakeAuth()
        await AuditShipper(auth, tmp_path).flush()
        assert auth.order == ["e0", "e1"]
        assert on_disk(tmp_path) == []

    run(scenario)


def test_the_agent_config_has_the_spool_keys() -> None:
    from pteleport.config import ConfigError, parse_config

    cfg = parse_config({"db_service": {"audit": {"spool_max_bytes": 1024, "unaudited_sessions": "allow"}}})
    assert cfg.db_service.audit.spool_max_bytes == 1024 and cfg.db_service.audit.unaudited_sessions == "allow"
    default = parse_config({}).db_service.audit
    assert default.spool_max_bytes == 1 << 30 and default.unaudited_sessions == "refuse"
    with pytest.raises(ConfigError, match=r"db_service\.audit\.unaudited_sessions"):
        parse_config({"db_service": {"audit": {"unaudited_sessions": "sometimes"}}})
    with pytest.raises(ConfigError, match=r"db_service\.audit\.spool_max_bytes"):
        parse_config({"db_service": {"audit": {"spool_max_bytes": -1}}})
    shipper = AuditShipper(FakeAuth(), None, settings=cfg.db_service.audit)
    assert shipper.spool_max_bytes == 1024 and not shipper.refuse_unaudited


def test_a_spool_that_cannot_be_read_does_not_hold_up_new_events(tmp_path: Path, caplog) -> None:
    """A spool the agent cannot read (here a directory stands in its place; as root, file
    modes would not stop a read) stays where it is, logged once; later events still flow."""
    (tmp_path / SPOOL_NAME).mkdir()
    auth = FakeAuth()
    shipper = AuditShipper(auth, tmp_path)

    async def scenario() -> None:
        for batch in (events(0, 3), events(3, 2)):
            for event in batch:
                shipper.emit(event)
            await shipper.flush()

    with caplog.at_level(logging.WARNING, logger="pteleport.dbagent.audit"):
        run(scenario)
    assert auth.uids() == names(5)
    assert [r.getMessage() for r in caplog.records].count(next(
        r.getMessage() for r in caplog.records if "cannot read the audit spool" in r.getMessage())) == 1
    assert shipper.refusal() is None
