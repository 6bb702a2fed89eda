"""The web UI served by the proxy under ``/web/``: sign in, databases, Activity, users, roles, access requests, account.

Server-rendered HTML (Jinja2 templates in ``templates/``) with a little plain JavaScript
from ``static/app.js`` (copy buttons, live Connect commands); every form is a real form
that works without it. ``handler`` reads a request and runs its page in the auth worker
threads; ``pages`` and ``activity`` are the pages; ``nav`` decides which links a user sees;
``render`` has the templates, the static files and the security headers. The web session
behind the cookie is ``pteleport.auth.websessions``. docs/web.md describes it all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from pteleport.api.webui import activity, pages, requests
from pteleport.api.webui.handler import Work, page
from pteleport.api.webui.render import SECURITY_HEADERS, static_files
from pteleport.auth.websessions import WebSessionService

if TYPE_CHECKING:
    from pteleport.api.app import ProxyInfo
    from pteleport.auth.server import AuthServer


async def _static(request: web.Request) -> web.Response:
    found = static_files().get(request.match_info["name"])
    if found is None:
        return web.Response(status=404, text="no such file", headers=SECURITY_HEADERS)
    headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=3600", "ETag": found.etag}
    if request.headers.get("If-None-Match") == found.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.body, headers={**headers, "Content-Type": found.content_type})


def add_webui_routes(app: web.Application, auth: AuthServer, info: ProxyInfo) -> WebSessionService:
    """Register the web UI's pages on ``app``; the web session service they share."""
    sessions = WebSessionService(auth.ctx, auth.login)
    static_files()  # read once, now, not on the loop's first request

    def on(work: Work, signed_in: bool = True) -> Any:
        return page(auth, info, sessions, work, signed_in=signed_in)

    r = app.router
    r.add_get("/web/static/{name}", _static)
    r.add_get("/web/login", on(pages.login_form, signed_in=False))
    r.add_post("/web/login", on(pages.login_submit, signed_in=False))
    r.add_post("/web/logout", on(pages.logout))
    r.add_get("/web", on(pages.home))
    r.add_get("/web/", on(pages.home))
    r.add_get("/web/databases", on(pages.databases))
    r.add_get("/web/databases/{name}", on(pages.database))
    r.add_get("/web/activity", on(activity.activity))
    r.add_get("/web/sessions/{sid}", on(activity.session))
    r.add_get("/web/users", on(pages.users))
    r.add_get("/web/roles", on(pages.roles))
    r.add_get("/web/account", on(pages.account))
    r.add_get("/web/requests", on(requests.requests_page))
    r.add_post("/web/requests/{id}/review", on(requests.review))
    return sessions


def add_not_found_route(app: web.Application, auth: AuthServer, info: ProxyInfo) -> None:
    """``/web/...`` that no page serves: an HTML 404 (register it after every other ``/web/`` route)."""
    app.router.add_get(
        "/web/{tail:.*}",
        page(auth, info, WebSessionService(auth.ctx, auth.login, watch=False), pages.not_found, signed_in=False),
    )
