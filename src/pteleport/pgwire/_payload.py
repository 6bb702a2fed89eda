"""A bounds-checked cursor over one message payload (private to pgwire).

Every read checks the remaining length first, so a malformed payload raises
``BadParameter`` naming the message instead of ``IndexError`` or ``struct.error``.
"""

from __future__ import annotations

import struct

from common.errors import BadParameter

_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")


def malformed(what: str, reason: str) -> BadParameter:
    """The one error every parser raises: which message, what is wrong, what to do."""
    return BadParameter(
        f"malformed {what} message ({reason}); the peer does not speak PostgreSQL protocol 3 correctly,"
        " so check that a PostgreSQL client or server is at the other end"
    )


def cstring_bytes(value: str, what: str) -> bytes:
    """Encode ``value`` as a NUL-terminated UTF-8 string; refuse embedded NULs."""
    raw = value.encode("utf-8")
    if b"\x00" in raw:
        raise BadParameter(f"the {what} contains a NUL character; remove it and try again")
    return raw + b"\x00"


class PayloadReader:
    """Reads big-endian integers and C strings from ``data``, front to back."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes | bytearray | memoryview, what: str) -> None:
        self._data = bytes(data)
        self._pos = 0
        self._what = what

    def error(self, reason: str) -> BadParameter:
        return malformed(self._what, f"{reason} at byte {self._pos}")

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _need(self, n: int, name: str) -> None:
        if n < 0 or self.remaining < n:
            raise self.error(f"truncated {name}")

    def byte(self) -> int:
        self._need(1, "Byte1")
        value = self._data[self._pos]
        self._pos += 1
        return value

    def int16(self) -> int:
        self._need(2, "Int16")
        (value,) = _I16.unpack_from(self._data, self._pos)
        self._pos += 2
        return value

    def uint16(self) -> int:
        self._need(2, "Int16 count")
        (value,) = _U16.unpack_from(self._data, self._pos)
        self._pos += 2
        return value

    def int32(self) -> int:
        self._need(4, "Int32")
        (value,) = _I32.unpack_from(self._data, self._pos)
        self._pos += 4
        return value

    def uint32(self) -> int:
        self._need(4, "Int32")
        (value,) = _U32.unpack_from(self._data, self._pos)
        self._pos += 4
        return value

    def take(self, n: int) -> bytes:
        self._need(n, f"{n}-byte value")
        value = self._data[self._pos : self._pos + n]
        self._pos += n
        return value

    def rest(self) -> bytes:
        value = self._data[self._pos :]
        self._pos = len(self._data)
        return value

    def cstring_raw(self) -> bytes:
        end = self._data.find(b"\x00", self._pos)
        if end < 0:
            raise self.error("string without its NUL terminator")
        value = self._data[self._pos : end]
        self._pos = end + 1
        return value

    def cstring(self) -> str:
        """A NUL-terminated string, decoded as UTF-8 (bad bytes become U+FFFD, for audit)."""
        return self.cstring_raw().decode("utf-8", errors="replace")

    def int16_array(self) -> list[int]:
        count = self.uint16()
        self._need(2 * count, f"array of {count} Int16")
        values = list(struct.unpack_from(f"!{count}h", self._data, self._pos))
        self._pos += 2 * count
        return values

    def uint32_array(self) -> list[int]:
        count = self.uint16()
        self._need(4 * count, f"array of {count} Int32")
        values = list(struct.unpack_from(f"!{count}I", self._data, self._pos))
        self._pos += 4 * count
        return values

    def values(self) -> list[bytes | None]:
        """An Int16 count, then that many (Int32 length, bytes) values; length -1 is NULL."""
        count = self.uint16()
        out: list[bytes | None] = []
        for _ in range(count):
            length = self.int32()
            if length == -1:
                out.append(None)
            elif length < -1:
                raise self.error(f"negative value length {length}")
            else:
                out.append(self.take(length))
        return out

    def end(self) -> None:
        if self.remaining:
            raise self.error(f"{self.remaining} unexpected trailing bytes")
