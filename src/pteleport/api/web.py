"""The proxy's web pages: the front page (``/``), the invite and reset pages, where a user
sets a password and enrols a TOTP authenticator in a browser, and the web console
(``api.webui``, registered here).

The token in an invite page's path is the credential; lookups are limited per address by
the auth service (a refusal is a 429 page with ``Retry-After``). Lookups, the password hash
and the page itself are made in the auth worker threads (``api.offload``), off the event
loop. Every page carries the web console's security headers (``webui.render``: no caching,
no framing, a CSP that allows scripts and styles only from ``/web/static/``).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from aiohttp import web

from common.errors import BadParameter, LimitExceeded, NotFound, PteleportError, http_status_for
from pteleport.api import offload
from pteleport.api.errors import error_headers
from pteleport.api.identity import remote_addr
from pteleport.api.webui import add_not_found_route, add_webui_routes
from pteleport.api.webui.render import SECURITY_HEADERS, render

if TYPE_CHECKING:
    from pteleport.api.app import ProxyInfo
    from pteleport.auth.server import AuthServer


def _page(template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> web.Response:
    """A page of the web UI's templates, with its security headers (``webui.render``)."""
    page = render(template, status, headers, me=None, nav=[], csrf="", path="", **context)
    return web.Response(
        text=page.body, content_type="text/html", status=page.status, headers={**SECURITY_HEADERS, **page.headers}
    )


def _unusable(cluster: str, err: PteleportError) -> web.Response:
    """The link is unknown (404) or this address guessed too often (429, with Retry-After)."""
    status = http_status_for(err) if isinstance(err, NotFound | LimitExceeded) else 404
    return _page(
        "message.html",
        status,
        error_headers(err),
        cluster=cluster,
        title="Invite",
        heading="This link cannot be used",
        error=err.message,
    )


def _qr_svg(uri: str) -> str:
    import segno

    buf = io.BytesIO()
    segno.make(uri, error="m").save(buf, kind="svg", scale=5, xmldecl=False, svgns=True)
    return buf.getvalue().decode("utf-8")


def _form(auth: AuthServer, token: str, remote: str, error: str = "") -> web.Response:
    details = auth.users.invite_details(token, remote)
    uri = details.get("otpauth_uri", "")
    return _page(
        "invite.html",
        cluster=auth.cluster_name,
        action="Welcome" if details["kind"] == "invite" else "Reset your password",
        user=details["user"],
        error=error,
        otpauth_uri=uri,
        qr_svg=_qr_svg(uri) if uri else "",
    )


def _login_command(auth: AuthServer, info: ProxyInfo, user: str) -> str:
    """What to type after signing up; a self-signed web certificate needs --insecure (test clusters)."""
    insecure = " --insecure" if info.web_cert_self_signed else ""
    return f"ptsh login --proxy={auth.ctx.settings.public_addr} --user={user}{insecure}"


def _front(auth: AuthServer, info: ProxyInfo) -> web.Response:
    """``/``: what this is and where to go next (the web console's sign-in, or a terminal)."""
    return _page(
        "front.html",
        cluster=auth.cluster_name,
        proxy=auth.ctx.settings.public_addr,
        insecure=" --insecure" if info.web_cert_self_signed else "",
    )


def add_web_routes(app: web.Application, auth: AuthServer, info: ProxyInfo) -> None:
    async def front(request: web.Request) -> web.Response:
        return await offload.run(request, _front, auth, info)

    def show_page(token: str, remote: str) -> web.Response:
        try:
            return _form(auth, token, remote)
        except PteleportError as err:
            return _unusable(auth.cluster_name, err)

    async def show(request: web.Request) -> web.Response:
        return await offload.run(request, show_page, request.match_info["token"], remote_addr(request))

    async def submit(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        remote = remote_addr(request)
        form = await request.post()
        fields = {k: str(form.get(k, "")) for k in set(form.keys())}
        return await offload.run(request, submit_page, token, remote, fields)

    def submit_page(token: str, remote: str, form: dict[str, str]) -> web.Response:
        password = str(form.get("password", ""))
        try:
            if password != str(form.get("confirm", "")):
                raise BadParameter("the two passwords do not match")
            user = auth.users.complete_invite(token, password, str(form.get("otp", "")), remote)
        except (NotFound, LimitExceeded) as err:
            return _unusable(auth.cluster_name, err)  # no second lookup of a link that failed once
        except PteleportError as err:
            try:
                return _form(auth, token, remote, err.message)
            except (NotFound, LimitExceeded) as again:
                return _unusable(auth.cluster_name, again)
            except PteleportError:
                return _page(
                    "message.html", 400, cluster=auth.cluster_name, title="Invite", heading="", error=err.message
                )
        return _page(
            "invite_done.html", cluster=auth.cluster_name, user=user, login_command=_login_command(auth, info, user)
        )

    add_webui_routes(app, auth, info)
    app.router.add_get("/", front)
    for kind in ("invite", "reset"):
        app.router.add_get(f"/web/{kind}/{{token}}", show)
        app.router.add_post(f"/web/{kind}/{{token}}", submit)
    add_not_found_route(app, auth, info)
