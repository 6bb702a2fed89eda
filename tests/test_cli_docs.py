"""Every command docs/cli.md documents is run here against a real deployment (cluster, agent,
PostgreSQL), with `--format json` where the command takes one, and its stdout parsed as JSON.

The list of commands comes from the headings of docs/cli.md; whether a command takes
`--format` comes from the apps themselves. A command documented without a way to run it
here fails `test_every_documented_command_is_exercised`. The exit-code table of
docs/cli.md is checked the same way: each code is produced by an example.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.dbenv import PASSWORD, DbEnv, make_env
from tests.harness import PCTL, PTSH, free_port, run

pytestmark = pytest.mark.slow
DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
HEADING = re.compile(r"^### `((?:pctl|ptsh) [^`]*)`", re.M)
# Documented commands run by another test (they need a terminal): where.
ELSEWHERE = {"ptsh signup": ("tests/test_login_e2e.py", "test_alice_signs_up_in_a_terminal")}


def documented_commands() -> list[str]:
    """``pctl tokens add``, ``ptsh db ls``, ...: the words of each heading before its arguments."""
    paths = []
    for match in HEADING.finditer(DOC.read_text()):
        words = []
        for token in match.group(1).split():
            if not re.fullmatch(r"[a-z][a-z-]*", token):
                break
            words.append(token)
        paths.append(" ".join(words))
    return paths


def takes_format(path: str) -> bool:
    import typer.main

    prog, *words = path.split()
    module = __import__(f"{prog}.cli", fromlist=["app"])
    command: Any = typer.main.get_command(module.app)
    for word in words:
        command = command.commands[word]
    # An output format offers json (pctl auth sign --format=file|db picks what to write instead).
    return any("--format" in getattr(param, "opts", []) and "json" in (getattr(param, "help", "") or "")
               for param in command.params)


@dataclass
class Ran:
    argv: list[str]
    result: subprocess.CompletedProcess[str]
    parsed: Any = None


@dataclass
class Scenario:
    env: DbEnv
    ran: dict[str, Ran] = field(default_factory=dict)

    def run(self, path: str, *args: str, expect: int = 0, input: str | None = None,
            env: dict[str, str] | None = None) -> Ran:
        prog, *words = path.split()
        fmt = ["--format", "json"] if takes_format(path) else []
        argv = [PCTL if prog == "pctl" else PTSH, *words, *args, *fmt]
        if env is None:
            env = self.env.cluster.env() if prog == "pctl" else self.env.user_env("alice")
        result = run(argv, env, input=input)
        assert result.returncode == expect, f"{path} {args}: {result.returncode}\n{result.stdout}\n{result.stderr}"
        ran = Ran(argv, result)
        if fmt:
            try:
                ran.parsed = json.loads(result.stdout)
            except ValueError:
                pytest.fail(f"{path} --format json printed something that is not JSON:\n{result.stdout}")
        self.ran[path] = ran
        return ran


def _wait_for(what: str, probe: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def scenario(pg, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    pg.create_role("alice", "cert")
    root = tmp_path_factory.mktemp("clidocs")
    env = make_env(root, pg)
    s = Scenario(env)
    try:
        env.start_agent("aurora")
        # --- pctl, as the admin on the auth host ---
        s.run("pctl version")
        assert "Usage: pctl tokens add" in s.run("pctl help", "tokens", "add").result.stdout
        s.run("pctl status")
        added = s.run("pctl tokens add", "--type=db").parsed
        assert any(t["metadata"]["name"] == added["id"] for t in s.run("pctl tokens ls").parsed)
        s.run("pctl tokens rm", added["id"])
        s.run("pctl create", input="kind: role\nversion: v7\nmetadata:\n  name: docs-role\nspec:\n  allow:\n"
                                   "    db_labels:\n      env: dev\n    db_users: [alice]\n    db_names: [postgres]\n")
        assert s.run("pctl get", "role/docs-role").parsed[0]["metadata"]["name"] == "docs-role"
        invite = s.run("pctl users add", "bob", "--roles=docs-role").parsed
        assert invite["sub_kind"] == "invite"
        assert any(u["metadata"]["name"] == "bob" for u in s.run("pctl users ls").parsed)
        s.run("pctl users update", "bob", "--set-roles=access")
        lock = s.run("pctl lock", "--user=bob", "--message=docs", "--ttl=1h").parsed
        assert [d["metadata"]["name"] for d in s.run("pctl locks ls").parsed] == [lock["metadata"]["name"]]
        s.run("pctl locks rm", lock["metadata"]["name"])
        assert s.run("pctl users reset", "bob").parsed["sub_kind"] == "reset"
        s.run("pctl users rm", "bob")
        assert [d["metadata"]["name"] for d in s.run("pctl db ls").parsed] == ["aurora"]
        assert "BEGIN CERTIFICATE" in s.run("pctl auth export", "--type=db-client").result.stdout
        bot = s.run("pctl bots add", "docs-bot", "--roles=docs-role").parsed
        assert bot["token"]
        assert [b["name"] for b in s.run("pctl bots ls").parsed] == ["docs-bot"]
        s.run("pctl auth sign", "--user=docs-bot", f"--out={root / 'docs-bot.identity'}")
        s.run("pctl bots rm", "docs-bot")
        assert any(e["event"] == "user.create" for e in s.run("pctl audit events", "--type=user.create").parsed)
        s.run("pctl rm", "role/docs-role")
        # --- ptsh, as alice ---
        env.add_user("alice", "access,db,requester")
        s.run("ptsh version")
        assert "Usage: ptsh db connect" in s.run("ptsh help", "db", "connect").result.stdout
        s.run("ptsh login", f"--proxy={env.cluster.addr}", "--user=alice", "--insecure", "--password-stdin",
              "--otp", env.users["alice"].code(), input=PASSWORD + "\n")
        assert s.run("ptsh status").parsed["active"]["username"] == "alice"
        assert [d["metadata"]["name"] for d in s.run("ptsh db ls").parsed] == ["aurora"]
        s.run("ptsh db login", "aurora", "--db-user=alice", "--db-name=postgres")
        assert s.run("ptsh db env", "aurora").parsed["PGUSER"] == "alice"
        assert s.run("ptsh db config", "aurora").parsed["database"] == "postgres"
        connect = s.run("ptsh db connect", "aurora", "--", "-At", "-c", "select 'docs-' || current_user")
        assert connect.result.stdout.strip() == "docs-alice"
        port = free_port()
        tunnel = subprocess.Popen([PTSH, "proxy", "db", "--tunnel", f"--port={port}", "aurora"],
                                  env=env.user_env("alice"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            banner = tunnel.stdout.readline() if tunnel.stdout else ""
            assert f"127.0.0.1:{port}" in banner, banner
            psql = subprocess.run(["psql", f"postgres://alice@127.0.0.1:{port}/postgres?sslmode=disable", "-Atc",
                                   "select 1"], capture_output=True, text=True, timeout=30)
            assert psql.stdout.strip() == "1", psql.stderr
        finally:
            tunnel.send_signal(signal.SIGINT)
            tunnel.wait(10)
        s.ran["ptsh proxy db"] = Ran(tunnel.args, subprocess.CompletedProcess(tunnel.args, tunnel.returncode, "", ""))
        _access_requests(s, env)
        sessions = _wait_for("a recorded session", lambda: s.run("ptsh recordings ls").parsed)
        events = s.run("ptsh play", sessions[0]["sid"]).parsed
        assert events[0]["event"] == "db.session.start"
        s.run("ptsh db logout")
        s.run("ptsh logout")
        yield s
    finally:
        env.stop()


def _access_requests(s: Scenario, env: DbEnv) -> None:
    """ptsh request ... as alice (requester) and rev (reviewer); pctl requests ... as the admin."""
    created = env.pctl("create", input="kind: role\nversion: v7\nmetadata:\n  name: db-extra\nspec: {}\n")
    assert created.returncode == 0, created.stderr
    env.add_user("rev", "access,reviewer")
    rev = env.user_env("rev")
    s.run("ptsh login", f"--proxy={env.cluster.addr}", "--user=rev", "--insecure", "--password-stdin",
          "--otp", env.users["rev"].code(), input=PASSWORD + "\n", env=rev)
    first = s.run("ptsh request create", "--roles=db-extra", "--reason=docs", "--nowait").parsed["metadata"]["name"]
    assert [d["metadata"]["name"] for d in s.run("ptsh request ls").parsed] == [first]
    assert s.run("ptsh request show", first).parsed["spec"]["state"] == "PENDING"
    assert s.run("ptsh request review", "--approve", first, env=rev).parsed["spec"]["state"] == "APPROVED"
    assumed = run([PTSH, "login", f"--request-id={first}"], env.user_env("alice"))
    assert assumed.returncode == 0, assumed.stderr
    assert s.run("ptsh request drop", first).parsed["active_requests"] == []
    second = s.run("ptsh request create", "--roles=db-extra", "--nowait").parsed["metadata"]["name"]
    assert s.run("pctl requests approve", second).parsed["spec"]["state"] == "APPROVED"
    third = s.run("ptsh request create", "--roles=db-extra", "--nowait").parsed["metadata"]["name"]
    assert s.run("pctl requests deny", third, "--reason=docs").parsed["spec"]["state"] == "DENIED"
    assert {first, second, third} <= {d["metadata"]["name"] for d in s.run("pctl requests ls").parsed}
    s.run("pctl requests rm", second)


@pytest.mark.parametrize("path", documented_commands())
def test_documented_command_runs_with_json(scenario: Scenario, path: str) -> None:
    if path in ELSEWHERE:
        file, name = ELSEWHERE[path]
        assert f"def {name}(" in (DOC.parent.parent / file).read_text(), f"{path}: {file}::{name} is gone"
        return
    assert path in scenario.ran, f"docs/cli.md documents {path!r} but no test runs it"
    ran = scenario.ran[path]
    assert ran.result.returncode == 0
    if takes_format(path):
        assert ran.parsed is not None, f"{path} takes --format but was not run with --format json"


def test_every_documented_command_is_exercised() -> None:
    paths = documented_commands()
    assert len(paths) == len(set(paths)), "a command is documented twice"
    assert {"pctl auth sign", "pctl bots add", "pctl bots ls", "pctl bots rm", "ptsh db ls", "ptsh proxy db"} <= set(paths)


def test_every_command_is_documented() -> None:
    """The other direction: each command of the apps has a heading in docs/cli.md."""
    import typer.main

    def walk(prog: str, command: Any, words: list[str]) -> Iterator[str]:
        subs = getattr(command, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(prog, sub, [*words, name])
        else:
            yield " ".join([prog, *words])

    documented = set(documented_commands())
    for prog in ("pctl", "ptsh"):
        module = __import__(f"{prog}.cli", fromlist=["app"])
        for path in walk(prog, typer.main.get_command(module.app), []):
            assert path in documented, f"{path} has no section in docs/cli.md"


def test_exit_codes_of_the_table(scenario: Scenario, tmp_path: Path) -> None:
    table = re.findall(r"^\| (\d) \| ([^|]+) \|", DOC.read_text(), re.M)
    assert [int(code) for code, _ in table] == [0, 1, 2, 3, 4, 5]
    env = scenario.env
    identity = tmp_path / "alice.identity"
    assert env.pctl("auth", "sign", "--user=alice", f"--out={identity}").returncode == 0
    user = env.user_env("nobody")
    examples = {
        0: [PTSH, "-i", str(identity), "db", "ls", "--format", "json"],
        1: [PTSH, "-i", str(identity), "db", "connect", "nosuch-db"],
        2: [PTSH, "db", "ls", "--no-such-flag"],
        3: [PTSH, "-i", str(tmp_path / "missing.identity"), "db", "ls"],
        4: [PCTL, "-i", str(identity), "tokens", "ls", "--format", "json"],  # alice is no editor
        5: [PTSH, "-i", str(identity), "db", "ls", "--proxy", f"127.0.0.1:{free_port()}"],
    }
    for code, argv in examples.items():
        result = run(argv, user)
        assert result.returncode == code, f"{argv}: expected {code}, got {result.returncode}\n{result.stderr}"
        if code:
            lines = result.stderr.strip().splitlines()
            assert lines[0].startswith("ERROR: ") and "Traceback" not in result.stderr, result.stderr
            assert len(lines) == 1 or (code == 2 and lines[1].startswith("Run '")), result.stderr
