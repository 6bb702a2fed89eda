"""Client-to-server messages: the ones audited (Query, Parse, Bind, Execute, Close,
FunctionCall, Terminate) as dataclasses with parsers and encoders, plus encoders for the
authentication replies (PasswordMessage, SASLInitialResponse, SASLResponse) and Sync.

Parsers take the payload only (``FrameReader`` already removed type and length) and
raise ``BadParameter`` on anything malformed. SQL text is decoded as UTF-8 with bad
bytes replaced, because it is read for the audit log, never re-encoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from common.errors import BadParameter

from ._payload import PayloadReader, cstring_bytes, malformed
from .framing import encode_message

QUERY = b"Q"
PARSE = b"P"
BIND = b"B"
EXECUTE = b"E"
CLOSE = b"C"
FUNCTION_CALL = b"F"
TERMINATE = b"X"
SYNC = b"S"
PASSWORD = b"p"  # PasswordMessage, SASLInitialResponse and SASLResponse share it

FORMAT_TEXT = 0
FORMAT_BINARY = 1

_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")


def _int16s(values: list[int]) -> bytes:
    return _U16.pack(len(values)) + struct.pack(f"!{len(values)}h", *values)


def _values(values: list[bytes | None]) -> bytes:
    out = bytearray(_U16.pack(len(values)))
    for value in values:
        if value is None:
            out += _I32.pack(-1)
        else:
            out += _I32.pack(len(value)) + value
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Query:
    """Simple query protocol: one string with one or more SQL statements."""

    sql: str

    def encode(self) -> bytes:
        return encode_message(QUERY, cstring_bytes(self.sql, "query"))


@dataclass(frozen=True, slots=True)
class Parse:
    """Prepares ``query`` as ``statement`` (empty name: the unnamed statement)."""

    statement: str
    query: str
    param_oids: list[int] = field(default_factory=list)

    def encode(self) -> bytes:
        body = cstring_bytes(self.statement, "statement name") + cstring_bytes(self.query, "query")
        body += _U16.pack(len(self.param_oids)) + struct.pack(f"!{len(self.param_oids)}I", *self.param_oids)
        return encode_message(PARSE, body)


@dataclass(frozen=True, slots=True)
class Bind:
    """Binds parameter values to ``statement``, making ``portal``. NULL values are ``None``."""

    portal: str
    statement: str
    param_formats: list[int] = field(default_factory=list)
    params: list[bytes | None] = field(default_factory=list)
    result_formats: list[int] = field(default_factory=list)

    def encode(self) -> bytes:
        body = cstring_bytes(self.portal, "portal name") + cstring_bytes(self.statement, "statement name")
        body += _int16s(self.param_formats) + _values(self.params) + _int16s(self.result_formats)
        return encode_message(BIND, body)


@dataclass(frozen=True, slots=True)
class Execute:
    """Runs ``portal``; ``max_rows`` 0 means no limit."""

    portal: str
    max_rows: int = 0

    def encode(self) -> bytes:
        return encode_message(EXECUTE, cstring_bytes(self.portal, "portal name") + _I32.pack(self.max_rows))


@dataclass(frozen=True, slots=True)
class Close:
    """Closes a prepared statement (``kind`` ``"S"``) or a portal (``"P"``)."""

    kind: str
    name: str

    def encode(self) -> bytes:
        if self.kind not in ("S", "P"):
            raise BadParameter(f"Close kind must be 'S' or 'P', not {self.kind!r}")
        return encode_message(CLOSE, self.kind.encode() + cstring_bytes(self.name, "name"))


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """Legacy fast-path call of function ``oid`` (large objects use it)."""

    oid: int
    arg_formats: list[int] = field(default_factory=list)
    args: list[bytes | None] = field(default_factory=list)
    result_format: int = FORMAT_TEXT

    def encode(self) -> bytes:
        body = struct.pack("!I", self.oid) + _int16s(self.arg_formats) + _values(self.args)
        return encode_message(FUNCTION_CALL, body + _I16.pack(self.result_format))


@dataclass(frozen=True, slots=True)
class Terminate:
    """The client is leaving."""

    def encode(self) -> bytes:
        return encode_message(TERMINATE)


FrontendMessage = Query | Parse | Bind | Execute | Close | FunctionCall | Terminate


def parse_query(payload: bytes) -> Query:
    reader = PayloadReader(payload, "Query")
    sql = reader.cstring()
    reader.end()
    return Query(sql)


def parse_parse(payload: bytes) -> Parse:
    reader = PayloadReader(payload, "Parse")
    statement = reader.cstring()
    query = reader.cstring()
    oids = reader.uint32_array()
    reader.end()
    return Parse(statement, query, oids)


def parse_bind(payload: bytes) -> Bind:
    reader = PayloadReader(payload, "Bind")
    portal = reader.cstring()
    statement = reader.cstring()
    param_formats = reader.int16_array()
    params = reader.values()
    result_formats = reader.int16_array()
    reader.end()
    return Bind(portal, statement, param_formats, params, result_formats)


def parse_execute(payload: bytes) -> Execute:
    reader = PayloadReader(payload, "Execute")
    portal = reader.cstring()
    max_rows = reader.int32()
    reader.end()
    return Execute(portal, max_rows)


def parse_close(payload: bytes) -> Close:
    reader = PayloadReader(payload, "Close")
    kind = chr(reader.byte())
    if kind not in ("S", "P"):
        raise malformed("Close", f"kind {kind!r} instead of 'S' or 'P'")
    name = reader.cstring()
    reader.end()
    return Close(kind, name)


def parse_function_call(payload: bytes) -> FunctionCall:
    reader = PayloadReader(payload, "FunctionCall")
    oid = reader.uint32()
    arg_formats = reader.int16_array()
    args = reader.values()
    result_format = reader.int16()
    reader.end()
    return FunctionCall(oid, arg_formats, args, result_format)


def parse_terminate(payload: bytes) -> Terminate:
    PayloadReader(payload, "Terminate").end()
    return Terminate()


_PARSERS = {
    QUERY: parse_query,
    PARSE: parse_parse,
    BIND: parse_bind,
    EXECUTE: parse_execute,
    CLOSE: parse_close,
    FUNCTION_CALL: parse_function_call,
    TERMINATE: parse_terminate,
}


def parse_frontend_message(type_byte: bytes, payload: bytes) -> FrontendMessage | None:
    """Decode an audited message; ``None`` for types that are relayed without inspection."""
    parser = _PARSERS.get(type_byte)
    return parser(payload) if parser is not None else None


def encode_sync() -> bytes:
    return encode_message(SYNC)


def encode_password_message(password: str | bytes) -> bytes:
    """PasswordMessage: a cleartext password, IAM token or ``md5...`` hash."""
    raw = password if isinstance(password, bytes) else password.encode("utf-8")
    if b"\x00" in raw:
        raise BadParameter("the password contains a NUL character, which PostgreSQL cannot accept")
    return encode_message(PASSWORD, raw + b"\x00")


def encode_sasl_initial_response(mechanism: str, data: bytes | None) -> bytes:
    body = cstring_bytes(mechanism, "SASL mechanism")
    body += _I32.pack(-1) if data is None else _I32.pack(len(data)) + data
    return encode_message(PASSWORD, body)


def encode_sasl_response(data: bytes) -> bytes:
    return encode_message(PASSWORD, data)
