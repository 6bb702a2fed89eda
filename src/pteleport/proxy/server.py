"""The proxy's database and tunnel handlers: check who connects, pick an agent, splice.

A database connection (ALPN ``pteleport-postgres``) must carry a user certificate with a
route to a database, and the certificate must not be locked or stale (the access snapshot,
``rbac.revocation``). The proxy reads the first startup packet (StartupMessage or
CancelRequest), dials an agent that auth holds a live registration for (never one that
merely announces the database), sends it one ``session`` line with the client's certificate
(the agent verifies it and re-derives the identity itself), and splices the bytes. Every
refusal is a Postgres ErrorResponse with a sentence and a SQLSTATE.

A tunnel link (ALPN ``pteleport-reversetunnel``) must carry a host certificate of a
database service (system role ``Db``).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import secrets
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from common.errors import AccessDenied, BadParameter, ConnectionProblem, NotLoggedIn, PteleportError, sqlstate_for
from common.identity import Identity
from common.relay import Connection, Splice
from common.sockettransport import start_tls
from common.tls import VerifiedIdentities
from pteleport.audit.events import DB_SESSION_START, DB_SESSION_START_FAILURE_CODE
from pteleport.auth.access import as_error
from pteleport.auth.throttle import FailureLimiter, client_ip
from pteleport.pgwire import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    SSL_REQUEST_CODE,
    error_response,
    startup_packet_length,
)
from pteleport.rbac.revocation import Refusal
from pteleport.tunnel.protocol import encode
from pteleport.tunnel.server import TunnelServer

log = logging.getLogger("pteleport.proxy")
CANCEL_PACKET_LENGTH = 16
CANCELS_PER_MINUTE = 120  # plain CancelRequests per client address (IPv6: per /64)
ALL_CANCELS_PER_MINUTE = 6000  # and from everyone together
PLAIN_HTTP_STARTS = {b"GET ", b"HEAD", b"POST", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN"}
_HTTP_BODY = b"This port speaks HTTPS (and PostgreSQL with TLS); use https:// in the address.\n"
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    + b"Content-Length: %d\r\n\r\n" % len(_HTTP_BODY)
    + _HTTP_BODY
)


@dataclass
class ClusterView:
    """What the proxy asks the cluster (auth, in the same process) per connection; all in memory."""

    ca_cert: Callable[[str], x509.Certificate]
    refusal: Callable[[Identity], Awaitable[Refusal | None]]
    registered_hosts: Callable[[str], list[str]]
    emit: Callable[..., None]


class ProxyServer:
    def __init__(self, tunnel: TunnelServer, cluster: ClusterView, clock: Callable[[], datetime]) -> None:
        self.tunnel = tunnel
        self.cluster = cluster
        self.clock = clock
        self.active_sessions = 0
        # Drain hooks (proxy/drain.py): a sentence to refuse new sessions with, and the open
        # relays by the token their agent knows them by.
        self.closing: str | None = None
        self.sessions: dict[str, Splice] = {}
        self.cancel_limiter = FailureLimiter(clock, max_failures=CANCELS_PER_MINUTE)
        self.all_cancels = FailureLimiter(clock, max_failures=ALL_CANCELS_PER_MINUTE)
        self.identities = VerifiedIdentities()

    def _identity(self, conn: Connection, ca_type: str) -> Identity:
        der = conn.peer_cert_der()
        if not der:
            raise PermissionError("no client certificate")
        return self.identities.identity(der, [self.cluster.ca_cert(ca_type)], self.clock())

    async def handle_tunnel(self, conn: Connection) -> None:
        try:
            identity = self._identity(conn, "host")
        except Exception as exc:
            log.warning("refused a tunnel link from %s: %s", conn.peername(), exc)
            conn.close()
            return
        if not identity.is_host or identity.system_role != "Db":
            log.warning("refused a tunnel link from %s: not a database service identity", conn.peername())
            conn.close()
            return
        await self.tunnel.handle(conn, identity)

    async def handle_native(self, conn: Connection, tls: ssl.SSLContext) -> None:
        """PostgreSQL's own protocol (the public port, or ``postgres_listen_addr``): SSLRequest, then TLS.

        psql reaches it with ``sslcert/sslkey`` (``pctl auth sign --format=db``, or the files
        of ``ptsh db config``): one hop fewer than the local tunnel. A CancelRequest comes in
        plain text without a certificate, as libpq sends it; its (pid, secret) is its only
        credential, as with PostgreSQL itself, so it goes to every agent connected here and
        only the one holding that backend acts (``_plain_cancel``).
        """
        try:
            for _ in range(3):
                head = await asyncio.wait_for(conn.read_exactly(8), 30)
                if head[:4] in PLAIN_HTTP_STARTS:
                    conn.write(PLAIN_HTTP_ANSWER)
                    conn.close()
                    return
                length, code = struct.unpack("!ii", head)
                if length == 8 and code == SSL_REQUEST_CODE:
                    conn.write(b"S")
                    break
                if length == 8 and code == GSSENC_REQUEST_CODE:
                    conn.write(b"N")
                    continue
                if length == CANCEL_PACKET_LENGTH and code == CANCEL_REQUEST_CODE:
                    self._plain_cancel(conn, await asyncio.wait_for(conn.read_exactly(8), 30))
                    return
                conn.write(error_response("connect with TLS and a client certificate (sslmode=verify-full)", "28000"))
                conn.close()
                return
            else:
                conn.close()
                return
            assert conn.transport is not None
            transport = await start_tls(conn.transport, tls, server_side=True, timeout=15)
        except (ConnectionError, TimeoutError, OSError, ssl.SSLError) as exc:
            log.debug("native postgres connection from %s failed: %r", conn.peername(), exc)
            conn.close()
            return
        conn.transport = transport  # type: ignore[assignment]
        await self.handle_postgres(conn)

    async def handle_postgres(self, conn: Connection) -> None:
        try:
            identity = self._identity(conn, "user")
            if identity.route is None:
                raise AccessDenied('the certificate has no database route; run "ptsh db login NAME"')
        except PteleportError as err:
            self._refuse(conn, err, None)
            return
        except Exception as exc:
            self._refuse(conn, NotLoggedIn(f"the client certificate cannot be used ({exc}); log in again"), None)
            return
        reason = await self.cluster.refusal(identity)
        if reason is not None:
            self._refuse(conn, as_error(reason), identity)
            return
        route = identity.route
        hosts = self.cluster.registered_hosts(route.service_name)
        try:
            head = await asyncio.wait_for(conn.read_exactly(8), 30)
            length = startup_packet_length(head)
            packet = head + await asyncio.wait_for(conn.read_exactly(length - 8), 30)
            if _is_cancel(packet):
                await self._cancel(conn, packet, hosts)  # a cancel still goes through while draining
                return
            if self.closing is not None:
                raise ConnectionProblem(self.closing)
            agent = await self._dial_for(conn, route.service_name, hosts)
            if agent is None:
                return  # the client left while the proxy waited for an agent's tunnel
            if self.closing is not None:  # the drain began while it waited
                agent.close()
                raise ConnectionProblem(self.closing)
        except PteleportError as err:
            self._refuse(conn, err, identity)
            return
        except TimeoutError:
            self._refuse(conn, BadParameter("the client sent no startup message within 30 s"), None)
            return
        except ConnectionError:
            conn.close()
            return
        token = secrets.token_hex(8)
        agent.write(self._session_line(conn, token))
        agent.write(packet)
        relay = Splice(conn, agent)
        self.sessions[token] = relay
        self.active_sessions += 1
        try:
            await relay.run()
        finally:
            self.active_sessions -= 1
            self.sessions.pop(token, None)

    async def _dial_for(self, conn: Connection, database: str, hosts: list[str]) -> Connection | None:
        """A link to an agent (a mux stream or a data link) for ``conn``'s session; None when the client leaves first.

        A dial can wait for an agent's tunnel to arrive (``TunnelServer`` "Arrivals", up to
        16 s): if the client goes away meanwhile, the wait is abandoned, and a link that
        arrives anyway is closed instead of starting a session nobody reads.
        """
        if self.tunnel.connected(hosts):
            return await self.tunnel.dial(database, hosts)  # (no arrival wait: the common case)
        dial = asyncio.ensure_future(self.tunnel.dial(database, hosts))
        await asyncio.wait({dial, conn.closed}, return_when=asyncio.FIRST_COMPLETED)
        if dial.done():
            return dial.result()
        dial.cancel()
        dial.add_done_callback(_close_link)
        conn.close()
        return None

    def _session_line(self, conn: Connection, token: str | None = None) -> bytes:
        """The ``session`` line; ``token`` names the relay for the agent's drain notices."""
        der = conn.peer_cert_der() or b""
        line = {"type": "session", "client_cert": base64.b64encode(der).decode(), "remote": conn.peername()}
        if token is not None:
            line["proxy_session"] = token
        return encode(line)

    async def _cancel(self, conn: Connection, packet: bytes, hosts: list[str]) -> None:
        """A CancelRequest goes to every agent serving the database; only the one holding the session acts.

        Each checks that the (database, pid, secret) belong to a live session of this user.
        The client's connection then closes, as PostgreSQL closes it after a cancel.
        """
        links = await self.tunnel.dial_each(hosts)
        line = self._session_line(conn)
        for link in links:
            link.write(line + packet)
        await asyncio.gather(*(asyncio.wait_for(link.closed, 10) for link in links), return_exceptions=True)
        for link in links:
            link.close()
        conn.close()

    def _plain_cancel(self, conn: Connection, key: bytes) -> None:
        """A certificate-less CancelRequest: ``cancel_key`` to every agent here; PostgreSQL closes after it too.

        Limited per client (``CANCELS_PER_MINUTE`` per address, an IPv6 /64 counting as one)
        and for the whole proxy (``ALL_CANCELS_PER_MINUTE``), so the 64 bits of (pid, secret)
        cannot be guessed through us faster than against PostgreSQL's own port, and a flood
        cannot make the proxy write to every agent without end. Dropped ones are logged once
        per address, when it reaches the limit.
        """
        source = cancel_source(conn.peername())
        if self.cancel_limiter.retry_after(source) or self.all_cancels.retry_after("*"):
            conn.close()
            return
        self.cancel_limiter.failed(source)  # every plain cancel counts: we cannot tell which were right
        self.all_cancels.failed("*")
        if self.cancel_limiter.retry_after(source):
            log.warning("%s sent %d cancel requests within a minute; ignoring more from it for now",
                        source, CANCELS_PER_MINUTE)
        pid, secret = struct.unpack("!i4s", key)
        self.tunnel.broadcast({"type": "cancel_key", "pid": pid, "secret": secret.hex()})
        conn.close()

    def _refuse(self, conn: Connection, err: PteleportError, identity: Identity | None) -> None:
        """One ErrorResponse the client can read, then close; audited when we know who it was."""
        log.info("refused a database connection from %s: %s", conn.peername(), err.message)
        if identity is not None and identity.route is not None:
            self.cluster.emit(
                DB_SESSION_START,
                DB_SESSION_START_FAILURE_CODE,
                user=identity.username,
                db_service=identity.route.service_name,
                db_user=identity.route.username,
                db_name=identity.route.database,
                success=False,
                error=err.message,
                **{"addr.remote": conn.peername()},
            )
        conn.write(error_response(err.message, sqlstate_for(err)))
        conn.close()


def cancel_source(remote: str) -> str:
    """Whom a plain cancel counts against: its IPv4 address, or the /64 of its IPv6 address."""
    ip = client_ip(remote)
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _close_link(dial: asyncio.Future[Connection]) -> None:
    """A dial abandoned by its client: close the link, should it have come all the same."""
    if not dial.cancelled() and dial.exception() is None:
        dial.result().close()


def _is_cancel(packet: bytes) -> bool:
    return len(packet) >= 8 and int.from_bytes(packet[4:8], "big") == CANCEL_REQUEST_CODE
