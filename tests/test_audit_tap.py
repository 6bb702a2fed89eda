"""The agent's audit tap: what it audits from a client's byte stream, however the stream is cut,
and the event lines it builds (one JSON object each, stored by auth as they were sent)."""

from __future__ import annotations

import asyncio
import json
import re
import struct
import uuid

import pytest

from common.errors import BadParameter
from pteleport.audit.records import split_lines, to_stored
from pteleport.dbagent.audit_tap import AuditQueue, EventWriter, SessionTap
from pteleport.pgwire import Bind, Close, Execute, FunctionCall, Parse, Query, encode_message, encode_sync

BASE = {"user": "alice", "sid": "s-1", "db_service": "pg", "db_user": "bob", "db_name": "app", "addr.remote": "1:2"}


def stream() -> bytes:
    """A session's client→server bytes: simple and extended queries, a COPY, and what is not audited."""
    return b"".join(
        [
            Query("select 1").encode(),
            Parse("s1", "select $1::int", [23]).encode(),
            Bind("", "s1", [0], [b"42"], []).encode(),
            encode_message(b"D", b"P\x00"),  # Describe: relayed, not audited
            Execute("", 0).encode(),
            encode_sync(),
            Query("copy t from stdin").encode(),
            encode_message(b"d", b"1\tone\n" * 5000),  # CopyData: skipped by its length
            encode_message(b"c"),  # CopyDone
            Close("S", "s1").encode(),
            FunctionCall(954, [1], [b"\x00\x01"], 1).encode(),
            Query("select 'ünïcode'").encode(),
        ]
    )


def tapped(chunks: list[bytes]) -> list[dict]:
    lines: list[str] = []

    async def scenario() -> None:
        queue = AuditQueue(lines.append)
        writer = EventWriter(queue, lambda: "c1", dict(BASE))
        tap = SessionTap(writer)
        for chunk in chunks:
            tap.feed(chunk)
        await asyncio.sleep(0)  # the queue builds its lines after the relay's callbacks

    asyncio.run(scenario())
    return [json.loads(line) for line in lines]


def summary(events: list[dict]) -> list[tuple]:
    return [
        (e["event"], e.get("db_query") or e.get("query") or e.get("portal_name") or e.get("statement_name")
         or e.get("function_oid"), e.get("parameters"))
        for e in events
    ]


EXPECTED = [
    ("db.session.query", "select 1", None),
    ("db.session.postgres.statements.parse", "select $1::int", None),
    ("db.session.postgres.statements.bind", "s1", ["42"]),
    ("db.session.postgres.statements.execute", None, None),
    ("db.session.query", "copy t from stdin", None),
    ("db.session.postgres.statements.close", "s1", None),
    ("db.session.postgres.function", "954", None),
    ("db.session.query", "select 'ünïcode'", None),
]


def test_every_audited_message_becomes_one_event_and_nothing_else_does() -> None:
    events = tapped([stream()])
    assert summary(events) == EXPECTED
    assert [e["ei"] for e in events] == list(range(len(EXPECTED)))
    first = events[0]
    assert {k: first[k] for k in BASE} == BASE
    assert first["code"] == "TDB02I" and first["success"] is True and first["cluster_name"] == "c1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert len({e["uid"] for e in events}) == len(events)
    assert all(uuid.UUID(e["uid"]).version == 4 for e in events)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 4096])
def test_the_same_events_however_the_stream_is_cut(size: int) -> None:
    data = stream()
    assert summary(tapped([data[i : i + size] for i in range(0, len(data), size)])) == EXPECTED


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (b"Q" + struct.pack("!i", 4 + 17) + b"select 1\x00garbage\x00", "malformed Query"),
        (b"Q" + struct.pack("!i", 4 + 8) + b"select 1", "malformed Query"),
        (b"E" + struct.pack("!i", 4 + 1) + b"\x00", "malformed Execute"),
        (b"S" + struct.pack("!i", 3), "impossible length"),
        (b"Q" + struct.pack("!i", 0x7FFFFFF0) + b"x" * 100, "more than the"),
        (b"d" + struct.pack("!i", 0x7FFFFFF0), "more than the"),
    ],
)
def test_a_malformed_message_is_refused_before_it_is_forwarded(message: bytes, problem: str) -> None:
    with pytest.raises(BadParameter, match=problem):
        tapped([Query("select 1").encode() + message])


def test_a_session_event_written_directly_comes_after_what_was_tapped() -> None:
    lines: list[str] = []

    async def scenario() -> None:
        writer = EventWriter(AuditQueue(lines.append), lambda: "c1", dict(BASE))
        SessionTap(writer).feed(Query("select 1").encode())
        writer.emit("db.session.end", "TDB01I", 0.0)

    asyncio.run(scenario())
    events = [json.loads(line) for line in lines]
    assert [(e["event"], e["ei"]) for e in events] == [("db.session.query", 0), ("db.session.end", 1)]
    assert events[1]["time"] == "1970-01-01T00:00:00.000Z"


def test_emit_refuses_fields_it_sets_itself() -> None:
    writer = EventWriter(AuditQueue(lambda line: None), lambda: "c1", dict(BASE))
    with pytest.raises(BadParameter, match="sid"):
        writer.emit("x", "X", 0.0, sid="other")


def test_a_huge_query_is_cut_with_a_marker() -> None:
    events = tapped([Query("select '" + "x" * 100_000 + "'").encode()])
    assert len(events[0]["db_query"].encode()) <= 64 * 1024 and "truncated" in events[0]["db_query"]


def test_auth_stores_a_line_as_it_was_sent_after_one_parse() -> None:
    line = tapped([Query("select 1").encode()])[0]
    text = json.dumps(line, ensure_ascii=False, separators=(",", ":"))
    stored = to_stored(text)
    assert stored.data == text and stored.uid == line["uid"] and stored.sid == "s-1" and stored.user == "alice"
    assert split_lines((text + "\n\n" + text + "\n").encode()) == [text, text]


@pytest.mark.parametrize(
    "line",
    ['{"event":"x","uid":"u","time":"2026-11-24T13:40:05.123Z","n":NaN}', "[1,2]", '{"event":"x"', "{}",
     '{"event":"x","uid":"u","time":"yesterday"}', '{"event":"x","uid":"u","time":"2026-11-24T13:40:05.123Z"}{}',
     '{"event":"x","uid":"u","time":"2026-11-24T13:40:05.123Z","n":1e999}'],
    ids=["nan", "not-an-object", "cut-off", "no-fields", "bad-time", "two-values", "infinite"],
)
def test_auth_refuses_a_line_that_is_not_one_storable_event(line: str) -> None:
    with pytest.raises(BadParameter):
        to_stored(line)


def test_a_batch_that_is_not_utf8_or_too_large_is_refused() -> None:
    with pytest.raises(BadParameter, match="UTF-8"):
        split_lines(b"\xff\xfe")
    with pytest.raises(BadParameter, match="at most"):
        split_lines(b"{}\n" * 10_001)
