"""TOTP second factor: enrolment URI, verification with a ±1 step window, and replay refusal."""

from __future__ import annotations

import base64
import os
from datetime import datetime
from urllib.parse import quote

from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor import InvalidToken
from cryptography.hazmat.primitives.twofactor.totp import TOTP

STEP = 30
DIGITS = 6


def new_secret() -> str:
    """A base32 secret of 160 bits, as authenticator apps expect."""
    return base64.b32encode(os.urandom(20)).decode("ascii")


def _totp(secret: str) -> TOTP:
    # RFC 6238 TOTP is HMAC-SHA1 by definition; authenticator apps expect it.
    return TOTP(base64.b32decode(secret), DIGITS, SHA1(), STEP, enforce_key_length=False)  # noqa: S303


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    return (
        f"otpauth://totp/{quote(issuer)}:{quote(account)}?secret={secret}"
        f"&issuer={quote(issuer)}&algorithm=SHA1&digits={DIGITS}&period={STEP}"
    )


def code_at(secret: str, when: datetime) -> str:
    return _totp(secret).generate(int(when.timestamp())).decode("ascii")


def verify(secret: str, code: str, when: datetime, last_counter: int) -> int | None:
    """The time step a valid code belongs to, or None.

    Accepts the current step and one on either side; a step at or below ``last_counter``
    (already used) is refused, so a code cannot be replayed.
    """
    code = code.strip()
    if not code.isdigit() or len(code) != DIGITS:
        return None
    now = int(when.timestamp())
    totp = _totp(secret)
    for offset in (0, -1, 1):
        at = now + offset * STEP
        counter = at // STEP
        if counter <= last_counter:
            continue
        try:
            totp.verify(code.encode("ascii"), at)
        except InvalidToken:
            continue
        return counter
    return None
