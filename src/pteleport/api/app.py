"""The HTTPS JSON API under /v1/ and the invite pages: thin handlers over the auth service.

Each handler reads the request on the event loop and hands the rest to the auth worker
threads (``api.offload``): decode the body into a model, find the caller, call the auth
service, encode the JSON. The loop, which also relays database sessions, only moves bytes.
Errors become responses in ``api.errors`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from multidict import MultiDict

from common import __version__
from common.client import NDJSON
from common.errors import AccessDenied, BadParameter
from common.identity import Identity, identity_from_pem
from pteleport.api import httplog, models, offload
from pteleport.api.errors import error_middleware
from pteleport.api.identity import caller_from_der, peer_der, remote_addr
from pteleport.api.offload import Reply
from pteleport.api.web import add_web_routes
from pteleport.audit.records import split_lines
from pteleport.auth.server import AuthServer
from pteleport.auth.tokens import token_id

log = logging.getLogger("pteleport.api")
# How often held-back audit failures and suppressed log lines are written out.
FLUSH_EVERY = 5.0


@dataclass
class ProxyInfo:
    public_addr: str
    postgres_public_addr: str | None = None
    web_cert_self_signed: bool = False  # clients then need --insecure (or --ca-file) for the first login


AUTH = web.AppKey("auth", AuthServer)
INFO = web.AppKey("info", ProxyInfo)


def _ttl(seconds: int | None) -> timedelta | None:
    return timedelta(seconds=seconds) if seconds else None


@dataclass
class Call:
    """What a handler's work needs of its request, read on the loop, used in a worker thread."""

    auth: AuthServer
    info: ProxyInfo
    cert_der: bytes | None
    remote: str
    match: dict[str, str]
    query: MultiDict[str]
    headers: dict[str, str]

    @classmethod
    def of(cls, request: web.Request, headers: dict[str, str] | None = None) -> Call:
        """The Call of ``request`` (read on the loop): its app's auth, peer, address, path and query."""
        return cls(
            request.app[AUTH],
            request.app[INFO],
            peer_der(request),
            remote_addr(request),
            dict(request.match_info),
            MultiDict(request.query),
            headers or {},
        )

    def me(self) -> Identity:
        """The verified caller (blocking: may read storage)."""
        return caller_from_der(self.cert_der, self.auth)


Work = Callable[[Call, Any], Any]
RAW = bytes
"""``route(RAW)``: the handler gets the request's body as it came (bytes)."""


def route(
    model: type[Any] | None = None, *, background: bool = False
) -> Callable[[Work], Callable[[web.Request], Any]]:
    """A handler from ``work(call, body)``: ``body`` is ``model`` parsed from the request (or None).

    ``background``: the work runs in the agents' pool (``offload.BACKGROUND``), not the users'.
    """
    pool = offload.BACKGROUND if background else offload.POOL

    def wrap(work: Work) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            raw = await request.read() if model is not None else b""
            call = Call.of(
                request,
                {"If-None-Match": request.headers.get("If-None-Match", ""), "Content-Type": request.content_type},
            )

            def job() -> tuple[bytes | None, int, dict[str, str]]:
                if model is RAW:
                    body: Any = raw
                else:
                    body = model.model_validate_json(raw or b"{}") if model is not None else None
                return offload.encode(work(call, body))

            return offload.response(await offload.run(request, job, pool=pool))

        handle.__name__ = work.__name__
        handle.__doc__ = work.__doc__
        return handle

    return wrap


# --- public -------------------------------------------------------------------------------
async def ping(request: web.Request) -> web.Response:
    """Readiness and discovery: memory only, answered on the loop."""
    auth = request.app[AUTH]
    info = request.app[INFO]
    return web.json_response(
        {
            "cluster_name": auth.cluster_name,
            "server_version": __version__,
            "min_client_version": "0.1.0",
            "auth": {"type": "local", "second_factor": auth.ctx.settings.second_factor, "local": {"name": ""}},
            "proxy": {
                "tls_routing_enabled": True,
                "ssh": {"public_addr": info.public_addr, "web_listen_addr": info.public_addr},
                "db": {"postgres_public_addr": info.postgres_public_addr or ""},
                "web_cert_self_signed": info.web_cert_self_signed,
            },
        }
    )


@route()
def cas(c: Call, _: None) -> Any:
    return {"cluster_name": c.auth.cluster_name, "cas": c.auth.public_cas()}


@route(models.LoginRequest)
def login(c: Call, req: models.LoginRequest) -> Any:
    auth = c.auth
    cert, identity = auth.login.login(
        req.user, req.password, req.otp_token, req.public_key, _ttl(req.ttl_seconds), c.remote
    )
    return {
        "cert": cert.decode(),
        "cluster_name": auth.cluster_name,
        "cas": auth.public_cas(),
        "username": identity.username,
    }


@route()
def invite_get(c: Call, _: None) -> Any:
    return c.auth.users.invite_details(c.match["token"], c.remote)


@route(models.InviteRequest)
def invite_post(c: Call, req: models.InviteRequest) -> Any:
    user = c.auth.users.complete_invite(c.match["token"], req.password, req.otp_token, c.remote)
    return {"user": user}


@route(models.JoinRequest)
def join(c: Call, req: models.JoinRequest) -> Any:
    auth = c.auth
    cert, host_id = auth.tokens.join(req.token, req.role, req.host_id or None, req.hostname, req.public_key, c.remote)
    return {"cert": cert.decode(), "host_id": host_id, "cluster_name": auth.cluster_name, "cas": auth.public_cas()}


@route()
def join_iam_challenge(c: Call, _: None) -> Any:
    return {"challenge": c.auth.iam_join.challenge(c.remote)}


@route(models.IamJoinRequest)
def join_iam(c: Call, req: models.IamJoinRequest) -> Any:
    auth = c.auth
    cert, host_id = auth.iam_join.join(
        req.token, req.role, req.hostname, req.public_key, req.challenge, req.request, c.remote
    )
    return {"cert": cert.decode(), "host_id": host_id, "cluster_name": auth.cluster_name, "cas": auth.public_cas()}


# --- authenticated ------------------------------------------------------------------------------
@route()
def whoami(c: Call, _: None) -> Any:
    return c.auth.whoami(c.me())


@route()
def status(c: Call, _: None) -> Any:
    c.auth.ctx.authorize(c.me(), "cluster", "read")
    return c.auth.status()


@route(models.TokenRequest)
def tokens_add(c: Call, req: models.TokenRequest) -> Any:
    auth = c.auth
    doc = auth.tokens.add(
        c.me(), req.types, _ttl(req.ttl_seconds), req.value, req.labels, req.db_names, req.join_method, req.allow
    )
    return {
        "token": doc,  # metadata.name is the value: the one answer that shows it
        "id": doc["metadata"]["name"] if doc["spec"].get("join_method") == "iam" else token_id(doc["metadata"]["name"]),
        "ca_pin": auth.status()["ca_pin"],
        "proxy": c.info.public_addr,
    }


@route()
def tokens_list(c: Call, _: None) -> Any:
    return c.auth.tokens.list(c.me())


@route()
def tokens_remove(c: Call, _: None) -> Any:
    c.auth.tokens.remove(c.me(), c.match["token"])
    return {"deleted": True}


@route(models.ResourcesRequest)
def resources_create(c: Call, req: models.ResourcesRequest) -> Any:
    return {"messages": c.auth.resources.create(c.me(), req.documents, req.force)}


@route()
def resources_get(c: Call, _: None) -> Any:
    return c.auth.resources.get(c.me(), c.match["kind"], c.match.get("name"))


@route()
def resources_remove(c: Call, _: None) -> Any:
    return {"message": c.auth.resources.remove(c.me(), c.match["kind"], c.match["name"])}


@route(models.UserAddRequest)
def users_add(c: Call, req: models.UserAddRequest) -> Any:
    return c.auth.users.add(c.me(), req.name, req.roles, req.traits, _ttl(req.ttl_seconds))


@route()
def users_list(c: Call, _: None) -> Any:
    return c.auth.users.list(c.me())


@route(models.UserUpdateRequest)
def users_update(c: Call, req: models.UserUpdateRequest) -> Any:
    return c.auth.users.update(c.me(), c.match["name"], req.roles, req.traits)


@route()
def users_remove(c: Call, _: None) -> Any:
    c.auth.users.remove(c.me(), c.match["name"])
    return {"deleted": True}


@route(models.ResetRequest)
def users_reset(c: Call, req: models.ResetRequest) -> Any:
    return c.auth.users.reset(c.me(), c.match["name"], _ttl(req.ttl_seconds))


@route()
def databases_list(c: Call, _: None) -> Any:
    return c.auth.databases.list_for(c.me())


@route(models.DatabaseCertRequest)
def database_cert(c: Call, req: models.DatabaseCertRequest) -> Any:
    auth = c.auth
    me = c.me()
    try:
        cert, route_ = auth.certs.db_cert(
            me, req.public_key, req.database, req.db_user, req.db_name, _ttl(req.ttl_seconds), auth.databases
        )
    except AccessDenied as exc:
        auth.ctx.emit(
            "db.session.start",
            "TDB00W",
            user=me.username,
            db_service=req.database,
            db_user=req.db_user,
            db_name=req.db_name,
            success=False,
            error=exc.message,
        )
        raise
    expires = identity_from_pem(cert).expires  # (so that a client needs no X.509 parser to know it)
    return {
        "cert": cert.decode(),
        "db_user": route_.username,
        "db_name": route_.database,
        "database": route_.service_name,
        "protocol": route_.protocol,
        "expires": expires.isoformat() if expires else None,
    }


@route(models.UserCertRequest)
def user_cert(c: Call, req: models.UserCertRequest) -> Any:
    """`pctl auth sign --user`: the admin, the user themself, or an impersonator signs (auth/bots.py)."""
    auth = c.auth
    cert, identity = auth.bots.sign_for(
        c.me(),
        req.user,
        req.public_key,
        _ttl(req.ttl_seconds),
        req.database,
        req.db_user,
        req.db_name,
        auth.databases,
    )
    return {
        "cert": cert.decode(),
        "cas": auth.public_cas(),
        "cluster_name": auth.cluster_name,
        "username": identity.username,
        "expires": identity.expires.isoformat() if identity.expires else None,
    }


@route(models.DbServerCertRequest)
def db_server_cert(c: Call, req: models.DbServerCertRequest) -> Any:
    auth = c.auth
    auth.ctx.authorize(c.me(), "db_server_cert", "create")
    cert = auth.certs.db_server_cert(req.hosts, req.public_key, timedelta(seconds=req.ttl_seconds))
    return {"cert": cert.decode(), "ca": auth.public_cas()["db"]}


@route(models.DbClientCertRequest)
def db_client_cert(c: Call, req: models.DbClientCertRequest) -> Any:
    auth = c.auth
    me = c.me()
    auth.ctx.authorize(me, "db_client_cert", "create")
    if me.is_host and me.username not in auth.databases.registrations.hosts_for(req.database):
        raise AccessDenied(
            f'this database service has no registration for "{req.database}"; '
            "it gets client certificates only for the databases it serves"
        )
    cert = auth.certs.db_client_cert(req.db_user, req.public_key, req.database, me.username)
    return {"cert": cert.decode(), "ca": auth.public_cas()["db"]}


@route(models.HeartbeatRequest, background=True)
def heartbeat(c: Call, req: models.HeartbeatRequest) -> Any:
    refused = c.auth.databases.heartbeat(c.me(), req.databases, req.hostname)
    return {"ok": True, "refused": refused}


# --- locks and the access snapshot -------------------------------------------------------
@route(models.LockRequest)
def locks_add(c: Call, req: models.LockRequest) -> Any:
    return c.auth.locks.create(c.me(), req.user, req.role, req.message, _ttl(req.ttl_seconds))


@route()
def locks_list(c: Call, _: None) -> Any:
    return c.auth.locks.list(c.me())


@route()
def locks_remove(c: Call, _: None) -> Any:
    c.auth.locks.remove(c.me(), c.match["name"])
    return {"deleted": True}


@route()
def access_state(c: Call, _: None) -> Any:
    """For database services: locks and users' current roles (304 when ``If-None-Match`` is current)."""
    me = c.me()
    if not (me.is_host and me.system_role == "Db"):
        raise AccessDenied("only database services read the access snapshot")
    state = c.auth.access.current()
    etag = f'"{state.version}"'
    if c.headers.get("If-None-Match") == etag:
        return Reply(None, 304, {"ETag": etag})
    return Reply(state.to_dict(), 200, {"ETag": etag})


@route(RAW)
def events_emit(c: Call, raw: bytes) -> Any:
    """Agents' event batches: NDJSON lines, each stored as sent after one parse (or ``{"events": [...]}``)."""
    auth = c.auth
    auth.ctx.authorize(c.me(), "event", "create")
    if c.headers.get("Content-Type") == NDJSON:
        events: list[Any] = split_lines(raw)
    else:
        events = models.EventsRequest.model_validate_json(raw or b"{}").events
    auth.ctx.audit.emit_batch(events)
    return {"accepted": len(events)}


def _when(q: MultiDict[str], name: str) -> datetime | None:
    if not q.get(name):
        return None
    try:
        when = datetime.fromisoformat(q[name].replace("Z", "+00:00"))
    except ValueError:
        raise BadParameter(f"{name} must be an RFC 3339 time, e.g. 2026-11-24T13:00:00Z") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@route()
def events_search(c: Call, _: None) -> Any:
    """One page of events and the cursor of the next (``{"events": [...], "next": ...}``)."""
    q = c.query
    try:
        limit = int(q.get("limit", "500"))
    except ValueError:
        raise BadParameter("limit must be a number") from None
    page = c.auth.audit.search(
        c.me(),
        from_time=_when(q, "from"),
        to_time=_when(q, "to"),
        event_types=q.getall("type") if "type" in q else None,
        user=q.get("user"),
        sid=q.get("sid"),
        limit=limit,
        order=q.get("order", "asc"),
        after_id=q.get("after") or None,
        cursor=q.get("cursor") or None,
    )
    return {"events": page.events, "next": page.next}


@route()
def session_events(c: Call, _: None) -> Any:
    """One page of a session's events (``{"events": [...], "next": ...}``)."""
    page = c.auth.audit.session_events(c.me(), c.match["sid"], c.query.get("cursor") or None)
    return {"events": page.events, "next": page.next}


# --- bots (machine users) ----------------------------------------------------------------
@route(models.BotAddRequest)
def bots_add(c: Call, req: models.BotAddRequest) -> Any:
    doc = c.auth.bots.add(c.me(), req.name, req.roles, req.traits, _ttl(req.token_ttl_seconds))
    return {**doc, "proxy": c.info.public_addr}


@route()
def bots_list(c: Call, _: None) -> Any:
    return c.auth.bots.list(c.me())


@route()
def bots_remove(c: Call, _: None) -> Any:
    c.auth.bots.remove(c.me(), c.match["name"])
    return {"deleted": True}


@route(models.BotJoinRequest)
def bots_join(c: Call, req: models.BotJoinRequest) -> Any:
    """`ptsh login --bot`: no certificate yet; the single-use token is the credential."""
    auth = c.auth
    cert, identity = auth.bots.join(req.token, req.public_key, _ttl(req.ttl_seconds), c.remote)
    return {
        "cert": cert.decode(),
        "cas": auth.public_cas(),
        "cluster_name": auth.cluster_name,
        "username": identity.username,
        "expires": identity.expires.isoformat() if identity.expires else None,
    }


def _flush(auth: AuthServer, log_filter: httplog.MalformedRequestFilter, force: bool) -> None:
    """Write out the coalesced failure events and the count of suppressed log lines."""
    for guard in (auth.tokens.guard, auth.bots.guard, auth.users.guard):
        try:
            guard.flush(force)
        except Exception:
            log.exception("writing held-back failure events to the audit log failed")
    log_filter.flush()


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    auth = app[AUTH]
    pool = app[offload.POOL]
    log_filter = httplog.install()
    loop = asyncio.get_running_loop()

    async def every() -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            await loop.run_in_executor(pool, _flush, auth, log_filter, False)

    task = loop.create_task(every())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # A short burst before shutdown is not lost; then the workers finish what they hold.
    await loop.run_in_executor(pool, _flush, auth, log_filter, True)
    await loop.run_in_executor(None, pool.shutdown)
    await loop.run_in_executor(None, app[offload.BACKGROUND].shutdown)


def build_app(auth: AuthServer, info: ProxyInfo, workers: ThreadPoolExecutor | None = None) -> web.Application:
    """The API over ``auth``; its work runs in ``workers`` (a new pool of its own if None)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=8 * 1024 * 1024)
    app[AUTH] = auth
    app[INFO] = info
    app[offload.POOL] = workers or offload.new_pool()
    app[offload.BACKGROUND] = offload.new_pool(offload.BACKGROUND_WORKERS, "background")
    app.cleanup_ctx.append(_housekeeping)
    r = app.router
    r.add_get("/webapi/ping", ping)
    r.add_get("/v1/ping", ping)
    r.add_get("/v1/cas", cas)
    r.add_post("/v1/login", login)
    r.add_get("/v1/invites/{token}", invite_get)
    r.add_post("/v1/invites/{token}", invite_post)
    r.add_post("/v1/join", join)
    r.add_post("/v1/join/iam/challenge", join_iam_challenge)
    r.add_post("/v1/join/iam", join_iam)
    r.add_get("/v1/whoami", whoami)
    r.add_get("/v1/status", status)
    r.add_post("/v1/tokens", tokens_add)
    r.add_get("/v1/tokens", tokens_list)
    r.add_delete("/v1/tokens/{token}", tokens_remove)
    r.add_post("/v1/resources", resources_create)
    r.add_get("/v1/resources/{kind}", resources_get)
    r.add_get("/v1/resources/{kind}/{name}", resources_get)
    r.add_delete("/v1/resources/{kind}/{name}", resources_remove)
    r.add_post("/v1/users", users_add)
    r.add_get("/v1/users", users_list)
    r.add_put("/v1/users/{name}", users_update)
    r.add_delete("/v1/users/{name}", users_remove)
    r.add_post("/v1/users/{name}/reset", users_reset)
    r.add_get("/v1/databases", databases_list)
    r.add_post("/v1/certs/database", database_cert)
    r.add_post("/v1/certs/user", user_cert)
    r.add_post("/v1/certs/db-server", db_server_cert)
    r.add_post("/v1/certs/db-client", db_client_cert)
    r.add_post("/v1/agents/heartbeat", heartbeat)
    r.add_get("/v1/access-state", access_state)
    r.add_post("/v1/locks", locks_add)
    r.add_get("/v1/locks", locks_list)
    r.add_delete("/v1/locks/{name}", locks_remove)
    r.add_post("/v1/events", events_emit)
    r.add_get("/v1/events", events_search)
    r.add_get("/v1/sessions/{sid}/events", session_events)
    r.add_post("/v1/bots/join", bots_join)
    r.add_post("/v1/bots", bots_add)
    r.add_get("/v1/bots", bots_list)
    r.add_delete("/v1/bots/{name}", bots_remove)
    from pteleport.api.requests import add_request_routes

    add_request_routes(r)
    add_web_routes(app, auth, info)
    return app
