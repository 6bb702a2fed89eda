"""Draining the proxy when it stops: no new sessions, open ones get time, the rest a FATAL.

1. ``ProxyServer.closing`` is set: every new database connection (public port and native
   listener) is refused with a sentence (CancelRequests still pass, so a client can cancel
   what runs);
2. the open sessions get up to ``timeout`` seconds to finish by themselves;
3. the agents holding the ones left are asked (``end_sessions`` line on the tunnel's
   control link, with the proxy's session tokens) to end them: an agent ends each at a
   protocol message boundary with FATAL 57P01 ``message``, audited like any other end
   (``engine.LiveSession.end``);
4. what is still open after ``END_GRACE`` (an agent that did not answer) is closed here:
   with the same FATAL if the server's last message was a ReadyForQuery, else without it.
"""

from __future__ import annotations

import asyncio
import logging

from pteleport.pgwire import ends_with_ready_for_query, error_response
from pteleport.proxy.server import ProxyServer
from pteleport.tunnel.server import TunnelServer

log = logging.getLogger("pteleport.proxy")
REFUSAL = "this proxy is shutting down; connect again in a moment"
ADMIN_SHUTDOWN = "57P01"
END_GRACE = 5.0  # an agent cuts a session that reaches no boundary after 3 s


async def _until_empty(proxy: ProxyServer, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while proxy.sessions:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def drain(proxy: ProxyServer, tunnel: TunnelServer, timeout: float, message: str) -> None:
    proxy.closing = REFUSAL
    if proxy.sessions:
        log.info("draining: %d open session(s) get up to %.0fs to finish", len(proxy.sessions), timeout)
        if await _until_empty(proxy, timeout):
            return
    if not proxy.sessions:
        return
    log.info("ending %d open session(s): %s", len(proxy.sessions), message)
    tunnel.broadcast({"type": "end_sessions", "sessions": sorted(proxy.sessions), "message": message})
    if await _until_empty(proxy, END_GRACE):
        return
    fatal = error_response(message, ADMIN_SHUTDOWN)
    for relay in list(proxy.sessions.values()):
        relay.drop_a_to_b()
        if ends_with_ready_for_query(relay.tail_from_b):
            relay.write_to_a(fatal)
        relay.close()
    log.warning("closed %d session(s) whose agent did not end them", len(proxy.sessions))
