"""Users: add (with an invite), update, remove, reset, and accepting an invite or reset.

An invite or reset link's token is stored only as its SHA-256 (``user_tokens/<sha256>``,
with the user, kind and expiry, never the link); the link is shown once, to the admin who
made it. Lookups are limited per address (``auth.throttle``) and their failures audited
as ``auth`` (T3007W) with a count.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

from common.durations import format_go_duration
from common.errors import AlreadyExists, BadParameter, CompareFailed, NotFound
from common.identity import Identity
from pteleport.auth import passwords, totp
from pteleport.auth.context import AuthContext, secret_key
from pteleport.auth.locks import LockService
from pteleport.auth.throttle import SecretGuard

NAME_RE = re.compile(r"^[a-zA-Z0-9._@+-]{1,128}$")
INVITE_TTL = timedelta(hours=1)
MAX_INVITE_TTL = timedelta(hours=48)
MAX_RESET_TTL = timedelta(hours=24)
RESET_TTL = timedelta(hours=8)
BAD_LINK = "this invite or reset link is invalid, already used or expired; ask an admin for a new one"
# Fields of a stored user token; anything else (the link of older versions) is dropped.
USER_TOKEN_FIELDS = ("user", "kind", "created", "expires", "totp_secret")
BOT_LABEL = "teleport.internal/bot"


def check_name(name: str, what: str = "user name") -> None:
    if not NAME_RE.match(name or ""):
        raise BadParameter(f'"{name}" is not a valid {what}: use letters, digits and . _ @ + -')


def user_doc(name: str, roles: list[str], traits: dict[str, list[str]], created_by: str, now: Any) -> dict:
    return {
        "kind": "user",
        "version": "v2",
        "metadata": {"name": name},
        "spec": {
            "roles": roles,
            "traits": traits,
            "created_by": {"user": {"name": created_by}, "time": now.isoformat()},
        },
    }


class UserService:
    def __init__(self, ctx: AuthContext, locks: LockService) -> None:
        self.ctx = ctx
        self.locks = locks
        self.guard = SecretGuard(lambda fields: ctx.emit("auth", "T3007W", **fields), ctx.clock)

    def _check_roles(self, roles: list[str]) -> None:
        if not roles:
            raise BadParameter("pass --roles with at least one role, e.g. --roles=access")
        for role in roles:
            self.ctx.role(role)

    def get(self, name: str) -> dict:
        try:
            return self.ctx.users.get(name)
        except NotFound:
            raise NotFound(f'user "{name}" does not exist; "pctl users ls" lists users') from None

    def list(self, actor: Identity) -> list[dict]:
        """Users, each with ``status``: locked (until when), active, invited, reset or no password."""
        self.ctx.authorize(actor, "user", "list")
        now = self.ctx.clock()
        with_password = {name for name, _doc, _item in self.ctx.secrets.items()}
        locked = {name: doc.get("locked_until") for name, doc, _item in self.ctx.login_state.items()}
        pending = {doc.get("user"): doc.get("kind") for _key, doc, _item in self.ctx.user_tokens.items()}
        out = []
        for doc in self.ctx.users.list():
            name = doc["metadata"]["name"]
            out.append({**doc, "status": _status(doc, name in with_password, locked.get(name), pending.get(name), now)})
        return out

    def add(
        self,
        actor: Identity,
        name: str,
        roles: list[str],
        traits: dict[str, list[str]],
        ttl: timedelta | None,
    ) -> dict:
        self.ctx.authorize(actor, "user", "create")
        check_name(name)
        self._check_roles(roles)
        ttl = ttl or INVITE_TTL
        if ttl > MAX_INVITE_TTL:
            raise BadParameter("an invite can be valid for at most 48h; pass a shorter --ttl")
        now = self.ctx.clock()
        doc = user_doc(name, roles, traits, actor.username, now)
        try:
            self.ctx.users.create(name, doc)
        except AlreadyExists:
            raise AlreadyExists(
                f'user "{name}" already exists; use "pctl users update" or "pctl users reset"'
            ) from None
        self.locks.clear_deleted_user(actor, name)
        self.ctx.emit("user.create", "T1002I", user=actor.username, name=name, roles=roles, connector="local")
        return self._new_user_token(actor, name, "invite", ttl)

    def create_from_resource(self, actor: Identity, doc: dict, force: bool) -> str:
        """`pctl create` of a user resource (no password; use `pctl users reset` to invite)."""
        name = doc["metadata"]["name"]
        check_name(name)
        self._check_roles(doc["spec"].get("roles", []))
        try:
            existing: dict | None = self.ctx.users.get(name)
        except NotFound:
            existing = None
        exists = existing is not None
        if exists and not force:
            raise AlreadyExists(f'user "{name}" already exists; pass -f/--force to overwrite it')
        self.ctx.authorize(actor, "user", "update" if exists else "create")
        # The creation time decides which certificates belong to this user (not to an
        # earlier user of the same name): keep it across updates, set it for a new user.
        created_by = (existing or {}).get("spec", {}).get("created_by") or {
            "user": {"name": actor.username},
            "time": self.ctx.clock().isoformat(),
        }
        doc = {**doc, "spec": {**doc["spec"], "created_by": created_by}}
        if not exists:
            self.locks.clear_deleted_user(actor, name)
        self.ctx.users.put(name, doc)
        self.ctx.emit(
            "user.update" if exists else "user.create",
            "T1003I" if exists else "T1002I",
            user=actor.username,
            name=name,
            roles=doc["spec"].get("roles", []),
        )
        return "updated" if exists else "created"

    def update(self, actor: Identity, name: str, roles: list[str] | None, traits: dict[str, list[str]]) -> dict:
        self.ctx.authorize(actor, "user", "update")
        doc = self.get(name)
        if roles is not None:
            self._check_roles(roles)
            doc["spec"]["roles"] = roles
        for key, values in traits.items():
            doc["spec"].setdefault("traits", {})[key] = values
        self.ctx.users.put(name, doc)
        self.ctx.emit("user.update", "T1003I", user=actor.username, name=name, roles=doc["spec"]["roles"])
        return doc

    def remove(self, actor: Identity, name: str) -> None:
        self.ctx.authorize(actor, "user", "delete")
        doc = self.get(name)
        # Lock the name for as long as a certificate issued to this user could live, so every
        # proxy and agent ends the user's sessions and refuses the certificates at once.
        longest = self.ctx.checker_for(doc["spec"].get("roles", []), doc["spec"].get("traits", {})).max_session_ttl()
        self.locks.lock_deleted_user(actor, name, longest + timedelta(minutes=5))
        self.ctx.users.delete(name)
        for store in (self.ctx.secrets, self.ctx.login_state):
            if store.exists(name):
                store.delete(name)
        for key, doc, _item in list(self.ctx.user_tokens.items()):
            if doc.get("user") == name:
                self.ctx.user_tokens.delete(key)
        self.ctx.emit("user.delete", "T1004I", user=actor.username, name=name)

    def reset(self, actor: Identity, name: str, ttl: timedelta | None) -> dict:
        self.ctx.authorize(actor, "user", "update")
        self.get(name)
        from pteleport.auth.bots import is_bot

        if is_bot(self.ctx, name):
            raise BadParameter(
                f'"{name}" is a bot: it never has a password; give it a new join token with '
                '"pctl bots rm" and "pctl bots add"'
            )
        ttl = ttl or RESET_TTL
        if ttl > MAX_RESET_TTL:
            raise BadParameter("a reset link can be valid for at most 24h; pass a shorter --ttl")
        if self.ctx.secrets.exists(name):
            self.ctx.secrets.delete(name)
        return self._new_user_token(actor, name, "reset", ttl)

    def _new_user_token(self, actor: Identity, name: str, kind: str, ttl: timedelta) -> dict:
        token = secrets.token_hex(16)
        now = self.ctx.clock()
        expires = now + ttl
        url = f"https://{self.ctx.settings.public_addr}/web/{kind}/{token}"
        # Earlier tokens for the same user stop working.
        for key, doc, _item in list(self.ctx.user_tokens.items()):
            if doc.get("user") == name:
                self.ctx.user_tokens.delete(key)
        self.ctx.user_tokens.create(
            secret_key(token),
            {"user": name, "kind": kind, "created": now.isoformat(), "expires": expires.isoformat()},
            expires=expires,
        )
        self.ctx.emit("reset_password_token.create", "T6000I", user=actor.username, name=name, ttl=str(ttl))
        # The one place the token (and the link holding it) is ever shown: the answer to the admin.
        return {
            "kind": "user_token",
            "sub_kind": kind,
            "version": "v3",
            "metadata": {"name": token, "expires": expires.isoformat()},
            "spec": {"user": name, "url": url, "created": now.isoformat()},
            "ttl": format_go_duration(ttl),
        }

    def scrub_stored_tokens(self) -> int:
        """Start-up: drop the links (holding the token) that older versions stored."""
        scrubbed = 0
        for _key, doc, item in list(self.ctx.user_tokens.items()):
            if set(doc) <= set(USER_TOKEN_FIELDS):
                continue
            try:
                kept = {k: v for k, v in doc.items() if k in USER_TOKEN_FIELDS}
                self.ctx.user_tokens.swap(item, kept, expires=item.expires)
                scrubbed += 1
            except (CompareFailed, NotFound):
                continue
        return scrubbed

    # --- accepting an invite (no certificate: the token is the credential) --------------
    def _user_token(self, token: str, remote: str) -> tuple[dict, Any]:
        failure = {"method": "invite_link", "success": False, "addr.remote": remote}
        self.guard.check(remote, failure)
        try:
            item = self.ctx.user_tokens.get_item(secret_key(token))
        except NotFound:
            reason = "unknown, used or expired invite or reset link"
            self.guard.failed(remote, {**failure, "error": reason})
            raise NotFound(BAD_LINK, detail=reason) from None
        return json.loads(item.value), item

    def invite_details(self, token: str, remote: str = "") -> dict:
        """What the signup page shows: the user and the TOTP secret to enrol (made on first view)."""
        doc, item = self._user_token(token, remote)
        while self.ctx.settings.second_factor == "otp" and "totp_secret" not in doc:
            # Two first views at once: one secret wins the swap, the other view shows it.
            try:
                self.ctx.user_tokens.swap(item, {**doc, "totp_secret": totp.new_secret()}, expires=item.expires)
            except CompareFailed:
                pass
            doc, item = self._user_token(token, remote)
        result = {"user": doc["user"], "kind": doc["kind"], "second_factor": self.ctx.settings.second_factor}
        if "totp_secret" in doc:
            result["totp_secret"] = doc["totp_secret"]
            result["otpauth_uri"] = totp.provisioning_uri(doc["totp_secret"], doc["user"], self.ctx.cluster_name)
        return result

    def complete_invite(self, token: str, password: str, otp_code: str, remote: str = "") -> str:
        doc, item = self._user_token(token, remote)
        passwords.check_new_password(password)
        secret = None
        counter = 0
        if self.ctx.settings.second_factor == "otp":
            secret = doc.get("totp_secret")
            if not secret:
                raise BadParameter("open the invite link first to get the authenticator secret")
            found = totp.verify(secret, otp_code or "", self.ctx.clock(), 0)
            if found is None:
                raise BadParameter(
                    "the authenticator code is not valid; check the device's clock and try the current code"
                )
            counter = found
        record = {"password_hash": passwords.hash_password(password), "totp_secret": secret, "totp_counter": counter}
        # Single use: whoever deletes the token first completes it (a concurrent second
        # completion finds it gone); then the password is stored.
        try:
            self.ctx.user_tokens.backend.delete(item.key)
        except NotFound:
            raise NotFound(
                "this invite or reset link is invalid, already used or expired; ask an admin for a new one"
            ) from None
        self.ctx.secrets.put(doc["user"], record)
        if self.ctx.login_state.exists(doc["user"]):
            self.ctx.login_state.delete(doc["user"])
        self.ctx.emit("user.password_change", "T1005I", user=doc["user"])
        return doc["user"]


def _status(doc: dict, has_password: bool, locked_until: str | None, pending: str | None, now: datetime) -> dict:
    """``status`` of a listed user: Teleport's ``is_locked``/``lock_expires``, and ``state``."""
    status: dict[str, Any] = {"is_locked": False}
    until = None
    if locked_until:
        try:
            until = datetime.fromisoformat(locked_until)
        except ValueError:
            until = None
    if until is not None and until > now:
        status.update(is_locked=True, lock_expires=until.isoformat(), state="locked")
    elif (doc.get("metadata", {}).get("labels") or {}).get(BOT_LABEL) == "true":
        status["state"] = "bot"
    elif pending == "reset":
        status["state"] = "reset"
    elif has_password:
        status["state"] = "active"
    elif pending == "invite":
        status["state"] = "invited"
    else:
        status["state"] = "no password"
    return status
