"""The access checker: what users may do, and denials that say what would be needed."""

from datetime import timedelta

import pytest
import yaml

from common.errors import AccessDenied, BadParameter
from pteleport.rbac.checker import AccessChecker
from pteleport.rbac.presets import preset_roles
from pteleport.rbac.role import parse_role

PROD = {"env": "prod", "region": "us-west-2", "team": "payments"}
STAGING = {"env": "staging", "region": "eu-central-1", "team": "search"}


def mk(name, version="v7", options=None, **sides):
    spec = {k: v for k, v in sides.items()}
    if options:
        spec["options"] = options
    return parse_role({"kind": "role", "version": version, "metadata": {"name": name}, "spec": spec})


def denied(checker, db="aurora", labels=PROD, user="alice", name="postgres") -> AccessDenied:
    with pytest.raises(AccessDenied) as err:
        checker.check_db_access(db, labels, user, name)
    return err.value


def test_seed_guide_role_allows_every_database_user_and_name():
    seed = parse_role(
        yaml.safe_load(
            """
kind: role
version: v3
metadata:
  name: db
spec:
  allow:
    db_labels:
      '*': '*'
    db_names:
    - '*'
    db_users:
    - '*'
"""
        )
    )
    checker = AccessChecker([seed], {})
    checker.check_db_access("aurora", PROD, "anyone", "anything")
    checker.check_db_access("local", {}, "postgres", "postgres")
    assert checker.can_see_db({})
    assert checker.allowed_db_users(PROD) == (["*"], [])
    assert checker.default_db_user(PROD) is None  # "*" is not one concrete user


def test_one_role_must_allow_labels_user_and_name_together():
    users_role = mk(
        "users", allow={"db_labels": {"env": "prod"}, "db_users": ["alice"], "db_names": ["postgres"]}
    )
    names_role = mk("names", allow={"db_labels": {"env": "prod"}, "db_users": ["bob"], "db_names": ["sales"]})
    checker = AccessChecker([users_role, names_role], {})
    checker.check_db_access("aurora", PROD, "alice", "postgres")
    checker.check_db_access("aurora", PROD, "bob", "sales")
    err = denied(checker, user="alice", name="sales")
    assert 'db user "alice" and db name "sales" are allowed by different roles' in err.message
    assert "one role must allow both" in err.message
    assert '"users"' in err.detail and '"names"' in err.detail  # role names go to the detail


def test_labels_from_one_role_do_not_combine_with_users_from_another():
    staging_all = mk("staging", allow={"db_labels": {"env": "staging"}, "db_users": ["*"], "db_names": ["*"]})
    prod_reader = mk(
        "prod", allow={"db_labels": {"env": "prod"}, "db_users": ["reader"], "db_names": ["postgres"]}
    )
    checker = AccessChecker([staging_all, prod_reader], {})
    checker.check_db_access("search", STAGING, "admin", "anything")
    err = denied(checker, user="admin")
    assert err.message == (
        'access to database "aurora" denied: your roles allow db users [reader] and db names [postgres] '
        'there; you asked for db user "admin"'
    )


def test_denial_lists_expanded_traits_and_what_was_asked():
    checker = AccessChecker(
        [
            mk(
                "access",
                allow={
                    "db_labels": {"*": "*"},
                    "db_users": ["{{internal.db_users}}"],
                    "db_names": ["{{internal.db_names}}"],
                },
            )
        ],
        {"db_users": ["alice", "reader"], "db_names": ["postgres"]},
    )
    checker.check_db_access("aurora", PROD, "reader", "postgres")
    err = denied(checker, user="bob")
    assert err.message == (
        'access to database "aurora" denied: your roles allow db users [alice, reader] '
        'and db names [postgres] there; you asked for db user "bob"'
    )
    err = denied(checker, user="bob", name="sales")
    assert err.message.endswith('you asked for db user "bob" and db name "sales"')
    # a user without traits is allowed nothing, and is told so
    err = denied(AccessChecker(checker.roles, {}))
    assert "your roles allow no db users and no db names there" in err.message


def test_no_role_for_the_labels_names_the_database_and_its_labels():
    checker = AccessChecker(
        [mk("staging", allow={"db_labels": {"env": "staging"}, "db_users": ["*"], "db_names": ["*"]})]
    )
    err = denied(checker)
    assert err.message == (
        'access to database "aurora" denied: no role allows database "aurora" '
        "(env=prod,region=us-west-2,team=payments); ask an admin for a role whose db_labels match it"
    )
    assert not checker.can_see_db(PROD)
    assert checker.can_see_db(STAGING)


def test_v3_omitted_labels_mean_all_databases_v4_and_later_mean_none():
    allow = {"db_users": ["alice"], "db_names": ["postgres"]}
    AccessChecker([mk("old", version="v3", allow=allow)]).check_db_access("aurora", PROD, "alice", "postgres")
    assert AccessChecker([mk("old", version="v3", allow=allow)]).can_see_db(PROD)
    for version in ("v4", "v5", "v6", "v7"):
        checker = AccessChecker([mk("new", version=version, allow=allow)])
        assert "no role allows database" in denied(checker).message
        assert not checker.can_see_db(PROD)


def test_deny_labels_block_the_database_whatever_the_allow_says():
    allow_all = mk("all", allow={"db_labels": {"*": "*"}, "db_users": ["*"], "db_names": ["*"]})
    no_prod = mk("no-prod", deny={"db_labels": {"env": "prod"}})
    checker = AccessChecker([allow_all, no_prod])
    err = denied(checker)
    assert (
        "a deny rule in your roles blocks this database (env=prod,region=us-west-2,team=payments)"
        in err.message
    )
    assert '"no-prod"' in err.detail and "no-prod" not in err.message
    checker.check_db_access("search", STAGING, "alice", "postgres")
    assert not checker.can_see_db(PROD) and checker.can_see_db(STAGING)
    assert checker.allowed_db_users(PROD) == ([], ["*"])


def test_deny_db_users_and_names_are_greedy_across_databases():
    allow_all = mk("all", allow={"db_labels": {"*": "*"}, "db_users": ["*", "alice"], "db_names": ["*"]})
    # the deny labels only name staging, yet the deny db_users apply everywhere (as in Teleport)
    no_su = mk("no-su", deny={"db_labels": {"env": "staging"}, "db_users": ["postgres", "^rds.*$"]})
    no_names = mk("no-names", deny={"db_names": ["template0"]})
    checker = AccessChecker([allow_all, no_su, no_names])
    checker.check_db_access("aurora", PROD, "alice", "postgres")
    err = denied(checker, user="postgres")
    assert err.message.startswith('access to database "aurora" denied: your roles forbid db user "postgres"')
    assert "your roles allow db users [*, alice] there" in err.message
    assert "forbid db user" in denied(checker, user="rdsadmin").message
    assert 'forbid db name "template0"' in denied(checker, name="template0").message
    allowed, deny_list = checker.allowed_db_users(PROD)
    assert allowed == ["*", "alice"] and deny_list == ["postgres", "^rds.*$"]
    assert checker.can_see_db(PROD)


def test_deny_wildcard_user_hides_every_database():
    checker = AccessChecker(
        [
            mk("all", allow={"db_labels": {"*": "*"}, "db_users": ["alice"], "db_names": ["*"]}),
            mk("none", deny={"db_users": ["*"]}),
        ]
    )
    assert not checker.can_see_db(PROD)
    assert checker.allowed_db_users(PROD) == ([], ["*"])
    assert "forbid db user" in denied(checker).message


def test_templates_in_labels_use_the_users_traits():
    role = mk(
        "team",
        allow={
            "db_labels": {"team": '{{regexp.replace(external.groups, "^dev-(.*)$", "$1")}}'},
            "db_users": ["{{email.local(external.email)}}"],
            "db_names": ["postgres"],
        },
    )
    checker = AccessChecker([role], {"groups": ["dev-payments", "ops"], "email": ["alice@example.com"]})
    checker.check_db_access("aurora", PROD, "alice", "postgres")
    assert not checker.can_see_db(STAGING)  # team=search is not one of the user's teams
    assert not AccessChecker([role], {"groups": ["ops"]}).can_see_db(PROD)


def test_label_key_template_that_does_not_resolve_matches_nothing():
    role = mk("k", allow={"db_labels": {"{{external.key}}": "prod"}, "db_users": ["*"], "db_names": ["*"]})
    assert not AccessChecker([role], {}).can_see_db(PROD)
    assert AccessChecker([role], {"key": ["env"]}).can_see_db(PROD)


def test_default_db_user_and_name_only_when_one_concrete_value():
    role = mk(
        "r", allow={"db_labels": {"*": "*"}, "db_users": ["{{internal.db_users}}"], "db_names": ["postgres"]}
    )
    assert AccessChecker([role], {"db_users": ["alice"]}).default_db_user(PROD) == "alice"
    assert AccessChecker([role], {"db_users": ["alice", "bob"]}).default_db_user(PROD) is None
    assert AccessChecker([role], {}).default_db_name(PROD) == "postgres"
    deny_alice = mk("d", deny={"db_users": ["alice"]})
    assert AccessChecker([role, deny_alice], {"db_users": ["alice", "bob"]}).default_db_user(PROD) == "bob"


def test_db_labels_expression_is_not_evaluated_and_fails_closed():
    allow_expr = mk(
        "expr",
        allow={"db_labels_expression": 'labels["env"] == "prod"', "db_users": ["*"], "db_names": ["*"]},
    )
    checker = AccessChecker([allow_expr])
    assert not checker.can_see_db(PROD)
    assert "db_labels_expression" in denied(checker).detail
    deny_expr = mk("deny-expr", deny={"db_labels_expression": 'labels["env"] == "prod"'})
    allow_all = mk("all", allow={"db_labels": {"*": "*"}, "db_users": ["*"], "db_names": ["*"]})
    err = denied(AccessChecker([allow_all, deny_expr]), labels=STAGING)
    assert "db_labels_expression" in err.message and "blocks every database" in err.message


def test_missing_db_user_or_name_is_a_usage_problem():
    checker = AccessChecker(
        [mk("all", allow={"db_labels": {"*": "*"}, "db_users": ["*"], "db_names": ["*"]})]
    )
    with pytest.raises(BadParameter, match="database user"):
        checker.check_db_access("aurora", PROD, "", "postgres")
    with pytest.raises(BadParameter, match="database name"):
        checker.check_db_access("aurora", PROD, "alice", "")
    with pytest.raises(BadParameter, match="control characters"):
        checker.check_db_access("aurora", PROD, "ro_x\n", "postgres")


def test_rules_allow_deny_and_explain():
    editor = {r.name: r for r in preset_roles()}["editor"]
    no_delete_roles = mk("careful", deny={"rules": [{"resources": ["role"], "verbs": ["delete"]}]})
    checker = AccessChecker([editor, no_delete_roles])
    checker.check_rule("user", "create")
    checker.check_rule("role", "update")
    assert checker.rule_allows("token", "read")
    assert checker.rule_allows("token", "readnosecrets")  # read covers readnosecrets
    with pytest.raises(AccessDenied) as err:
        checker.check_rule("role", "delete")
    assert err.value.message == "you are not allowed to delete role: a deny rule in your roles forbids it"
    assert '"careful"' in err.value.detail
    with pytest.raises(AccessDenied) as err:
        checker.check_rule("event", "delete")
    assert err.value.message == (
        "you are not allowed to delete event; "
        'ask an admin for a role whose rules allow verb "delete" on "event"'
    )
    assert not AccessChecker([]).rule_allows("user", "create")


def test_wildcard_rules():
    admin = mk("admin", allow={"rules": [{"resources": ["*"], "verbs": ["*"]}]})
    checker = AccessChecker(
        [admin, mk("no-tokens", deny={"rules": [{"resources": ["token"], "verbs": ["*"]}]})]
    )
    assert checker.rule_allows("db", "delete")
    assert not checker.rule_allows("token", "list")


def test_rules_with_where_need_a_context_that_satisfies_them():
    access = {r.name: r for r in preset_roles()}["access"]
    checker = AccessChecker([access], {})
    mine = {"session": {"participants": ["alice"]}, "user": {"metadata": {"name": "alice"}}}
    theirs = {"session": {"participants": ["bob"]}, "user": {"metadata": {"name": "alice"}}}
    assert checker.rule_allows("session", "read", mine)
    assert not checker.rule_allows("session", "read", theirs)
    assert not checker.rule_allows("session", "read")  # no context: the rule does not match
    with pytest.raises(AccessDenied) as err:
        checker.check_rule("session", "read", theirs)
    assert "only where contains(session.participants, user.metadata.name)" in err.value.message
    assert checker.rule_allows("event", "list")
    # a deny rule with where applies only when its predicate holds
    deny_bob = mk(
        "not-bob",
        deny={
            "rules": [
                {
                    "resources": ["session"],
                    "verbs": ["read"],
                    "where": 'contains(session.participants, "bob")',
                }
            ]
        },
    )
    wide = mk("wide", allow={"rules": [{"resources": ["session"], "verbs": ["read"]}]})
    checker = AccessChecker([wide, deny_bob])
    assert checker.rule_allows("session", "read", mine)
    assert not checker.rule_allows("session", "read", theirs)


def test_max_session_ttl_is_the_smallest_and_defaults_to_30h():
    assert AccessChecker([]).max_session_ttl() == timedelta(hours=30)
    assert AccessChecker([mk("a")]).max_session_ttl() == timedelta(hours=30)
    short = mk("short", options={"max_session_ttl": "1h30m"})
    long = mk("long", options={"max_session_ttl": "30h0m0s"})
    assert AccessChecker([long, short, mk("none")]).max_session_ttl() == timedelta(hours=1, minutes=30)
    assert AccessChecker(preset_roles()).max_session_ttl() == timedelta(hours=30)


def test_role_names():
    assert AccessChecker(preset_roles()).role_names == ["access", "editor", "auditor", "requester", "reviewer"]
