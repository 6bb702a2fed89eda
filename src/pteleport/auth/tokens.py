"""Join tokens (`pctl tokens`) and joining: a token plus a public key become a host certificate.

A token is stored only as its SHA-256 (the key ``tokens/<sha256>``); the stored document
holds no value. Its public id, the first 16 hex digits of that hash, names it in
``pctl tokens ls`` and ``pctl tokens rm``. The value itself is shown once, in the answer
to ``pctl tokens add``. Static tokens from the config file are listed by id too.
"""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from common.errors import AccessDenied, AlreadyExists, BadParameter, CompareFailed, NotFound, NotLoggedIn
from common.identity import HostScope, Identity
from common.tls import load_public_key
from pteleport.auth.certs import CertService
from pteleport.auth.context import AuthContext, secret_key
from pteleport.auth.hosts import HostService
from pteleport.auth.throttle import SecretGuard

DEFAULT_TTL = timedelta(minutes=30)
# Bots join with their own single-use tokens (pctl bots add), never through these.
JOIN_ROLES = {"db": "Db", "proxy": "Proxy", "node": "Node", "app": "App"}
MIN_TOKEN_LENGTH = 16
ID_LENGTH = 16
ID_RE = re.compile(r"^[0-9a-f]{16}$")
INVALID_TOKEN = 'the join token is invalid or has expired; create a new one with "pctl tokens add --type=db"'  # noqa: S105
EXPIRED_TOKEN = 'the join token expired at {when} UTC; create a new one with "pctl tokens add --type=db"'  # noqa: S105
# An expired token is kept this long (hashed, as ever), so that a join with it can be told
# "expired" rather than "invalid"; listings leave it out.
EXPIRED_KEPT = timedelta(days=7)


def token_id(value: str) -> str:
    """The public id of a token: the first 16 hex digits of its SHA-256 (not usable to join)."""
    return secret_key(value)[:ID_LENGTH]


def check_token_value(value: str, what: str = "a token value") -> None:
    """Refuse values that are short enough to guess, or that look like a token id."""
    if len(value) < MIN_TOKEN_LENGTH:
        raise BadParameter(
            f"{what} must be at least {MIN_TOKEN_LENGTH} characters long (it is {len(value)}); "
            "leave it out to get a random one"
        )
    if ID_RE.fullmatch(value):
        raise BadParameter(
            f"{what} looks like a token id (16 hex digits, as pctl tokens ls and pctl get tokens show); "
            "the cluster keeps only a token's hash, so a listed token cannot be created again: "
            "use the secret value itself, or a new one"
        )


def parse_static(static: str) -> tuple[list[str], str]:
    """``"db,app:VALUE"`` from ``auth_service.tokens`` -> (join roles, value)."""
    kinds, _, value = static.rpartition(":")
    return normalize_roles(kinds.split(",")), value


def normalize_roles(types: list[str]) -> list[str]:
    roles = []
    for t in types:
        role = JOIN_ROLES.get(t.strip().lower())
        if role is None:
            raise BadParameter(f'unknown token type "{t}"; use one of: {", ".join(JOIN_ROLES)}')
        roles.append(role)
    if not roles:
        raise BadParameter("pass --type, e.g. --type=db")
    return roles


def token_doc(
    name: str,
    roles: list[str],
    expires: datetime | None,
    labels: dict | None = None,
    scope: HostScope | None = None,
    allow: list[dict] | None = None,
) -> dict:
    """A token resource; ``name`` is the token's id in storage and listings, its value only
    in the answer to ``pctl tokens add``. ``spec.db_scope`` limits what its agents may serve.
    With ``allow`` it is an IAM join token (``join_method: iam``), whose name is no secret."""
    meta: dict[str, Any] = {"name": name}
    if expires is not None:
        meta["expires"] = expires.isoformat()
    spec: dict[str, Any] = {"roles": roles, "join_method": "iam" if allow else "token"}
    if allow:
        spec["allow"] = allow
    if labels:
        spec["suggested_labels"] = labels
    if scope is not None and not scope.unscoped:
        spec["db_scope"] = scope.to_dict()
    return {"kind": "token", "version": "v2", "metadata": meta, "spec": spec}


def token_scope(doc: dict) -> HostScope:
    """The databases an agent joining with this token may serve (none given: any)."""
    return HostScope.from_dict((doc.get("spec") or {}).get("db_scope"))


def token_expires(doc: dict) -> datetime | None:
    when = (doc.get("metadata") or {}).get("expires")
    try:
        return datetime.fromisoformat(when) if when else None
    except (TypeError, ValueError):
        return None


def _kept_until(expires: datetime | None) -> datetime | None:
    """The storage expiry of a token: a while after the token itself expires."""
    return None if expires is None else expires + EXPIRED_KEPT


def is_iam(doc: dict) -> bool:
    return (doc.get("spec") or {}).get("join_method") == "iam"


def _stored(doc: dict, key: str) -> dict:
    """The document to store or list: named by the id, whatever the name was (an IAM token keeps its name)."""
    if is_iam(doc):
        return doc
    meta = {**doc.get("metadata", {}), "name": key[:ID_LENGTH]}
    return {**doc, "metadata": meta}


def check_allow_rules(allow: Any, what: str = "spec.allow") -> list[dict]:
    """IAM token rules: a non-empty list of {aws_account, aws_arn}, each with at least one of them."""
    if not isinstance(allow, list) or not allow:
        raise BadParameter(f"an IAM join token needs at least one allow rule; pass {what}=ACCOUNT (12 digits)")
    rules = []
    for rule in allow:
        if not isinstance(rule, dict) or set(rule) - {"aws_account", "aws_arn"}:
            raise BadParameter("each allow rule of an IAM token is {aws_account: ACCOUNT, aws_arn: ARN-GLOB}")
        account, arn = rule.get("aws_account") or "", rule.get("aws_arn") or ""
        if not isinstance(account, str) or not isinstance(arn, str) or not (account or arn):
            raise BadParameter("an allow rule of an IAM token needs aws_account or aws_arn (or both)")
        if account and not re.fullmatch(r"\d{12}", account):
            raise BadParameter(f'aws_account "{account}" is not an AWS account id; use its 12 digits')
        if arn and not arn.startswith("arn:"):
            raise BadParameter(f'aws_arn "{arn}" is not an ARN; use e.g. arn:aws:sts::123456789012:assumed-role/db-agent/*')
        rules.append({k: v for k, v in (("aws_account", account), ("aws_arn", arn)) if v})
    return rules


class TokenService:
    def __init__(self, ctx: AuthContext, certs: CertService, hosts: HostService) -> None:
        self.ctx = ctx
        self.certs = certs
        self.hosts = hosts
        self.guard = SecretGuard(lambda fields: ctx.emit("instance.join", "TJ002E", **fields), ctx.clock)

    def add(
        self,
        actor: Identity,
        types: list[str],
        ttl: timedelta | None,
        value: str | None,
        labels: dict | None = None,
        db_names: list[str] | None = None,
        join_method: str = "token",
        allow: list[dict] | None = None,
    ) -> dict:
        self.ctx.authorize(actor, "token", "create")
        roles = normalize_roles(types)
        if join_method not in ("token", "iam"):
            raise BadParameter(f'unknown join method "{join_method}"; use token or iam')
        if join_method == "iam":
            allow = check_allow_rules(allow, "--allow-aws-account")
        elif allow:
            raise BadParameter("--allow-aws-account and --allow-aws-arn are for IAM tokens; add --join-method=iam")
        ttl = ttl or DEFAULT_TTL
        if ttl <= timedelta(0):
            raise BadParameter("--ttl must be positive")
        if value is not None and join_method == "token":
            check_token_value(value, "--value")
        token = value or (f"iam-{secrets.token_hex(8)}" if join_method == "iam" else secrets.token_hex(16))
        expires = self.ctx.clock() + ttl
        scope = None
        if db_names or labels:
            if roles != ["Db"]:
                raise BadParameter("--db-name and --labels scope a token for database services; use them with --type=db only")
            scope = HostScope.of(db_names or [], {k: v if isinstance(v, list) else [v] for k, v in (labels or {}).items()})
        key = secret_key(token)
        name = token if join_method == "iam" else token_id(token)
        doc = token_doc(name, roles, expires, labels, scope, allow if join_method == "iam" else None)
        try:
            self.ctx.tokens.create(key, doc, expires=_kept_until(expires))
        except AlreadyExists:
            raise AlreadyExists("a token with this value already exists") from None
        self.ctx.emit("join_token.create", "TJT00I", user=actor.username, roles=roles, join_method=join_method)
        # The one place the value is ever shown: the answer to the admin who made it.
        return {**doc, "metadata": {**doc["metadata"], "name": token}}

    def put_resource(self, actor: Identity, doc: dict, force: bool) -> str:
        """`pctl create` of a token resource: ``metadata.name`` is the secret; only its hash is kept."""
        token = doc["metadata"]["name"]
        if not is_iam(doc):
            check_token_value(token, "a token's metadata.name (its secret value)")
        expires = datetime.fromisoformat(doc["metadata"]["expires"]) if doc["metadata"].get("expires") else None
        key = secret_key(token)
        exists = self.ctx.tokens.exists(key)
        if exists and not force:
            raise AlreadyExists("this token already exists; pass -f/--force to overwrite it")
        self.ctx.authorize(actor, "token", "update" if exists else "create")
        normalize_roles([r.lower() for r in doc["spec"]["roles"]])
        self.ctx.tokens.put(key, _stored(doc, key), expires=_kept_until(expires))
        self.ctx.emit("join_token.create", "TJT00I", user=actor.username, roles=doc["spec"]["roles"])
        return "updated" if exists else "created"

    def list(self, actor: Identity) -> list[dict]:
        """Every token by id (never by value): stored ones, then the config file's static ones."""
        self.ctx.authorize(actor, "token", "list")
        now = self.ctx.clock()
        docs = [
            _stored(doc, key)
            for key, doc, _item in self.ctx.tokens.items()
            if (token_expires(doc) or now) >= now
        ]
        for static in self.ctx.settings.static_tokens:
            roles, value = parse_static(static)
            docs.append(token_doc(token_id(value), roles, None))
        return docs

    def remove(self, actor: Identity, token: str) -> None:
        """Delete a token given its value or its id."""
        self.ctx.authorize(actor, "token", "delete")
        keys = [secret_key(token)]
        if ID_RE.fullmatch(token):
            keys += [key for key, _doc, _item in self.ctx.tokens.items() if key.startswith(token)]
        for key in keys:
            try:
                self.ctx.tokens.delete(key)
                return
            except NotFound:
                continue
        static_values = [parse_static(static)[1] for static in self.ctx.settings.static_tokens]
        if any(token in (value, token_id(value)) for value in static_values):
            raise BadParameter(
                "this is a static token from the config file; remove it from auth_service.tokens and restart"
            )
        raise NotFound('no token has this value or id; "pctl tokens ls" lists the ids of the tokens')

    def scrub_stored(self) -> int:
        """Start-up: drop token values that older versions kept in the stored documents."""
        scrubbed = 0
        for key, doc, item in list(self.ctx.tokens.items()):
            if doc.get("metadata", {}).get("name") == key[:ID_LENGTH] or is_iam(doc):
                continue
            try:
                self.ctx.tokens.swap(item, _stored(doc, key), expires=item.expires)
                scrubbed += 1
            except (CompareFailed, NotFound):
                continue  # changed or removed meanwhile (another auth process)
        return scrubbed

    def find(self, token: str) -> dict:
        """The token document for a value (or an IAM token's name); AccessDenied / NotLoggedIn when unusable."""
        return self._find(token)

    def _find(self, token: str) -> dict:
        wanted = secret_key(token)
        for static in self.ctx.settings.static_tokens:
            roles, value = parse_static(static)
            if secrets.compare_digest(secret_key(value), wanted):  # equal lengths: nothing leaks by timing
                return token_doc(token_id(value), roles, None)
        try:
            doc = self.ctx.tokens.get(secret_key(token))
        except NotFound:
            raise AccessDenied(INVALID_TOKEN) from None
        expires = token_expires(doc)
        if expires is not None and expires <= self.ctx.clock():
            # A credential that ran out: 401, so a joining agent can say "expired", not "refused".
            raise NotLoggedIn(EXPIRED_TOKEN.format(when=f"{expires.astimezone(UTC):%Y-%m-%d %H:%M:%S}"))
        return doc

    def join(
        self, token: str, role: str, claimed_host_id: str | None, hostname: str, public_key_pem: str, remote: str
    ) -> tuple[bytes, str]:
        """Check the token's type and expiry, then sign a host certificate with a host id auth picks.

        Returns the certificate and the host id. A joiner never chooses its host id: a request
        that names one is refused (and audited), so no join can take over another host. The
        token's scope is bound to the new host (its certificate and ``hosts/<host_id>``).
        """
        key = load_public_key(public_key_pem)
        failure = {"role": role, "host_id": claimed_host_id or None, "success": False, "addr.remote": remote}
        self.guard.check(remote, failure)
        try:
            doc = self._find(token)
        except (AccessDenied, NotLoggedIn) as exc:
            self.guard.failed(remote, {**failure, "error": str(exc)})
            raise

        if is_iam(doc):
            message = (
                f'token "{doc["metadata"]["name"]}" joins by AWS IAM only; set join_params.join_method: iam'
                " on the database service (its name is not a secret)"
            )
            self.guard.failed(remote, {**failure, "error": message})
            raise AccessDenied(message)
        return self.admit(doc, role, claimed_host_id, hostname, key, remote, "token")

    def admit(
        self,
        doc: dict,
        role: str,
        claimed_host_id: str | None,
        hostname: str,
        key: Any,
        remote: str,
        method: str,
        **fields: Any,
    ) -> tuple[bytes, str]:
        """A joiner that proved its token (``method``): the host-id, role and scope rules, then the certificate."""
        failure = {"role": role, "host_id": claimed_host_id or None, "success": False, "addr.remote": remote}

        def refuse(message: str) -> AccessDenied:
            self.ctx.emit("instance.join", "TJ002E", nodename=hostname or None, error=message, method=method, **failure)
            return AccessDenied(message)

        if claimed_host_id:
            if self.hosts.exists(claimed_host_id):
                raise refuse(f'host id "{claimed_host_id}" belongs to another host; the cluster assigns host ids at join')
            raise refuse("the cluster assigns host ids at join; send the join request without host_id")
        if role not in doc["spec"]["roles"]:
            raise refuse(
                f"this token cannot join a {role} service (it allows {', '.join(doc['spec']['roles'])}); "
                "create one with the right --type"
            )
        scope = token_scope(doc) if role == "Db" else HostScope()
        host_id = str(uuid.uuid4())
        cert = self.certs.sign_host(host_id, role, key, [hostname] if hostname else [], scope=scope)
        self.hosts.record_join(host_id, role, hostname, scope, doc["metadata"]["name"])
        self.ctx.emit(
            "instance.join",
            "TJ002I",
            role=role,
            host_id=host_id,
            nodename=hostname,
            success=True,
            method=method,
            **fields,
            db_scope=None if scope.unscoped else scope.to_dict(),
            **{"addr.remote": remote},
        )
        return cert, host_id
