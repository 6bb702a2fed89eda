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
import ssl
import struct
from collections.abc import Callable
from datetime import datetime

from cryptography import x509

from common.errors import PteleportError, sqlstate_for
from common.identity import Identity, identity_from_cert
from common.relay import Connection, splice
from common.tls import verify_issued_by
from pteleport.pgwire import GSSENC_REQUEST_CODE, SSL_REQUEST_CODE, error_response, startup_packet_length
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

    async def handle_native(self, conn: Connection, tls: ssl.SSLContext) -> None:
        """The optional native Postgres listener: SSLRequest, then TLS with the client certificate.

        psql reaches it with ``sslcert/sslkey`` from ``pctl auth sign --format=db`` (one hop
        fewer than the local tunnel). Cancel requests need the tunnel: psql sends them in
        plain text, without a certificate.
        """
        try:
            for _ in range(3):
                head = await asyncio.wait_for(conn.read_exactly(8), 30)
                length, code = struct.unpack("!ii", head)
                if length == 8 and code == SSL_REQUEST_CODE:
                    conn.write(b"S")
                    break
                if length == 8 and code == GSSENC_REQUEST_CODE:
                    conn.write(b"N")
                    continue
                conn.write(error_response("connect with TLS and a client certificate (sslmode=verify-full)", "28000"))
                conn.close()
                return
            else:
                conn.close()
                return
            loop = asyncio.get_running_loop()
            assert conn.transport is not None
            transport = await loop.start_tls(conn.transport, conn, tls, server_side=True, ssl_handshake_timeout=15)
        except (ConnectionError, TimeoutError, OSError, ssl.SSLError) as exc:
            log.info("native postgres connection from %s failed: %s", conn.peername(), exc)
            conn.close()
            return
        conn.transport = transport  # type: ignore[assignment]
        await self.handle_postgres(conn)

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
