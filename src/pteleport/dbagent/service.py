"""The database service (agent): joins, dials the proxies, heartbeats, serves sessions.

It keeps one tunnel to every running proxy (``tunnel.mesh``), having asked the configured
``proxy_server`` (one proxy, or a load balancer in front of several) which ones run.

It serves the databases of its config file plus the dynamic ``db`` resources its
``db_service.resources`` label matchers select, and re-reads resources from auth every few
seconds. Auth registers only the databases inside this service's scope (the heartbeat's
answer names the refused ones, logged once each).

A ``resources`` line on the tunnel (a proxy saw a ``db`` resource change) makes it re-read
the resources and heartbeat at once.

It keeps auth's access snapshot (locks, users' current roles; ``/v1/access-state``): the
proxy says on the tunnel's control link when it changed (``access`` line), and the agent
also asks every ``ACCESS_POLL`` seconds. Roles are re-read when the snapshot says they
changed. After each change every open session is checked again (``engine.recheck``).

The first join is retried with a backoff while the proxy cannot be reached (an agent may
start before its proxy); a join that waiting cannot fix (CA pin mismatch, untrusted
certificate, token refused or expired) stops the agent with its own sentence and exit
code (``join.JoinError``). ``reload`` applies a new config's databases, resource matchers
and audit settings; ``drain`` ends the service gently (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from common.backoff import Backoff
from common.client import AsyncClusterClient, ClusterCredentials
from common.errors import BadParameter
from common.identity import identity_from_pem
from common.relay import Connection
from common.tls import ALPN_TUNNEL, client_context, load_certs
from pteleport.config import Config, DatabaseConfig
from pteleport.dbagent.audit_shipper import AuditShipper
from pteleport.dbagent.autousers import AutoUsers
from pteleport.dbagent.credentials import Credentials, LocalSettings
from pteleport.dbagent.engine import EngineDeps, PostgresEngine, ServedDatabase
from pteleport.dbagent.join import JoinError, Unreachable, join
from pteleport.rbac.matchers import match_labels
from pteleport.rbac.revocation import AccessState
from pteleport.rbac.role import parse_role
from pteleport.tunnel.mesh import TunnelMesh
from pteleport.tunnel.protocol import read_message

log = logging.getLogger("pteleport.dbagent")
REFRESH_EVERY = 5.0  # resources re-read and heartbeat sent (auth keeps them 30 s)
ROLE_CACHE_SECONDS = 30.0  # also re-read at once when the access snapshot says roles changed
ACCESS_POLL = 5.0  # the proxy also pushes a notice on every change
ANNOUNCED_RETRY = 0.2  # seconds between asks while auth has not built an announced snapshot yet
ANNOUNCED_TRIES = 10
JOIN_FIRST_RETRY = 0.5
JOIN_MAX_RETRY = 15.0
END_WAIT = 10.0  # after end_all, how long sessions get to close and emit their last events
FLUSH_WAIT = 10.0  # how long the last audit events get to reach auth before they are spooled
SHUTTING_DOWN = "this database service is shutting down; connect again in a moment"


def static_resource(db: DatabaseConfig) -> ServedDatabase:
    labels = dict(db.static_labels)
    labels["teleport.dev/origin"] = "config"
    spec: dict[str, Any] = {"protocol": db.protocol, "uri": db.uri, "tls": {"mode": db.tls.mode}}
    if db.tls.server_name:
        spec["tls"]["server_name"] = db.tls.server_name
    if db.tls.ca_cert:
        spec["tls"]["ca_cert"] = db.tls.ca_cert
    aws = {k: v for k, v in db.aws.model_dump().items() if v}
    if aws:
        spec["aws"] = aws
    if db.admin_user is not None:
        spec["admin_user"] = db.admin_user.model_dump(exclude_none=True)
    resource = {
        "kind": "db",
        "version": "v3",
        "metadata": {"name": db.name, "description": db.description, "labels": labels},
        "spec": spec,
    }
    return ServedDatabase(resource, LocalSettings(db.tls.ca_cert_file, db.password_file))


class DatabaseAgent:
    def __init__(self, config: Config, clock: Callable[[], datetime]) -> None:
        self.config = config
        self.clock = clock
        self.static = {db.name: static_resource(db) for db in config.db_service.databases}
        self.dynamic: dict[str, ServedDatabase] = {}
        self._roles: dict[str, tuple[float, Any]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self.client: AsyncClusterClient | None = None
        self.tunnel: TunnelMesh | None = None
        self.access: AccessState | None = None
        self._access_etag: str | None = None
        self._access_wake = asyncio.Event()
        self._announced: tuple[str, int] = ("", 0)  # (version a proxy announced, asks left)
        self._refused: dict[str, str] = {}
        self.engine: PostgresEngine | None = None
        self.closing: str | None = None  # while set, new sessions are refused with it
        self._beat_now = asyncio.Event()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._proxy_sessions: dict[Any, str] = {}  # session link transport (mux stream or data link) -> the proxy's session token
        self.ready = asyncio.Event()  # joined, and serving

    def databases(self) -> dict[str, ServedDatabase]:
        return {**self.dynamic, **self.static}

    async def run(self) -> None:
        cfg = self.config
        proxy = cfg.teleport.proxy_server or cfg.teleport.auth_server
        if not proxy:
            raise BadParameter("teleport.proxy_server is required for the database service (the proxy HOST:PORT)")
        ident = await self._join(proxy)
        cas = load_certs(ident.cas)
        self.host_ca_pem = ident.cas.split(b"-----END CERTIFICATE-----", 1)[0] + b"-----END CERTIFICATE-----\n"
        self.user_cas = [c for c in cas if "user CA" in c.subject.rfc4514_string()]
        host_identity = identity_from_pem(ident.cert)
        self.server_id = host_identity.username
        self.cluster = ident.cluster
        creds = ClusterCredentials(ident.cert, ident.key, self.host_ca_pem)
        self.client = AsyncClusterClient(proxy, creds)
        self.shipper = AuditShipper(self.client, cfg.data_dir, settings=cfg.db_service.audit)
        creds_for_db = Credentials(self.client, cfg.data_dir)
        engine = PostgresEngine(
            EngineDeps(
                cluster_name=lambda: self.cluster,
                server_id=self.server_id,
                hostname=cfg.teleport.nodename or socket.gethostname(),
                user_ca=lambda: self.user_cas,
                database=lambda name: self.databases().get(name),
                roles=self.roles,
                credentials=creds_for_db,
                emit_line=self.shipper.emit_line,
                clock=self.clock,
                access=lambda: self.access,
                audit_refusal=lambda: self.closing or self.shipper.refusal(),
                auto_users=AutoUsers(creds_for_db),
            )
        )
        self.engine = engine

        async def on_session(conn: Connection) -> None:
            header = await asyncio.wait_for(read_message(conn), 30)
            if header.get("type") == "session":
                token = header.get("proxy_session")
                if token:
                    self._proxy_sessions[conn.transport] = str(token)
                try:
                    await engine.handle(conn, header)
                finally:
                    self._proxy_sessions.pop(conn.transport, None)

        host, _, port = proxy.rpartition(":")
        ctx = client_context(cas=self.host_ca_pem, cert=ident.cert, key=ident.key, alpn=[ALPN_TUNNEL])
        self.tunnel = TunnelMesh(
            host.strip("[]"),
            int(port),
            ctx,
            cfg.teleport.nodename,
            lambda: sorted(self.databases()),
            on_session,
            on_control=self._on_control,
        )
        await self._refresh_dynamic()
        with contextlib.suppress(Exception):
            await self._fetch_access()
        loop = asyncio.get_running_loop()
        self._heartbeat_task = loop.create_task(self._heartbeats())
        self._tasks = [
            loop.create_task(self.tunnel.run()),
            loop.create_task(self.shipper.run()),
            self._heartbeat_task,
            loop.create_task(self._watch_access()),
        ]
        log.info("database service %s serving %s", self.server_id, sorted(self.databases()) or "nothing yet")
        self.ready.set()
        await asyncio.gather(*self._tasks)

    async def _join(self, proxy: str, backoff: Backoff | None = None) -> Any:
        """Join (or load the identity); try again, with a backoff, for as long as waiting may help.

        Every failed try logs its cause; a cause that waiting cannot fix raises JoinError.
        """
        cfg = self.config
        backoff = backoff or Backoff(JOIN_FIRST_RETRY, JOIN_MAX_RETRY)
        while True:
            try:
                method = cfg.teleport.join_params.join_method if cfg.teleport.join_params else "token"
                ident = await asyncio.to_thread(
                    join, cfg.data_dir, proxy, cfg.teleport.token, cfg.teleport.ca_pins, cfg.teleport.nodename, method
                )
            except Unreachable as exc:
                delay = backoff.next_delay()
                if exc.retry_after:
                    delay = max(delay, float(exc.retry_after))
                log.warning("could not join the cluster (try %d): %s; trying again in %.1fs",
                            backoff.attempts, exc.message, delay)
                await backoff.sleep(delay)
                continue
            except JoinError as exc:
                log.error("could not join the cluster: %s", exc.message)
                raise
            if backoff.attempts:
                log.info("joined after %d failed tries", backoff.attempts)
            return ident

    # --- ending ---------------------------------------------------------------------------------
    async def drain(self, timeout: float, message: str) -> None:
        """Refuse new sessions, give open ones ``timeout`` seconds, end the rest with ``message``
        (FATAL 57P01), and deliver (or spool) every audit event before returning."""
        self.closing = SHUTTING_DOWN
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()  # no more registrations: the proxies stop routing here
        if self.client is not None:
            try:
                await asyncio.wait_for(
                    self.client.post("/v1/agents/heartbeat", {"hostname": self.config.teleport.nodename,
                                                              "databases": []}),
                    5,
                )
            except Exception as exc:
                log.warning("could not withdraw this service's registrations: %s", exc)
        engine = self.engine
        if engine is None:
            return
        open_now = len(engine.deps.live)
        if open_now:
            log.info("draining: %d open session(s) get up to %.0fs to finish", open_now, timeout)
            await _until(lambda: not engine.deps.live, timeout)
        if engine.deps.live:
            log.info("ending %d open session(s): %s", len(engine.deps.live), message)
            await engine.end_all(message)
            await _until(lambda: not engine.deps.live, END_WAIT)
        await self._deliver_audit()

    async def _deliver_audit(self) -> None:
        if self.client is None:
            return
        try:
            await asyncio.wait_for(self.shipper.flush(), FLUSH_WAIT)
        except Exception as exc:
            log.warning("the last audit events could not reach auth (%s); they wait in the spool", exc)
            self.shipper.spill()  # delivered at the next start

    def end_proxy_sessions(self, tokens: set[str], message: str) -> None:
        """End the sessions that came through a proxy that is shutting down (its ``end_sessions`` line)."""
        if self.engine is None:
            return
        for live in list(self.engine.deps.live.values()):
            if self._proxy_sessions.get(live.splice.ta) in tokens:
                self.engine.spawn(live.end(message))

    def reload(self, config: Config) -> None:
        """Apply a config whose db_service databases, resource matchers or audit settings changed.

        Open sessions of a database no longer served keep running; new ones are refused.
        """
        self.config = config
        self.static = {db.name: static_resource(db) for db in config.db_service.databases}
        if getattr(self, "shipper", None) is not None:
            self.shipper.spool_max_bytes = config.db_service.audit.spool_max_bytes
            self.shipper.refuse_unaudited = config.db_service.audit.unaudited_sessions == "refuse"
        if self.tunnel is not None:
            self.tunnel.announce()
        self._beat_now.set()  # register the new set of databases now

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.tunnel is not None:
            await self.tunnel.stop()
        if self.client is not None:
            try:
                await asyncio.wait_for(self.shipper.flush(), 5)
            except Exception:
                self.shipper.spill()  # delivered at the next start
            with contextlib.suppress(Exception):
                await self.client.post(
                    "/v1/agents/heartbeat", {"hostname": self.config.teleport.nodename, "databases": []}
                )
            await self.client.aclose()

    # --- the access snapshot ------------------------------------------------------------------
    def _on_control(self, message: dict) -> None:
        if message.get("type") == "access" and message.get("version") != (self.access and self.access.version):
            self._announced = (str(message.get("version")), ANNOUNCED_TRIES)
            self._access_wake.set()
        elif message.get("type") == "resources":
            self._beat_now.set()  # a `db` resource changed: re-read them and register now
        elif message.get("type") == "cancel_key" and self.engine is not None:
            try:
                pid, secret = int(message["pid"]), bytes.fromhex(str(message["secret"]))
            except (KeyError, TypeError, ValueError):
                return
            self.engine.cancel_by_key(pid, secret)
        elif message.get("type") == "end_sessions":
            tokens = {str(t) for t in message.get("sessions") or []}
            self.end_proxy_sessions(tokens, str(message.get("message") or "the server is shutting down"))

    async def _fetch_access(self) -> bool:
        """Fetch the snapshot if it changed; True when it did."""
        assert self.client is not None
        body, etag = await self.client.get_if_changed("/v1/access-state", self._access_etag)
        if body is None:
            return False
        new = AccessState.from_dict(body)
        if self.access is not None and new.roles_version != self.access.roles_version:
            self._roles = {}  # role definitions changed: read them again
        self.access, self._access_etag = new, etag
        return True

    async def _watch_access(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._access_wake.wait(), ACCESS_POLL)
            self._access_wake.clear()
            try:
                changed = await self._fetch_access()
            except Exception as exc:
                log.warning("could not read locks and users from auth: %s", exc)
                continue
            if changed and self.engine is not None:
                await self.engine.recheck()
            self._chase_announced()

    def _chase_announced(self) -> None:
        """A proxy announced a snapshot the auth process we asked has not built yet (another
        process, still rebuilding on the change feed): ask again shortly, a few times."""
        version, tries = self._announced
        if not version or (self.access is not None and self.access.version == version) or tries <= 0:
            self._announced = ("", 0)
            return
        self._announced = (version, tries - 1)
        asyncio.get_running_loop().call_later(ANNOUNCED_RETRY, self._access_wake.set)

    async def roles(self, names: list[str]) -> list[Any]:
        """Role definitions: cached until the access snapshot says roles changed (and at most 30 s)."""
        now = time.monotonic()
        missing = [n for n in names if n not in self._roles or now - self._roles[n][0] > ROLE_CACHE_SECONDS]
        if missing:
            assert self.client is not None
            docs = await self.client.get("/v1/resources/role")
            fresh = {d["metadata"]["name"]: parse_role(d) for d in docs}
            self._roles = {name: (now, role) for name, role in fresh.items()}
        return [self._roles[n][1] for n in names if n in self._roles]

    async def _refresh_dynamic(self) -> None:
        matchers = self.config.db_service.resources
        if not matchers or self.client is None:
            return
        try:
            docs = await self.client.get("/v1/resources/db")
        except Exception as exc:
            log.warning("could not read database resources: %s", exc)
            return
        served = {}
        for doc in docs:
            labels = doc["metadata"].get("labels", {})
            for matcher in matchers:
                selector = {k: v if isinstance(v, list) else [v] for k, v in matcher.labels.items()}
                if match_labels(selector, labels):
                    served[doc["metadata"]["name"]] = ServedDatabase(doc, LocalSettings())
                    break
        changed = sorted(served) != sorted(self.dynamic)
        self.dynamic = served
        if changed and self.tunnel is not None:
            self.tunnel.announce()

    async def _heartbeats(self) -> None:
        assert self.client is not None
        while True:
            await self._refresh_dynamic()
            try:
                answer = await self.client.post(
                    "/v1/agents/heartbeat",
                    {
                        "hostname": self.config.teleport.nodename,
                        "databases": [d.resource for d in self.databases().values()],
                    },
                )
            except Exception as exc:
                log.warning("heartbeat to auth failed: %s", exc)
            else:
                self._note_refusals(answer.get("refused") or [])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), REFRESH_EVERY)
            self._beat_now.clear()

    def _note_refusals(self, refused: list[dict]) -> None:
        """Log each database auth refuses to register, once per reason."""
        now = {str(r.get("name")): str(r.get("reason")) for r in refused}
        for name, reason in now.items():
            if self._refused.get(name) != reason:
                log.warning("auth refused to register database %s: %s", name, reason)
        for name in set(self._refused) - set(now):
            log.info("database %s is registered now", name)
        self._refused = now


async def _until(done: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    """Poll ``done`` until it is true (True) or ``timeout`` seconds passed (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(every)
    return True
