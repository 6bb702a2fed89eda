"""The access checker: what a user's roles (with their traits) allow, and why not when they do not.

Database access follows Teleport's ``RoleSet.checkAccess``:

1. Deny first, any role: if its deny ``db_labels`` match the database, the database is
   blocked outright; deny ``db_users`` / ``db_names`` are greedy: an entry matching the
   requested db user (or db name) denies it on every database, whatever labels the role has.
2. Then allow: ONE role must match the labels, the db user and the db name together;
   labels from one role never combine with db users from another.

Templates (``{{internal.db_users}}`` ...) are expanded with the user's traits first. A label
key that does not expand to exactly one value makes an allow selector match nothing and is
skipped in a deny selector. ``db_labels_expression`` is not evaluated: in allow the role
grants no database; in deny it blocks every database (fail closed).

Visibility (``can_see_db``): a database is listed when some allow role's labels match it,
no deny role's labels match it, and no role denies every db user or every db name ("*").

Automatic database users (``db_user_mode``, ``db_roles``): among the roles whose allow
labels match the database, the most permissive ``create_db_user_mode`` wins
(``best_effort_drop`` > ``keep`` > ``off``; the legacy ``create_db_user: true`` reads as
``keep``); the database roles are their allow ``db_roles`` minus any role's deny
``db_roles``. With the mode on, ``check_db_access(..., auto_user=True)`` does not match
``db_users`` (the db user is the pteleport user name), as in Teleport.

Rules (``check_rule``): deny rules first, then allow; resources and verbs match exactly or
by "*", and "read" also grants "readnosecrets". A rule with ``where`` matches only when a
context is given and the predicate holds for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from common.errors import AccessDenied, BadParameter
from pteleport.rbac import matchers, templates
from pteleport.rbac.matchers import WILDCARD
from pteleport.rbac.role import Conditions, Role, Rule
from pteleport.rbac.where import parse_where

DEFAULT_MAX_SESSION_TTL = timedelta(hours=30)


@dataclass(frozen=True)
class _Side:
    """One side of one role with templates expanded."""

    labels: dict[str, list[str]] | None  # None: cannot match (a label key did not expand)
    expression: str | None
    users: list[str]
    names: list[str]
    db_roles: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Expanded:
    role: Role
    allow: _Side
    deny: _Side


class AccessChecker:
    """Answers access questions for one user: their roles and their traits."""

    def __init__(self, roles: Sequence[Role], traits: Mapping[str, Sequence[str]] | None = None) -> None:
        self._roles = list(roles)
        self._traits: dict[str, list[str]] = {k: list(v) for k, v in (traits or {}).items()}
        self._expanded = [
            _Expanded(
                role,
                _expand_side(role.spec.allow, self._traits, deny=False),
                _expand_side(role.spec.deny, self._traits, deny=True),
            )
            for role in self._roles
        ]

    @property
    def role_names(self) -> list[str]:
        return [role.name for role in self._roles]

    @property
    def roles(self) -> list[Role]:
        return list(self._roles)

    @property
    def traits(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self._traits.items()}

    # --- databases -------------------------------------------------------------------------

    def check_db_access(
        self, db_name: str, db_labels: Mapping[str, str], db_user: str, database: str, auto_user: bool = False
    ) -> None:
        """Raise ``AccessDenied`` (saying what would be needed) unless the roles allow this connection.

        ``auto_user``: the database user is provisioned automatically, so ``db_users`` is not matched.
        """
        if not db_user:
            raise BadParameter(f'choose a database user to connect to "{db_name}" (--db-user)')
        if not database:
            raise BadParameter(f'choose a database name to connect to in "{db_name}" (--db-name)')
        for what, value in (("db user", db_user), ("db name", database)):
            if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
                raise BadParameter(f"the {what} {value!r} contains control characters; use a plain name")
        prefix = f'access to database "{db_name}" denied'
        labels_text = matchers.format_labels(db_labels)
        self._check_deny_labels(db_name, db_labels)
        for exp in self._expanded:
            if not auto_user and matchers.match_entry(exp.deny.users, db_user):
                raise AccessDenied(
                    f'{prefix}: your roles forbid db user "{db_user}"'
                    + _alternatives("db users", self.allowed_db_users(db_labels)[0]),
                    detail=f'role "{exp.role.name}" denies db_users {_fmt(exp.deny.users)}',
                )
            if matchers.match_entry(exp.deny.names, database):
                raise AccessDenied(
                    f'{prefix}: your roles forbid db name "{database}"'
                    + _alternatives("db names", self.allowed_db_names(db_labels)[0]),
                    detail=f'role "{exp.role.name}" denies db_names {_fmt(exp.deny.names)}',
                )

        candidates = [exp for exp in self._expanded if _allow_labels_match(exp.allow, db_labels)]
        if not candidates:
            skipped = [exp.role.name for exp in self._expanded if exp.allow.expression]
            detail = f"roles {self.role_names}; none has allow db_labels matching {labels_text}"
            if skipped:
                detail += f"; not evaluated (db_labels_expression unsupported): {skipped}"
            raise AccessDenied(
                f'{prefix}: no role allows database "{db_name}" ({labels_text}); '
                "ask an admin for a role whose db_labels match it",
                detail=detail,
            )
        for exp in candidates:
            user_ok = auto_user or matchers.match_entry(exp.allow.users, db_user)
            if user_ok and matchers.match_entry(exp.allow.names, database):
                return

        user_somewhere = auto_user or any(matchers.match_entry(exp.allow.users, db_user) for exp in candidates)
        name_somewhere = any(matchers.match_entry(exp.allow.names, database) for exp in candidates)
        detail = "roles matching the labels: " + ", ".join(
            f'"{exp.role.name}" (db_users {_fmt(exp.allow.users)}, db_names {_fmt(exp.allow.names)})'
            for exp in candidates
        )
        if user_somewhere and name_somewhere:
            raise AccessDenied(
                f'{prefix}: db user "{db_user}" and db name "{database}" are allowed by different roles, '
                "but one role must allow both; ask an admin for a role that allows them together",
                detail=detail,
            )
        users, _ = self.allowed_db_users(db_labels)
        names, _ = self.allowed_db_names(db_labels)
        asked = []
        if not user_somewhere:
            asked.append(f'db user "{db_user}"')
        if not name_somewhere:
            asked.append(f'db name "{database}"')
        raise AccessDenied(
            f"{prefix}: your roles allow {_listing('db users', users)} and "
            f"{_listing('db names', names)} there; you asked for {' and '.join(asked)}",
            detail=detail,
        )

    def can_see_db(self, db_labels: Mapping[str, str]) -> bool:
        """Whether a database belongs in the user's listing (labels only; see the module doc)."""
        if self._deny_labels_role(db_labels) is not None:
            return False
        for exp in self._expanded:
            if WILDCARD in exp.deny.users or WILDCARD in exp.deny.names:
                return False
        return any(_allow_labels_match(exp.allow, db_labels) for exp in self._expanded)

    def allowed_db_users(self, db_labels: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """(allowed, denied) db users on a database; denied ``["*"]`` means every one."""
        return self._entries(db_labels, "users")

    def allowed_db_names(self, db_labels: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """(allowed, denied) db names on a database; denied ``["*"]`` means every one."""
        return self._entries(db_labels, "names")

    def default_db_user(self, db_labels: Mapping[str, str]) -> str | None:
        """The db user to use when none is given: set only if exactly one concrete user is allowed."""
        return _single(self.allowed_db_users(db_labels)[0])

    def default_db_name(self, db_labels: Mapping[str, str]) -> str | None:
        """The db name to use when none is given: set only if exactly one concrete name is allowed."""
        return _single(self.allowed_db_names(db_labels)[0])

    def _entries(self, db_labels: Mapping[str, str], which: str) -> tuple[list[str], list[str]]:
        if self._deny_labels_role(db_labels) is not None:
            return [], [WILDCARD]
        denied = _dedupe(v for exp in self._expanded for v in getattr(exp.deny, which))
        allowed = _dedupe(
            v for exp in self._expanded if _allow_labels_match(exp.allow, db_labels) for v in getattr(exp.allow, which)
        )
        if WILDCARD in denied:
            return [], denied
        kept = [v for v in allowed if not (matchers.is_concrete(v) and matchers.match_entry(denied, v))]
        return kept, denied

    def _deny_labels_role(self, db_labels: Mapping[str, str]) -> _Expanded | None:
        for exp in self._expanded:
            if exp.deny.expression or (
                exp.deny.labels is not None and matchers.match_labels(exp.deny.labels, db_labels)
            ):
                return exp
        return None

    def _check_deny_labels(self, db_name: str, db_labels: Mapping[str, str]) -> None:
        exp = self._deny_labels_role(db_labels)
        if exp is None:
            return
        prefix = f'access to database "{db_name}" denied'
        if exp.deny.expression:
            raise AccessDenied(
                f"{prefix}: a deny rule in your roles uses db_labels_expression, which pteleport "
                "does not evaluate, so it blocks every database; ask an admin to use deny db_labels instead",
                detail=f'role "{exp.role.name}" sets deny db_labels_expression {exp.deny.expression!r}',
            )
        raise AccessDenied(
            f"{prefix}: a deny rule in your roles blocks this database "
            f"({matchers.format_labels(db_labels)}); ask an admin if you need it",
            detail=f'role "{exp.role.name}" denies db_labels {exp.deny.labels}',
        )

    # --- automatic database users ---------------------------------------------------------

    def db_user_mode(self, db_labels: Mapping[str, str]) -> str:
        """``off``, ``keep`` or ``best_effort_drop``: the most permissive among the roles that allow this database."""
        best = "off"
        for exp in self._expanded:
            if not _allow_labels_match(exp.allow, db_labels):
                continue
            options = exp.role.spec.options
            mode = options.create_db_user_mode
            if mode is None:
                mode = "keep" if _truthy(options.create_db_user) else "off"
            if _MODE_RANK[mode] > _MODE_RANK[best]:
                best = mode
        return best

    def db_roles(self, db_labels: Mapping[str, str]) -> list[str]:
        """The database roles an automatically created user gets here (allowed by matching roles, not denied)."""
        if self._deny_labels_role(db_labels) is not None:
            return []
        denied = _dedupe(v for exp in self._expanded for v in exp.deny.db_roles)
        allowed = _dedupe(
            v for exp in self._expanded if _allow_labels_match(exp.allow, db_labels) for v in exp.allow.db_roles
        )
        return [v for v in allowed if matchers.is_concrete(v) and not matchers.match_entry(denied, v)]

    # --- rules -----------------------------------------------------------------------------

    def rule_allows(self, resource: str, verb: str, context: Mapping[str, Any] | None = None) -> bool:
        """Whether the roles allow ``verb`` on ``resource`` (deny rules win)."""
        try:
            self.check_rule(resource, verb, context)
        except AccessDenied:
            return False
        return True

    def check_rule(self, resource: str, verb: str, context: Mapping[str, Any] | None = None) -> None:
        """Raise ``AccessDenied`` unless a rule allows ``verb`` on ``resource`` and none denies it."""
        for role in self._roles:
            for rule in role.spec.deny.rules or []:
                if _rule_targets(rule, resource, verb) and _where_holds(rule, context):
                    raise AccessDenied(
                        f"you are not allowed to {verb} {resource}: a deny rule in your roles forbids it",
                        detail=f'role "{role.name}" denies verbs {rule.verbs} on {rule.resources}',
                    )
        conditional: list[str] = []
        for role in self._roles:
            for rule in role.spec.allow.rules or []:
                if not _rule_targets(rule, resource, verb):
                    continue
                if _where_holds(rule, context):
                    return
                conditional.append(f"{rule.where}")
        if conditional:
            raise AccessDenied(
                f"you are not allowed to {verb} {resource}: your roles allow it only where {conditional[0]}",
                detail=f"roles {self.role_names}; conditions not met: {conditional}",
            )
        raise AccessDenied(
            f"you are not allowed to {verb} {resource}; "
            f'ask an admin for a role whose rules allow verb "{verb}" on "{resource}"',
            detail=f"roles {self.role_names}",
        )

    # --- options ---------------------------------------------------------------------------

    def disconnect_expired_cert(self) -> bool:
        """Whether sessions end when their certificate expires: true when any role says so (Teleport's rule)."""
        return any(role.spec.options.disconnect_expired_cert for role in self._roles)

    def max_session_ttl(self) -> timedelta:
        """The smallest ``max_session_ttl`` of the roles; unset (or zero) counts as 30h."""
        ttls = [role.spec.options.session_ttl() or DEFAULT_MAX_SESSION_TTL for role in self._roles]
        return min(ttls, default=DEFAULT_MAX_SESSION_TTL)


_MODE_RANK = {"off": 0, "keep": 1, "best_effort_drop": 2}


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "true", "on")
    return value is True


def _expand_side(cond: Conditions, traits: Mapping[str, Sequence[str]], *, deny: bool) -> _Side:
    return _Side(
        labels=_expand_labels(cond, traits, deny=deny),
        expression=cond.db_labels_expression or None,
        users=templates.expand_all(cond.db_users or [], traits),
        names=templates.expand_all(cond.db_names or [], traits),
        db_roles=templates.expand_all(cond.db_roles or [], traits),
    )


def _expand_labels(cond: Conditions, traits: Mapping[str, Sequence[str]], *, deny: bool) -> dict[str, list[str]] | None:
    labels: dict[str, list[str]] = {}
    for key, patterns in matchers.normalize_selector(cond.db_labels).items():
        keys = templates.expand(key, traits)
        if len(keys) != 1:
            if deny:
                continue
            return None
        labels.setdefault(keys[0], []).extend(templates.expand_all(patterns, traits))
    return labels


def _allow_labels_match(side: _Side, db_labels: Mapping[str, str]) -> bool:
    if side.expression or side.labels is None:
        return False
    return matchers.match_labels(side.labels, db_labels)


def _rule_targets(rule: Rule, resource: str, verb: str) -> bool:
    if WILDCARD not in rule.resources and resource not in rule.resources:
        return False
    if WILDCARD in rule.verbs or verb in rule.verbs:
        return True
    return verb == "readnosecrets" and "read" in rule.verbs


def _where_holds(rule: Rule, context: Mapping[str, Any] | None) -> bool:
    if rule.where is None:
        return True
    if context is None:
        return False
    return parse_where(rule.where).evaluate(context)


def _dedupe(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _single(values: list[str]) -> str | None:
    if len(values) == 1 and matchers.is_concrete(values[0]):
        return values[0]
    return None


def _fmt(values: Sequence[str]) -> str:
    return "[" + ", ".join(values) + "]"


def _listing(what: str, values: Sequence[str]) -> str:
    return f"{what} {_fmt(values)}" if values else f"no {what}"


def _alternatives(what: str, values: Sequence[str]) -> str:
    return f"; your roles allow {what} {_fmt(values)} there" if values else ""
