"""Server-to-client messages: builders for what pteleport says to a client itself, and
parsers for what the agent reads from the database during the startup phase.

Builders return complete framed messages. Parsers take the payload only and raise
``BadParameter`` on malformed input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from common.errors import BadParameter

from ._payload import PayloadReader, cstring_bytes
from .framing import encode_message

AUTHENTICATION = b"R"
PARAMETER_STATUS = b"S"
BACKEND_KEY_DATA = b"K"
READY_FOR_QUERY = b"Z"
ERROR_RESPONSE = b"E"
NOTICE_RESPONSE = b"N"
NEGOTIATE_PROTOCOL_VERSION = b"v"

AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_I32 = struct.Struct("!i")

# ErrorResponse / NoticeResponse field codes (protocol docs, "Error and Notice Message Fields").
FIELD_SEVERITY = "S"
FIELD_SEVERITY_V = "V"
FIELD_CODE = "C"
FIELD_MESSAGE = "M"
FIELD_DETAIL = "D"
FIELD_HINT = "H"


def authentication(code: int, data: bytes = b"") -> bytes:
    return encode_message(AUTHENTICATION, _I32.pack(code) + data)


def authentication_ok() -> bytes:
    return authentication(AUTH_OK)


def authentication_cleartext_password() -> bytes:
    return authentication(AUTH_CLEARTEXT_PASSWORD)


def authentication_md5_password(salt: bytes) -> bytes:
    if len(salt) != 4:
        raise BadParameter("an MD5 salt must be 4 bytes")
    return authentication(AUTH_MD5_PASSWORD, salt)


def authentication_sasl(mechanisms: list[str]) -> bytes:
    body = b"".join(cstring_bytes(m, "SASL mechanism") for m in mechanisms) + b"\x00"
    return authentication(AUTH_SASL, body)


def parameter_status(name: str, value: str) -> bytes:
    return encode_message(
        PARAMETER_STATUS, cstring_bytes(name, "parameter name") + cstring_bytes(value, "parameter value")
    )


def backend_key_data(pid: int, secret: bytes) -> bytes:
    if not 4 <= len(secret) <= 256:
        raise BadParameter("a cancel key must be 4 to 256 bytes")
    return encode_message(BACKEND_KEY_DATA, _I32.pack(pid) + secret)


def ready_for_query(status: bytes = b"I") -> bytes:
    """``status``: ``I`` idle, ``T`` in a transaction, ``E`` in a failed transaction."""
    if status not in (b"I", b"T", b"E"):
        raise BadParameter("the transaction status must be b'I', b'T' or b'E'")
    return encode_message(READY_FOR_QUERY, status)


def _fields(severity: str, code: str, message: str, detail: str | None, hint: str | None) -> bytes:
    fields = [
        (FIELD_SEVERITY, severity),
        (FIELD_SEVERITY_V, severity),
        (FIELD_CODE, code),
        (FIELD_MESSAGE, message),
    ]
    if detail:
        fields.append((FIELD_DETAIL, detail))
    if hint:
        fields.append((FIELD_HINT, hint))
    body = b"".join(key.encode("ascii") + cstring_bytes(value, "error field") for key, value in fields)
    return body + b"\x00"


def error_response(
    message: str,
    code: str,
    severity: str = "FATAL",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """An ErrorResponse; ``code`` is a five-character SQLSTATE such as ``28000``."""
    return encode_message(ERROR_RESPONSE, _fields(severity, code, message, detail, hint))


def notice_response(
    message: str,
    code: str = "00000",
    severity: str = "NOTICE",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    return encode_message(NOTICE_RESPONSE, _fields(severity, code, message, detail, hint))


@dataclass(frozen=True, slots=True)
class ServerError:
    """The fields of an ErrorResponse or NoticeResponse that people read."""

    severity: str
    code: str
    message: str
    detail: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        return f"{self.severity}: {self.message} (SQLSTATE {self.code})"


def parse_error_response(payload: bytes) -> dict[str, str]:
    """Field code -> value for an ErrorResponse or NoticeResponse payload."""
    reader = PayloadReader(payload, "ErrorResponse")
    fields: dict[str, str] = {}
    while True:
        code = reader.byte()
        if code == 0:
            break
        fields[chr(code)] = reader.cstring()
    reader.end()
    return fields


def parse_server_error(payload: bytes) -> ServerError:
    """Convenience over ``parse_error_response`` giving severity, SQLSTATE and message."""
    fields = parse_error_response(payload)
    return ServerError(
        severity=fields.get(FIELD_SEVERITY_V) or fields.get(FIELD_SEVERITY, "ERROR"),
        code=fields.get(FIELD_CODE, "XX000"),
        message=fields.get(FIELD_MESSAGE, ""),
        detail=fields.get(FIELD_DETAIL),
        hint=fields.get(FIELD_HINT),
    )


def parse_authentication(payload: bytes) -> tuple[int, bytes]:
    """(authentication code, the rest): e.g. the MD5 salt or the SASL data."""
    reader = PayloadReader(payload, "Authentication")
    code = reader.int32()
    return code, reader.rest()


def parse_sasl_mechanisms(data: bytes) -> list[str]:
    """The mechanism names in the data of AuthenticationSASL."""
    reader = PayloadReader(data, "AuthenticationSASL")
    names = []
    while name := reader.cstring():
        names.append(name)
    reader.end()
    return names


def parse_parameter_status(payload: bytes) -> tuple[str, str]:
    reader = PayloadReader(payload, "ParameterStatus")
    name = reader.cstring()
    value = reader.cstring()
    reader.end()
    return name, value


def parse_backend_key_data(payload: bytes) -> tuple[int, bytes]:
    """(backend pid, cancel key); the key is 4 bytes, or up to 256 under protocol 3.2."""
    reader = PayloadReader(payload, "BackendKeyData")
    pid = reader.int32()
    secret = reader.rest()
    if not 4 <= len(secret) <= 256:
        raise reader.error(f"a {len(secret)}-byte cancel key")
    return pid, secret


def parse_ready_for_query(payload: bytes) -> bytes:
    reader = PayloadReader(payload, "ReadyForQuery")
    status = reader.take(1)
    reader.end()
    return status


# --- ending a relayed session at a message boundary ----------------------------------------------
_READY_HEAD = READY_FOR_QUERY + b"\x00\x00\x00\x05"
QUERY_CANCELED = "57014"


def ends_with_ready_for_query(tail: bytes) -> bool:
    """Whether server bytes ending in ``tail`` end with a whole ReadyForQuery (a message boundary).

    A relay that does not frame the server's messages uses this to find a point where it can
    add a message of its own: the server has just said it is waiting for the client.
    """
    return len(tail) >= 6 and tail[-6:-1] == _READY_HEAD and tail[-1:] in (b"I", b"T", b"E")


def cut_trailing_cancel_error(chunk: bytes) -> bytes | None:
    """``chunk`` without its final ErrorResponse(57014) + ReadyForQuery, or None if it does not end so.

    After the relay itself asked the server to cancel the running query, the server answers
    with "canceling statement due to user request" and ReadyForQuery; the relay replaces that
    pair with its own FATAL error, so the client reads why its session ends.
    """
    if not ends_with_ready_for_query(chunk):
        return None
    end = len(chunk) - 6
    marker = b"C" + QUERY_CANCELED.encode() + b"\x00"
    for start in range(end - 5, max(-1, end - 4096), -1):
        if chunk[start : start + 1] != ERROR_RESPONSE:
            continue
        if int.from_bytes(chunk[start + 1 : start + 5], "big") == end - start - 1 and marker in chunk[start:end]:
            return chunk[:start]
    return None
