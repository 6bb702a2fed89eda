"""`pteleport` as an operator types it: version, config errors, db configure create, systemd unit."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from tests.harness import PTELEPORT, base_env, run


def test_version() -> None:
    result = run([PTELEPORT, "version"], base_env())
    assert result.returncode == 0 and result.stdout.startswith("pteleport v")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("auth_service:\n  authentication:\n    second_factor: sms\n", "auth_service.authentication.second_factor"),
        ("proxy_service:\n  web_listen_adr: 1.2.3.4:3080\n", "unknown key proxy_service.web_listen_adr"),
        ("teleport: [1, 2\n", "not valid YAML at line"),
        ("version: v9\n", "version"),
        ("- a list\n", "expected a mapping"),
        ('auth_service:\n  tokens: ["db:1"]\n', "auth_service.tokens entry 1 (db) is too short to be safe (1 characters); "
         "a static token needs at least 16"),
        ('auth_service:\n  tokens: ["db:0123456789abcdef", "db:fifteen-chars"]\n', "auth_service.tokens entry 2"),
        ('auth_service:\n  tokens: ["no-types-given-at-all"]\n', 'is not "TYPES:VALUE"'),
    ],
)
def test_a_bad_config_file_gets_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "pteleport.yaml"
    config.write_text(text)
    result = run([PTELEPORT, "start", "-c", str(config)], base_env(), timeout=20)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), result.stderr
    assert message in lines[0]


def test_a_missing_config_file(tmp_path: Path) -> None:
    result = run([PTELEPORT, "start", "-c", str(tmp_path / "nope.yaml")], base_env())
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_db_configure_create_writes_a_private_working_config(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abcdef0123456789\n")
    out = tmp_path / "etc" / "pteleport.yaml"
    result = run([PTELEPORT, "db", "configure", "create", f"--token={token}", "--ca-pin=sha256:" + "ab" * 32,
                  "--proxy=proxy.example.com:443", "--name=aurora", "--protocol=postgres",
                  "--uri=aurora.cluster-x.us-west-1.rds.amazonaws.com:5432", "--aws-region=us-west-1",
                  "--labels=env=prod,team=data", f"--output=file://{out}"], base_env())
    assert result.returncode == 0, result.stderr
    assert f"pteleport start --config={out}" in result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    doc = yaml.safe_load(out.read_text())
    assert doc["teleport"]["join_params"] == {"join_method": "token", "token_name": "abcdef0123456789"}
    assert doc["teleport"]["proxy_server"] == "proxy.example.com:443"
    db = doc["db_service"]["databases"][0]
    assert db["aws"] == {"region": "us-west-1"} and db["static_labels"] == {"env": "prod", "team": "data"}
    assert doc["auth_service"]["enabled"] is False and doc["db_service"]["enabled"] is True
    stdout = run([PTELEPORT, "db", "configure", "create", "--token=xyz12345", "--name=a", "--uri=h:1"], base_env())
    assert yaml.safe_load(stdout.stdout)["db_service"]["databases"][0]["uri"] == "h:1"


def test_db_configure_create_refuses_bad_flags(tmp_path: Path) -> None:
    """Flag values of the wrong form are wrong usage (exit 2)."""
    bad_pin = run([PTELEPORT, "db", "configure", "create", "--ca-pin=deadbeef", "--name=a", "--uri=h:1"], base_env())
    assert bad_pin.returncode == 2 and "sha256:" in bad_pin.stderr
    bad_labels = run([PTELEPORT, "db", "configure", "create", "--labels=oops", "--name=a", "--uri=h:1"], base_env())
    assert bad_labels.returncode == 2 and "key=value" in bad_labels.stderr
    half = run([PTELEPORT, "db", "configure", "create", "--name=a"], base_env())
    assert half.returncode == 2 and "--uri" in half.stderr


def test_install_systemd(tmp_path: Path) -> None:
    shown = run([PTELEPORT, "install", "systemd"], base_env())
    assert shown.returncode == 0
    assert "ExecStart=" in shown.stdout and "start --config /etc/pteleport.yaml" in shown.stdout
    assert "WantedBy=multi-user.target" in shown.stdout
    unit = tmp_path / "pteleport.service"
    assert run([PTELEPORT, "install", "systemd", "--output", str(unit)], base_env()).returncode == 0
    assert unit.read_text() == shown.stdout
