"""The startup packet family: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.

These packets have no type byte: Int32 length (including itself), Int32 code, body.
A server reads 8 bytes, checks the length with ``startup_packet_length``, reads the
rest and calls ``parse_startup_packet``. Like PostgreSQL, packets above 10000 bytes
are refused.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from common.errors import BadParameter

from ._payload import PayloadReader, cstring_bytes, malformed

SSL_REQUEST_CODE = 80877103
CANCEL_REQUEST_CODE = 80877102
GSSENC_REQUEST_CODE = 80877104
PROTOCOL_3_0 = 196608  # (3 << 16) | 0
PROTOCOL_3_2 = 196610  # (3 << 16) | 2; PostgreSQL 18, variable-length cancel keys
MAX_STARTUP_PACKET_SIZE = 10000
MIN_CANCEL_KEY_LENGTH = 4
MAX_CANCEL_KEY_LENGTH = 256

_HEAD = struct.Struct("!ii")
_CANCEL_HEAD = struct.Struct("!iii")


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The first real message of a session. ``protocol`` is ``major << 16 | minor``."""

    protocol: int
    params: dict[str, str] = field(default_factory=dict)

    @property
    def version(self) -> tuple[int, int]:
        return self.protocol >> 16, self.protocol & 0xFFFF

    @property
    def user(self) -> str | None:
        return self.params.get("user")

    @property
    def database(self) -> str | None:
        """The database asked for; PostgreSQL defaults it to the user name."""
        return self.params.get("database") or self.params.get("user")

    def encode(self) -> bytes:
        return encode_startup_message(self.params, self.protocol)


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """Asks the server to switch to TLS; the server answers one byte, ``S`` or ``N``."""

    def encode(self) -> bytes:
        return encode_ssl_request()


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """Asks for GSSAPI encryption; pteleport always answers ``N``."""

    def encode(self) -> bytes:
        return _HEAD.pack(8, GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Cancels the running query of backend ``pid``; ``secret`` is 4 bytes, or up to 256 in 3.2."""

    pid: int
    secret: bytes

    def encode(self) -> bytes:
        return encode_cancel_request(self.pid, self.secret)


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def startup_packet_length(first8: bytes) -> int:
    """The total length declared by the first bytes of a startup packet (at least 4 needed)."""
    if len(first8) < 4:
        raise malformed("startup packet", f"only {len(first8)} bytes")
    length = int.from_bytes(first8[:4], "big", signed=True)
    if length < 8 or length > MAX_STARTUP_PACKET_SIZE:
        raise BadParameter(
            f"the client sent a startup packet of {length} bytes (PostgreSQL allows 8 to"
            f" {MAX_STARTUP_PACKET_SIZE}); connect with a PostgreSQL client speaking protocol 3"
        )
    return length


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Decode a complete startup packet, length prefix included."""
    length = startup_packet_length(packet)
    if len(packet) != length:
        raise malformed("startup packet", f"declares {length} bytes but {len(packet)} were given")
    code = int.from_bytes(packet[4:8], "big", signed=False)
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        if length != 8:
            raise malformed("SSLRequest/GSSENCRequest", f"length {length} instead of 8")
        return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        return _parse_cancel(packet)
    major = code >> 16
    if major != 3:
        raise BadParameter(
            f"the client asked for protocol {major}.{code & 0xFFFF}; pteleport speaks protocol 3"
            " (PostgreSQL 7.4 and later), so upgrade the client"
        )
    return StartupMessage(code, _parse_params(packet[8:]))


def _parse_cancel(packet: bytes) -> CancelRequest:
    key_length = len(packet) - 12
    if not MIN_CANCEL_KEY_LENGTH <= key_length <= MAX_CANCEL_KEY_LENGTH:
        raise malformed(
            "CancelRequest",
            f"a {key_length}-byte key; keys are {MIN_CANCEL_KEY_LENGTH} to {MAX_CANCEL_KEY_LENGTH} bytes",
        )
    _, _, pid = _CANCEL_HEAD.unpack_from(packet)
    return CancelRequest(pid, bytes(packet[12:]))


def _parse_params(body: bytes) -> dict[str, str]:
    reader = PayloadReader(body, "StartupMessage")
    params: dict[str, str] = {}
    while True:
        raw_key = reader.cstring_raw()
        if not raw_key:
            break
        raw_value = reader.cstring_raw()
        try:
            params[raw_key.decode("utf-8")] = raw_value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadParameter(
                "the StartupMessage carries a parameter that is not valid UTF-8;"
                " set the client's user, database and application_name in UTF-8"
            ) from exc
    reader.end()
    return params


def encode_startup_message(params: Mapping[str, str], protocol: int = PROTOCOL_3_0) -> bytes:
    body = bytearray()
    for key, value in params.items():
        if not key:
            raise BadParameter("a startup parameter has an empty name; give every parameter a name")
        body += cstring_bytes(key, "startup parameter name")
        body += cstring_bytes(value, f"startup parameter {key!r}")
    body += b"\x00"
    length = 8 + len(body)
    if length > MAX_STARTUP_PACKET_SIZE:
        raise BadParameter(
            f"the startup parameters make a {length}-byte packet, above PostgreSQL's"
            f" {MAX_STARTUP_PACKET_SIZE}; send fewer or shorter parameters"
        )
    return _HEAD.pack(length, protocol) + bytes(body)


def encode_ssl_request() -> bytes:
    return _HEAD.pack(8, SSL_REQUEST_CODE)


def encode_gssenc_request() -> bytes:
    return _HEAD.pack(8, GSSENC_REQUEST_CODE)


def encode_cancel_request(pid: int, secret: bytes) -> bytes:
    if not MIN_CANCEL_KEY_LENGTH <= len(secret) <= MAX_CANCEL_KEY_LENGTH:
        raise BadParameter(
            f"a cancel key must be {MIN_CANCEL_KEY_LENGTH} to {MAX_CANCEL_KEY_LENGTH} bytes, not"
            f" {len(secret)}; pass the key from the server's BackendKeyData"
        )
    return _CANCEL_HEAD.pack(12 + len(secret), CANCEL_REQUEST_CODE, pid) + secret
