"""The invite and reset pages: set a password and enrol a TOTP authenticator in a browser."""

from __future__ import annotations

import html
import io
from typing import TYPE_CHECKING

from aiohttp import web

from common.errors import BadParameter, PteleportError

if TYPE_CHECKING:
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


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=_PAGE.format(title=html.escape(title), body=body),
        content_type="text/html",
        status=status,
        headers={
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'",
        },
    )


def _qr_svg(uri: str) -> str:
    import segno

    buf = io.BytesIO()
    segno.make(uri, error="m").save(buf, kind="svg", scale=5, xmldecl=False, svgns=True)
    return buf.getvalue().decode("utf-8")


def _form(auth: AuthServer, token: str, error: str = "") -> web.Response:
    details = auth.users.invite_details(token)
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


def add_web_routes(app: web.Application, auth: AuthServer) -> None:
    async def show(request: web.Request) -> web.Response:
        try:
            return _form(auth, request.match_info["token"])
        except PteleportError as err:
            return _page(
                "Invite", f'<h1>This link cannot be used</h1><p class="error">{html.escape(err.message)}</p>', 404
            )

    async def submit(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        form = await request.post()
        password = str(form.get("password", ""))
        try:
            if password != str(form.get("confirm", "")):
                raise BadParameter("the two passwords do not match")
            user = auth.users.complete_invite(token, password, str(form.get("otp", "")))
        except PteleportError as err:
            try:
                return _form(auth, token, err.message)
            except PteleportError:
                return _page("Invite", f'<p class="error">{html.escape(err.message)}</p>', 400)
        proxy = html.escape(auth.ctx.settings.public_addr)
        return _page(
            "Done",
            f'<h1 class="ok">Password set for {html.escape(user)}</h1>'
            f"<p>Log in from a terminal:</p><p><code>ptsh login --proxy={proxy} --user={html.escape(user)}</code></p>",
        )

    for kind in ("invite", "reset"):
        app.router.add_get(f"/web/{kind}/{{token}}", show)
        app.router.add_post(f"/web/{kind}/{{token}}", submit)
