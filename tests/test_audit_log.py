"""Audit events (names, codes, time format, truncation) and every audit log implementation."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from common.errors import BadParameter, NotFound
from pteleport.audit import events as ev
from pteleport.audit.events import MAX_FIELD_BYTES, format_time, make_event, parse_time, truncate
from pteleport.audit.log import AuditLog, MemoryAuditLog, PostgresAuditLog, SQLiteAuditLog
from pteleport.storage.base import Item
from pteleport.storage.sqlite import SQLiteBackend

T0 = datetime(2026, 11, 24, 13, 40, 5, 123456, tzinfo=UTC)
T0_MS = T0.replace(microsecond=123000)  # event times keep milliseconds only
MARKER = re.compile(r"… \[truncated (\d+) bytes\]$")


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


# --- events ---------------------------------------------------------------------------


def test_codes_match_teleport() -> None:
    assert (ev.DB_SESSION_START, ev.DB_SESSION_START_CODE, ev.DB_SESSION_START_FAILURE_CODE) == (
        "db.session.start",
        "TDB00I",
        "TDB00W",
    )
    assert (ev.DB_SESSION_QUERY, ev.DB_SESSION_QUERY_CODE) == ("db.session.query", "TDB02I")
    assert (ev.POSTGRES_FUNCTION_CALL, ev.POSTGRES_FUNCTION_CALL_CODE) == (
        "db.session.postgres.function",
        "TPG04I",
    )
    assert (ev.ROLE_UPDATED, ev.ROLE_UPDATED_CODE) == ("role.updated", "T9002I")
    assert (ev.INSTANCE_JOIN_CODE, ev.INSTANCE_JOIN_FAILURE_CODE) == ("TJ002I", "TJ002E")
    assert ev.EVENT_FOR_CODE["TPG01I"] == "db.session.postgres.statements.bind"
    assert ev.EVENT_FOR_CODE["T6000I"] == "reset_password_token.create"
    assert len(ev.EVENT_FOR_CODE) == 30  # 28 of Teleport, 2 of pteleport (TPA: audit delivery)


def test_make_event_fills_the_common_fields() -> None:
    e = make_event(
        ev.DB_SESSION_QUERY,
        ev.DB_SESSION_QUERY_CODE,
        clock=FakeClock(),
        cluster_name="example.com",
        sid="s1",
        user="alice",
        db_query="select 1",
        db_query_parameters=("a", 1),
        error=None,
        **{"addr.remote": "10.0.0.1:5000"},
    )
    assert e["event"] == "db.session.query"
    assert e["code"] == "TDB02I"
    assert e["time"] == "2026-11-24T13:40:05.123Z"
    assert e["cluster_name"] == "example.com"
    assert uuid.UUID(e["uid"]).version == 4
    assert e["db_query_parameters"] == ["a", 1]
    assert e["addr.remote"] == "10.0.0.1:5000"
    assert "error" not in e
    assert json.loads(json.dumps(e)) == e


def test_make_event_uids_differ() -> None:
    clock = FakeClock()
    uids = {make_event("e", "C", clock=clock, cluster_name="c")["uid"] for _ in range(50)}
    assert len(uids) == 50


def test_make_event_refuses_reserved_and_unstorable_fields() -> None:
    with pytest.raises(BadParameter, match="uid"):
        make_event("e", "C", clock=FakeClock(), cluster_name="c", uid="mine")
    with pytest.raises(BadParameter):
        make_event("e", "C", clock=FakeClock(), cluster_name="c", blob=b"bytes")
    with pytest.raises(BadParameter):
        make_event("e", "C", clock=FakeClock(), cluster_name="c", ratio=float("nan"))


def test_make_event_formats_datetimes_in_fields() -> None:
    local = datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=timezone(timedelta(hours=1)))
    e = make_event(ev.USER_CREATE, ev.USER_CREATE_CODE, clock=FakeClock(), cluster_name="c", expires=local)
    assert e["expires"] == "2026-01-02T02:04:05.006Z"


def test_time_format_and_parse() -> None:
    assert format_time(datetime(2026, 11, 24, 13, 40, 5, tzinfo=UTC)) == "2026-11-24T13:40:05.000Z"
    assert parse_time("2026-11-24T13:40:05.123Z") == datetime(2026, 11, 24, 13, 40, 5, 123000, tzinfo=UTC)
    assert parse_time("2026-11-24T14:40:05+01:00") == datetime(2026, 11, 24, 13, 40, 5, tzinfo=UTC)
    with pytest.raises(BadParameter):
        parse_time("2026-11-24T13:40:05")
    with pytest.raises(BadParameter):
        format_time(datetime(2026, 1, 1))


def test_long_query_is_truncated_with_a_marker() -> None:
    query = "select '" + "x" * 200_000 + "'"
    e = make_event(ev.DB_SESSION_QUERY, ev.DB_SESSION_QUERY_CODE, clock=FakeClock(), cluster_name="c", db_query=query)
    kept = e["db_query"]
    match = MARKER.search(kept)
    assert match is not None
    assert len(kept.encode()) <= MAX_FIELD_BYTES
    cut = int(match.group(1))
    prefix = kept[: match.start()]
    assert query.startswith(prefix)
    assert len(prefix.encode()) + cut == len(query.encode())


def test_truncation_never_splits_a_character_and_reaches_into_lists() -> None:
    text = "é€😀" * 10_000
    cut = truncate(text, 1001)
    assert len(cut.encode()) <= 1001
    assert text.startswith(MARKER.sub("", cut))
    assert truncate("short", 10) == "short"
    e = make_event("e", "C", clock=FakeClock(), cluster_name="c", db_query_parameters=["p" * 70_000, "q"])
    assert MARKER.search(e["db_query_parameters"][0])
    assert e["db_query_parameters"][1] == "q"


# --- logs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_audit_dsn(request: pytest.FixtureRequest) -> Iterator[tuple[Any, str, str]]:
    pg = request.getfixturevalue("pg")
    dbname = f"audit_log_{uuid.uuid4().hex[:12]}"
    pg.execute(f'CREATE DATABASE "{dbname}"')
    yield pg, dbname, f"host={pg.socket_dir} port={pg.port} user=postgres dbname={dbname}"
    pg.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], AuditLog]]:
    """Opens logs on one store; memory always returns the same log."""
    opened: list[AuditLog] = []
    if request.param == "memory":
        memory = MemoryAuditLog()

        def make() -> AuditLog:
            return memory

    elif request.param == "sqlite":

        def make() -> AuditLog:
            return SQLiteAuditLog(tmp_path / "audit" / "audit.db")

    else:
        pg, dbname, dsn = request.getfixturevalue("pg_audit_dsn")
        pg.execute("DROP TABLE IF EXISTS events", dbname=dbname)

        def make() -> AuditLog:
            return PostgresAuditLog(dsn)

    def tracked() -> AuditLog:
        log = make()
        opened.append(log)
        return log

    tracked.kind = request.param  # type: ignore[attr-defined]
    yield tracked
    for log in opened:
        log.close()


@pytest.fixture
def log(opener: Callable[[], AuditLog]) -> AuditLog:
    return opener()


def event(name: str = ev.DB_SESSION_QUERY, *, at: float = 0, **fields: Any) -> dict[str, Any]:
    """An event ``at`` seconds after T0."""
    clock = FakeClock(T0 + timedelta(seconds=at))
    code = next((c for c, n in ev.EVENT_FOR_CODE.items() if n == name), "TEST")
    return make_event(name, code, clock=clock, cluster_name="example.com", **fields)


@pytest.fixture
def sample(log: AuditLog) -> list[dict[str, Any]]:
    events = [
        event(ev.DB_SESSION_START, at=0, user="alice", sid="s1"),
        event(ev.DB_SESSION_QUERY, at=1, user="alice", sid="s1", db_query="select 1"),
        event(ev.DB_SESSION_START, at=2, user="bob", sid="s2"),
        event(ev.DB_SESSION_QUERY, at=3, user="bob", sid="s2", db_query="select 2"),
        event(ev.DB_SESSION_END, at=4, user="alice", sid="s1"),
        event(ev.USER_LOGIN, at=5, user="carol", method="local", success=True),
    ]
    log.emit_batch(events[:3])
    for e in events[3:]:
        log.emit(e)
    return events


def uids(found: list[dict[str, Any]]) -> list[str]:
    return [e["uid"] for e in found]


def test_an_event_orjson_refuses_to_read_is_still_returned(log: AuditLog) -> None:
    """A lone surrogate, escaped by ``json`` when the event was stored, is read back by ``json``."""
    stored = event(db_query="select 'a\ud800b'")
    log.emit(stored)
    assert log.search()[0]["db_query"] == stored["db_query"]


def test_integers_past_64_bits_come_back_exact(log: AuditLog) -> None:
    stored = event(rows=10**30, ids=[2**64, -(2**70)], db_query="select 1234567890123456789012")
    log.emit(stored)
    found = log.search()[0]
    assert (found["rows"], found["ids"], found["db_query"]) == (10**30, [2**64, -(2**70)], stored["db_query"])


def test_search_everything_in_time_order(log: AuditLog, sample: list[dict[str, Any]]) -> None:
    found = log.search()
    assert found == sample
    assert uids(log.search(order="desc")) == uids(sample)[::-1]


def test_search_by_type_user_and_session(log: AuditLog, sample: list[dict[str, Any]]) -> None:
    assert uids(log.search(event_types=[ev.DB_SESSION_QUERY])) == [sample[1]["uid"], sample[3]["uid"]]
    assert uids(log.search(event_types=[ev.DB_SESSION_END, ev.USER_LOGIN])) == uids(sample[4:])
    assert log.search(event_types=[]) == []
    assert uids(log.search(user="alice")) == uids([sample[0], sample[1], sample[4]])
    assert uids(log.search(sid="s2")) == uids(sample[2:4])
    assert uids(log.search(sid="s1", event_types=[ev.DB_SESSION_QUERY], user="alice")) == [sample[1]["uid"]]
    assert log.search(user="mallory") == []


def test_search_by_time_range(log: AuditLog, sample: list[dict[str, Any]]) -> None:
    window = log.search(from_time=T0_MS + timedelta(seconds=1), to_time=T0_MS + timedelta(seconds=4))
    assert uids(window) == uids(sample[1:4])
    assert uids(log.search(from_time=T0_MS + timedelta(seconds=5))) == [sample[5]["uid"]]
    assert uids(log.search(from_time=T0_MS + timedelta(seconds=4, microseconds=1))) == [sample[5]["uid"]]
    assert log.search(to_time=T0_MS) == []


def test_search_limit_and_order(log: AuditLog, sample: list[dict[str, Any]]) -> None:
    assert uids(log.search(limit=2)) == uids(sample[:2])
    assert uids(log.search(limit=2, order="desc")) == [sample[5]["uid"], sample[4]["uid"]]
    with pytest.raises(BadParameter):
        log.search(limit=0)
    with pytest.raises(BadParameter):
        log.search(order="sideways")  # type: ignore[arg-type]


def test_events_arriving_late_are_sorted_by_time(log: AuditLog) -> None:
    late = event(at=10)
    early = event(at=5)
    log.emit(late)
    log.emit(early)
    assert uids(log.search()) == [early["uid"], late["uid"]]


def test_follow_returns_events_stored_after_a_cursor(log: AuditLog, sample: list[dict[str, Any]]) -> None:
    assert uids(log.search(after_id=sample[3]["uid"])) == uids(sample[4:])
    assert log.search(after_id=sample[5]["uid"]) == []
    late = event(at=0.5, user="alice", sid="s1")  # older time, stored last: still followed
    log.emit(late)
    assert uids(log.search(after_id=sample[5]["uid"])) == [late["uid"]]
    assert uids(log.search(after_id=sample[0]["uid"], user="bob", limit=1)) == [sample[2]["uid"]]
    with pytest.raises(NotFound):
        log.search(after_id=str(uuid.uuid4()))
    with pytest.raises(BadParameter):
        log.search(after_id=sample[0]["uid"], order="desc")


def _all_pages(log: AuditLog, **query: Any) -> tuple[list[dict[str, Any]], int]:
    """Follow ``next`` to the end; the events and the number of pages."""
    found: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        page = log.search_page(cursor=cursor, **query)
        pages += 1
        found += page.events
        if page.next is None:
            return found, pages
        assert len(page.events) == query["limit"]
        cursor = page.next


def test_pages_cover_everything_once_in_order_even_with_equal_times(log: AuditLog) -> None:
    """Ties in time are ordered by arrival, so keyset paging neither repeats nor skips."""
    batch = [event(at=i // 4, user="alice", sid="s", ei=i) for i in range(23)]  # 4 events per instant
    log.emit_batch(batch)
    for order, expected in (("asc", batch), ("desc", batch[::-1])):
        found, pages = _all_pages(log, limit=5, order=order)
        assert uids(found) == uids(expected)
        assert pages == 5
    found, _ = _all_pages(log, limit=3, sid="s", from_time=T0_MS + timedelta(seconds=2))
    assert [e["ei"] for e in found] == list(range(8, 23))
    page = log.search_page(limit=23)
    assert len(page.events) == 23 and page.next is None  # an exact fit says there is no more


def test_follow_pages_in_arrival_order(log: AuditLog, sample: list[dict[str, Any]]) -> None:
    late = event(at=0.5, user="alice", sid="s1")
    log.emit(late)
    first = log.search_page(after_id=sample[0]["uid"], limit=3)
    assert uids(first.events) == uids(sample[1:4]) and first.next
    rest = log.search_page(after_id=sample[0]["uid"], limit=3, cursor=first.next)
    assert uids(rest.events) == [*uids(sample[4:]), late["uid"]] and rest.next is None


def test_a_bad_or_foreign_cursor_is_refused(log: AuditLog, sample: list[dict[str, Any]]) -> None:
    first = log.search_page(limit=2)
    with pytest.raises(BadParameter, match="start the search again"):
        log.search_page(limit=2, cursor="not-a-cursor")
    with pytest.raises(BadParameter, match="another kind of search"):
        log.search_page(limit=2, after_id=sample[0]["uid"], cursor=first.next)


@pytest.mark.slow
def test_twenty_five_thousand_events_page_exactly(log: AuditLog) -> None:
    total = 25_003
    clock = FakeClock(T0)
    batch = []
    for i in range(total):
        if i % 7 == 0:
            clock.now += timedelta(milliseconds=1)  # runs of equal times, as a busy session has
        batch.append(make_event(ev.DB_SESSION_QUERY, "TDB02I", clock=clock, cluster_name="c", sid="big", ei=i))
    for start in range(0, total, 5_000):
        log.emit_batch(batch[start : start + 5_000])
    found, pages = _all_pages(log, limit=2_000, sid="big")
    assert len(found) == total and pages == 13
    assert [e["ei"] for e in found] == list(range(total))
    newest, _ = _all_pages(log, limit=2_000, order="desc", event_types=[ev.DB_SESSION_QUERY])
    assert [e["ei"] for e in newest] == list(range(total))[::-1]


def test_re_emitting_is_idempotent(log: AuditLog, sample: list[dict[str, Any]]) -> None:
    log.emit(sample[0])
    changed = dict(sample[1], db_query="something else")
    fresh = event(at=6, user="alice")
    log.emit_batch([changed, fresh, sample[2]])
    found = log.search()
    assert uids(found) == [*uids(sample), fresh["uid"]]
    assert found[1]["db_query"] == "select 1"


def test_a_bad_event_stores_nothing_of_its_batch(log: AuditLog) -> None:
    good = event()
    with pytest.raises(BadParameter):
        log.emit_batch([good, {"event": "x", "time": "2026-11-24T13:40:05.123Z"}])
    with pytest.raises(BadParameter):
        log.emit_batch([good, dict(event(), time="yesterday")])
    assert log.search() == []
    log.emit_batch([])


def test_prune(log: AuditLog, sample: list[dict[str, Any]]) -> None:
    assert log.prune(T0_MS + timedelta(seconds=2)) == 2
    assert uids(log.search()) == uids(sample[2:])
    assert log.prune(T0_MS) == 0
    with pytest.raises(BadParameter):
        log.prune(datetime(2026, 1, 1))


def test_truncated_query_round_trips(log: AuditLog) -> None:
    big = event(db_query="x" * (MAX_FIELD_BYTES * 3))
    log.emit(big)
    (stored,) = log.search()
    assert stored == big
    assert MARKER.search(stored["db_query"])


def test_control_characters_round_trip(log: AuditLog) -> None:
    nasty = "select 1;\x00\x1b[31mred\x1b[0m\r\n\t\x07\x7f\u202e ünïcødé 😀"
    e = event(db_query=nasty, db_query_parameters=["\x00", "\x1b]0;title\x07"], user="al\x1bice")
    log.emit(e)
    (stored,) = log.search(user="al\x1bice")
    assert stored["db_query"] == nasty
    assert stored == e


def test_log_survives_reopening(opener: Callable[[], AuditLog]) -> None:
    first = opener()
    e = event()
    first.emit(e)
    first.close()
    assert opener().search() == [e]


def test_sqlite_log_can_share_the_backend_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    backend = SQLiteBackend(path)
    log = SQLiteAuditLog(path)
    backend.put(Item("users/alice", b"x"))
    e = event()
    log.emit(e)
    assert log.search() == [e]
    assert backend.get("users/alice").value == b"x"
    assert (path.stat().st_mode & 0o777) == 0o600
    log.close()
    backend.close()
