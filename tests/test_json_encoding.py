"""JSON encoded with orjson where it is faster, and exactly as ``json`` would where it matters:
the API's answers (``api.offload.dumps``) and `pctl audit events --format json`."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, datetime

import pytest

from pctl.audit import _write_json_array
from pteleport.api.offload import dumps


@pytest.mark.parametrize(
    "value",
    [
        {"events": [{"uid": "a", "n": 1}, {"uid": "b", "big": 10**30}], "next": None},
        [{"name": "zoë", "q": "a\ud800b"}, {"k": "\x7f"}],
        {"items": [{"labels": {"env": "dev"}}], "count": 2, "ok": True},
        {1: "integer key", "nested": {2: [3]}},
        "plain",
    ],
    ids=["big-integer-in-a-page", "non-ascii-and-surrogate", "nested", "integer-keys", "scalar"],
)
def test_api_answers_decode_to_what_json_dumps_encodes(value: object) -> None:
    body = dumps(value)
    assert isinstance(body, bytes)
    assert json.loads(body) == json.loads(json.dumps(value))


def test_api_answers_still_refuse_what_json_refuses() -> None:
    """A handler returning a datetime or a dataclass is a bug, as before: an error, not a silent encoding."""

    @dataclasses.dataclass
    class Thing:
        name: str

    for value in ({"when": datetime.now(UTC)}, [Thing("x")]):
        with pytest.raises(TypeError):
            dumps(value)


@pytest.mark.parametrize(
    "events",
    [
        [],
        [{"event": "db.session.query", "ei": 3, "db_query": "select 'a\"\\\n\tb'", "success": True, "x": None}],
        [{"event": "a", "nested": {"list": [1, {"b": []}], "empty": {}}}, {"event": "b", "user": "zoë"}],
        [{"event": "big", "n": 10**30, "f": 1.5}],
        [{"event": "q", "db_query": "select '\x7f'"}, {"event": "f", "rows": [1e-05, 2.5e-07, 1e22]}],
    ],
    ids=["none", "escapes", "nested-and-non-ascii", "big-integer", "delete-and-floats"],
)
def test_audit_json_export_prints_what_json_dumps_indent_2_prints(events: list[dict]) -> None:
    """`pctl audit events --format json` encodes with orjson, event by event: the output is unchanged."""
    out = io.StringIO()
    _write_json_array(iter(events), out)
    assert out.getvalue() == json.dumps(events, indent=2) + "\n"
