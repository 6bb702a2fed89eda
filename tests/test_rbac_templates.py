"""Trait templates, label matching and where predicates: the building blocks of the checker."""

import pytest

from common.errors import BadParameter
from pteleport.rbac.matchers import match_entry, match_labels
from pteleport.rbac.templates import expand, expand_all
from pteleport.rbac.where import parse_where

TRAITS = {
    "db_users": ["alice", "reader"],
    "db_names": ["postgres"],
    "logins": ["ubuntu"],
    "email": ["alice@example.com", "not-an-address"],
    "groups": ["dev-payments", "ops", "dev-search"],
    "team": ["data"],
    "http://schemas.example.com/claims/role": ["dba"],
}


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("alice", ["alice"]),
        ("*", ["*"]),
        ("{{internal.db_users}}", ["alice", "reader"]),
        ("{{ internal.db_names }}", ["postgres"]),
        ("{{internal.logins}}", ["ubuntu"]),
        ("{{external.team}}", ["data"]),
        ('{{external["http://schemas.example.com/claims/role"]}}', ["dba"]),
        ("{{email.local(external.email)}}", ["alice"]),
        ('{{regexp.replace(external.groups, "^dev-(.*)$", "$1")}}', ["payments", "search"]),
        (
            '{{regexp.replace(external.groups, "^dev-(?P<t>.*)$", "team-${t}")}}',
            ["team-payments", "team-search"],
        ),
        ("user-{{external.team}}", ["user-data"]),
        ("ro-{{internal.db_users}}-x", ["ro-alice-x", "ro-reader-x"]),
        ("{{external.missing}}", []),
        ("{{internal.db_roles}}", []),
    ],
)
def test_expand(value, want):
    assert expand(value, TRAITS) == want


def test_expand_all_drops_duplicates_and_missing_traits():
    assert expand_all(["{{internal.db_users}}", "alice", "{{external.nope}}", "admin"], TRAITS) == [
        "alice",
        "reader",
        "admin",
    ]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("{{internal.db_user}}", 'unknown internal trait "db_user"'),
        ("{{foo.bar}}", 'unknown function "foo.bar"'),
        ('{{regexp.match(external.team, "x")}}', 'unknown function "regexp.match"'),
        ("{{external.team", "exactly one"),
        ("{{a}}{{b}}", "exactly one"),
        ("{{external.team)}}", "unexpected ')'"),
        ("{{}}", "expected internal.NAME"),
        ('{{regexp.replace(external.team, "(", "x")}}', "not a valid regular expression"),
        ("{{email.local(external.email}}", "expected ')'"),
    ],
)
def test_malformed_templates_say_what_is_wrong(value, says):
    with pytest.raises(BadParameter) as err:
        expand(value, TRAITS)
    assert value in err.value.message and says in err.value.message


def test_label_matching():
    prod = {"env": "prod", "region": "us-west-2", "team": "payments"}
    assert match_labels({"*": ["*"]}, prod)
    assert match_labels({"*": ["*"]}, {})
    assert not match_labels({}, prod)  # empty selector matches nothing
    assert match_labels({"env": ["prod"]}, prod)
    assert match_labels({"env": ["staging", "prod"]}, prod)  # a list is OR
    assert match_labels({"env": ["*"]}, prod)
    assert not match_labels({"owner": ["*"]}, prod)  # the label must exist
    assert match_labels({"region": ["us-west-*"]}, prod)  # glob
    assert not match_labels({"region": ["us-east-*"]}, prod)
    assert match_labels({"team": ["^pay.*$"]}, prod)  # regex
    assert not match_labels({"team": ["^search$"]}, prod)
    assert not match_labels({"team": ["pay"]}, prod)  # literal, not a substring
    assert match_labels({"env": ["prod"], "team": ["payments"]}, prod)
    assert not match_labels({"env": ["prod"], "team": ["search"]}, prod)  # keys AND


def test_db_user_and_name_entries():
    assert match_entry(["alice"], "alice")
    assert not match_entry(["alice"], "alicex")
    assert match_entry(["*"], "anyone")
    assert match_entry(["^ro_.*$"], "ro_reports")
    assert not match_entry(["^ro_.*$"], "rw_reports")
    assert not match_entry(["ro_*"], "ro_reports")  # no globs for users and names
    assert not match_entry([], "alice")


CTX = {
    "session": {"participants": ["alice", "bob"]},
    "user": {"metadata": {"name": "alice"}, "spec": {"traits": {"team": ["data"]}}},
}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("contains(session.participants, user.metadata.name)", True),
        ('contains(session.participants, "carol")', False),
        ('!contains(session.participants, "carol")', True),
        ('equals(user.metadata.name, "alice")', True),
        ('equals(user.metadata.name, "bob") || contains(user.spec.traits["team"], "data")', True),
        ('equals(user.metadata.name, "alice") && equals("a", "b")', False),
        ('user.metadata.name == "alice" && (true || false)', True),
        ('user.metadata.name != "alice"', False),
        ("equals(session.owner, user.missing)", False),  # missing values are never equal
        ("contains(session.missing, user.metadata.name)", False),
    ],
)
def test_where(text, want):
    assert parse_where(text).evaluate(CTX) is want


@pytest.mark.parametrize("text", ["", "bogus(a, b)", '"alone"', "a &&", "a & b", "contains(a)", "a[b]"])
def test_where_syntax_errors_are_refused(text):
    with pytest.raises(BadParameter) as err:
        parse_where(text)
    assert err.value.message.startswith(f'where "{text}" is not valid')
