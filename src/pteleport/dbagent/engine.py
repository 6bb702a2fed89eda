"""The agent's Postgres engine: one database session from the proxy to PostgreSQL.

::

    proxy ──session line (client cert)──▶ engine: verify cert (user CA, expiry) → identity
          ──StartupMessage──────────────▶        db user/name: the client's, the route's by default
                                                 RBAC re-check (labels, that db user, that db name)
                                                 connect upstream (TLS + IAM token / cert / password)
          ◀──AuthenticationOk, ParameterStatus*, BackendKeyData (the server's), ReadyForQuery
          ◀════════════ relay: client→server parsed for audit, server→client untouched ════▶

Identity comes only from the verified certificate, never from the startup message; the
db user and db name do come from the StartupMessage (``user``, ``database``), as in
Teleport, with the certificate's route as the default, and RBAC decides on exactly those.
Every other startup parameter is forwarded unchanged (``application_name`` is also the
events' ``user_agent``). What the client sees is what it would see connected directly: the
server's BackendKeyData, its errors byte for byte (also at startup: a database that does
not exist, a role without LOGIN, too many connections), its FATAL and EOF when the backend
is terminated. A refusal of ours is a Postgres ErrorResponse whose message says why, plus a
TDB00W event. A CancelRequest is honoured when its (database, pid, secret) match a live
session of the same user; the proxy sends it to every agent serving the database.

Open sessions are watched (``LiveSession``): when the access snapshot changes (a lock, a
deleted user, a role taken away) or roles change (a new deny rule), every open session is
checked again, and one that is no longer allowed ends with a FATAL ErrorResponse (SQLSTATE
57P01) carrying the reason, a ``client.disconnect`` event, and ``db.session.end``. With the
role option ``disconnect_expired_cert`` a session also ends when its certificate expires.
The FATAL is put in at a message boundary: at once if the server's last message was a
ReadyForQuery, else after cancelling the running query (its "canceling statement" error
is replaced by ours); a session that does not reach a boundary in time is closed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from cryptography import x509

from common.errors import (
    AccessDenied,
    BadParameter,
    ConnectionProblem,
    NotLoggedIn,
    PteleportError,
    Unsupported,
    sqlstate_for,
)
from common.identity import Identity
from common.relay import Connection, Splice, attach_stream
from common.tls import VerifiedIdentities
from pteleport.audit import events as ev
from pteleport.auth.access import as_error
from pteleport.auth.db_users import AutoUserPlan, auto_user_plan
from pteleport.dbagent.audit_tap import AuditQueue, EventWriter, SessionTap
from pteleport.dbagent.autousers import AutoUsers
from pteleport.dbagent.credentials import Credentials, LocalSettings, split_uri
from pteleport.dbagent.upstream import FromServer, UpstreamTLS, connect_upstream, send_cancel
from pteleport.pgwire import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    Terminate,
    authentication_ok,
    backend_key_data,
    cut_trailing_cancel_error,
    ends_with_ready_for_query,
    error_response,
    parameter_status,
    parse_startup_packet,
    ready_for_query,
    startup_packet_length,
)
from pteleport.rbac.checker import AccessChecker
from pteleport.rbac.revocation import AccessState, refusal

log = logging.getLogger("pteleport.dbagent.engine")
CLIENT_DISCONNECT = "client.disconnect"
CLIENT_DISCONNECT_CODE = "T3006I"
ADMIN_SHUTDOWN = "57P01"
PROTOCOL_VIOLATION = "08P01"
END_GRACE = 3.0  # seconds a session gets to reach a message boundary before it is cut
TERMINATE = Terminate().encode()  # the client's goodbye, so the server logs a clean end


@dataclass
class ServedDatabase:
    resource: dict
    local: LocalSettings


@dataclass
class _Session:
    sid: str
    identity: Identity
    upstream_host: str
    upstream_port: int
    tls: UpstreamTLS
    backend_pid: int
    backend_secret: bytes


@dataclass
class EngineDeps:
    """What the engine needs from the agent around it (injected, so tests can fake it)."""

    cluster_name: Callable[[], str]
    server_id: str
    hostname: str
    user_ca: Callable[[], list[x509.Certificate]]
    database: Callable[[str], ServedDatabase | None]
    roles: Callable[[list[str]], Awaitable[list[Any]]]
    credentials: Credentials
    emit_line: Callable[[str], None]
    """Takes one event as a JSON line (the shipper's ``emit_line``)."""
    clock: Callable[[], datetime]
    access: Callable[[], AccessState | None] = lambda: None
    audit_refusal: Callable[[], str | None] = lambda: None  # a sentence while events cannot be kept
    auto_users: AutoUsers | None = None  # creates db users for roles with create_db_user_mode
    sessions: dict[tuple[str, int, bytes], _Session] = field(default_factory=dict)
    live: dict[str, LiveSession] = field(default_factory=dict)
    _queue: AuditQueue | None = None

    def queue(self) -> AuditQueue:
        """The one queue of tapped messages of this agent (built into lines once per loop iteration)."""
        if self._queue is None:
            self._queue = AuditQueue(self.emit_line)
        return self._queue


class _Auditor:
    """A session's events: its fixed fields, ``emit`` for one event now, ``tap`` for the relay."""

    def __init__(self, deps: EngineDeps, identity: Identity, db: dict | None, remote: str) -> None:
        self.deps = deps
        self.sid = str(uuid.uuid4())
        route = identity.route
        self.base = {
            "user": identity.username,
            "sid": self.sid,
            "db_service": route.service_name if route else "",
            "db_protocol": "postgres",
            "db_uri": db["spec"]["uri"] if db else "",
            "db_user": route.username if route else "",
            "db_name": route.database if route else "",
            "server_id": deps.server_id,
            "server_hostname": deps.hostname,
            "addr.remote": remote,
        }
        if db and (db["spec"].get("aws") or {}).get("region"):
            self.base["db_aws_region"] = db["spec"]["aws"]["region"]
        self.writer = EventWriter(deps.queue(), deps.cluster_name, self.base)

    def use(self, db_user: str, db_name: str, user_agent: str | None) -> None:
        """The db user and db name the session actually uses (the client's), before any event."""
        self.base.update(db_user=db_user, db_name=db_name)
        if user_agent:
            self.base["user_agent"] = user_agent
        self.writer.changed()

    def emit(self, name: str, code: str, **fields: Any) -> None:
        """One event now, after the session's tapped messages (``audit_tap``)."""
        self.writer.emit(name, code, self.deps.clock().timestamp(), **fields)

    def tap(self, on_malformed: Callable[[str], None]) -> Callable[[bytes], bool | None]:
        """The client→server tap (``audit_tap.SessionTap``): queues one event per SQL-carrying message.

        A malformed message is not forwarded (the tap answers False): it is audited
        (``db.session.malformed_packet``) and ``on_malformed`` ends the session with 08P01.
        """
        feed = SessionTap(self.writer).feed

        def on_data(data: bytes) -> bool | None:
            try:
                feed(data)
            except BadParameter as exc:
                self.emit(ev.DB_SESSION_MALFORMED_PACKET, ev.DB_SESSION_MALFORMED_PACKET_CODE, error=exc.message)
                on_malformed(exc.message)
                return False
            return None

        return on_data


class LiveSession:
    """One open session, and how to end it cleanly (see the module doc)."""

    def __init__(
        self, engine: PostgresEngine, session: _Session, auditor: _Auditor, splice: Splice, db: dict, route: Any
    ) -> None:
        self.engine = engine
        self.session = session
        self.auditor = auditor
        self.splice = splice
        self.db = db
        self.route = route
        self.ending: str | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def identity(self) -> Identity:
        return self.session.identity

    def end_at(self, when: datetime, message: str) -> None:
        """End the session at ``when`` (its certificate's expiry)."""
        loop = asyncio.get_running_loop()
        delay = max((when - self.engine.deps.clock()).total_seconds(), 0.0)
        self._timer = loop.call_later(delay, lambda: self.engine.spawn(self.end(message)))

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def malformed(self, problem: str) -> None:
        """The client sent a malformed message: forward nothing more, end with a protocol violation."""
        self.splice.drop_a_to_b()
        self.engine.spawn(self.end(f"invalid frontend message: {problem}", PROTOCOL_VIOLATION))

    async def end(self, message: str, sqlstate: str = ADMIN_SHUTDOWN) -> None:
        """Tell the client why with a FATAL ErrorResponse at a message boundary, then close both sides."""
        if self.ending is not None:
            return
        self.ending = message
        log.info("ending session %s of %s: %s", self.session.sid, self.identity.username, message)
        self.auditor.emit(CLIENT_DISCONNECT, CLIENT_DISCONNECT_CODE, reason=message)
        fatal = error_response(message, sqlstate)
        splice = self.splice
        splice.drop_a_to_b()
        if ends_with_ready_for_query(splice.tail_from_b):
            splice.write_to_a(fatal)
            splice.write_to_b(TERMINATE)
            splice.close()
            return
        # A query is running: cancel it, and send our FATAL where its answer ends.
        boundary: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        tail = [splice.tail_from_b]

        def at_boundary(chunk: bytes) -> bytes:
            if boundary.done():
                return b""
            tail[0] = (tail[0] + chunk)[-16:]
            if not ends_with_ready_for_query(tail[0]):
                return chunk
            boundary.set_result(None)
            cut = cut_trailing_cancel_error(chunk)
            return (chunk if cut is None else cut) + fatal

        splice.filter_b_to_a(at_boundary)
        session = self.session
        with contextlib.suppress(PteleportError):
            await send_cancel(
                session.upstream_host, session.upstream_port, session.tls, session.backend_pid, session.backend_secret
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(boundary), END_GRACE)
            splice.write_to_b(TERMINATE)
        splice.close()


class PostgresEngine:
    def __init__(self, deps: EngineDeps) -> None:
        self.deps = deps
        self._endings: set[asyncio.Task[None]] = set()
        self.identities = VerifiedIdentities()

    def _identity(self, header: dict) -> Identity:
        try:
            der = base64.b64decode(header.pop("client_cert", ""))  # not kept for the session's life
            identity = self.identities.identity(der, self.deps.user_ca(), self.deps.clock())
        except ValueError:
            raise NotLoggedIn("no valid client certificate reached the database service; log in again") from None
        if identity.route is None:
            raise AccessDenied('the certificate is not for a database; run "ptsh db login"')
        return identity

    def _revoked(self, identity: Identity) -> PteleportError | None:
        state = self.deps.access()
        reason = refusal(state, identity, self.deps.clock()) if state is not None else None
        return as_error(reason) if reason is not None else None

    async def handle(self, conn: Connection, header: dict) -> None:
        remote = str(header.get("remote", ""))
        try:
            identity = self._identity(header)
        except PteleportError as err:
            conn.write(error_response(err.message, sqlstate_for(err)))
            return
        served = self.deps.database(identity.route.service_name)  # type: ignore[union-attr]
        auditor = _Auditor(self.deps, identity, served.resource if served else None, remote)
        try:
            packet = await self._read_startup(conn)
        except BadParameter as exc:
            log.info("bad startup from %s: %s", remote, exc.message)
            conn.write(error_response(exc.message, sqlstate_for(exc)))
            return
        except (TimeoutError, ConnectionError) as exc:
            log.info("bad startup from %s: %s", remote, exc)
            return
        if isinstance(packet, CancelRequest):
            if self._revoked(identity) is None:
                await self._cancel(identity, packet)
            return
        if served is None:
            err: PteleportError = ConnectionProblem(
                f'this database service does not serve "{identity.route.service_name}" (any more); try again'  # type: ignore[union-attr]
            )
            self._refuse(conn, auditor, err)
            return
        assert isinstance(packet, StartupMessage)
        identity = self._session_identity(identity, packet)
        route = identity.route
        assert route is not None
        auditor.use(route.username, route.database, packet.params.get("application_name"))
        try:
            revoked = self._revoked(identity)
            if revoked is not None:
                raise revoked
            unaudited = self.deps.audit_refusal()
            if unaudited is not None:
                raise ConnectionProblem(unaudited)
            _check_startup(packet)
            plan = await self._authorize(identity, served.resource)
            upstream = await self._connect(identity, served, packet, plan)
        except PteleportError as err:
            self._refuse(conn, auditor, err)
            return
        host, port = split_uri(served.resource["spec"]["uri"])
        pid, secret = upstream.conn.backend_pid, upstream.conn.backend_secret
        session = _Session(auditor.sid, identity, host, port, upstream.tls, pid, secret)
        key = (route.service_name, pid, secret)
        self.deps.sessions[key] = session
        hello = [authentication_ok()]
        parameters, upstream.conn.parameters = upstream.conn.parameters, {}  # needed once, for the greeting
        hello += [parameter_status(k, v) for k, v in parameters.items()]
        hello += [backend_key_data(pid, secret), ready_for_query(b"I")]
        greeting = b"".join(hello)
        conn.write(greeting)
        db_roles = list(plan.db_roles) if plan is not None else None  # the auto user's database roles
        auditor.emit(ev.DB_SESSION_START, ev.DB_SESSION_START_CODE, success=True, db_roles=db_roles)
        server_conn, leftover = attach_stream(upstream.conn.reader, upstream.conn.writer)
        splice = Splice(conn, server_conn, b_leftover=leftover, sent_to_a=greeting)
        del hello, greeting, packet, parameters  # not kept for the session (upstream stays: its StreamWriter closes the socket when freed)
        live = LiveSession(self, session, auditor, splice, served.resource, route)
        splice.pipe_a.tap = auditor.tap(live.malformed)
        self.deps.live[session.sid] = live
        if identity.expires is not None and await self._ends_with_cert(identity):
            live.end_at(identity.expires, f"your certificate expired at {identity.expires:%Y-%m-%d %H:%M:%S} UTC; log in again")
        try:
            reason = await splice.run()
            if reason is not None and not isinstance(reason, ConnectionError):
                log.warning("session %s ended: %s", auditor.sid, reason)
        finally:
            live.cancel_timer()
            self.deps.live.pop(session.sid, None)
            if self.deps.sessions.get(key) is session:
                del self.deps.sessions[key]
            auditor.emit(ev.DB_SESSION_END, ev.DB_SESSION_END_CODE)
            if plan is not None and self.deps.auto_users is not None:
                self.spawn(self.deps.auto_users.release(plan, served.resource, served.local, route.database))

    @staticmethod
    def _session_identity(identity: Identity, startup: StartupMessage) -> Identity:
        """The identity with the route this session uses: the client's db user and name, else the certificate's."""
        route = identity.route
        assert route is not None
        db_user = startup.params.get("user") or route.username
        db_name = startup.params.get("database") or route.database
        return identity.with_route(replace(route, username=db_user, database=db_name))

    async def _ends_with_cert(self, identity: Identity) -> bool:
        roles = await self.deps.roles(list(identity.roles))
        return AccessChecker(roles, identity.traits).disconnect_expired_cert()

    async def recheck(self) -> None:
        """Check every open session again (the access snapshot or the roles changed); end the refused ones."""
        for live in list(self.deps.live.values()):
            if live.ending is not None:
                continue
            revoked = self._revoked(live.identity)
            if revoked is None:
                try:
                    await self._authorize(live.identity, live.db)
                except AccessDenied as err:
                    revoked = AccessDenied(f"your roles no longer allow this session: {err.message}")
                except PteleportError:
                    continue  # cannot tell now (auth unreachable): check again at the next change
            if revoked is not None:
                self.spawn(live.end(revoked.message))

    async def end_all(self, message: str) -> None:
        """End every open session with ``message`` (FATAL 57P01), e.g. when the service shuts down."""
        await asyncio.gather(*(live.end(message) for live in list(self.deps.live.values())), return_exceptions=True)

    def spawn(self, job: Any) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)

    async def _read_startup(self, conn: Connection) -> Any:
        for _ in range(3):
            head = await asyncio.wait_for(conn.read_exactly(8), 30)
            length = startup_packet_length(head)
            packet = parse_startup_packet(head + await asyncio.wait_for(conn.read_exactly(length - 8), 30))
            if isinstance(packet, SSLRequest | GSSENCRequest):
                conn.write(b"N")  # the hop to us is already TLS
                continue
            return packet
        raise BadParameter("too many negotiation requests")

    def _refuse(self, conn: Connection, auditor: _Auditor, err: PteleportError) -> None:
        """One ErrorResponse: the database's own when it refused, else ours; audited as TDB00W."""
        log.info("refused %s: %s", auditor.base["user"], err.message)
        auditor.emit(ev.DB_SESSION_START, ev.DB_SESSION_START_FAILURE_CODE, success=False, error=err.message)
        if isinstance(err, FromServer) and err.response:
            conn.write(err.response)
        else:
            conn.write(error_response(err.message, sqlstate_for(err)))

    async def _authorize(self, identity: Identity, db: dict) -> AutoUserPlan | None:
        """RBAC for this session; the automatic-user plan when the roles create the db user."""
        roles = await self.deps.roles(list(identity.roles))
        checker = AccessChecker(roles, identity.traits)
        route = identity.route
        assert route is not None
        plan = auto_user_plan(checker, db, identity.username, route.username)
        checker.check_db_access(
            db["metadata"]["name"], db["metadata"].get("labels", {}), route.username, route.database,
            auto_user=plan is not None,
        )
        return plan

    async def _connect(
        self, identity: Identity, served: ServedDatabase, startup: StartupMessage, plan: AutoUserPlan | None = None
    ) -> Any:
        route = identity.route
        assert route is not None
        host, port = split_uri(served.resource["spec"]["uri"])
        creds = self.deps.credentials
        tls = await creds.tls_for(served.resource, served.local)
        tls, password = await creds.secret_for(served.resource, served.local, route.username, tls)
        params = {k: v for k, v in startup.params.items() if k not in ("user", "database")}

        async def connect() -> Any:
            return await connect_upstream(
                host, port, route.username, route.database, tls, password=password, startup_params=params
            )

        if plan is None:
            return _Upstream(await connect(), tls)
        if self.deps.auto_users is None:
            raise Unsupported("this database service does not create database users; connect as an existing db user")
        conn = await self.deps.auto_users.activate(plan, served.resource, served.local, route.database, connect)
        return _Upstream(conn, tls)

    def cancel_by_key(self, pid: int, secret: bytes) -> None:
        """A CancelRequest that came without a certificate (psql's own, through the proxy's public port).

        As with PostgreSQL, knowing the backend's pid and secret is what allows it; a key that
        matches no session here is ignored (the proxy asks every agent).
        """
        for (_service, key_pid, key_secret), session in list(self.deps.sessions.items()):
            if key_pid == pid and hmac.compare_digest(key_secret, secret):
                self.spawn(self._send_cancel(session))
                return

    async def _send_cancel(self, session: _Session) -> None:
        try:
            await send_cancel(
                session.upstream_host, session.upstream_port, session.tls, session.backend_pid, session.backend_secret
            )
        except PteleportError as err:
            log.warning("cancel for session %s failed: %s", session.sid, err.message)

    async def _cancel(self, identity: Identity, request: CancelRequest) -> None:
        route = identity.route
        assert route is not None
        session = self.deps.sessions.get((route.service_name, request.pid, bytes(request.secret)))
        if session is None:
            return  # not ours: the proxy sends a cancel to every agent serving the database
        if session.identity.username != identity.username:
            log.warning("%s tried to cancel a query of %s; ignored", identity.username, session.identity.username)
            return
        await self._send_cancel(session)


def _check_startup(startup: StartupMessage) -> None:
    """Refuse what the relay cannot carry, with a sentence (a replication connection)."""
    replication = startup.params.get("replication", "").strip().lower()
    if replication and replication not in ("false", "off", "no", "0"):
        raise Unsupported(
            "replication connections are not supported through pteleport; "
            "connect for replication directly, or leave the replication parameter out"
        )


@dataclass
class _Upstream:
    conn: Any
    tls: UpstreamTLS
