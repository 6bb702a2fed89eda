"""The HTTPS JSON API under /v1/ and the invite pages: thin handlers over the auth service.

Each handler: decode the body into a model, find the caller, call the auth service,
render JSON. Errors become responses in ``api.errors`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from common import __version__
from common.errors import AccessDenied, BadParameter
from common.identity import Identity
from pteleport.api import httplog, models
from pteleport.api.errors import error_middleware
from pteleport.api.identity import caller, remote_addr
from pteleport.api.web import add_web_routes
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


_remote = remote_addr


async def _body(request: web.Request, model: type[Any]) -> Any:
    raw = await request.read()
    return model.model_validate_json(raw or b"{}")


def _auth(request: web.Request) -> AuthServer:
    return request.app[AUTH]


def _me(request: web.Request) -> Identity:
    return caller(request, _auth(request))


# --- public -------------------------------------------------------------------------------
async def ping(request: web.Request) -> web.Response:
    auth = _auth(request)
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


async def cas(request: web.Request) -> web.Response:
    auth = _auth(request)
    return web.json_response({"cluster_name": auth.cluster_name, "cas": auth.public_cas()})


async def login(request: web.Request) -> web.Response:
    req = await _body(request, models.LoginRequest)
    auth = _auth(request)
    cert, identity = await auth.login.login(
        req.user, req.password, req.otp_token, req.public_key, _ttl(req.ttl_seconds), _remote(request)
    )
    return web.json_response(
        {
            "cert": cert.decode(),
            "cluster_name": auth.cluster_name,
            "cas": auth.public_cas(),
            "username": identity.username,
        }
    )


async def invite_get(request: web.Request) -> web.Response:
    return web.json_response(_auth(request).users.invite_details(request.match_info["token"], _remote(request)))


async def invite_post(request: web.Request) -> web.Response:
    req = await _body(request, models.InviteRequest)
    user = _auth(request).users.complete_invite(
        request.match_info["token"], req.password, req.otp_token, _remote(request)
    )
    return web.json_response({"user": user})


async def join(request: web.Request) -> web.Response:
    req = await _body(request, models.JoinRequest)
    auth = _auth(request)
    cert, host_id = auth.tokens.join(
        req.token, req.role, req.host_id or None, req.hostname, req.public_key, _remote(request)
    )
    return web.json_response(
        {"cert": cert.decode(), "host_id": host_id, "cluster_name": auth.cluster_name, "cas": auth.public_cas()}
    )


# --- authenticated ------------------------------------------------------------------------------
async def whoami(request: web.Request) -> web.Response:
    return web.json_response(_auth(request).whoami(_me(request)))


async def status(request: web.Request) -> web.Response:
    me = _me(request)
    auth = _auth(request)
    auth.ctx.authorize(me, "cluster", "read")
    return web.json_response(auth.status())


async def tokens_add(request: web.Request) -> web.Response:
    req = await _body(request, models.TokenRequest)
    auth = _auth(request)
    doc = auth.tokens.add(_me(request), req.types, _ttl(req.ttl_seconds), req.value, req.labels, req.db_names)
    return web.json_response(
        {
            "token": doc,  # metadata.name is the value: the one answer that shows it
            "id": token_id(doc["metadata"]["name"]),
            "ca_pin": auth.status()["ca_pin"],
            "proxy": request.app[INFO].public_addr,
        }
    )


async def tokens_list(request: web.Request) -> web.Response:
    return web.json_response(_auth(request).tokens.list(_me(request)))


async def tokens_remove(request: web.Request) -> web.Response:
    _auth(request).tokens.remove(_me(request), request.match_info["token"])
    return web.json_response({"deleted": True})


async def resources_create(request: web.Request) -> web.Response:
    req = await _body(request, models.ResourcesRequest)
    messages = _auth(request).resources.create(_me(request), req.documents, req.force)
    return web.json_response({"messages": messages})


async def resources_get(request: web.Request) -> web.Response:
    docs = _auth(request).resources.get(_me(request), request.match_info["kind"], request.match_info.get("name"))
    return web.json_response(docs)


async def resources_remove(request: web.Request) -> web.Response:
    message = _auth(request).resources.remove(_me(request), request.match_info["kind"], request.match_info["name"])
    return web.json_response({"message": message})


async def users_add(request: web.Request) -> web.Response:
    req = await _body(request, models.UserAddRequest)
    doc = _auth(request).users.add(_me(request), req.name, req.roles, req.traits, _ttl(req.ttl_seconds))
    return web.json_response(doc)


async def users_list(request: web.Request) -> web.Response:
    return web.json_response(_auth(request).users.list(_me(request)))


async def users_update(request: web.Request) -> web.Response:
    req = await _body(request, models.UserUpdateRequest)
    doc = _auth(request).users.update(_me(request), request.match_info["name"], req.roles, req.traits)
    return web.json_response(doc)


async def users_remove(request: web.Request) -> web.Response:
    _auth(request).users.remove(_me(request), request.match_info["name"])
    return web.json_response({"deleted": True})


async def users_reset(request: web.Request) -> web.Response:
    req = await _body(request, models.ResetRequest)
    doc = _auth(request).users.reset(_me(request), request.match_info["name"], _ttl(req.ttl_seconds))
    return web.json_response(doc)


async def databases_list(request: web.Request) -> web.Response:
    return web.json_response(_auth(request).databases.list_for(_me(request)))


async def database_cert(request: web.Request) -> web.Response:
    req = await _body(request, models.DatabaseCertRequest)
    auth = _auth(request)
    me = _me(request)
    try:
        cert, route = auth.certs.db_cert(
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
    return web.json_response(
        {
            "cert": cert.decode(),
            "db_user": route.username,
            "db_name": route.database,
            "database": route.service_name,
            "protocol": route.protocol,
        }
    )


async def user_cert(request: web.Request) -> web.Response:
    """`pctl auth sign --user`: the admin, the user themself, or an impersonator signs (auth/bots.py)."""
    req = await _body(request, models.UserCertRequest)
    auth = _auth(request)
    cert, identity = auth.bots.sign_for(
        _me(request),
        req.user,
        req.public_key,
        _ttl(req.ttl_seconds),
        req.database,
        req.db_user,
        req.db_name,
        auth.databases,
    )
    return web.json_response(
        {
            "cert": cert.decode(),
            "cas": auth.public_cas(),
            "cluster_name": auth.cluster_name,
            "username": identity.username,
            "expires": identity.expires.isoformat() if identity.expires else None,
        }
    )


async def db_server_cert(request: web.Request) -> web.Response:
    req = await _body(request, models.DbServerCertRequest)
    auth = _auth(request)
    auth.ctx.authorize(_me(request), "db_server_cert", "create")
    cert = auth.certs.db_server_cert(req.hosts, req.public_key, timedelta(seconds=req.ttl_seconds))
    return web.json_response({"cert": cert.decode(), "ca": auth.public_cas()["db"]})


async def db_client_cert(request: web.Request) -> web.Response:
    req = await _body(request, models.DbClientCertRequest)
    auth = _auth(request)
    me = _me(request)
    auth.ctx.authorize(me, "db_client_cert", "create")
    if me.is_host and me.username not in auth.databases.registrations.hosts_for(req.database):
        raise AccessDenied(
            f'this database service has no registration for "{req.database}"; '
            "it gets client certificates only for the databases it serves"
        )
    cert = auth.certs.db_client_cert(req.db_user, req.public_key, req.database, me.username)
    return web.json_response({"cert": cert.decode(), "ca": auth.public_cas()["db"]})


async def heartbeat(request: web.Request) -> web.Response:
    req = await _body(request, models.HeartbeatRequest)
    refused = _auth(request).databases.heartbeat(_me(request), req.databases, req.hostname)
    return web.json_response({"ok": True, "refused": refused})


# --- locks and the access snapshot -------------------------------------------------------
async def locks_add(request: web.Request) -> web.Response:
    req = await _body(request, models.LockRequest)
    doc = _auth(request).locks.create(_me(request), req.user, req.role, req.message, _ttl(req.ttl_seconds))
    return web.json_response(doc)


async def locks_list(request: web.Request) -> web.Response:
    return web.json_response(_auth(request).locks.list(_me(request)))


async def locks_remove(request: web.Request) -> web.Response:
    _auth(request).locks.remove(_me(request), request.match_info["name"])
    return web.json_response({"deleted": True})


async def access_state(request: web.Request) -> web.Response:
    """For database services: locks and users' current roles (304 when ``If-None-Match`` is current)."""
    me = _me(request)
    auth = _auth(request)
    if not (me.is_host and me.system_role == "Db"):
        raise AccessDenied("only database services read the access snapshot")
    state = auth.access.current()
    etag = f'"{state.version}"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    return web.json_response(state.to_dict(), headers={"ETag": etag})


async def events_emit(request: web.Request) -> web.Response:
    req = await _body(request, models.EventsRequest)
    auth = _auth(request)
    auth.ctx.authorize(_me(request), "event", "create")
    # Stored in a worker thread: the same event loop relays database sessions.
    await asyncio.to_thread(auth.ctx.audit.emit_batch, req.events)
    return web.json_response({"accepted": len(req.events)})


async def events_search(request: web.Request) -> web.Response:
    """One page of events and the cursor of the next (``{"events": [...], "next": ...}``)."""
    q = request.query

    def when(name: str) -> datetime | None:
        if not q.get(name):
            return None
        try:
            when = datetime.fromisoformat(q[name].replace("Z", "+00:00"))
        except ValueError:
            raise BadParameter(f"{name} must be an RFC 3339 time, e.g. 2026-11-24T13:00:00Z") from None
        return when if when.tzinfo else when.replace(tzinfo=UTC)

    try:
        limit = int(q.get("limit", "500"))
    except ValueError:
        raise BadParameter("limit must be a number") from None
    audit, actor = _auth(request).audit, _me(request)
    query = {
        "from_time": when("from"),
        "to_time": when("to"),
        "event_types": q.getall("type") if "type" in q else None,
        "user": q.get("user"),
        "sid": q.get("sid"),
        "limit": limit,
        "order": q.get("order", "asc"),
        "after_id": q.get("after") or None,
        "cursor": q.get("cursor") or None,
    }
    # A big read and its JSON run in a worker thread: this loop also relays database sessions.
    body = await asyncio.to_thread(lambda: _page_json(audit.search(actor, **query)))
    return web.Response(text=body, content_type="application/json")


async def session_events(request: web.Request) -> web.Response:
    """One page of a session's events (``{"events": [...], "next": ...}``), in a worker thread."""
    audit, actor, sid = _auth(request).audit, _me(request), request.match_info["sid"]
    cursor = request.query.get("cursor") or None
    body = await asyncio.to_thread(lambda: _page_json(audit.session_events(actor, sid, cursor)))
    return web.Response(text=body, content_type="application/json")


def _page_json(page: Any) -> str:
    import json

    return json.dumps({"events": page.events, "next": page.next})


# --- bots (machine users) ----------------------------------------------------------------
async def bots_add(request: web.Request) -> web.Response:
    req = await _body(request, models.BotAddRequest)
    doc = _auth(request).bots.add(_me(request), req.name, req.roles, req.traits, _ttl(req.token_ttl_seconds))
    return web.json_response({**doc, "proxy": request.app[INFO].public_addr})


async def bots_list(request: web.Request) -> web.Response:
    return web.json_response(_auth(request).bots.list(_me(request)))


async def bots_remove(request: web.Request) -> web.Response:
    _auth(request).bots.remove(_me(request), request.match_info["name"])
    return web.json_response({"deleted": True})


async def bots_join(request: web.Request) -> web.Response:
    """`ptsh login --bot`: no certificate yet; the single-use token is the credential."""
    req = await _body(request, models.BotJoinRequest)
    auth = _auth(request)
    cert, identity = auth.bots.join(req.token, req.public_key, _ttl(req.ttl_seconds), _remote(request))
    return web.json_response(
        {
            "cert": cert.decode(),
            "cas": auth.public_cas(),
            "cluster_name": auth.cluster_name,
            "username": identity.username,
            "expires": identity.expires.isoformat() if identity.expires else None,
        }
    )


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
    log_filter = httplog.install()

    async def every() -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            _flush(auth, log_filter, force=False)

    task = asyncio.get_running_loop().create_task(every())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    _flush(auth, log_filter, force=True)  # a short burst before shutdown is not lost


def build_app(auth: AuthServer, info: ProxyInfo) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=8 * 1024 * 1024)
    app[AUTH] = auth
    app[INFO] = info
    app.cleanup_ctx.append(_housekeeping)
    r = app.router
    r.add_get("/webapi/ping", ping)
    r.add_get("/v1/ping", ping)
    r.add_get("/v1/cas", cas)
    r.add_post("/v1/login", login)
    r.add_get("/v1/invites/{token}", invite_get)
    r.add_post("/v1/invites/{token}", invite_post)
    r.add_post("/v1/join", join)
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
    add_web_routes(app, auth, info)
    return app
