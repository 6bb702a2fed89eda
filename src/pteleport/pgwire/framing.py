"""Split a byte stream into typed PostgreSQL messages (Byte1 type + Int32 length + payload).

``FrameReader`` keeps partial messages between ``feed`` calls. It appends to one
``bytearray`` and drops consumed bytes once per call, so a large message that arrives in
many small pieces costs linear time, not quadratic.
"""

from __future__ import annotations

import struct

from common.errors import BadParameter

MAX_MESSAGE_SIZE = 64 * 1024 * 1024
"""Default largest payload accepted (64 MiB), far above anything a real client sends."""

_HEADER = struct.Struct("!ci")
_LENGTH = struct.Struct("!i")


def encode_message(type_byte: bytes, payload: bytes = b"") -> bytes:
    """Frame ``payload`` as one message of type ``type_byte`` (one byte, e.g. ``b"Q"``)."""
    if len(type_byte) != 1:
        raise BadParameter("a message type must be exactly one byte; pass e.g. b'Q'")
    return type_byte + _LENGTH.pack(len(payload) + 4) + payload


class FrameReader:
    """Incremental framer: ``feed`` bytes, get back every complete ``(type, payload)``."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_message_size

    @property
    def buffered(self) -> int:
        """How many bytes of an incomplete message are waiting for more data."""
        return len(self._buf)

    def drain(self) -> bytes:
        """Return and forget the buffered bytes (e.g. when the stream changes hands)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[bytes, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[bytes, bytes]] = []
        pos = 0
        size = len(buf)
        with memoryview(buf) as view:
            while size - pos >= 5:
                type_byte, length = _HEADER.unpack_from(buf, pos)
                if length < 4:
                    raise BadParameter(
                        f"a message of type {type_byte!r} declares an impossible length of {length} bytes;"
                        " the peer does not speak PostgreSQL protocol 3, check what is connecting"
                    )
                if length - 4 > self._max:
                    raise BadParameter(
                        f"a message of type {type_byte!r} is {length - 4} bytes, more than the"
                        f" {self._max} allowed; send smaller statements or parameters"
                    )
                end = pos + 1 + length
                if end > size:
                    break
                out.append((type_byte, bytes(view[pos + 5 : end])))
                pos = end
        if pos:
            del buf[:pos]
        return out
