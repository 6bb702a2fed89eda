"""Audit event names and codes as Teleport has them, and ``make_event`` to build one.

An event is a JSON-ready dict: ``event`` (name), ``code``, ``uid`` (UUID4), ``time``
(RFC 3339 UTC with milliseconds, e.g. ``2026-11-24T13:40:05.123Z``), ``cluster_name``
and the fields of that kind of event (teleport.md §5.2). Strings longer than
``MAX_FIELD_BYTES`` (UTF-8) are cut and end with a marker saying how much was cut;
nothing is dropped. Control characters are stored as they are (JSON escapes them);
escaping them for a terminal is the job of whoever prints the event.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from common.errors import BadParameter

# --- database sessions -----------------------------------------------------------------
DB_SESSION_START = "db.session.start"
DB_SESSION_START_CODE = "TDB00I"
DB_SESSION_START_FAILURE_CODE = "TDB00W"
DB_SESSION_END = "db.session.end"
DB_SESSION_END_CODE = "TDB01I"
DB_SESSION_QUERY = "db.session.query"
DB_SESSION_QUERY_CODE = "TDB02I"
DB_SESSION_QUERY_FAILED = "db.session.query.failed"
DB_SESSION_QUERY_FAILED_CODE = "TDB02W"
DB_SESSION_MALFORMED_PACKET = "db.session.malformed_packet"
DB_SESSION_MALFORMED_PACKET_CODE = "TDB06I"

# --- PostgreSQL extended protocol ------------------------------------------------------
POSTGRES_PARSE = "db.session.postgres.statements.parse"
POSTGRES_PARSE_CODE = "TPG00I"
POSTGRES_BIND = "db.session.postgres.statements.bind"
POSTGRES_BIND_CODE = "TPG01I"
POSTGRES_EXECUTE = "db.session.postgres.statements.execute"
POSTGRES_EXECUTE_CODE = "TPG02I"
POSTGRES_CLOSE = "db.session.postgres.statements.close"
POSTGRES_CLOSE_CODE = "TPG03I"
POSTGRES_FUNCTION_CALL = "db.session.postgres.function"
POSTGRES_FUNCTION_CALL_CODE = "TPG04I"

# --- database resources ----------------------------------------------------------------
DB_CREATE = "db.create"
DB_CREATE_CODE = "TDB03I"
DB_UPDATE = "db.update"
DB_UPDATE_CODE = "TDB04I"
DB_DELETE = "db.delete"
DB_DELETE_CODE = "TDB05I"

# --- users and logins ------------------------------------------------------------------
# (S105: names with PASSWORD or TOKEN in them are event names, not secrets.)
USER_LOGIN = "user.login"
USER_LOGIN_CODE = "T1000I"
USER_LOGIN_FAILURE_CODE = "T1000W"
USER_CREATE = "user.create"
USER_CREATE_CODE = "T1002I"
USER_UPDATE = "user.update"
USER_UPDATE_CODE = "T1003I"
USER_DELETE = "user.delete"
USER_DELETE_CODE = "T1004I"
USER_PASSWORD_CHANGE = "user.password_change"  # noqa: S105
USER_PASSWORD_CHANGE_CODE = "T1005I"  # noqa: S105

# --- roles -----------------------------------------------------------------------------
ROLE_CREATED = "role.created"
ROLE_CREATED_CODE = "T9000I"
ROLE_DELETED = "role.deleted"
ROLE_DELETED_CODE = "T9001I"
ROLE_UPDATED = "role.updated"
ROLE_UPDATED_CODE = "T9002I"

# --- tokens, certificates, joining -----------------------------------------------------
JOIN_TOKEN_CREATE = "join_token.create"  # noqa: S105
JOIN_TOKEN_CREATE_CODE = "TJT00I"  # noqa: S105
RESET_PASSWORD_TOKEN_CREATE = "reset_password_token.create"  # noqa: S105
RESET_PASSWORD_TOKEN_CREATE_CODE = "T6000I"  # noqa: S105
CERT_CREATE = "cert.create"
CERT_CREATE_CODE = "TC000I"
INSTANCE_JOIN = "instance.join"
INSTANCE_JOIN_CODE = "TJ002I"
INSTANCE_JOIN_FAILURE_CODE = "TJ002E"

# --- pteleport's own: the agent's audit delivery (no Teleport equivalent) -----------------
AUDIT_SET_ASIDE = "audit.events.set_aside"
AUDIT_SET_ASIDE_CODE = "TPA00W"
AUDIT_LOST = "audit.events.lost"
AUDIT_LOST_CODE = "TPA01E"

EVENT_FOR_CODE: dict[str, str] = {
    DB_SESSION_START_CODE: DB_SESSION_START,
    DB_SESSION_START_FAILURE_CODE: DB_SESSION_START,
    DB_SESSION_END_CODE: DB_SESSION_END,
    DB_SESSION_QUERY_CODE: DB_SESSION_QUERY,
    DB_SESSION_QUERY_FAILED_CODE: DB_SESSION_QUERY_FAILED,
    DB_SESSION_MALFORMED_PACKET_CODE: DB_SESSION_MALFORMED_PACKET,
    POSTGRES_PARSE_CODE: POSTGRES_PARSE,
    POSTGRES_BIND_CODE: POSTGRES_BIND,
    POSTGRES_EXECUTE_CODE: POSTGRES_EXECUTE,
    POSTGRES_CLOSE_CODE: POSTGRES_CLOSE,
    POSTGRES_FUNCTION_CALL_CODE: POSTGRES_FUNCTION_CALL,
    DB_CREATE_CODE: DB_CREATE,
    DB_UPDATE_CODE: DB_UPDATE,
    DB_DELETE_CODE: DB_DELETE,
    USER_LOGIN_CODE: USER_LOGIN,
    USER_LOGIN_FAILURE_CODE: USER_LOGIN,
    USER_CREATE_CODE: USER_CREATE,
    USER_UPDATE_CODE: USER_UPDATE,
    USER_DELETE_CODE: USER_DELETE,
    USER_PASSWORD_CHANGE_CODE: USER_PASSWORD_CHANGE,
    ROLE_CREATED_CODE: ROLE_CREATED,
    ROLE_DELETED_CODE: ROLE_DELETED,
    ROLE_UPDATED_CODE: ROLE_UPDATED,
    JOIN_TOKEN_CREATE_CODE: JOIN_TOKEN_CREATE,
    RESET_PASSWORD_TOKEN_CREATE_CODE: RESET_PASSWORD_TOKEN_CREATE,
    CERT_CREATE_CODE: CERT_CREATE,
    INSTANCE_JOIN_CODE: INSTANCE_JOIN,
    INSTANCE_JOIN_FAILURE_CODE: INSTANCE_JOIN,
    AUDIT_SET_ASIDE_CODE: AUDIT_SET_ASIDE,
    AUDIT_LOST_CODE: AUDIT_LOST,
}
"""Every code defined here, with the event name it belongs to."""

MAX_FIELD_BYTES = 64 * 1024
"""Longest string (UTF-8 bytes, marker included) kept in any event field, e.g. ``db_query``."""

RESERVED_FIELDS = frozenset({"event", "code", "uid", "time", "cluster_name"})


def format_time(when: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and ``Z``: ``2026-11-24T13:40:05.123Z``."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise BadParameter("event times must be timezone-aware")
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    """The aware UTC datetime of an RFC 3339 timestamp (``Z`` or an offset)."""
    try:
        when = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise BadParameter(f"{text!r} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        raise BadParameter(f"{text!r} has no time zone; add Z for UTC")
    return when.astimezone(UTC)


def truncate(text: str, limit: int = MAX_FIELD_BYTES) -> str:
    """``text`` unchanged if it fits in ``limit`` UTF-8 bytes, otherwise cut on a character
    boundary and ended with ``… [truncated N bytes]`` so the result still fits."""
    if len(text) * 4 <= limit:
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    marker = _marker(len(data))  # longest the marker can be
    keep = _char_boundary(data, max(0, limit - len(marker.encode())))
    return data[:keep].decode("utf-8", "surrogatepass") + _marker(len(data) - keep)


def _marker(cut: int) -> str:
    return f"… [truncated {cut} bytes]"


def _char_boundary(data: bytes, end: int) -> int:
    """The largest index <= ``end`` that does not split a UTF-8 sequence."""
    while 0 < end < len(data) and data[end] & 0xC0 == 0x80:
        end -= 1
    return end


def sanitise(value: Any, limit: int = MAX_FIELD_BYTES) -> Any:
    """A JSON-ready copy of a field value: long strings truncated, datetimes formatted,
    tuples made lists. Anything JSON cannot hold is a BadParameter."""
    if isinstance(value, str):
        return truncate(value, limit)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadParameter("event fields cannot hold NaN or infinity")
        return value
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, list | tuple):
        return [sanitise(v, limit) for v in value]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise BadParameter(f"event field names must be strings, not {key!r}")
            out[key] = sanitise(v, limit)
        return out
    raise BadParameter(f"an event field cannot hold a {type(value).__name__}")


def make_event(
    event: str,
    code: str,
    *,
    clock: Callable[[], datetime],
    cluster_name: str,
    **fields: Any,
) -> dict[str, Any]:
    """A new event with a fresh ``uid`` and the clock's ``time``.

    Fields whose value is None are left out (as Teleport omits empty fields). Names
    with dots, such as ``addr.remote``, go in with ``**{"addr.remote": ...}``.
    """
    clash = RESERVED_FIELDS & fields.keys()
    if clash:
        raise BadParameter(f"make_event sets {', '.join(sorted(clash))} itself")
    record: dict[str, Any] = {
        "event": event,
        "code": code,
        "uid": str(uuid.uuid4()),
        "time": format_time(clock()),
        "cluster_name": cluster_name,
    }
    record.update({name: sanitise(value) for name, value in fields.items() if value is not None})
    return record
