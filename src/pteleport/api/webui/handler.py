"""One web page request: read it on the loop, do its work in the auth worker threads, answer HTML.

``page(work)`` makes an aiohttp handler. On the loop it reads only the request (path, query,
form, cookies, the ``Origin`` header and the client address); in a worker thread it finds
the signed-in user, checks the CSRF token of a POST, calls ``work(call)`` and renders the
result. Who the user is comes from the web session's certificate, checked by
``caller_from_der``, the same function that checks every API caller's certificate.

- No session cookie: a GET goes to the sign-in page (303, with ``next``). A session the
  cluster refuses (expired, locked, user deleted, roles taken away) is ended, its cookie
  cleared, and the sign-in page says why, in the sentence the CLIs print.
- A POST must carry the session's CSRF token (the sign-in form: the one in its short-lived
  cookie) and, when the browser sends ``Origin``, come from this origin; otherwise 403.
- A ``PteleportError`` from the work is an error page with its message and HTTP status.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web
from multidict import MultiDict

from common.errors import AccessDenied, NotLoggedIn, PteleportError, http_status_for
from common.identity import Identity
from pteleport.api import offload
from pteleport.api.errors import error_headers
from pteleport.api.identity import caller_from_der, remote_addr
from pteleport.api.webui import nav
from pteleport.api.webui.render import SECURITY_HEADERS, Html, Redirect, render
from pteleport.auth.websessions import WebSession, WebSessionService

if TYPE_CHECKING:
    from pteleport.api.app import ProxyInfo
    from pteleport.auth.server import AuthServer

log = logging.getLogger("pteleport.api.web")

SESSION_COOKIE = "pt_session"
LOGIN_COOKIE = "pt_login"  # the sign-in form's CSRF token, before there is a session
CSRF_REFUSED = "this form is out of date or did not come from this site; reload the page and try again"


@dataclass
class Viewer:
    """The signed-in user of a request."""

    identity: Identity
    session: WebSession
    nav: list[nav.Entry]


@dataclass
class WebCall:
    """What a page's work needs of its request, read on the loop, used in a worker thread."""

    auth: AuthServer
    info: ProxyInfo
    sessions: WebSessionService
    method: str
    path: str
    path_qs: str
    remote: str
    match: dict[str, str]
    query: MultiDict[str]
    form: dict[str, str]
    cookies: dict[str, str]
    origin: str | None
    host: str
    viewer: Viewer | None = None
    set_cookies: dict[str, tuple[str, int] | None] = field(default_factory=dict)

    def me(self) -> Identity:
        assert self.viewer is not None
        return self.viewer.identity

    def page(self, template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> Html:
        """A page in the site's frame: the navigation and the CSRF token of the signed-in user."""
        viewer = self.viewer
        return render(
            template,
            status,
            headers,
            me=viewer.identity if viewer else None,
            nav=viewer.nav if viewer else [],
            csrf=viewer.session.csrf if viewer else "",
            path=self.path,
            cluster=self.auth.cluster_name,
            **context,
        )


Work = Callable[[WebCall], Html | Redirect]


def sign_in_page(call: WebCall, error: str = "", status: int = 200, headers: dict[str, str] | None = None) -> Html:
    """The sign-in form; its CSRF token is a fresh short-lived cookie unless the browser has one."""
    token = call.cookies.get(LOGIN_COOKIE) or ""
    if len(token) < 32:
        import secrets

        token = secrets.token_urlsafe(32)
        call.set_cookies[LOGIN_COOKIE] = (token, 3600)
    next_path = safe_next(call.query.get("next") or call.form.get("next") or "")
    notice = "You have signed out." if call.query.get("signed_out") == "1" and not error else ""
    return render(
        "login.html",
        status,
        headers,
        me=None,
        nav=[],
        csrf=token,
        path=call.path,
        cluster=call.auth.cluster_name,
        error=error,
        notice=notice,
        next_path=next_path,
        user=call.form.get("user", ""),
        second_factor=call.auth.ctx.settings.second_factor != "off",
    )


def safe_next(path: str) -> str:
    """Where to go after signing in: a page of this site only (never another host)."""
    plain = all(0x20 < ord(ch) < 0x7F for ch in path)  # no spaces, controls (header splitting) or non-ASCII
    if plain and path.startswith("/web/") and "\\" not in path and "://" not in path:
        return path
    return "/web/databases"


def _same(a: str, b: str) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def _signed_in(call: WebCall) -> Html | Redirect | None:
    """Find the viewer (``call.viewer``); or the answer for a request without a usable session."""
    cookie = call.cookies.get(SESSION_COOKIE, "")
    if not cookie:
        if call.method == "GET":
            return Redirect("/web/login?next=" + quote(call.path_qs, safe="/"))
        return sign_in_page(call, "sign in first", 401)
    try:
        session = call.sessions.get(cookie)
        identity = caller_from_der(session.cert_der(), call.auth)
    except (NotLoggedIn, AccessDenied) as err:
        call.sessions.end(cookie)  # a lock, a deleted user or an expiry ends the session for good
        call.set_cookies[SESSION_COOKIE] = None
        call.query = MultiDict({"next": call.path_qs if call.method == "GET" else ""})
        return sign_in_page(call, err.message, http_status_for(err))
    call.viewer = Viewer(identity, session, nav.entries(call.auth, identity))
    return None


def _csrf_ok(call: WebCall, token_expected: str) -> bool:
    """Whether a POST carries the expected token and, if the browser says, comes from this origin."""
    if call.origin is not None and call.origin != f"https://{call.host}":
        log.info("refused a web form posted from another origin (%s) to %s", call.origin[:100], call.path)
        return False
    if not _same(call.form.get("csrf", ""), token_expected):
        log.info("refused a web form without a valid CSRF token on %s", call.path)
        return False
    return True


def render_error(call: WebCall, err: PteleportError) -> Html:
    return call.page("error.html", http_status_for(err), error_headers(err), error=err.message)


def run_work(call: WebCall, work: Work, signed_in: bool) -> Html | Redirect:
    """Everything after reading the request (blocking: runs in an auth worker thread)."""
    try:
        if signed_in:
            refused = _signed_in(call)
            if refused is not None:
                return refused
            assert call.viewer is not None
            if call.method == "POST" and not _csrf_ok(call, call.viewer.session.csrf):
                return render_error(call, AccessDenied(CSRF_REFUSED))
        elif call.method == "POST" and not _csrf_ok(call, call.cookies.get(LOGIN_COOKIE, "")):
            return sign_in_page(call, CSRF_REFUSED, 403)  # with a fresh token: signing in again works
        return work(call)
    except PteleportError as err:
        if err.detail:
            log.info("%s %s: %s (%s)", call.method, call.path, err.message, err.detail)
        return render_error(call, err)
    except Exception:
        log.exception("internal error on web page %s %s", call.method, call.path)
        return render_error(call, PteleportError("internal error; the details are in the server log"))


def to_response(result: Html | Redirect, cookies: dict[str, tuple[str, int] | None]) -> web.StreamResponse:
    cookies = {**cookies, **result.cookies}
    if isinstance(result, Redirect):
        response: web.StreamResponse = web.Response(
            status=303, headers={**SECURITY_HEADERS, "Location": result.location}
        )
    else:
        response = web.Response(
            text=result.body,
            status=result.status,
            content_type="text/html",
            headers={**SECURITY_HEADERS, **result.headers},
        )
    for name, value in cookies.items():
        if value is None:
            response.del_cookie(name, path="/", secure=True, httponly=True, samesite="Strict")
        else:
            response.set_cookie(
                name, value[0], max_age=value[1], path="/", secure=True, httponly=True, samesite="Strict"
            )
    return response


def page(
    auth: AuthServer, info: ProxyInfo, sessions: WebSessionService, work: Work, *, signed_in: bool = True
) -> Callable[[web.Request], Any]:
    """An aiohttp handler for ``work`` (see the module docstring)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        form: dict[str, str] = {}
        if request.method == "POST":
            posted = await request.post()
            form = {k: str(posted.get(k, "")) for k in set(posted.keys())}
        call = WebCall(
            auth,
            info,
            sessions,
            request.method,
            request.path,
            request.path_qs,
            remote_addr(request),
            dict(request.match_info),
            MultiDict(request.query),
            form,
            dict(request.cookies),
            request.headers.get("Origin"),
            request.host,
        )
        result = await offload.run(request, run_work, call, work, signed_in)
        return to_response(result, call.set_cookies)

    handle.__name__ = getattr(work, "__name__", "page")
    return handle
