"""Local login: password + TOTP, one generic failure message, rate limit and lock-out.

Every refusal a guesser could learn from says the same sentence (``GENERIC_FAILURE``):
unknown user, wrong password, wrong code, and a user locked after too many failures. The
audit event (``user.login`` T1000W) records the real reason. The one exception comes
after the password was verified: a code whose time step was already used (the sign-up
code, or a login a moment ago) says ``REUSED_CODE`` and does not count as a failure.

The login state is changed with compare-and-swap only, so concurrent logins (threads, or
several auth processes on one backend) neither lose a failure nor accept one code twice:

- the TOTP step lives in the user's secrets record; a login moves it forward with a swap
  against the record it read, and a swap that loses re-reads and re-checks the step;
- the failure count and the lock live in ``user_login_state/<user>``; every failure is a
  create-or-swap loop, so N failures add exactly N.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from typing import Any

from common.errors import AccessDenied, AlreadyExists, CompareFailed, LimitExceeded, NotFound
from common.identity import Identity
from pteleport.auth import passwords, totp
from pteleport.auth.certs import CertService
from pteleport.auth.context import AuthContext
from pteleport.storage.base import Item

GENERIC_FAILURE = "invalid user name, password or second factor"
REUSED_CODE = "this code was already used; wait for the next one"
# Failed logins allowed per client address in a sliding window (on top of per-user lock-out).
IP_FAILURES = 20
IP_WINDOW = timedelta(minutes=1)
# At most this many password hashes run at once (each takes 19 MiB and ~40 ms).
_HASH_SLOTS = threading.BoundedSemaphore(4)
# A compare-and-swap loop gives up after this many lost races (each lost race means
# another login of the same user won, so this is only reached under a flood).
_MAX_SWAPS = 500


class _Refused(Exception):
    """A login refusal: the reason audited, what the user is told, and whether it counts
    toward the user's lock-out. Every generic refusal counts toward the address limit, so
    that limit behaves the same whatever the reason was."""

    def __init__(self, reason: str, message: str = GENERIC_FAILURE, *, locks_out: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = message
        self.locks_out = locks_out


class LoginService:
    def __init__(self, ctx: AuthContext, certs: CertService) -> None:
        self.ctx = ctx
        self.certs = certs
        self._ip_failures: dict[str, list[datetime]] = {}
        self._ip_lock = threading.Lock()  # logins run in the API's worker threads

    def _check_address(self, ip: str, now: datetime) -> None:
        with self._ip_lock:
            recent = [t for t in self._ip_failures.get(ip, []) if now - t < IP_WINDOW]
            self._ip_failures[ip] = recent
        if len(recent) >= IP_FAILURES:
            raise LimitExceeded(
                "too many failed logins from this address; wait a minute and try again",
                retry_after=int(IP_WINDOW.total_seconds()),
            )

    def _note_address_failure(self, ip: str, now: datetime) -> None:
        with self._ip_lock:
            self._ip_failures.setdefault(ip, []).append(now)
            if len(self._ip_failures) > 10_000:  # bounded memory under a spray from many addresses
                self._ip_failures = {k: v for k, v in self._ip_failures.items() if v and now - v[-1] < IP_WINDOW}

    # --- lock-out state (user_login_state/<user>) ---------------------------------------
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
        """Count one failure (and lock at the maximum) atomically against concurrent logins."""

        def count(state: dict[str, Any]) -> dict[str, Any]:
            if state.get("locked_until") and datetime.fromisoformat(state["locked_until"]) <= now:
                state = {"failures": 0}  # an old lock ran out: start counting again
            state["failures"] = int(state.get("failures", 0)) + 1
            if state["failures"] >= self.ctx.settings.max_attempts and not state.get("locked_until"):
                state["locked_until"] = (now + self.ctx.settings.lockout).isoformat()
            return state

        self._change_state(user, count)

    def _clear_failures(self, user: str, now: datetime) -> None:
        """A successful login starts the count again (a lock set meanwhile by others stays)."""

        def clear(state: dict[str, Any]) -> dict[str, Any] | None:
            if state.get("locked_until") and datetime.fromisoformat(state["locked_until"]) > now:
                return None
            return {"failures": 0} if state.get("failures") or state.get("locked_until") else None

        self._change_state(user, clear)

    def _change_state(self, user: str, change: Any) -> None:
        key = self.ctx.login_state.key(user)
        backend = self.ctx.login_state.backend
        for _ in range(_MAX_SWAPS):
            try:
                item: Item | None = backend.get(key)
                state = json.loads(item.value)
            except NotFound:
                item, state = None, {"failures": 0}
            new = change(dict(state))
            if new is None:
                return
            value = _dump(new)
            try:
                if item is None:
                    backend.create(Item(key, value))
                else:
                    backend.compare_and_swap(item, Item(key, value))
                return
            except (AlreadyExists, CompareFailed):
                continue  # another login changed it first: read again
        raise CompareFailed("too many logins of this user at once; try again")

    # --- second factor ------------------------------------------------------------------
    def _use_code(self, user: str, item: Item, otp_code: str, now: datetime) -> None:
        """Accept ``otp_code`` once: move the user's last used step forward by compare-and-swap."""
        phc = json.loads(item.value).get("password_hash")
        for _ in range(_MAX_SWAPS):
            record = json.loads(item.value)
            if record.get("password_hash") != phc:
                raise _Refused("the password changed during the login")
            secret = record.get("totp_secret")
            if not secret:
                raise _Refused("no second factor enrolled")
            step = totp.verify(secret, otp_code or "", now, 0)  # the step this code belongs to, used or not
            if step is None:
                raise _Refused("bad second factor")
            if step <= int(record.get("totp_counter", 0)):
                raise _Refused("reused second factor", REUSED_CODE, locks_out=False)
            record["totp_counter"] = step
            try:
                self.ctx.secrets.swap(item, record, expires=item.expires)
                return
            except CompareFailed:
                try:
                    item = self.ctx.secrets.get_item(user)  # someone else logged in: check again
                except NotFound:
                    raise _Refused("the user was removed during the login") from None
        raise CompareFailed("too many logins of this user at once; try again")

    # --- the login ---------------------------------------------------------------------
    def _fail(self, user: str, refused: _Refused, remote: str, now: datetime) -> AccessDenied:
        if refused.message == GENERIC_FAILURE:
            self._note_address_failure(remote.rsplit(":", 1)[0], now)
        self.ctx.emit(
            "user.login",
            "T1000W",
            user=user,
            method="local",
            success=False,
            error=refused.reason,
            **{"addr.remote": remote},
        )
        return AccessDenied(refused.message, detail=refused.reason)

    def login(
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
        try:
            doc = self.ctx.users.get(user)
            item = self.ctx.secrets.get_item(user)
        except NotFound:
            doc, item = None, None
        record = json.loads(item.value) if item is not None else None
        phc = record.get("password_hash") if record else None
        # Always hash (a dummy hash for an unknown user), so the time taken says nothing.
        ok = _verify_limited(password, phc)
        try:
            if doc is not None and self._locked_until(user, now) is not None:
                raise _Refused("user is locked", locks_out=False)
            if ok and doc is not None and _is_bot(self.ctx, user):
                raise _Refused("bots cannot log in with a password", locks_out=False)
            if not ok or doc is None or item is None:
                raise _Refused("bad password or unknown user")
            if self.ctx.settings.second_factor == "otp":
                self._use_code(user, item, otp_code, now)
        except _Refused as refused:
            if refused.locks_out and doc is not None:
                self._record_failure(user, now)
            raise self._fail(user, refused, remote, now) from None
        self._clear_failures(user, now)
        roles = tuple(doc["spec"].get("roles", []))
        traits = doc["spec"].get("traits", {})
        identity = Identity(username=user, roles=roles, traits=traits, login_ip=remote.split(":")[0])
        ttl = self.certs.capped_ttl(identity, ttl)
        cert = self.certs.sign_user(identity, public_key_pem, ttl)
        self.ctx.emit("user.login", "T1000I", user=user, method="local", success=True, **{"addr.remote": remote})
        return cert, identity


def _dump(state: dict[str, Any]) -> bytes:
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()


def _is_bot(ctx: AuthContext, user: str) -> bool:
    from pteleport.auth.bots import is_bot

    return is_bot(ctx, user)


def _verify_limited(password: str, phc: str | None) -> bool:
    with _HASH_SLOTS:
        return passwords.verify_password(password, phc)
