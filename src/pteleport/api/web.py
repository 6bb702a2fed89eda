"""The proxy's web pages: the front page (``/``) and the invite and reset pages, where a user
sets a password and enrols a TOTP authenticator in a browser.

The token in an invite page's path is the credential; lookups are limited per address by
the auth service (a refusal is a 429 page with ``Retry-After``). Lookups, the password hash
and the page itself are made in the auth worker threads (``api.offload``), off the event
loop. Every page carries the same security headers (no caching, no referrer, a CSP that
allows nothing but its own inline style, a QR code image and posting the form to itself).
"""

from __future__ import annotations

import html
import io
from typing import TYPE_CHECKING

from aiohttp import web

from common.errors import BadParameter, LimitExceeded, NotFound, PteleportError, http_status_for
from pteleport.api import offload
from pteleport.api.errors import error_headers
from pteleport.api.identity import remote_addr

if TYPE_CHECKING:
    from pteleport.api.app import ProxyInfo
    from pteleport.auth.server import AuthServer

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pteleport: {title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; max-width: 32rem; margin: 3rem auto; padding: 0 1rem; color: #1b1f24; }}
h1 {{ font-size: 1.4rem; }} label {{ display: block; margin: .8rem 0 .2rem; }}
input {{ width: 100%; padding: .5rem; font-size: 1rem; box-sizing: border-box; }}
button {{ margin-top: 1.2rem; padding: .6rem 1.2rem; font-size: 1rem; }}
code {{ word-break: break-all; font-size: .8rem; }} .error {{ color: #b42318; }} .ok {{ color: #067647; }}
</style></head><body>{body}</body></html>"""


def _page(title: str, body: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=_PAGE.format(title=html.escape(title), body=body),
        content_type="text/html",
        status=status,
        headers={
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'",
            **(headers or {}),
        },
    )


def _unusable(err: PteleportError) -> web.Response:
    """The link is unknown (404) or this address guessed too often (429, with Retry-After)."""
    status = http_status_for(err) if isinstance(err, NotFound | LimitExceeded) else 404
    return _page(
        "Invite",
        f'<h1>This link cannot be used</h1><p class="error">{html.escape(err.message)}</p>',
        status,
        error_headers(err),
    )


def _qr_svg(uri: str) -> str:
    import segno

    buf = io.BytesIO()
    segno.make(uri, error="m").save(buf, kind="svg", scale=5, xmldecl=False, svgns=True)
    return buf.getvalue().decode("utf-8")


def _form(auth: AuthServer, token: str, remote: str, error: str = "") -> web.Response:
    details = auth.users.invite_details(token, remote)
    user = html.escape(details["user"])
    action = "Welcome" if details["kind"] == "invite" else "Reset your password"
    parts = [f"<h1>{action}, {user}</h1>"]
    if error:
        parts.append(f'<p class="error">{html.escape(error)}</p>')
    if "otpauth_uri" in details:
        parts.append("<p>Scan this code with your authenticator app (or enter the link below by hand):</p>")
        parts.append(_qr_svg(details["otpauth_uri"]))
        parts.append(f"<p><code>{html.escape(details['otpauth_uri'])}</code></p>")
    parts.append('<form method="post">')
    parts.append(
        '<label for="password">New password</label>'
        '<input id="password" name="password" type="password" autocomplete="new-password" required minlength="8">'
    )
    parts.append(
        '<label for="confirm">Confirm password</label>'
        '<input id="confirm" name="confirm" type="password" autocomplete="new-password" required minlength="8">'
    )
    if "otpauth_uri" in details:
        parts.append(
            '<label for="otp">Authenticator code</label>'
            '<input id="otp" name="otp" inputmode="numeric" autocomplete="one-time-code" required pattern="[0-9]{6}">'
        )
    parts.append('<button type="submit">Set password</button></form>')
    return _page(action, "".join(parts))


def _login_command(auth: AuthServer, info: ProxyInfo, user: str) -> str:
    """What to type after signing up; a self-signed web certificate needs --insecure (test clusters)."""
    insecure = " --insecure" if info.web_cert_self_signed else ""
    return f"ptsh login --proxy={auth.ctx.settings.public_addr} --user={user}{insecure}"


def _front(auth: AuthServer, info: ProxyInfo) -> web.Response:
    """``/``: what this is and where to go next (the web UI's front door, once there is one)."""
    name = html.escape(auth.cluster_name)
    proxy = html.escape(auth.ctx.settings.public_addr)
    insecure = " --insecure" if info.web_cert_self_signed else ""
    body = (
        f"<h1>pteleport cluster {name}</h1>"
        "<p>This is the proxy of a pteleport cluster: short-lived certificates and an audit log "
        "of every query for access to PostgreSQL. It has no web console yet; you use it from a terminal.</p>"
        "<p>Got an invite link? Open it here to set your password, or run "
        f"<code>ptsh signup{insecure} LINK</code>. Then:</p>"
        f"<p><code>ptsh login --proxy={proxy} --user=NAME{insecure}</code><br>"
        "<code>ptsh db ls</code><br><code>ptsh db connect DATABASE</code></p>"
        "<p>Documentation: <code>ptsh help</code>, <code>pctl help</code>, and in the pteleport sources "
        "<code>docs/getting-started.md</code> (from a fresh clone to a database in one command), "
        "<code>docs/cli.md</code> (every command) and <code>docs/security.md</code>.</p>"
    )
    return _page(f"cluster {auth.cluster_name}", body)


def add_web_routes(app: web.Application, auth: AuthServer, info: ProxyInfo) -> None:
    async def front(request: web.Request) -> web.Response:
        return _front(auth, info)

    def show_page(token: str, remote: str) -> web.Response:
        try:
            return _form(auth, token, remote)
        except PteleportError as err:
            return _unusable(err)

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
            return _unusable(err)  # no second lookup of a link that failed once
        except PteleportError as err:
            try:
                return _form(auth, token, remote, err.message)
            except (NotFound, LimitExceeded) as again:
                return _unusable(again)
            except PteleportError:
                return _page("Invite", f'<p class="error">{html.escape(err.message)}</p>', 400)
        return _page(
            "Done",
            f'<h1 class="ok">Password set for {html.escape(user)}</h1>'
            f"<p>Log in from a terminal:</p><p><code>{html.escape(_login_command(auth, info, user))}</code></p>",
        )

    app.router.add_get("/", front)
    for kind in ("invite", "reset"):
        app.router.add_get(f"/web/{kind}/{{token}}", show)
        app.router.add_post(f"/web/{kind}/{{token}}", submit)
