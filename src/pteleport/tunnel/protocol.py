"""Messages on the reverse tunnel: one JSON object per line, then (for data links) raw bytes.

Mux links (``tunnel.mux``): the proxy sends ``{"type": "mux"}`` after ``hello``; an agent
that knows it opens one more link whose first line is ``mux`` and which then carries
frames, every session a stream, and ignores ``pool``. What follows describes the links an
agent that ignores ``mux`` uses.

An agent keeps one *control* link open: it sends ``hello`` (the databases it serves) and
``heartbeat`` lines; the proxy sends ``dial`` lines. For each dial the agent opens a new
*data* link that starts with a ``data`` line naming the dial id; after that the link is
one database session's bytes, preceded by one ``session`` line from the proxy.

Warm links: the proxy may send ``{"type": "pool", "size": N}`` after ``hello``; the agent
then keeps N *spare* data links open, each starting with a ``spare`` line, and the proxy
uses one for a session (``session`` line, then the bytes) without sending ``dial``. An
agent that ignores ``pool`` keeps working through ``dial`` alone.

Other control lines from the proxy: ``access`` (the access snapshot changed), ``resources``
(a ``db`` resource changed), ``end_sessions`` (the proxy drains), ``proxies`` (the running
proxies: ``self``, the proxy's own host id, and ``proxies``, each ``{"id", "addr"}``; the
agent mesh). A link whose first line is ``discover`` gets one ``proxies`` line and is closed.
"""

from __future__ import annotations

import json
from typing import Any

from common.relay import Connection

MAX_LINE = 256 * 1024


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


async def read_message(conn: Connection) -> dict[str, Any]:
    line = await conn.read_line(MAX_LINE)
    message = json.loads(line)
    if not isinstance(message, dict) or "type" not in message:
        raise ValueError("tunnel message without a type")
    return message
