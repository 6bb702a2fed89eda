"""Role resources: Teleport role files load unchanged, mistakes are refused with the field named."""

from datetime import timedelta

import pytest
import yaml

from common.durations import format_go_duration as format_duration
from common.durations import parse_duration
from common.errors import BadParameter
from pteleport.rbac.presets import PRESET_ROLE_NAMES, preset_roles
from pteleport.rbac.role import parse_role, role_to_dict

SEED_GUIDE_ROLE = """
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

V7_ROLE = """
kind: role
version: v7
metadata:
  name: dev-db
  description: Developers on staging databases
  labels:
    team: data
  expires: 2031-05-01T00:00:00Z
spec:
  options:
    max_session_ttl: 8h
    forward_agent: true
    port_forwarding: false
    cert_format: standard
    client_idle_timeout: 30m
    disconnect_expired_cert: yes
    create_db_user_mode: keep
    require_session_mfa: false
    enhanced_recording: [command, network]
    record_session:
      desktop: true
      default: best_effort
  allow:
    logins: ['{{internal.logins}}']
    node_labels: {'*': '*'}
    kubernetes_groups: ['{{external.groups}}']
    db_labels:
      env: [staging, '^dev-[0-9]+$']
      region: 'us-west-*'
      team: '{{regexp.replace(external.groups, "^team-(.*)$", "$1")}}'
    db_names: ['{{internal.db_names}}', analytics]
    db_users: ['{{email.local(external.email)}}', 'ro-{{external.team}}']
    db_roles: ['{{internal.db_roles}}']
    db_service_labels: {'*': '*'}
    rules:
    - resources: [session]
      verbs: [read, list]
      where: contains(session.participants, user.metadata.name)
    impersonate:
      users: ['ci-bot']
      roles: ['ci']
      where: 'equals(impersonate_user.metadata.labels["team"], "data")'
    request:
      roles: ['dba']
      thresholds: [{approve: 2, deny: 1}]
  deny:
    db_users: [postgres, rdsadmin]
    db_labels:
      env: prod
    rules:
    - resources: [role]
      verbs: [delete]
"""


def role(text: str):
    return parse_role(yaml.safe_load(text))


def refused(doc: dict) -> str:
    with pytest.raises(BadParameter) as err:
        parse_role(doc)
    return err.value.message


def base(**spec) -> dict:
    return {"kind": "role", "version": "v7", "metadata": {"name": "db"}, "spec": spec}


def test_seed_guide_role_is_accepted_unchanged_and_round_trips():
    doc = yaml.safe_load(SEED_GUIDE_ROLE)
    r = parse_role(doc)
    assert r.name == "db" and r.version == "v3"
    out = role_to_dict(r)
    assert out["spec"]["allow"] == doc["spec"]["allow"]
    assert out["kind"] == "role" and out["metadata"] == {"name": "db"}
    assert role_to_dict(parse_role(out)) == out


def test_v7_role_with_templates_regex_labels_and_other_teleport_fields_is_accepted():
    r = role(V7_ROLE)
    assert r.spec.options.session_ttl() == timedelta(hours=8)
    out = role_to_dict(r)
    assert out["metadata"]["expires"] == "2031-05-01T00:00:00Z"
    assert out["spec"]["allow"]["db_users"] == ["{{email.local(external.email)}}", "ro-{{external.team}}"]
    # fields pteleport does not enforce are kept as written
    assert out["spec"]["allow"]["request"] == {"roles": ["dba"], "thresholds": [{"approve": 2, "deny": 1}]}
    assert out["spec"]["options"]["record_session"] == {"desktop": True, "default": "best_effort"}
    assert role_to_dict(parse_role(out)) == out


def test_output_leaves_out_fields_that_were_not_set():
    out = role_to_dict(parse_role(base(allow={"db_users": ["alice"]})))
    assert out["spec"]["allow"] == {"db_users": ["alice"]}
    assert "description" not in out["metadata"]
    assert "max_session_ttl" not in out["spec"]["options"]


def test_v3_without_db_labels_means_every_database_and_says_so():
    doc = {
        "kind": "role",
        "version": "v3",
        "metadata": {"name": "old"},
        "spec": {"allow": {"db_users": ["a"]}},
    }
    assert role_to_dict(parse_role(doc))["spec"]["allow"]["db_labels"] == {"*": "*"}
    doc["version"] = "v4"
    assert "db_labels" not in role_to_dict(parse_role(doc))["spec"]["allow"]
    # the caller's document is not modified
    assert "db_labels" not in doc["spec"]["allow"]


@pytest.mark.parametrize("version", ["v3", "v4", "v5", "v6", "v7"])
def test_supported_versions(version):
    assert parse_role({"kind": "role", "version": version, "metadata": {"name": "r"}}).version == version


def test_unsupported_version_is_refused_with_the_range():
    doc = base()
    doc["version"] = "v9"
    assert refused(doc) == 'role "db": version "v9" is not supported (use v3 to v7)'
    del doc["version"]
    assert "version is missing" in refused(doc)


def test_unknown_field_is_named_with_its_path_and_a_suggestion():
    msg = refused(base(allow={"db_userz": ["alice"]}))
    assert msg.startswith('role "db": unknown field spec.allow.db_userz')
    assert "did you mean db_users?" in msg
    assert "unknown field spec.options.max_sesion_ttl" in refused(base(options={"max_sesion_ttl": "8h"}))
    assert "unknown field spec.deny.rules[0].wher" in refused(
        base(deny={"rules": [{"resources": ["db"], "verbs": ["read"], "wher": "x"}]})
    )
    doc = base()
    doc["spek"] = {}
    assert "unknown field spek" in refused(doc)


def test_wrong_types_name_the_field_and_the_expected_shape():
    assert (
        refused(base(allow={"db_users": "alice"}))
        == 'role "db": spec.allow.db_users: expected a list of strings'
    )
    assert "spec.allow.db_names: expected a list of strings" in refused(base(allow={"db_names": [1]}))
    msg = refused(base(allow={"db_labels": {"env": 3}}))
    assert "spec.allow.db_labels" in msg and '"env"' in msg and "string or a list of strings" in msg
    assert "spec.allow.rules[0].verbs is required" in refused(base(allow={"rules": [{"resources": ["db"]}]}))
    assert "spec.allow.rules[0].verbs" in refused(base(allow={"rules": [{"resources": ["db"], "verbs": []}]}))
    assert "spec.allow: expected a map" in refused(base(allow=["db"]))


def test_metadata_problems():
    assert "metadata.name" in refused({"kind": "role", "version": "v7", "metadata": {"name": "bad name"}})
    assert "metadata.name is required" in refused({"kind": "role", "version": "v7", "metadata": {}})
    assert 'kind must be "role"' in refused({"kind": "user", "version": "v7", "metadata": {"name": "db"}})
    doc = base()
    doc["metadata"]["expires"] = "soon"
    assert "metadata.expires" in refused(doc)


def test_bad_templates_patterns_and_predicates_are_refused_at_parse_time():
    msg = refused(base(allow={"db_users": ["{{internal.db_user}}"]}))
    assert msg.startswith('role "db": spec.allow.db_users[0]:') and 'unknown internal trait "db_user"' in msg
    msg = refused(base(allow={"db_names": ["{{external.x"]}))
    assert "spec.allow.db_names[0]" in msg and "not a valid template" in msg
    msg = refused(base(deny={"db_labels": {"env": "^(prod$"}}))
    assert "spec.deny.db_labels.env" in msg and "regular expression" in msg
    msg = refused(
        base(allow={"rules": [{"resources": ["session"], "verbs": ["read"], "where": "bogus(a, b)"}]})
    )
    assert "spec.allow.rules[0].where" in msg and 'unknown function "bogus"' in msg


def test_options_are_checked_where_pteleport_uses_them():
    msg = refused(base(options={"max_session_ttl": "8 hours"}))
    assert "spec.options.max_session_ttl" in msg and "30h0m0s" in msg
    assert "off, keep, best_effort_drop" in refused(base(options={"create_db_user_mode": "drop"}))


def test_durations():
    cases = {
        "30m": timedelta(minutes=30),
        "12h": timedelta(hours=12),
        "1h30m": timedelta(hours=1, minutes=30),
        "30h0m0s": timedelta(hours=30),
        "90s": timedelta(seconds=90),
        "2h45m10s": timedelta(hours=2, minutes=45, seconds=10),
        "10d": timedelta(days=10),
        "1.5h": timedelta(hours=1, minutes=30),
        "0": timedelta(),
    }
    for text, want in cases.items():
        assert parse_duration(text) == want, text
    for bad in ["", "10", "8 hours", "1x", "-1h", "h"]:
        with pytest.raises(BadParameter):
            parse_duration(bad)
    assert format_duration(timedelta(hours=30)) == "30h0m0s"
    assert format_duration(timedelta(seconds=90)) == "1m30s"


def test_presets():
    roles = {r.name: r for r in preset_roles()}
    assert tuple(roles) == PRESET_ROLE_NAMES
    assert all(
        r.version == "v7" and r.spec.options.session_ttl() == timedelta(hours=30) for r in roles.values()
    )
    assert roles["access"].spec.allow.db_users == ["{{internal.db_users}}"]
    assert roles["editor"].spec.allow.db_labels is None
    assert roles["auditor"].spec.allow.db_labels is None
