"""A few SQL statements over the agent's own upstream connection (simple query protocol).

The agent provisions automatic users (``autousers.py``) as the database's admin user on a
connection made by ``upstream.connect_upstream``, the same way it connects as any db user.
``AdminSession.query`` sends one Query message and returns the rows as text; a server
error raises ``SqlError`` carrying its SQLSTATE. CREATE/GRANT/REVOKE take no bound
parameters, so names go through ``ident`` (a double-quoted identifier) and values through
``literal`` (a quoted string); both refuse NUL, which PostgreSQL cannot store.
"""

from __future__ import annotations

import asyncio
import struct

from common.errors import BadParameter, ConnectionProblem
from pteleport import pgwire
from pteleport.dbagent.upstream import UpstreamConnection

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
DATA_ROW = b"D"
QUERY_TIMEOUT = 15.0


class SqlError(Exception):
    """The server refused a statement."""

    def __init__(self, error: pgwire.ServerError) -> None:
        super().__init__(str(error))
        self.code = error.code
        self.message = error.message


def ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    if not name or "\x00" in name:
        raise BadParameter(f"{name!r} cannot be a PostgreSQL role name; use a name without NUL characters")
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """``value`` as a quoted SQL string (E'' form, so it is right whatever standard_conforming_strings says)."""
    if "\x00" in value:
        raise BadParameter(f"{value!r} cannot be sent to PostgreSQL; remove the NUL characters")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _data_row(payload: bytes) -> list[str | None]:
    (count,) = _I16.unpack_from(payload, 0)
    pos, row = 2, []
    for _ in range(count):
        (size,) = _I32.unpack_from(payload, pos)
        pos += 4
        if size < 0:
            row.append(None)
            continue
        row.append(payload[pos : pos + size].decode("utf-8"))
        pos += size
    return row


class AdminSession:
    """Statements on one authenticated connection; ``close`` ends it."""

    def __init__(self, conn: UpstreamConnection, where: str) -> None:
        self.conn = conn
        self.where = where

    async def query(self, sql: str) -> list[list[str | None]]:
        """Run ``sql`` (one or more statements); the rows of its results, or ``SqlError``."""
        writer, reader = self.conn.writer, self.conn.reader
        try:
            async with asyncio.timeout(QUERY_TIMEOUT):
                writer.write(pgwire.Query(sql).encode())
                await writer.drain()
                rows: list[list[str | None]] = []
                error: pgwire.ServerError | None = None
                while True:
                    header = await reader.readexactly(5)
                    length = _I32.unpack_from(header, 1)[0]
                    payload = await reader.readexactly(length - 4)
                    kind = header[:1]
                    if kind == DATA_ROW:
                        rows.append(_data_row(payload))
                    elif kind == pgwire.ERROR_RESPONSE:
                        error = pgwire.parse_server_error(payload)
                    elif kind == pgwire.READY_FOR_QUERY:
                        break
        except TimeoutError:
            raise ConnectionProblem(
                f"the database at {self.where} did not answer the admin user's statement within"
                f" {QUERY_TIMEOUT:g}s; check its load and its server log"
            ) from None
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise ConnectionProblem(
                f"the database at {self.where} closed the admin user's connection; check its server log"
            ) from exc
        if error is not None:
            raise SqlError(error)
        return rows

    async def value(self, sql: str) -> str | None:
        """The first column of the first row (None when there is no row)."""
        rows = await self.query(sql)
        return rows[0][0] if rows and rows[0] else None

    async def close(self) -> None:
        self.conn.close()
        await self.conn.wait_closed()
