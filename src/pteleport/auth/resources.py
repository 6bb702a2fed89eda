"""`pctl create | get | rm` for every kind: role, user, db, token (dispatch and validation)."""

from __future__ import annotations

import re
from typing import Any

from common.errors import AlreadyExists, BadParameter, NotFound
from common.identity import Identity
from common.kinds import KIND_ALIASES
from pteleport.auth.context import AuthContext, secret_key
from pteleport.auth.databases import DatabaseService
from pteleport.auth.locks import LockService
from pteleport.auth.tokens import TokenService, check_allow_rules, check_token_value, token_id
from pteleport.auth.users import UserService, check_name
from pteleport.rbac.presets import PRESET_ROLE_NAMES
from pteleport.rbac.role import parse_role, role_to_dict

USER_FIELDS = {"kind", "version", "metadata", "spec", "status"}


def canonical_kind(kind: str) -> str:
    found = KIND_ALIASES.get(kind.lower())
    if found is None:
        raise BadParameter(f'unknown resource kind "{kind}"; use role, user, db, token, lock or db_server')
    return found


def check_user_resource(doc: dict) -> dict:
    name = (doc.get("metadata") or {}).get("name")
    unknown = set(doc) - USER_FIELDS
    if unknown:
        raise BadParameter(f'user "{name}": unknown field {sorted(unknown)[0]}')
    if doc.get("version", "v2") != "v2":
        raise BadParameter(f'user "{name}": version "{doc.get("version")}" is not supported (use v2)')
    if not isinstance(name, str):
        raise BadParameter("user: metadata.name is required")
    check_name(name)
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise BadParameter(f'user "{name}": spec must be a mapping')
    for key in spec:
        if key not in ("roles", "traits", "created_by", "expires", "status"):
            raise BadParameter(f'user "{name}": unknown field spec.{key}')
    roles = spec.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise BadParameter(f'user "{name}": spec.roles must be a list of role names')
    traits = spec.get("traits", {}) or {}
    if not isinstance(traits, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in traits.values()
    ):
        raise BadParameter(f'user "{name}": spec.traits must map names to lists of strings')
    return {"kind": "user", "version": "v2", "metadata": {"name": name}, "spec": {"roles": roles, "traits": traits}}


NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def check_token_resource(doc: dict) -> dict:
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    if doc.get("version", "v2") != "v2":
        raise BadParameter(f'token: version "{doc.get("version")}" is not supported (use v2)')
    unknown = set(doc) - {"kind", "version", "metadata", "spec"}
    if unknown:
        raise BadParameter(f"token: unknown field {sorted(unknown)[0]}")
    if not isinstance(meta.get("name"), str):
        raise BadParameter("token: metadata.name (the token value) is required")
    method = spec.get("join_method", "token")
    if method not in ("token", "iam"):
        raise BadParameter(f'token: spec.join_method "{method}" is not supported (use token or iam)')
    if method == "iam":
        if not NAME_RE.fullmatch(meta["name"]):
            raise BadParameter("token: metadata.name of an IAM token is a name of letters, digits, '.', '_' and '-'")
        spec["allow"] = check_allow_rules(spec.get("allow"), "spec.allow[].aws_account")
    else:
        check_token_value(meta["name"], "token: metadata.name (the secret value)")
        if "allow" in spec:
            raise BadParameter("token: spec.allow is for IAM tokens; add spec.join_method: iam")
    roles = spec.get("roles")
    if not isinstance(roles, list) or not roles:
        raise BadParameter("token: spec.roles must be a non-empty list, e.g. [Db]")
    for key in spec:
        if key not in ("roles", "join_method", "suggested_labels", "bot_name", "db_scope", "allow"):
            raise BadParameter(f"token: unknown field spec.{key}")
    scope = spec.get("db_scope")
    if scope is not None:
        names = scope.get("db_names", []) if isinstance(scope, dict) else None
        labels = scope.get("db_labels", {}) if isinstance(scope, dict) else None
        if (
            not isinstance(names, list)
            or not all(isinstance(n, str) for n in names)
            or not isinstance(labels, dict)
            or not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in labels.values())
            or set(scope) - {"db_names", "db_labels"}
        ):
            raise BadParameter(
                "token: spec.db_scope must be {db_names: [names], db_labels: {label: [values]}}, e.g. "
                "{db_names: [aurora]}"
            )
    return doc


class ResourceService:
    def __init__(
        self, ctx: AuthContext, users: UserService, tokens: TokenService, dbs: DatabaseService, locks: LockService
    ) -> None:
        self.ctx = ctx
        self.users = users
        self.tokens = tokens
        self.dbs = dbs
        self.locks = locks

    def validate(self, doc: Any) -> tuple[str, dict]:
        """Check one document without storing it (all are checked before any is stored)."""
        if not isinstance(doc, dict):
            raise BadParameter("each YAML document must be a mapping with kind, version, metadata and spec")
        kind = doc.get("kind")
        if not isinstance(kind, str):
            raise BadParameter("a resource is missing its kind (role, user, db or token)")
        kind = canonical_kind(kind)
        if kind == "role":
            return kind, role_to_dict(parse_role(doc))
        if kind == "user":
            return kind, check_user_resource(doc)
        if kind == "db":
            from pteleport.auth.databases import parse_db

            return kind, parse_db(doc)
        if kind == "token":
            return kind, check_token_resource(doc)
        if kind == "lock":
            from pteleport.rbac.locks import lock_to_dict, parse_lock

            return kind, lock_to_dict(parse_lock(doc))
        raise BadParameter(f'resources of kind "{kind}" cannot be created with pctl create')

    def create(self, actor: Identity, docs: list[Any], force: bool) -> list[str]:
        checked = [self.validate(doc) for doc in docs]
        if not force:
            for kind, doc in checked:
                if kind == "role" and self.ctx.roles.exists(doc["metadata"]["name"]):
                    raise AlreadyExists(
                        f'role "{doc["metadata"]["name"]}" already exists; pass -f/--force to overwrite it'
                    )
        results = []
        for kind, doc in checked:
            name = doc["metadata"]["name"]
            if kind == "role":
                exists = self.ctx.roles.exists(name)
                self.ctx.authorize(actor, "role", "update" if exists else "create")
                self.ctx.roles.put(name, doc)
                if exists:
                    self.ctx.emit("role.updated", "T9002I", user=actor.username, name=name)
                else:
                    self.ctx.emit("role.created", "T9000I", user=actor.username, name=name)
                results.append(f'role "{name}" has been {"updated" if exists else "created"}')
            elif kind == "user":
                outcome = self.users.create_from_resource(actor, doc, force)
                results.append(f'user "{name}" has been {outcome}')
            elif kind == "db":
                outcome = self.dbs.put_resource(actor, doc, force)
                results.append(f'database "{name}" has been {outcome}')
            elif kind == "lock":
                outcome = self.locks.put_resource(actor, doc, force)
                results.append(f'lock "{name}" has been {outcome}')
            else:
                outcome = self.tokens.put_resource(actor, doc, force)
                results.append(f"token has been {outcome}")
        return results

    def get(self, actor: Identity, kind: str, name: str | None) -> list[dict]:
        kind = canonical_kind(kind)
        if kind == "role":
            self.ctx.authorize(actor, "role", "read" if name else "list")
            if name:
                return [role_to_dict(self.ctx.role(name))]
            return self.ctx.role_docs()
        if kind == "user":
            if name:
                self.ctx.authorize(actor, "user", "read")
                return [self.users.get(name)]
            return self.users.list(actor)
        if kind == "db":
            docs = self.dbs.resources(actor)
            if name:
                docs = [d for d in docs if d["metadata"]["name"] == name]
                if not docs:
                    raise NotFound(f'db "{name}" does not exist')
            return docs
        if kind == "db_server":
            self.ctx.authorize(actor, "db_server", "list")
            docs = self.dbs.servers()
            return [d for d in docs if not name or d["metadata"]["name"] == name]
        if kind == "lock":
            docs = self.locks.list(actor)
            if name:
                docs = [d for d in docs if d["metadata"]["name"] == name]
                if not docs:
                    raise NotFound(f'lock "{name}" does not exist; "pctl locks ls" lists locks')
            return docs
        docs = self.tokens.list(actor)
        if name:  # a token's id, or its value
            docs = [d for d in docs if d["metadata"]["name"] in (name, token_id(name))]
            if not docs:
                raise NotFound("token does not exist")
        return docs

    def remove(self, actor: Identity, kind: str, name: str) -> str:
        kind = canonical_kind(kind)
        if kind == "role":
            self.ctx.authorize(actor, "role", "delete")
            if name in PRESET_ROLE_NAMES:
                raise BadParameter(f'role "{name}" is a preset role and cannot be deleted')
            for doc in self.ctx.users.list():
                if name in doc["spec"].get("roles", []):
                    raise BadParameter(
                        f'role "{name}" is still assigned to user "{doc["metadata"]["name"]}"; '
                        "change that user's roles first"
                    )
            try:
                self.ctx.roles.delete(name)
            except NotFound:
                raise NotFound(f'role "{name}" does not exist') from None
            self.ctx.emit("role.deleted", "T9001I", user=actor.username, name=name)
            return f'role "{name}" has been deleted'
        if kind == "user":
            self.users.remove(actor, name)
            return f'user "{name}" has been deleted'
        if kind == "db":
            self.dbs.remove(actor, name)
            return f'database "{name}" has been deleted'
        if kind == "token":
            self.tokens.remove(actor, name)
            return f"token {name} has been deleted"
        if kind == "lock":
            self.locks.remove(actor, name)
            return f'lock "{name}" has been deleted'

        raise BadParameter(f'resources of kind "{kind}" cannot be removed')


__all__ = ["ResourceService", "canonical_kind", "secret_key"]
