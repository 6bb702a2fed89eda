"""Machine users ("bots") and certificates signed for someone else (`pctl auth sign`).

A bot is a user that never has a password: `pctl bots add` creates the user and a
single-use join token; `ptsh login --bot --token=...` sends that token with a public key
(the private key stays on the machine that runs the job) and gets a user certificate,
which it writes into an identity file. The token is claimed (deleted) before the
certificate is signed, so a token works once, even when two jobs race for it.

Which users are bots is kept apart from the user documents (``bots/<name>``), so a round
trip of the user through ``pctl get`` / ``pctl create -f`` keeps it a bot. Pending join
tokens live under ``bot_tokens/<sha256(token)>`` (the hash only; the value is shown once,
by ``pctl bots add``), out of reach of the agents' join endpoint. Guesses are limited per
address (``auth.throttle``).

`sign_for` is `pctl auth sign --user`: the admin identity may sign for any user; anyone
else needs to be that user (and then cannot outlive their own certificate) or to hold an
impersonation permission: a rule allowing verb ``impersonate`` on resource ``user``, or
Teleport's ``allow.impersonate`` (``users``, ``roles``, ``where``). Deny wins. A
certificate that was itself signed by impersonation (by a user, not by the admin identity)
cannot impersonate further.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from common.errors import AccessDenied, AlreadyExists, BadParameter, NotFound
from common.identity import KIND_BOT, KIND_USER, Identity
from common.tls import load_public_key
from pteleport.auth.certs import CertService
from pteleport.auth.context import AuthContext, secret_key
from pteleport.auth.throttle import SecretGuard
from pteleport.auth.users import BOT_LABEL, check_name, user_doc
from pteleport.rbac import matchers
from pteleport.rbac.where import parse_where
from pteleport.services.store import JsonStore

BOTS_PREFIX = "bots"
BOT_TOKENS_PREFIX = "bot_tokens"
TOKEN_TTL = timedelta(hours=1)
MAX_TOKEN_TTL = timedelta(days=7)
BOT_CERT_TTL = timedelta(hours=1)
JOIN_FAILURE = "the bot join token is invalid, already used or expired; ask an admin for a new one (pctl bots add)"


def is_bot(ctx: AuthContext, name: str) -> bool:
    """Whether ``name`` is a machine user (it may never have a password)."""
    return JsonStore(ctx.backend, BOTS_PREFIX).exists(name)


class BotService:
    def __init__(self, ctx: AuthContext, certs: CertService) -> None:
        self.ctx = ctx
        self.certs = certs
        self.bots = JsonStore(ctx.backend, BOTS_PREFIX)
        self.tokens = JsonStore(ctx.backend, BOT_TOKENS_PREFIX)
        self.guard = SecretGuard(lambda fields: ctx.emit("bot.join", "TJ001E", **fields), ctx.clock)

    # --- permissions ----------------------------------------------------------------------
    def _authorize(self, actor: Identity, verb: str) -> None:
        """Bots are users: a rule on ``bot`` (Teleport's resource) or on ``user`` allows managing them."""
        if actor.is_admin:
            return
        checker = self.ctx.checker(actor)
        if actor.is_host or not (checker.rule_allows("bot", verb) or checker.rule_allows("user", verb)):
            raise AccessDenied(
                f'you are not allowed to {verb} bots; ask an admin for a role whose rules allow verb "{verb}" '
                'on "bot" or on "user"',
                detail=f"roles {list(actor.roles)}",
            )

    # --- pctl bots add | ls | rm ----------------------------------------------------------------
    def add(
        self,
        actor: Identity,
        name: str,
        roles: list[str],
        traits: dict[str, list[str]],
        token_ttl: timedelta | None,
    ) -> dict[str, Any]:
        self._authorize(actor, "create")
        check_name(name, "bot name")
        if not roles:
            raise BadParameter("pass --roles with at least one role, e.g. --roles=db-readonly")
        for role in roles:
            self.ctx.role(role)
        token_ttl = token_ttl or TOKEN_TTL
        if token_ttl <= timedelta(0) or token_ttl > MAX_TOKEN_TTL:
            raise BadParameter("the join token of a bot is valid for at most 7 days; pass a shorter --ttl")
        now = self.ctx.clock()
        doc = user_doc(name, roles, traits, actor.username, now)
        doc["metadata"]["labels"] = {BOT_LABEL: "true"}
        try:
            self.ctx.users.create(name, doc)
        except AlreadyExists:
            raise AlreadyExists(
                f'a user named "{name}" already exists; pick another bot name, or remove it first (pctl bots rm)'
            ) from None
        record = {"name": name, "created": now.isoformat(), "created_by": actor.username}
        self.bots.put(name, record)
        self.ctx.emit("user.create", "T1002I", user=actor.username, name=name, roles=roles, connector="bot")
        token, expires = self._new_token(name, token_ttl)
        return {**self._view(name, doc, record), "token": token, "token_expires": expires.isoformat()}

    def _new_token(self, name: str, ttl: timedelta) -> tuple[str, datetime]:
        token = secrets.token_hex(16)
        now = self.ctx.clock()
        expires = now + ttl
        self.tokens.create(
            secret_key(token),
            {"bot": name, "created": now.isoformat(), "expires": expires.isoformat()},
            expires=expires,
        )
        self.ctx.emit("join_token.create", "TJT00I", user=name, roles=["Bot"], join_method="token")
        return token, expires

    def _pending(self) -> dict[str, str]:
        """Bot name -> expiry of its latest unused join token."""
        pending: dict[str, str] = {}
        for _key, doc, _item in self.tokens.items():
            name = str(doc.get("bot", ""))
            pending[name] = max(pending.get(name, ""), str(doc.get("expires", "")))
        return pending

    def _view(self, name: str, user: dict | None, record: dict, pending: str | None = None) -> dict[str, Any]:
        spec = (user or {}).get("spec", {})
        return {
            "name": name,
            "user": name,
            "roles": list(spec.get("roles", [])),
            "traits": dict(spec.get("traits", {})),
            "created": record.get("created"),
            "created_by": record.get("created_by"),
            "last_join": record.get("last_join"),
            "token_expires": pending,
        }

    def list(self, actor: Identity) -> list[dict[str, Any]]:
        self._authorize(actor, "list")
        pending = self._pending()
        out = []
        for name, record, _item in self.bots.items():
            try:
                user = self.ctx.users.get(name)
            except NotFound:
                continue  # the user was removed with `pctl users rm`: no longer a bot
            out.append(self._view(name, user, record, pending.get(name)))
        return sorted(out, key=lambda b: b["name"])

    def remove(self, actor: Identity, name: str) -> None:
        self._authorize(actor, "delete")
        if not self.bots.exists(name):
            raise NotFound(f'bot "{name}" does not exist; "pctl bots ls" lists bots')
        self.bots.delete(name)
        for key, doc, _item in list(self.tokens.items()):
            if doc.get("bot") == name:
                self.tokens.delete(key)
        try:
            self.ctx.users.delete(name)
        except NotFound:
            pass
        self.ctx.emit("user.delete", "T1004I", user=actor.username, name=name)

    # --- ptsh login --bot ------------------------------------------------------------------------
    def _join_failed(self, reason: str, remote: str, bot: str = "") -> AccessDenied:
        self.ctx.emit(
            "bot.join",
            "TJ001E",
            bot_name=bot or None,
            method="token",
            success=False,
            error=reason,
            **{"addr.remote": remote},
        )
        return AccessDenied(JOIN_FAILURE if not bot else reason, detail=reason)

    def join(self, token: str, public_key_pem: str, ttl: timedelta | None, remote: str) -> tuple[bytes, Identity]:
        """Trade a bot's join token (once) and a public key for a user certificate."""
        load_public_key(public_key_pem)  # a bad key must not burn the token
        failure = {"method": "token", "success": False, "addr.remote": remote}
        self.guard.check(remote, failure)
        key = secret_key(token)
        try:
            doc = self.tokens.get(key)
            self.tokens.delete(key)  # the claim: whoever deletes it first, joins
        except NotFound:
            self.guard.failed(remote, {**failure, "error": "unknown, used or expired bot token"})
            raise AccessDenied(JOIN_FAILURE, detail="unknown, used or expired bot token") from None
        name = str(doc.get("bot", ""))
        try:
            user = self.ctx.users.get(name)
            record = self.bots.get(name)
        except NotFound:
            raise self._join_failed(
                f'bot "{name}" no longer exists; ask an admin to add it again', remote, name
            ) from None
        spec = user.get("spec", {})
        identity = Identity(
            username=name,
            roles=tuple(spec.get("roles", [])),
            kind=KIND_BOT,
            traits=spec.get("traits", {}),
            login_ip=remote.rsplit(":", 1)[0],
        )
        ttl = self.certs.capped_ttl(identity, ttl or BOT_CERT_TTL)
        cert = self.certs.sign_user(identity, public_key_pem, ttl)
        now = self.ctx.clock()
        record["last_join"] = now.isoformat()
        self.bots.put(name, record)
        self.ctx.emit(
            "bot.join",
            "TJ001I",
            bot_name=name,
            user_name=name,
            method="token",
            roles=list(identity.roles),
            success=True,
            **{"addr.remote": remote},
        )
        return cert, replace(identity, expires=now + ttl)

    # --- pctl auth sign --user ---------------------------------------------------------------------
    def check_impersonate(self, actor: Identity, target: str, doc: dict) -> None:
        """Refuse, with what would be needed, unless ``actor`` may sign certificates for ``target``."""
        if actor.is_admin:
            return
        if actor.is_host:
            raise AccessDenied("a host identity may not sign certificates for users")
        if actor.username == target:
            return
        if actor.impersonator:
            raise AccessDenied(
                f'this certificate was itself signed by "{actor.impersonator}" for {actor.username}; '
                "it cannot sign certificates for other users"
            )
        spec = doc.get("spec", {})
        target_roles = [str(r) for r in spec.get("roles", [])]
        context = {
            "user": {
                "metadata": {"name": actor.username},
                "spec": {"roles": list(actor.roles), "traits": actor.traits},
            },
            "impersonate_user": {
                "metadata": {"name": target, "labels": doc.get("metadata", {}).get("labels") or {}},
                "spec": {"roles": target_roles, "traits": spec.get("traits", {})},
            },
        }
        checker = self.ctx.checker(actor)
        for role in checker.roles:
            for rule in role.spec.deny.rules or []:
                if _rule_targets(rule, "user", "impersonate") and _holds(rule.where, context):
                    raise AccessDenied(
                        f'you may not sign certificates for "{target}": a deny rule in your role '
                        f'"{role.name}" forbids impersonating users'
                    )
            deny = role.spec.deny.impersonate
            if (
                deny is not None
                and _holds(deny.where, context)
                and (
                    matchers.match_entry(deny.users or [], target)
                    or any(matchers.match_entry(deny.roles or [], r) for r in target_roles)
                )
            ):
                raise AccessDenied(
                    f'you may not sign certificates for "{target}": your role "{role.name}" denies impersonating them'
                )
        for role in checker.roles:
            for rule in role.spec.allow.rules or []:
                if _rule_targets(rule, "user", "impersonate") and _holds(rule.where, context):
                    return
            allow = role.spec.allow.impersonate
            if (
                allow is not None
                and _holds(allow.where, context)
                and matchers.match_entry(allow.users or [], target)
                and all(matchers.match_entry(allow.roles or [], r) for r in target_roles)
            ):
                return
        raise AccessDenied(
            f'you may not sign certificates for "{target}": none of your roles ({", ".join(actor.roles) or "none"}) '
            f"allows impersonating them; run pctl on the auth host (the admin identity), or ask an admin for a role "
            f'with allow.impersonate.users ["{target}"] and its roles, or a rule allowing verb "impersonate" on "user"',
            detail=f"roles {list(actor.roles)}; target roles {target_roles}",
        )

    def sign_for(
        self,
        actor: Identity,
        target: str,
        public_key_pem: str,
        ttl: timedelta | None,
        database: str | None,
        db_user: str,
        db_name: str,
        databases: Any,
    ) -> tuple[bytes, Identity]:
        """`pctl auth sign --user=TARGET`: a user (or db-routed) certificate for someone, after the checks."""
        try:
            doc = self.ctx.users.get(target)
        except NotFound:
            raise NotFound(f'user "{target}" does not exist; "pctl users ls" and "pctl bots ls" list them') from None
        self.check_impersonate(actor, target, doc)
        spec = doc.get("spec", {})
        if actor.is_admin:
            impersonator = ""  # the cluster's own admin identity issues plain certificates
        elif actor.username == target:
            impersonator = actor.impersonator
        else:
            impersonator = actor.username
        identity = Identity(
            username=target,
            roles=tuple(spec.get("roles", [])),
            kind=KIND_BOT if self.bots.exists(target) else KIND_USER,
            traits=spec.get("traits", {}),
            impersonator=impersonator,
        )
        ttl = self.certs.capped_ttl(identity, ttl)
        now = self.ctx.clock()
        if actor.expires is not None and not actor.is_admin:
            left = actor.expires - now
            if left <= timedelta(0):
                raise AccessDenied("your certificate has expired; log in again")
            ttl = min(ttl, left)  # nobody signs past their own certificate
        identity = replace(identity, expires=now + ttl)
        if database:
            cert, route = self.certs.db_cert(identity, public_key_pem, database, db_user, db_name, ttl, databases)
            identity = identity.with_route(route)
        else:
            cert = self.certs.sign_user(identity, public_key_pem, ttl)
        return cert, identity


def _rule_targets(rule: Any, resource: str, verb: str) -> bool:
    resources = rule.resources or []
    verbs = rule.verbs or []
    return (resource in resources or matchers.WILDCARD in resources) and (verb in verbs or matchers.WILDCARD in verbs)


def _holds(where: str | None, context: dict[str, Any]) -> bool:
    return where is None or bool(parse_where(where).evaluate(context))
