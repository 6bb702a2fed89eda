"""The proxy's database and tunnel handlers: check who connects, pick an agent, splice.

A database connection (ALPN ``pteleport-postgres``) must carry a user certificate with a
route to a database. The proxy reads the first startup packet (StartupMessage or
CancelRequest), dials an agent that serves the database through the reverse tunnel,
sends it one ``session`` line with the client's certificate (the agent verifies it
and re-derives the identity itself), and splices the bytes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from datetime import datetime

from cryptography import x509

from common.errors import PteleportError, sqlstate_for
from common.identity import Identity, identity_from_cert
from common.relay import Connection, splice
from common.tls import verify_issued_by
from pteleport.pgwire import error_response, startup_packet_length
from pteleport.tunnel.protocol import encode
from pteleport.tunnel.server import TunnelServer

log = logging.getLogger("pteleport.proxy")


class ProxyServer:
    def __init__(
        self, tunnel: TunnelServer, ca_certs: Callable[[str], x509.Certificate], clock: Callable[[], datetime]
    ) -> None:
        self.tunnel = tunnel
        self.ca_certs = ca_certs
        self.clock = clock
        self.active_sessions = 0

    def _identity(self, conn: Connection, ca_type: str) -> Identity:
        der = conn.peer_cert_der()
        if not der:
            raise PermissionError("no client certificate")
        cert = x509.load_der_x509_certificate(der)
        verify_issued_by(cert, [self.ca_certs(ca_type)], self.clock())
        return identity_from_cert(cert)

    async def handle_tunnel(self, conn: Connection) -> None:
        try:
            identity = self._identity(conn, "host")
        except Exception as exc:
            log.warning("refused a tunnel link from %s: %s", conn.peername(), exc)
            conn.close()
            return
        if not identity.is_host:
            conn.close()
            return
        await self.tunnel.handle(conn, identity)

    async def handle_postgres(self, conn: Connection) -> None:
        try:
            identity = self._identity(conn, "user")
            if identity.route is None:
                raise PermissionError("the certificate has no database route; run ptsh db login")
        except Exception as exc:
            log.info("refused a database connection from %s: %s", conn.peername(), exc)
            conn.write(error_response(f"access denied: {exc}", "28000"))
            conn.close()
            return
        try:
            head = await asyncio.wait_for(conn.read_exactly(8), 30)
            length = startup_packet_length(head)
            packet = head + await asyncio.wait_for(conn.read_exactly(length - 8), 30)
            agent = await self.tunnel.dial(identity.route.service_name)
        except PteleportError as err:
            conn.write(error_response(err.message, sqlstate_for(err)))
            conn.close()
            return
        except (ConnectionError, TimeoutError):
            conn.close()
            return
        der = conn.peer_cert_der() or b""
        agent.write(
            encode({"type": "session", "client_cert": base64.b64encode(der).decode(), "remote": conn.peername()})
        )
        agent.write(packet)
        self.active_sessions += 1
        try:
            await splice(conn, agent)
        finally:
            self.active_sessions -= 1
