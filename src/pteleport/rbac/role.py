"""Teleport's ``role`` resource (versions v3 to v7), as far as database access goes.

``parse_role`` turns a YAML/JSON document into a ``Role`` or raises ``BadParameter`` naming
the role, the field path and what is wrong. Fields that pteleport enforces are typed
strictly (``db_labels``, ``db_users``, ``db_names``, ``rules``, ``options.max_session_ttl``,
``request`` and ``review_requests`` for access requests ...); the other common Teleport fields are accepted and kept so that real Teleport role
files load unchanged, but they grant nothing here. Unknown fields are refused.

``db_labels_expression`` is kept but not evaluated: a role that sets it in ``allow`` grants
no database access, and one that sets it in ``deny`` blocks every database (fail closed);
see ``checker.py``.

Version defaults: in v3, an ``allow`` without ``db_labels`` (and without
``db_labels_expression``) means ``{"*": "*"}`` (every database) and is written out that
way; in v4 and later it means no database.
"""

from __future__ import annotations

import difflib
import re
import typing
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from common.durations import parse_duration
from common.errors import BadParameter
from pteleport.rbac import matchers, templates
from pteleport.rbac.where import parse_where

SUPPORTED_VERSIONS = ("v3", "v4", "v5", "v6", "v7")
CREATE_DB_USER_MODES = ("off", "keep", "best_effort_drop")
_NAME = re.compile(r"[a-zA-Z0-9._@-]+")


def _expected(what: str) -> PydanticCustomError:
    return PydanticCustomError("expected", "expected {what}", {"what": what})


def _str_list(value: Any) -> Any:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _expected("a list of strings")
    return value


def _labels(value: Any) -> Any:
    if not isinstance(value, dict):
        raise _expected("a map of label names to a string or a list of strings")
    for key, val in value.items():
        if not isinstance(key, str):
            raise _expected(f"label names to be strings, not {key!r}")
        if not (isinstance(val, str) or (isinstance(val, list) and all(isinstance(v, str) for v in val))):
            raise _expected(f'label "{key}" to be a string or a list of strings')
    return value


def _plain_labels(value: Any) -> Any:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _expected("a map of label names to strings")
    return value


def _string(value: Any) -> Any:
    if not isinstance(value, str):
        raise _expected("a string")
    return value


def _duration(value: Any) -> Any:
    if not isinstance(value, str):
        raise _expected('a duration string such as "8h" or "30h0m0s"')
    try:
        parse_duration(value)
    except BadParameter as err:
        raise PydanticCustomError("expected", err.message) from None
    return value


def _role_name(value: Any) -> Any:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise PydanticCustomError("expected", "must be a non-empty name of letters, digits and the characters . _ @ -")
    return value


def _flag(value: Any) -> Any:
    """Teleport reads booleans in options also as "yes"/"no" strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("yes", "true", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("no", "false", "off"):
        return False
    raise _expected("true or false")


def _db_user_mode(value: Any) -> Any:
    if value not in CREATE_DB_USER_MODES:
        raise _expected(f"one of {', '.join(CREATE_DB_USER_MODES)}")
    return value


StrList = Annotated[list[str], BeforeValidator(_str_list)]
Labels = Annotated[dict[str, str | list[str]], BeforeValidator(_labels)]
Str = Annotated[str, BeforeValidator(_string)]
Loose = Any


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metadata(_Model):
    name: Annotated[str, BeforeValidator(_role_name)]
    description: Str | None = None
    labels: Annotated[dict[str, str], BeforeValidator(_plain_labels)] | None = None
    expires: datetime | None = None
    namespace: Str | None = None
    revision: Str | None = None
    id: int | None = None


class Rule(_Model):
    resources: StrList
    verbs: StrList
    where: Str | None = None
    actions: StrList | None = None


class Impersonate(_Model):
    users: StrList | None = None
    roles: StrList | None = None
    where: Str | None = None


def _threshold_count(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _expected("a whole number of at least 1")
    return value


class Threshold(_Model):
    """``request.thresholds[i]``: how many approvals (or denials) decide a request (default 1 each).

    ``filter`` (a predicate over reviews) is kept but not evaluated: a threshold with one
    is never reached (fail closed), see ``rbac/request_rules.py``."""

    name: Str | None = None
    approve: Annotated[int, BeforeValidator(_threshold_count)] = 1
    deny: Annotated[int, BeforeValidator(_threshold_count)] = 1
    filter: Str | None = None


class RequestConditions(_Model):
    """``allow.request`` / ``deny.request``: which roles may be requested (names, globs, ``^regex$``, templates)."""

    roles: StrList | None = None
    thresholds: list[Threshold] | None = None
    # Accepted and kept so Teleport role files load unchanged; not enforced.
    search_as_roles: Loose = None
    suggested_reviewers: Loose = None
    claims_to_roles: Loose = None
    annotations: Loose = None
    max_duration: Loose = None
    reason: Loose = None
    kubernetes_resources: Loose = None


class ReviewConditions(_Model):
    """``allow.review_requests`` / ``deny.review_requests``: whose requests for which roles one may review."""

    roles: StrList | None = None
    # Accepted and kept; not enforced (``where`` in allow grants nothing: fail closed).
    where: Str | None = None
    claims_to_roles: Loose = None
    preview_as_roles: Loose = None


class Conditions(_Model):
    """One side (``allow`` or ``deny``) of a role."""

    # Enforced by pteleport.
    db_labels: Labels | None = None
    db_labels_expression: Str | None = None
    db_names: StrList | None = None
    db_users: StrList | None = None
    db_roles: StrList | None = None
    db_service_labels: Labels | None = None
    db_service_labels_expression: Str | None = None
    rules: list[Rule] | None = None
    impersonate: Impersonate | None = None
    # Accepted and kept so Teleport role files load unchanged; not enforced.
    db_permissions: Loose = None
    logins: Loose = None
    node_labels: Loose = None
    node_labels_expression: Loose = None
    app_labels: Loose = None
    app_labels_expression: Loose = None
    cluster_labels: Loose = None
    cluster_labels_expression: Loose = None
    kubernetes_labels: Loose = None
    kubernetes_labels_expression: Loose = None
    kubernetes_groups: Loose = None
    kubernetes_users: Loose = None
    kubernetes_resources: Loose = None
    windows_desktop_labels: Loose = None
    windows_desktop_labels_expression: Loose = None
    windows_desktop_logins: Loose = None
    aws_role_arns: Loose = None
    azure_identities: Loose = None
    gcp_service_accounts: Loose = None
    host_groups: Loose = None
    host_sudoers: Loose = None
    desktop_groups: Loose = None
    group_labels: Loose = None
    group_labels_expression: Loose = None
    request: RequestConditions | None = None
    review_requests: ReviewConditions | None = None
    require_session_join: Loose = None
    join_sessions: Loose = None
    github_permissions: Loose = None
    account_assignments: Loose = None
    spiffe: Loose = None
    workload_identity_labels: Loose = None
    workload_identity_labels_expression: Loose = None


class Options(_Model):
    """``spec.options``: ``max_session_ttl``, ``create_db_user_mode`` and ``disconnect_expired_cert`` are checked."""

    max_session_ttl: Annotated[str, BeforeValidator(_duration)] | None = None
    create_db_user: Loose = None
    create_db_user_mode: Annotated[str, BeforeValidator(_db_user_mode)] | None = None
    forward_agent: Loose = None
    port_forwarding: Loose = None
    ssh_port_forwarding: Loose = None
    cert_format: Loose = None
    client_idle_timeout: Loose = None
    disconnect_expired_cert: Annotated[bool, BeforeValidator(_flag)] | None = None
    enhanced_recording: Loose = None
    permit_x11_forwarding: Loose = None
    max_connections: Loose = None
    max_sessions: Loose = None
    max_kubernetes_connections: Loose = None
    request_access: Loose = None
    request_prompt: Loose = None
    require_session_mfa: Loose = None
    mfa_verification_interval: Loose = None
    lock: Loose = None
    record_session: Loose = None
    desktop_clipboard: Loose = None
    desktop_directory_sharing: Loose = None
    create_desktop_user: Loose = None
    create_host_user: Loose = None
    create_host_user_mode: Loose = None
    create_host_user_default_shell: Loose = None
    cert_extensions: Loose = None
    pin_source_ip: Loose = None
    ssh_file_copy: Loose = None
    device_trust_mode: Loose = None
    idp: Loose = None

    def session_ttl(self) -> timedelta | None:
        """``max_session_ttl`` as a duration; None when unset or zero (Teleport's default applies)."""
        if self.max_session_ttl is None:
            return None
        ttl = parse_duration(self.max_session_ttl)
        return ttl or None


class Spec(_Model):
    options: Options = Field(default_factory=Options)
    allow: Conditions = Field(default_factory=Conditions)
    deny: Conditions = Field(default_factory=Conditions)


class Role(_Model):
    """A role. Build it with ``parse_role``, which also checks templates, patterns and predicates."""

    kind: Literal["role"] = "role"
    version: Literal["v3", "v4", "v5", "v6", "v7"]
    metadata: Metadata
    spec: Spec = Field(default_factory=Spec)

    @property
    def name(self) -> str:
        return self.metadata.name

    @model_validator(mode="before")
    @classmethod
    def _v3_defaults(cls, data: Any) -> Any:
        """v3: an allow without db_labels covers every database (Teleport writes the default out)."""
        if not isinstance(data, dict) or data.get("version") != "v3":
            return data
        spec = data.get("spec")
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            return data
        allow = spec.get("allow")
        allow = {} if allow is None else allow
        if not isinstance(allow, dict) or allow.get("db_labels") is not None:
            return data
        if allow.get("db_labels_expression"):
            return data
        return {**data, "spec": {**spec, "allow": {**allow, "db_labels": {"*": "*"}}}}


def parse_role(doc: dict[str, Any]) -> Role:
    """Validate a role document; raise ``BadParameter`` naming the role, the field and the problem."""
    prefix = _prefix(doc)
    if not isinstance(doc, dict):
        raise BadParameter("a role must be a map with kind, version, metadata and spec")
    kind = doc.get("kind")
    if kind != "role":
        shown = "missing" if kind is None else f'"{kind}"'
        raise BadParameter(f'{prefix}kind must be "role" (it is {shown})')
    version = doc.get("version")
    if version is None:
        raise BadParameter(f"{prefix}version is missing (use one of v3 to v7)")
    if version not in SUPPORTED_VERSIONS:
        raise BadParameter(f'{prefix}version "{version}" is not supported (use v3 to v7)')
    try:
        role = Role.model_validate(doc)
    except ValidationError as err:
        problems = [_describe(e) for e in err.errors()]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise BadParameter(f"{prefix}{problems[0]}{more}", detail="; ".join(problems)) from None
    try:
        _check_semantics(role)
    except _FieldProblem as problem:
        raise BadParameter(f"{prefix}{problem.path}: {problem.message}") from None
    return role


def role_to_dict(role: Role) -> dict[str, Any]:
    """The role as plain data for YAML/JSON output; unset optional fields are left out."""
    data = role.model_dump(mode="json", exclude_none=True)
    expires = role.metadata.expires
    if expires is not None:
        utc = expires.astimezone(UTC) if expires.tzinfo else expires.replace(tzinfo=UTC)
        data["metadata"]["expires"] = utc.isoformat().replace("+00:00", "Z")
    return data


class _FieldProblem(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


_TEMPLATED_LISTS = ("db_names", "db_users", "db_roles")
_TEMPLATED_LABELS = ("db_labels", "db_service_labels")


def _check_semantics(role: Role) -> None:
    """What pydantic cannot see: templates, regular expressions, predicates, empty rules."""
    for side in ("allow", "deny"):
        cond: Conditions = getattr(role.spec, side)
        base = f"spec.{side}"
        for field in _TEMPLATED_LISTS:
            for i, value in enumerate(getattr(cond, field) or []):
                _check_value(f"{base}.{field}[{i}]", value)
        for field in _TEMPLATED_LABELS:
            for key, values in matchers.normalize_selector(getattr(cond, field)).items():
                _check_value(f"{base}.{field}", key, label_key=True)
                for value in values:
                    _check_value(f"{base}.{field}.{key}", value)
        for i, rule in enumerate(cond.rules or []):
            path = f"{base}.rules[{i}]"
            if not rule.resources:
                raise _FieldProblem(f"{path}.resources", 'list at least one resource (for example "db")')
            if not rule.verbs:
                raise _FieldProblem(f"{path}.verbs", 'list at least one verb (for example "read")')
            if rule.where is not None:
                _check_where(f"{path}.where", rule.where)
        if cond.impersonate is not None and cond.impersonate.where is not None:
            _check_where(f"{base}.impersonate.where", cond.impersonate.where)
        for field, sub in (("request", cond.request), ("review_requests", cond.review_requests)):
            for i, value in enumerate((sub.roles if sub is not None else None) or []):
                _check_value(f"{base}.{field}.roles[{i}]", value)


def _check_value(path: str, value: str, label_key: bool = False) -> None:
    try:
        templates.validate(value)
        if not label_key and not templates.is_template(value) and matchers.is_regex(value):
            matchers.compile_regex(value)
    except BadParameter as err:
        raise _FieldProblem(path, err.message) from None


def _check_where(path: str, text: str) -> None:
    try:
        parse_where(text)
    except BadParameter as err:
        raise _FieldProblem(path, err.message) from None


def _prefix(doc: Any) -> str:
    if isinstance(doc, dict) and isinstance(doc.get("metadata"), dict):
        name = doc["metadata"].get("name")
    else:
        name = None
    return f'role "{name}": ' if isinstance(name, str) and name else "role: "


_PLAIN_MESSAGES = {
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a map of fields",
    "model_type": "expected a map of fields",
    "model_attributes_type": "expected a map of fields",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "datetime_type": "expected a date and time such as 2030-01-01T00:00:00Z",
    "datetime_parsing": "expected a date and time such as 2030-01-01T00:00:00Z",
    "datetime_from_date_parsing": "expected a date and time such as 2030-01-01T00:00:00Z",
    "literal_error": "has a value that is not allowed",
}


def _describe(error: Any) -> str:
    loc = tuple(error["loc"])
    path = _path(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        hint = _suggest(loc)
        return f"unknown field {path}{hint}"
    if kind == "missing":
        return f"{path} is required"
    if kind == "expected":
        return f"{path}: {error['msg']}"
    message = _PLAIN_MESSAGES.get(kind) or error["msg"][:1].lower() + error["msg"][1:]
    return f"{path}: {message}"


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _suggest(loc: tuple[Any, ...]) -> str:
    """``(did you mean db_users?)`` for a misspelt field, from the model that holds it."""
    model: Any = Role
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = _model_of(field.annotation) if field is not None else None
    if model is None or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
