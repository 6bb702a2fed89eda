"""`ptsh signup URL`: accept an invite (or a reset link) from a terminal.

Shows the authenticator enrolment (otpauth:// URI and a QR code), asks the new password
twice and a current code, then tells the exact ``ptsh login`` command to run.
"""

from __future__ import annotations

import re
import sys
from typing import Annotated

import typer

from common.cli import prompt_secret, safe_text
from common.errors import BadParameter, UsageError
from ptsh.options import CaFileOpt, InsecureOpt, ca_file_value, insecure_value

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{8,256}$")
HINT = 'run "ptsh signup" in a terminal, or open the link in a browser'


def parse_invite_url(url: str) -> tuple[str, str, str]:
    """``https://HOST:PORT/web/invite/TOKEN`` -> (HOST:PORT, kind, token)."""
    from urllib.parse import urlsplit

    bad = UsageError(
        f'"{safe_text(url)}" is not an invite link; it looks like https://HOST:PORT/web/invite/TOKEN '
        "(or /web/reset/TOKEN)"
    )
    try:
        parts = urlsplit(url.strip())
        port = parts.port or 443
    except ValueError:
        raise bad from None
    segments = parts.path.strip("/").split("/")
    if parts.scheme != "https" or not parts.hostname or len(segments) != 3:
        raise bad
    web, kind, token = segments
    if web != "web" or kind not in ("invite", "reset") or not TOKEN_RE.match(token):
        raise bad
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", kind, token


def _print_qr(uri: str) -> None:
    try:
        import segno

        segno.make(uri, error="m").terminal(out=sys.stdout, compact=True)
    except Exception:  # noqa: S110 - the URI below is enough to enrol by hand
        pass


def signup(
    url: Annotated[str, typer.Argument(help="The link from pctl users add / reset.")],
    insecure: InsecureOpt = False,
    ca_file: CaFileOpt = None,
) -> None:
    """Set your password and enrol your authenticator from an invite or reset link."""
    from common.client import ClusterClient

    addr, kind, token = parse_invite_url(url)
    insecure = insecure_value(insecure)
    ca_file = ca_file_value(ca_file)
    with ClusterClient(addr, insecure=insecure, ca_file=ca_file) as client:
        details = client.get(f"/v1/invites/{token}")
        user = safe_text(details.get("user", ""))
        what = "Setting up" if kind == "invite" else "Resetting the password of"
        print(f"{what} user {user} on https://{addr}.", flush=True)
        uri = details.get("otpauth_uri")
        if uri:
            print("\nScan this QR code with your authenticator app (or add the secret by hand):\n")
            _print_qr(uri)
            print(f"\n{safe_text(uri)}\nSecret: {safe_text(details.get('totp_secret', ''))}\n", flush=True)
        password = prompt_secret("Enter a new password: ", HINT)
        again = prompt_secret("Confirm the new password: ", HINT)
        if password != again:
            raise BadParameter('the two passwords do not match; run "ptsh signup" again with the same link')
        code = ""
        if uri:
            code = prompt_secret("Enter an OTP code from a device: ", HINT).strip()
        done = client.post(f"/v1/invites/{token}", {"password": password, "otp_token": code})
    user = safe_text(done.get("user", user))
    flags = " --insecure" if insecure else (f" --ca-file={ca_file}" if ca_file else "")
    print(f"\nPassword set for {user}. Log in with:\n\n  ptsh login --proxy={addr} --user={user}{flags}\n")
