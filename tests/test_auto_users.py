"""Automatic database users without a database: which mode and roles apply, and quoting.

``AccessChecker.db_user_mode`` / ``db_roles`` (most permissive mode among the roles that
allow the database; traits expand; deny wins), ``auto_user_plan`` (the db user is the
pteleport user; refusals name the fix) and ``adminsql.ident`` / ``literal``.
The end-to-end behaviour against PostgreSQL is in test_auto_users_e2e.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import AccessDenied, BadParameter
from pteleport.auth.db_users import auto_user_plan
from pteleport.dbagent.adminsql import _data_row, ident, literal
from pteleport.rbac.checker import AccessChecker
from pteleport.rbac.role import parse_role


def role(name: str, options: dict[str, Any] | None = None, labels: dict | None = None, **allow: Any) -> Any:
    spec: dict[str, Any] = {"allow": {"db_labels": labels or {"env": "dev"}, "db_names": ["*"], **allow}}
    if options:
        spec["options"] = options
    return parse_role({"kind": "role", "version": "v7", "metadata": {"name": name}, "spec": spec})


def db(admin: str | None = "teleport-admin", labels: dict | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"protocol": "postgres", "uri": "db:5432"}
    if admin:
        spec["admin_user"] = {"name": admin}
    return {"metadata": {"name": "pg", "labels": labels or {"env": "dev"}}, "spec": spec}


DEV = {"env": "dev"}


def test_the_most_permissive_mode_of_the_matching_roles_wins() -> None:
    keep = role("keep", {"create_db_user_mode": "keep"})
    drop = role("drop", {"create_db_user_mode": "best_effort_drop"})
    off = role("off", {"create_db_user_mode": "off"})
    assert AccessChecker([off, keep]).db_user_mode(DEV) == "keep"
    assert AccessChecker([keep, drop, off]).db_user_mode(DEV) == "best_effort_drop"
    assert AccessChecker([off]).db_user_mode(DEV) == "off"
    assert AccessChecker([role("none")]).db_user_mode(DEV) == "off"


def test_a_role_that_does_not_allow_the_database_does_not_set_its_mode() -> None:
    elsewhere = role("prod", {"create_db_user_mode": "best_effort_drop"}, labels={"env": "prod"})
    assert AccessChecker([elsewhere, role("plain")]).db_user_mode(DEV) == "off"


def test_legacy_create_db_user_true_reads_as_keep_and_the_mode_field_wins_over_it() -> None:
    assert AccessChecker([role("legacy", {"create_db_user": True})]).db_user_mode(DEV) == "keep"
    assert AccessChecker([role("legacy", {"create_db_user": "yes"})]).db_user_mode(DEV) == "keep"
    both = role("both", {"create_db_user": True, "create_db_user_mode": "off"})
    assert AccessChecker([both]).db_user_mode(DEV) == "off"


def test_db_roles_expand_traits_and_a_deny_removes_a_role() -> None:
    allow = role("a", db_roles=["reader", "{{internal.db_roles}}", "{{external.teams}}"])
    traits = {"db_roles": ["writer"], "teams": ["analytics"]}
    assert AccessChecker([allow], traits).db_roles(DEV) == ["reader", "writer", "analytics"]
    deny = parse_role(
        {"kind": "role", "version": "v7", "metadata": {"name": "d"}, "spec": {"deny": {"db_roles": ["writer"]}}}
    )
    assert AccessChecker([allow, deny], traits).db_roles(DEV) == ["reader", "analytics"]
    assert AccessChecker([allow], traits).db_roles({"env": "prod"}) == []


def test_auto_user_access_ignores_db_users_but_still_checks_db_names() -> None:
    checker = AccessChecker([role("keep", {"create_db_user_mode": "keep"}, db_users=[])])
    checker.check_db_access("pg", DEV, "alice", "postgres", auto_user=True)
    with pytest.raises(AccessDenied):
        checker.check_db_access("pg", DEV, "alice", "postgres")
    only_app = parse_role(
        {
            "kind": "role",
            "version": "v7",
            "metadata": {"name": "app"},
            "spec": {"options": {"create_db_user_mode": "keep"}, "allow": {"db_labels": DEV, "db_names": ["app"]}},
        }
    )
    AccessChecker([only_app]).check_db_access("pg", DEV, "alice", "app", auto_user=True)
    with pytest.raises(AccessDenied, match='db name "postgres"'):
        AccessChecker([only_app]).check_db_access("pg", DEV, "alice", "postgres", auto_user=True)


def test_plan_uses_the_pteleport_user_name_and_the_admin_user() -> None:
    checker = AccessChecker([role("keep", {"create_db_user_mode": "keep"}, db_roles=["reader"])])
    plan = auto_user_plan(checker, db(), "alice", None)
    assert plan is not None
    assert (plan.db_user, plan.mode, plan.db_roles, plan.admin_user) == ("alice", "keep", ("reader",), "teleport-admin")
    assert auto_user_plan(checker, db(), "alice", "alice") == plan
    assert auto_user_plan(AccessChecker([role("plain")]), db(), "alice", "bob") is None


def test_plan_refusals_name_the_fix() -> None:
    checker = AccessChecker([role("keep", {"create_db_user_mode": "keep"})])
    with pytest.raises(BadParameter, match=r'connect as "alice" \(your pteleport user name\), not "postgres"'):
        auto_user_plan(checker, db(), "alice", "postgres")
    with pytest.raises(AccessDenied, match=r"has no admin user; ask an admin to set spec.admin_user.name"):
        auto_user_plan(checker, db(admin=None), "alice", None)


def test_identifiers_and_literals_are_quoted_so_names_cannot_escape() -> None:
    assert ident("alice") == '"alice"'
    assert ident('a"; DROP ROLE x; --') == '"a""; DROP ROLE x; --"'
    assert literal("o'brien") == "E'o''brien'"
    assert literal("back\\slash'") == "E'back\\\\slash'''"
    for bad in ("", "nul\x00"):
        with pytest.raises(BadParameter):
            ident(bad)
    with pytest.raises(BadParameter):
        literal("nul\x00")


def test_data_rows_decode_text_and_nulls() -> None:
    payload = b"\x00\x02" + b"\x00\x00\x00\x01t" + b"\xff\xff\xff\xff"
    assert _data_row(payload) == ["t", None]


def test_an_agents_static_database_carries_its_admin_user_to_the_cluster() -> None:
    from pteleport.auth.databases import parse_db
    from pteleport.config import parse_config
    from pteleport.dbagent.service import static_resource

    config = parse_config(
        {"db_service": {"enabled": True, "databases": [
            {"name": "aurora", "uri": "db:5432", "admin_user": {"name": "teleport_admin", "default_database": "app"}},
        ]}}
    )
    resource = static_resource(config.db_service.databases[0]).resource
    assert resource["spec"]["admin_user"] == {"name": "teleport_admin", "default_database": "app"}
    assert parse_db(resource)["spec"]["admin_user"] == {"name": "teleport_admin", "default_database": "app"}
    with pytest.raises(BadParameter, match=r"spec\.admin_user\.name"):
        parse_db({**resource, "spec": {**resource["spec"], "admin_user": {}}})
