"""Bind parameter values as strings for the audit log (``db_query_parameters``).

Follows Teleport's Postgres engine: text-format values are logged as text, binary-format
values are base64-encoded, NULL stays ``None``, and when the number of format codes does
not fit the number of values nothing is logged. Format-code counts that fit are the ones
the protocol defines: none (all text), one (applies to every value), or one per value.

When the caller knows the parameter type OIDs (from the matching Parse), binary values of
a few common scalar types are shown as their text form instead of base64, so the audit
reads ``42`` rather than ``ACo=``.
"""

from __future__ import annotations

import base64
import struct
import uuid
from collections.abc import Callable, Sequence

from .frontend import FORMAT_BINARY, FORMAT_TEXT, Bind


def _int(size: int) -> Callable[[bytes], str | None]:
    return lambda raw: str(int.from_bytes(raw, "big", signed=True)) if len(raw) == size else None


def _float(fmt: str, size: int) -> Callable[[bytes], str | None]:
    return lambda raw: repr(struct.unpack(fmt, raw)[0]) if len(raw) == size else None


def _text(raw: bytes) -> str | None:
    return raw.decode("utf-8", errors="replace")


def _bool(raw: bytes) -> str | None:
    return {b"\x00": "f", b"\x01": "t"}.get(raw)


def _uuid(raw: bytes) -> str | None:
    return str(uuid.UUID(bytes=raw)) if len(raw) == 16 else None


def _jsonb(raw: bytes) -> str | None:
    return raw[1:].decode("utf-8", errors="replace") if raw[:1] == b"\x01" else None


_BINARY_DECODERS: dict[int, Callable[[bytes], str | None]] = {
    16: _bool,
    18: _text,  # "char"
    19: _text,  # name
    20: _int(8),
    21: _int(2),
    23: _int(4),
    25: _text,
    26: lambda raw: str(int.from_bytes(raw, "big")) if len(raw) == 4 else None,  # oid
    114: _text,  # json
    700: _float("!f", 4),
    701: _float("!d", 8),
    1042: _text,  # bpchar
    1043: _text,  # varchar
    2950: _uuid,
    3802: _jsonb,
}


def _binary(raw: bytes, oid: int | None) -> str:
    decoder = _BINARY_DECODERS.get(oid) if oid else None
    shown = decoder(raw) if decoder is not None else None
    return shown if shown is not None else base64.b64encode(raw).decode("ascii")


def bind_parameters_for_audit(bind: Bind, param_oids: Sequence[int] | None = None) -> list[str | None]:
    """The values of ``bind`` as audit strings; ``[]`` if the format codes do not fit."""
    values = bind.params
    formats = bind.param_formats
    if not formats:
        formats = [FORMAT_TEXT] * len(values)
    elif len(formats) == 1:
        formats = formats * len(values)
    elif len(formats) != len(values):
        return []
    oids = list(param_oids or [])
    out: list[str | None] = []
    for index, (value, fmt) in enumerate(zip(values, formats, strict=True)):
        if value is None:
            out.append(None)
        elif fmt == FORMAT_TEXT:
            out.append(value.decode("utf-8", errors="replace"))
        elif fmt == FORMAT_BINARY:
            out.append(_binary(value, oids[index] if index < len(oids) else None))
        else:
            out.append("<unknown format>")
    return out
