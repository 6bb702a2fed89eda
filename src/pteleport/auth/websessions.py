"""Web sessions: what a browser's session cookie stands for, kept in the backend.

Signing in on the web page goes through ``LoginService.login``, the very code ``ptsh login``
uses (lock-out, per-address limit, TOTP step, the one generic refusal, the audit events).
It signs a user certificate for a key pair made here and thrown away at once: the
certificate is the session's identity, signed by the user CA, with the TTL the roles allow.
Each page request checks it exactly as the API checks a client certificate (issuer, expiry,
locks, deleted users, roles taken away), so the web has no second authorization path.

The record lives under ``web_sessions/<sha256 of the cookie value>`` with the certificate's
expiry, so the backend drops it when the certificate ends; a lookup by hash leaks nothing by
timing, and the stored record holds no secret a reader of the backend could replay as a
cookie. Each session has its own CSRF token, compared in constant time. A session ends at
logout, at expiry, and when a lock, a deletion or a role change refuses its certificate
(``end_refused`` runs after every such change made by this process and leaves only the
reason, which the next page shows; a refused request ends its session too, which covers
changes made by other auth processes).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime

from common.errors import AccessDenied, CompareFailed, NotFound, NotLoggedIn
from common.identity import identity_from_cert
from common.tls import generate_private_key, load_cert, public_key_pem
from pteleport.auth.context import AuthContext, secret_key
from pteleport.auth.login import LoginService
from pteleport.services.store import JsonStore

log = logging.getLogger("pteleport.auth.web")
SESSION_ENDED = "your web session has ended; sign in again"


@dataclass(frozen=True)
class WebSession:
    """A signed-in browser: the user certificate that is its identity, and its CSRF token."""

    user: str
    cert_pem: bytes
    csrf: str
    expires: datetime

    def cert_der(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        return load_cert(self.cert_pem).public_bytes(Encoding.DER)

    def csrf_ok(self, token: str) -> bool:
        return bool(token) and hmac.compare_digest(token.encode(), self.csrf.encode())


class WebSessionService:
    def __init__(self, ctx: AuthContext, login: LoginService, *, watch: bool = True) -> None:
        self.ctx = ctx
        self.login = login
        self.store = JsonStore(ctx.backend, "web_sessions")
        if watch:  # end sessions right after a lock or a user change made in this process
            ctx.access.after_change.append(self._after_change)

    def sign_in(self, user: str, password: str, otp_code: str, remote: str) -> tuple[str, WebSession]:
        """Password + code checked by ``ptsh login``'s code; the new cookie value and its session."""
        key = generate_private_key()
        cert_pem, identity = self.login.login(user, password, otp_code, public_key_pem(key).decode(), None, remote)
        expires = load_cert(cert_pem).not_valid_after_utc
        cookie = secrets.token_urlsafe(32)
        session = WebSession(identity.username, cert_pem, secrets.token_urlsafe(32), expires)
        self.store.create(
            secret_key(cookie),
            {
                "user": session.user,
                "cert": cert_pem.decode(),
                "csrf": session.csrf,
                "created": self.ctx.clock().isoformat(),
                "expires": expires.isoformat(),
                "remote": remote,
            },
            expires=expires,
        )
        return cookie, session

    def get(self, cookie: str) -> WebSession:
        """The session behind a cookie value; NotLoggedIn when there is none (any more)."""
        if not cookie:
            raise NotLoggedIn(SESSION_ENDED)
        try:
            doc = self.store.get(secret_key(cookie))
        except NotFound:
            raise NotLoggedIn(SESSION_ENDED) from None
        if "ended" in doc:  # ended by a lock or a user change: say why, once
            self.end(cookie)
            raise (AccessDenied if doc.get("kind") == "lock" else NotLoggedIn)(str(doc["ended"]))
        expires = datetime.fromisoformat(doc["expires"])
        if expires <= self.ctx.clock():
            self.end(cookie)
            raise NotLoggedIn("your web session has expired; sign in again")
        return WebSession(doc["user"], doc["cert"].encode(), doc["csrf"], expires)

    def end(self, cookie: str) -> None:
        """Logout (or a refused certificate): the session is gone, whatever it was."""
        if not cookie:
            return
        try:
            self.store.delete(secret_key(cookie))
        except NotFound:
            pass

    def _after_change(self) -> None:
        """``end_refused`` for the access source's hook: never fails the change that called it
        (a session it misses is still refused, and ended, at its next request)."""
        try:
            self.end_refused()
        except Exception:
            log.exception("could not end the web sessions a change refuses; they end at their next request")

    def end_refused(self) -> int:
        """End every session whose certificate the access snapshot now refuses (locks,
        deleted users, roles taken away); how many ended. What is left of an ended session is
        the reason, kept until it would have expired, so its next page says why."""
        ended = 0
        for _name, doc, item in list(self.store.items()):
            if "ended" in doc:
                continue
            try:
                identity = identity_from_cert(load_cert(doc["cert"].encode()))
                reason = self.ctx.access.refusal(identity)
                gone = {"ended": reason.message, "kind": reason.kind} if reason is not None else None
            except Exception:  # an unreadable record is no session
                gone = {"ended": SESSION_ENDED, "kind": "damaged"}
            if gone is None:
                continue
            try:
                self.store.swap(item, gone, expires=item.expires)
                ended += 1
            except (NotFound, CompareFailed):
                pass  # logged out (or ended) meanwhile
        if ended:
            log.info("ended %d web session(s) that a lock or a user change refuses", ended)
        return ended
