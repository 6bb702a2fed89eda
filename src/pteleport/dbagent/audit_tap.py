"""The client→server audit tap, and a session's events as JSON lines, built off the relay.

On the relay's callback (``SessionTap.feed``, once per chunk the client sends) the tap reads
each message's type and length in place (``unpack_from`` on the chunk itself), skips the
messages it does not audit (CopyData, Sync, Describe, Flush, …) by their length without
copying them, and slices out only the payloads of Query, Parse, Bind, Execute, Close and
FunctionCall. Each of those is checked there and then, so a malformed one is never
forwarded: the tap raises ``BadParameter`` and the engine ends the session with 08P01.
A checked message is queued as ``(writer, type, payload or parsed message, time)``.

The events are built after the callback: ``AuditQueue`` schedules one ``call_soon`` per
loop iteration, which turns everything queued, from every session, into JSON lines
(``EventWriter``) and hands them to the shipper. A session's fixed fields (user, sid,
db_service, …) are encoded once per session, not once per event; times are formatted
once per second; a ``uid`` is the session's random UUID prefix and the event's index, so
it is unique without a UUID per event. An event written directly (``EventWriter.emit``:
session start and end, refusals) first builds what is queued, so the shipper receives
every session's events in ``ei`` order.
"""

from __future__ import annotations

import asyncio
import base64
import json
import json.encoder
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

from common.errors import BadParameter
from pteleport.audit import events as ev
from pteleport.pgwire import (
    MAX_MESSAGE_SIZE,
    bind_parameters_for_audit,
    parse_bind,
    parse_close,
    parse_execute,
    parse_function_call,
    parse_parse,
    parse_query,
)

_LENGTH = struct.Struct("!i")
Q, P, B, E, C, F = b"QPBECF"
_AUDITED = frozenset(b"QPBECF")
_PARSE_NOW = {P: parse_parse, B: parse_bind, E: parse_execute, C: parse_close, F: parse_function_call}
_encode_str = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
_encode_text: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
_cluster_cache: list[str] = ["", '""']


def _cluster_json(name: str) -> str:
    """The cluster name as JSON (encoded again only when it changes)."""
    if name != _cluster_cache[0]:
        _cluster_cache[:] = [name, _encode_text(name)]
    return _cluster_cache[1]


class _Clock:
    """RFC 3339 UTC text with milliseconds for epoch seconds, the date part formatted once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def text(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return f"{self._prefix}{min(int((when - second) * 1000), 999):03d}Z"


_CLOCK = _Clock()


class AuditQueue:
    """Messages tapped on the relay, turned into event lines once per loop iteration."""

    __slots__ = ("_pending", "_scheduled", "sink")

    def __init__(self, sink: Callable[[str], None]) -> None:
        self.sink = sink
        self._pending: list[tuple[EventWriter, int, Any, float]] = []
        self._scheduled = False

    def add(self, item: tuple[EventWriter, int, Any, float]) -> None:
        self._pending.append(item)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.build)

    def build(self) -> None:
        """Every queued message as an event line, in order (also called before a direct emit)."""
        self._scheduled = False
        pending, self._pending = self._pending, []
        sink = self.sink
        for writer, kind, message, when in pending:
            sink(writer.message_line(kind, message, when))


class EventWriter:
    """One session's events as JSON lines, with a running event index (``ei``)."""

    __slots__ = ("_fixed", "_uid", "base", "cluster_name", "ei", "queue")

    def __init__(self, queue: AuditQueue, cluster_name: Callable[[], str], base: dict[str, Any]) -> None:
        self.queue = queue
        self.cluster_name = cluster_name
        self.base = base
        self.ei = 0
        self._uid = str(uuid.uuid4())[:24]  # "xxxxxxxx-xxxx-4xxx-yxxx-" + 12 hex digits of ei
        self._fixed: str | None = None

    def changed(self) -> None:
        """``base`` changed (the session's db user and name are known): encode it again."""
        self._fixed = None

    def _fields(self) -> str:
        if self._fixed is None:
            clean = {k: ev.sanitise(v) for k, v in self.base.items() if v is not None}
            self._fixed = _encode_str(clean)[1:-1]
        return self._fixed

    def _head(self, name: str, code: str, when: float) -> str:
        """The event's fixed part, without the closing brace (the next index is taken)."""
        ei = self.ei
        self.ei = ei + 1
        fixed = self._fixed if self._fixed is not None else self._fields()
        return (
            f'{{"event":"{name}","code":"{code}","uid":"{self._uid}{ei:012x}","time":"{_CLOCK.text(when)}",'
            f'"cluster_name":{_cluster_json(self.cluster_name())},"ei":{ei},{fixed}'
        )

    def line(self, name: str, code: str, when: float, fields: dict[str, Any]) -> str:
        """The event as one JSON object; ``fields`` must be sanitised already, None values left out."""
        head = self._head(name, code, when)
        if not fields:
            return head + "}"
        return head + "," + _encode_str(fields)[1:]

    def emit(self, name: str, code: str, when: float, **fields: Any) -> None:
        """An event written now, after everything this agent tapped so far."""
        self._fields()
        keys = fields.keys()  # (computed here, not kept: emit is rare, and every idle session would hold the set)
        clash = (keys & ev.RESERVED_FIELDS) | {k for k in keys if k == "ei" or self.base.get(k) is not None}
        if clash:
            raise BadParameter(f"emit sets {', '.join(sorted(clash))} itself")
        clean = {k: ev.sanitise(v) for k, v in fields.items() if v is not None}
        self.queue.build()
        self.queue.sink(self.line(name, code, when, clean))

    def message_line(self, kind: int, message: Any, when: float) -> str:
        """The event of one tapped message (see ``SessionTap``)."""
        if kind == Q:  # the most frequent by far: encoded without a dict
            sql = ev.truncate(message[:-1].decode("utf-8", errors="replace"))
            head = self._head(ev.DB_SESSION_QUERY, ev.DB_SESSION_QUERY_CODE, when)
            return f'{head},"db_query":{_encode_text(sql)},"success":true}}'
        if kind == P:
            fields = {"statement_name": message.statement, "query": message.query}
            return self.line(ev.POSTGRES_PARSE, ev.POSTGRES_PARSE_CODE, when, _clean(fields))
        if kind == B:
            fields = {"statement_name": message.statement, "portal_name": message.portal,
                      "parameters": bind_parameters_for_audit(message)}
            return self.line(ev.POSTGRES_BIND, ev.POSTGRES_BIND_CODE, when, _clean(fields))
        if kind == E:
            return self.line(ev.POSTGRES_EXECUTE, ev.POSTGRES_EXECUTE_CODE, when, _clean({"portal_name": message.portal}))
        if kind == C:
            fields = {"statement_name" if message.kind == "S" else "portal_name": message.name}
            return self.line(ev.POSTGRES_CLOSE, ev.POSTGRES_CLOSE_CODE, when, _clean(fields))
        args = [base64.b64encode(a).decode() if a is not None else None for a in message.args]
        fields = {"function_oid": str(message.oid), "function_args": args}
        return self.line(ev.POSTGRES_FUNCTION_CALL, ev.POSTGRES_FUNCTION_CALL_CODE, when, _clean(fields))


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: ev.sanitise(v) for k, v in fields.items() if v is not None}


class SessionTap:
    """Walks one client's message stream in place; queues the audited messages (module doc)."""

    __slots__ = ("_held", "_max", "_need", "_skip", "queue", "writer")

    def __init__(self, writer: EventWriter, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.writer = writer
        self.queue = writer.queue
        self._skip = 0  # bytes of a message that is not audited still to come
        self._held: bytearray | None = None  # the start of a message (or header) cut by the chunk's end
        self._need = 0  # how many bytes that held message has in all (0: its header is not complete yet)
        self._max = max_message_size

    def feed(self, data: bytes) -> None:
        """Check and queue the audited messages of one chunk; BadParameter if a message is malformed."""
        pos = 0
        if self._held is not None:
            held = self._held
            if self._need and len(held) + len(data) < self._need:
                held += data
                return
            held += data
            data = bytes(held)  # one copy, once the message is complete (or its header is)
            self._held = None
        elif self._skip:
            if self._skip >= len(data):
                self._skip -= len(data)
                return
            pos, self._skip = self._skip, 0
        size = len(data)
        when = 0.0
        while size - pos >= 5:
            kind = data[pos]
            (length,) = _LENGTH.unpack_from(data, pos + 1)
            if length < 4:
                raise BadParameter(
                    f"a message of type {bytes([kind])!r} declares an impossible length of {length} bytes;"
                    " the peer does not speak PostgreSQL protocol 3, check what is connecting"
                )
            if length - 4 > self._max:
                raise BadParameter(
                    f"a message of type {bytes([kind])!r} is {length - 4} bytes, more than the"
                    f" {self._max} allowed; send smaller statements or parameters"
                )
            end = pos + 1 + length
            if kind in _AUDITED:
                if end > size:
                    self._hold(data, pos, 1 + length)
                    return
                payload = data[pos + 5 : end]
                if kind == Q:
                    if payload.find(b"\x00") != length - 5:
                        parse_query(payload)  # raises the parser's own sentence
                    message: Any = payload
                else:
                    message = _PARSE_NOW[kind](payload)
                if not when:
                    when = time.time()
                self.queue.add((self.writer, kind, message, when))
            elif end > size:
                self._skip = end - size
                return
            pos = end
        if pos < size:
            self._hold(data, pos, 0)

    def _hold(self, data: bytes, pos: int, need: int) -> None:
        self._held = bytearray(memoryview(data)[pos:])
        self._need = need
