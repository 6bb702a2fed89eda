"""Users: add (with an invite), update, remove, reset, and accepting an invite or reset."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta
from typing import Any

from common.durations import format_go_duration
from common.errors import AlreadyExists, BadParameter, CompareFailed, NotFound
from common.identity import Identity
from pteleport.auth import passwords, totp
from pteleport.auth.context import AuthContext, secret_key

NAME_RE = re.compile(r"^[a-zA-Z0-9._@+-]{1,128}$")
INVITE_TTL = timedelta(hours=1)
MAX_INVITE_TTL = timedelta(hours=48)
MAX_RESET_TTL = timedelta(hours=24)
RESET_TTL = timedelta(hours=8)


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
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx

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
        self.ctx.authorize(actor, "user", "list")
        return self.ctx.users.list()

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
        self.ctx.emit("user.create", "T1002I", user=actor.username, name=name, roles=roles, connector="local")
        return self._new_user_token(actor, name, "invite", ttl)

    def create_from_resource(self, actor: Identity, doc: dict, force: bool) -> str:
        """`pctl create` of a user resource (no password; use `pctl users reset` to invite)."""
        name = doc["metadata"]["name"]
        check_name(name)
        self._check_roles(doc["spec"].get("roles", []))
        exists = self.ctx.users.exists(name)
        if exists and not force:
            raise AlreadyExists(f'user "{name}" already exists; pass -f/--force to overwrite it')
        self.ctx.authorize(actor, "user", "update" if exists else "create")
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
        self.get(name)
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
            {"user": name, "kind": kind, "created": now.isoformat(), "expires": expires.isoformat(), "url": url},
            expires=expires,
        )
        self.ctx.emit("reset_password_token.create", "T6000I", user=actor.username, name=name, ttl=str(ttl))
        return {
            "kind": "user_token",
            "sub_kind": kind,
            "version": "v3",
            "metadata": {"name": token, "expires": expires.isoformat()},
            "spec": {"user": name, "url": url, "created": now.isoformat()},
            "ttl": format_go_duration(ttl),
        }

    # --- accepting an invite (no certificate: the token is the credential) --------------
    def _user_token(self, token: str) -> tuple[dict, Any]:
        try:
            item = self.ctx.user_tokens.get_item(secret_key(token))
        except NotFound:
            raise NotFound(
                "this invite or reset link is invalid, already used or expired; ask an admin for a new one"
            ) from None
        import json

        return json.loads(item.value), item

    def invite_details(self, token: str) -> dict:
        """What the signup page shows: the user and the TOTP secret to enrol (made on first view)."""
        doc, item = self._user_token(token)
        while self.ctx.settings.second_factor == "otp" and "totp_secret" not in doc:
            # Two first views at once: one secret wins the swap, the other view shows it.
            try:
                self.ctx.user_tokens.swap(item, {**doc, "totp_secret": totp.new_secret()}, expires=item.expires)
            except CompareFailed:
                pass
            doc, item = self._user_token(token)
        result = {"user": doc["user"], "kind": doc["kind"], "second_factor": self.ctx.settings.second_factor}
        if "totp_secret" in doc:
            result["totp_secret"] = doc["totp_secret"]
            result["otpauth_uri"] = totp.provisioning_uri(doc["totp_secret"], doc["user"], self.ctx.cluster_name)
        return result

    def complete_invite(self, token: str, password: str, otp_code: str) -> str:
        doc, item = self._user_token(token)
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
