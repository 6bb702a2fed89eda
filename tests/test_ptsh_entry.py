"""ptsh's fast entry point: what it answers without Typer is what the Typer app answers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.plainyaml import plain_mapping
from ptsh.dbls import options
from ptsh.entry import connect_args
from tests.harness import PTSH

TYPER = [sys.executable, "-c", "import sys; sys.argv[0] = 'ptsh'; from ptsh.cli import main; main()"]


def run(cmd: list[str], cache: Path) -> tuple[int, str, str]:
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), COLUMNS="100")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("words", [[], ["--help"], ["-h"], ["help"], ["db", "--help"], ["help", "db", "connect"],
                                   ["proxy", "db", "-h"], ["version"]])
def test_help_and_version_are_what_the_typer_app_prints_recorded_or_not(tmp_path: Path, words: list[str]) -> None:
    expected = run([*TYPER, *words], tmp_path / "unused")
    first = run([PTSH, *words], tmp_path / "cache")  # records
    second = run([PTSH, *words], tmp_path / "cache")  # from the record
    assert first == expected and second == expected
    if words != ["version"]:
        assert list((tmp_path / "cache" / "ptsh").glob("help-*.txt"))


def test_an_error_is_not_recorded_as_help(tmp_path: Path) -> None:
    code, _, err = run([PTSH, "nosuch", "--help"], tmp_path)
    assert code == 2 and "nosuch" in err
    assert not list((tmp_path / "ptsh").glob("help-*.txt"))


@pytest.mark.parametrize(
    ("argv", "parsed"),
    [
        (["db", "connect", "pg"], ("pg", None, None, None, [])),
        (["db", "connect", "--db-user=u", "-n", "app", "pg", "--", "-c", "select 1"], ("pg", "u", "app", None, ["-c", "select 1"])),
        (["db", "connect", "pg", "--proxy", "p:3080", "-u", "u"], ("pg", "u", None, "p:3080", [])),
        (["db", "connect"], None),  # Typer says what is missing
        (["db", "connect", "pg", "-c", "select 1"], None),  # Typer refuses the unknown option
        (["db", "connect", "pg", "other"], None),
        (["db", "ls"], None),
    ],
)
def test_db_connect_forms_the_entry_runs_itself(argv: list[str], parsed: tuple | None) -> None:
    assert connect_args(argv) == parsed


@pytest.mark.parametrize(
    ("words", "parsed"),
    [
        ([], (False, "text")),
        (["-v", "--format=json"], (True, "json")),
        (["-f", "json"], (False, "json")),
        (["--format", "text", "--verbose"], (True, "text")),
        (["--format=yaml"], None),  # yaml: the Typer command
        (["--format=JSON"], None),  # Typer says what the choices are
        (["env=prod"], None),  # label selectors and --search filter: the Typer command
        (["--search", "x"], None),
        (["-f"], None),
    ],
)
def test_db_ls_forms_the_entry_runs_itself(words: list[str], parsed: tuple | None) -> None:
    assert options(words) == parsed


def test_db_ls_without_a_login_says_what_typer_says(tmp_path: Path) -> None:
    for words in (["db", "ls"], ["db", "ls", "--format=json"]):
        env = dict(os.environ, PTSH_HOME=str(tmp_path / "nobody"), XDG_CACHE_HOME=str(tmp_path / "cache"))
        env.pop("PTSH_IDENTITY_FILE", None)
        fast = subprocess.run([PTSH, *words], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        slow = subprocess.run([*TYPER, *words], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr)
        assert fast.returncode == 3 and "Not logged in" in fast.stderr


@pytest.mark.parametrize(
    "text",
    [
        "web_proxy_addr: 127.0.0.1:3080\nuser: alice\ncluster: vm\nkey_storage: file\n",
        "web_proxy_addr: proxy.example.com:443\nuser: a.b-c@corp\n",
        "user: true\n", "user: 123\n", "user: 'x y'\n", "web_proxy_addr: '[::1]:3080'\n", "user: Null\n",
        "user: 2026-01-01\n", "user: 0x1f\n", "user: 1.5\n",
    ],
)
def test_a_profile_read_without_yaml_is_what_yaml_reads(text: str) -> None:
    plain = plain_mapping(text)
    assert plain is None or plain == yaml.safe_load(text)
    if text.startswith("web_proxy_addr: 127") or text.startswith("web_proxy_addr: proxy"):
        assert plain is not None  # the form ptsh login writes takes the fast way


# --- against a real cluster: the fast paths print what the Typer commands print -----------------
@pytest.fixture(scope="module")
def env(pg, tmp_path_factory):
    from tests.dbenv import make_env

    pg.create_role("alice", "cert")
    e = make_env(tmp_path_factory.mktemp("entry"), pg)
    e.start_agent("aurora")
    e.add_user("alice", "access,db")
    e.login("alice")
    try:
        yield e
    finally:
        e.stop()


def both(env, *words: str) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    user_env = env.user_env("alice")
    fast = subprocess.run([PTSH, *words], capture_output=True, text=True, env=user_env, stdin=subprocess.DEVNULL)
    slow = subprocess.run([*TYPER, *words], capture_output=True, text=True, env=user_env, stdin=subprocess.DEVNULL)
    return fast, slow


@pytest.mark.slow
def test_db_ls_prints_what_the_typer_command_prints(env) -> None:
    for words in (["db", "ls"], ["db", "ls", "-v"], ["db", "ls", "--format=json"], ["db", "ls", "-f", "json", "-v"],
                  ["db", "ls", "--format", "text"]):
        fast, slow = both(env, *words)
        assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr)
        assert "aurora" in fast.stdout
    assert env.ptsh("alice", "db", "login", "--db-user=alice", "--db-name=postgres", "aurora").returncode == 0
    fast, slow = both(env, "db", "ls")
    assert fast.stdout == slow.stdout and "> aurora (user: alice, db: postgres)" in fast.stdout
    assert list(Path(env.user_env("alice")["PTSH_HOME"]).rglob("aurora.crt.facts"))  # kept for the next run


@pytest.mark.slow
def test_db_connect_refusals_keep_their_sentence_and_exit_code(env) -> None:
    ok = env.ptsh("alice", "db", "connect", "--db-user=alice", "--db-name=postgres", "aurora", "--", "-Atc",
                  "select current_user")
    assert (ok.returncode, ok.stdout.strip()) == (0, "alice"), ok.stderr
    for words in (["db", "connect", "--db-user=alice", "--db-name=postgres", "nosuch", "--", "-c", "select 1"],
                  ["db", "connect", "-u", "root", "-n", "postgres", "aurora", "--", "-c", "select 1"]):
        fast, slow = both(env, *words)
        assert fast.returncode == slow.returncode != 0, (fast.stderr, slow.stderr)
        # psql reports PostgreSQL's own refusals with the tunnel's socket, which differs per run.
        def same(text: str) -> str:
            return re.sub(r'socket "[^"]*"', 'socket "S"', re.sub(r"port \d+", "port N", text))

        assert same(fast.stderr) == same(slow.stderr) and fast.stdout == slow.stdout == ""


@pytest.mark.slow
def test_db_connect_with_a_new_certificate_asks_auth_once(env) -> None:
    """Without ``ptsh db login``, the quick path asks auth for a certificate with one POST of its
    own (no httpx): one ``cert.create`` per connect, and a refusal is asked for (and audited) once."""
    import time
    from datetime import UTC, datetime, timedelta

    env.ptsh("alice", "db", "logout")  # (in case an earlier test logged in to it)
    facts = next(Path(env.user_env("alice")["PTSH_HOME"]).glob("keys/*/alice.crt.facts"))
    assert "public_key" in facts.read_text()  # what the quick path sends, kept at login
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)  # (the filter has whole seconds)
    time.sleep((start - datetime.now(UTC)).total_seconds())
    since = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    for _ in range(2):
        ok = env.ptsh("alice", "db", "connect", "--db-user=alice", "--db-name=postgres", "aurora", "--", "-Atc",
                      "select 'quick'")
        assert (ok.returncode, ok.stdout.strip()) == (0, "quick"), ok.stderr
    issued = [e for e in env.events(type="cert.create", **{"from": since})
              if e["identity"]["user"] == "alice" and e["identity"].get("route_to_database")]
    assert len(issued) == 2, issued
    # A user whose role denies the db user "root": refused by auth, with the Typer path's sentence.
    created = env.pctl("create", input=DENY_ROOT_ROLE)
    assert created.returncode == 0, created.stderr
    env.add_user("erin", "access,db,deny-root")
    env.login("erin")
    words = ["db", "connect", "-u", "root", "-n", "postgres", "aurora", "--", "-c", "select 1"]
    refused = env.ptsh("erin", *words)
    assert refused.returncode == 4, refused.stderr
    assert refused.stderr.startswith("ERROR: ") and "root" in refused.stderr, refused.stderr
    denied = [e for e in env.events(type="db.session.start", user="erin", **{"from": since}) if e["code"] == "TDB00W"]
    assert len(denied) == 1, denied  # asked once: the quick path does not repeat a refused request
    typer = subprocess.run([*TYPER, *words], capture_output=True, text=True, env=env.user_env("erin"),
                           stdin=subprocess.DEVNULL)
    assert (typer.returncode, typer.stderr) == (refused.returncode, refused.stderr)
    assert not list(Path(env.user_env("alice")["PTSH_HOME"]).rglob("aurora.crt"))  # nothing saved by connect


DENY_ROOT_ROLE = """kind: role
version: v3
metadata:
  name: deny-root
spec:
  deny:
    db_users:
    - root
"""


def test_psqls_socket_is_in_a_new_directory_only_its_owner_can_enter(monkeypatch) -> None:
    import os
    import socket
    import stat
    import tempfile

    from ptsh.connect import SOCKET_NAME, _private_socket

    runtime = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # (short: a socket's path has 108 bytes)
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    folder, sock = _private_socket()
    try:
        assert os.path.dirname(folder) == runtime
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        assert sock.family == socket.AF_UNIX and sock.getsockname() == os.path.join(folder, SOCKET_NAME)
        again, other = _private_socket()  # a second one is a directory of its own
        other.close()
        assert again != folder
    finally:
        import shutil

        sock.close()
        shutil.rmtree(runtime)


@pytest.mark.slow
def test_db_connect_gives_psql_a_private_socket_and_removes_it(env) -> None:
    import os

    shown = env.ptsh("alice", "db", "connect", "--db-user=alice", "--db-name=postgres", "aurora", "--", "-c",
                     "\\conninfo")
    assert shown.returncode == 0, shown.stderr
    found = re.search(r'via socket in "([^"]+)"', shown.stdout)
    assert found is not None, shown.stdout
    assert not os.path.exists(found.group(1))  # gone with psql
