"""Local login: password + TOTP, one generic failure message, rate limit and lock-out."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta

from common.errors import AccessDenied, LimitExceeded, NotFound
from common.identity import Identity
from pteleport.auth import passwords, totp
from pteleport.auth.certs import CertService
from pteleport.auth.context import AuthContext

GENERIC_FAILURE = "invalid user name, password or second factor"
# Failed logins allowed per client address in a sliding window (on top of per-user lock-out).
IP_FAILURES = 20
IP_WINDOW = timedelta(minutes=1)
# At most this many password hashes run at once (each takes 19 MiB and ~40 ms).
_HASH_SLOTS = threading.BoundedSemaphore(4)


class LoginService:
    def __init__(self, ctx: AuthContext, certs: CertService) -> None:
        self.ctx = ctx
        self.certs = certs
        self._ip_failures: dict[str, list[datetime]] = {}

    def _check_address(self, ip: str, now: datetime) -> None:
        recent = [t for t in self._ip_failures.get(ip, []) if now - t < IP_WINDOW]
        self._ip_failures[ip] = recent
        if len(recent) >= IP_FAILURES:
            raise LimitExceeded(
                "too many failed logins from this address; wait a minute and try again",
                retry_after=int(IP_WINDOW.total_seconds()),
            )

    def _note_address_failure(self, ip: str, now: datetime) -> None:
        self._ip_failures.setdefault(ip, []).append(now)
        if len(self._ip_failures) > 10_000:  # bounded memory under a spray from many addresses
            self._ip_failures = {k: v for k, v in self._ip_failures.items() if v and now - v[-1] < IP_WINDOW}

    def _locked_until(self, user: str, now: datetime) -> datetime | None:
        try:
            state = self.ctx.login_state.get(user)
        except NotFound:
            return None
        until = state.get("locked_until")
        if until and datetime.fromisoformat(until) > now:
            return datetime.fromisoformat(until)
        return None

    def _record_failure(self, user: str, now: datetime) -> None:
        try:
            state = self.ctx.login_state.get(user)
        except NotFound:
            state = {"failures": 0}
        if state.get("locked_until") and datetime.fromisoformat(state["locked_until"]) <= now:
            state = {"failures": 0}
        state["failures"] = state.get("failures", 0) + 1
        if state["failures"] >= self.ctx.settings.max_attempts:
            state["locked_until"] = (now + self.ctx.settings.lockout).isoformat()
        self.ctx.login_state.put(user, state)

    def _fail(self, user: str, reason: str, remote: str) -> AccessDenied:
        self._note_address_failure(remote.rsplit(":", 1)[0], self.ctx.clock())
        self.ctx.emit(
            "user.login",
            "T1000W",
            user=user,
            method="local",
            success=False,
            error=reason,
            **{"addr.remote": remote},
        )
        return AccessDenied(GENERIC_FAILURE, detail=reason)

    async def login(
        self,
        user: str,
        password: str,
        otp_code: str,
        public_key_pem: str,
        ttl: timedelta | None,
        remote: str,
    ) -> tuple[bytes, Identity]:
        now = self.ctx.clock()
        self._check_address(remote.rsplit(":", 1)[0], now)
        until = self._locked_until(user, now)
        if until is not None:
            self.ctx.emit(
                "user.login",
                "T1000W",
                user=user,
                method="local",
                success=False,
                error="user is locked",
                **{"addr.remote": remote},
            )
            raise LimitExceeded(
                f"too many failed logins: {user} is locked until {until:%Y-%m-%d %H:%M:%S} UTC; "
                'wait, or ask an admin to run "pctl users reset"'
            )
        try:
            doc = self.ctx.users.get(user)
            record = self.ctx.secrets.get(user)
        except NotFound:
            doc, record = None, None
        phc = record.get("password_hash") if record else None
        ok = await asyncio.to_thread(_verify_limited, password, phc)
        if ok and doc is not None and _is_bot(self.ctx, user):
            raise self._fail(user, "bots cannot log in with a password", remote)
        if not ok or doc is None or record is None:
            if doc is not None:
                self._record_failure(user, now)
            raise self._fail(user, "bad password or unknown user", remote)
        if self.ctx.settings.second_factor == "otp":
            secret = record.get("totp_secret")
            counter = totp.verify(secret, otp_code or "", now, int(record.get("totp_counter", 0))) if secret else None
            if counter is None:
                self._record_failure(user, now)
                raise self._fail(user, "bad or reused second factor", remote)
            record["totp_counter"] = counter
            self.ctx.secrets.put(user, record)
        if self.ctx.login_state.exists(user):
            self.ctx.login_state.delete(user)
        roles = tuple(doc["spec"].get("roles", []))
        traits = doc["spec"].get("traits", {})
        identity = Identity(username=user, roles=roles, traits=traits, login_ip=remote.split(":")[0])
        ttl = self.certs.capped_ttl(identity, ttl)
        cert = self.certs.sign_user(identity, public_key_pem, ttl)
        self.ctx.emit("user.login", "T1000I", user=user, method="local", success=True, **{"addr.remote": remote})
        return cert, identity


def _is_bot(ctx: AuthContext, user: str) -> bool:
    from pteleport.auth.bots import is_bot

    return is_bot(ctx, user)


def _verify_limited(password: str, phc: str | None) -> bool:
    with _HASH_SLOTS:
        return passwords.verify_password(password, phc)
