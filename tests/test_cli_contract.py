"""The CLI contract of docs/cli.md ("Exit codes"), as one table: the error paths of every command.

Each row is a command of pctl, ptsh or pteleport run as a user would run it, by someone
(``who``: nobody set up, the cluster's admin, alice logged in, alice whose saved login points
at a proxy that is down), with the exit code it must end with (usage 2, not logged in or
expired 3, access denied 4, cannot reach 5, anything else 1) and the sentence it must say.
Every failure is one line on stderr starting with ``ERROR:`` (a usage error from the argument
parser may add ``Run '... --help' for usage.``), and never a traceback or "unexpected".

The world: a cluster, an agent serving ``aurora`` (the shared test PostgreSQL), an agent for
``gone`` that was stopped, and an agent for ``pgdown`` whose PostgreSQL was stopped. Rows do
not change it (they are failures), so they run four at a time.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.dbenv import DbEnv, make_env
from tests.harness import PCTL, PTELEPORT, PTSH, base_env, free_port
from tests.pgserver import PgServer

pytestmark = pytest.mark.slow
PROGRAMS = {"pctl": PCTL, "ptsh": PTSH, "pteleport": PTELEPORT}
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ \[")


@dataclass(frozen=True)
class Row:
    who: str  # bare | admin | alice | stale | nopsql
    command: str  # the command line; {addr}, {dead}, {tmp}, ... are filled in
    code: int
    says: str  # a piece of the first line on stderr
    stdin: str = ""
    plain: bool = False  # the line has no "ERROR: " (psql's own, or tsh's wording)

    @property
    def id(self) -> str:
        return f"{self.who}: {self.command}" + (f" < {self.stdin.strip()[:20]!r}" if self.stdin else "")


ROWS = [
    # --- usage (2): unknown words, missing arguments, values of the wrong form -----------
    Row("bare", "ptsh nosuch", 2, "No such command 'nosuch'"),
    Row("bare", "ptsh --nosuch", 2, "No such option: --nosuch"),
    Row("bare", "ptsh help nosuch", 2, '"ptsh nosuch" is not a command'),
    Row("bare", "pctl help tokens nosuch", 2, '"pctl tokens nosuch" is not a command'),
    Row("bare", "pteleport nosuch", 2, "No such command 'nosuch'"),
    Row("bare", "ptsh login --user=alice", 2, "pass --proxy=HOST:PORT"),
    Row("bare", "ptsh login --proxy=127.0.0.1:abc --user=alice --insecure", 2,
        '--proxy "127.0.0.1:abc" is not an address HOST:PORT; the port is a number from 1 to 65535'),
    Row("bare", "ptsh login --proxy=127.0.0.1:99999 --user=alice --insecure", 2, "the port is a number from 1 to 65535"),
    Row("bare", "ptsh login --proxy=[::1 --user=alice", 2, "an IPv6 address goes in brackets"),
    Row("bare", "ptsh login --proxy=::1 --user=alice", 2, "an IPv6 address goes in brackets"),
    Row("bare", "ptsh login --proxy={addr} --ttl=forever --insecure", 2,
        '--ttl "forever" is not a duration; use forms like 30m, 12h'),
    Row("bare", "ptsh login --proxy={addr} --ttl=0 --insecure", 2, "--ttl must be positive"),
    Row("bare", "ptsh login --proxy={addr} --ttl=-5m --insecure", 2, "is negative"),
    Row("bare", "ptsh login --bot --proxy={addr}", 2, "pass --token=TOKEN with --bot"),
    Row("bare", "ptsh login --bot --token=abc --proxy={addr}", 2, "pass --out=FILE with --bot"),
    Row("bare", "ptsh login --token=abc --proxy={addr}", 2, "--token is for machine users: add --bot"),
    Row("bare", "ptsh login --proxy={addr} --user=alice --insecure", 2, "is needed but stdin is not a terminal"),
    Row("bare", "ptsh login --proxy={addr} --user=alice --insecure --password-stdin", 2,
        "--password-stdin: stdin held no password"),
    Row("bare", "ptsh login --proxy={addr} --user=alice --insecure --password-stdin", 2,
        "this cluster asks for a second factor: pass --otp CODE", stdin="secret\n"),
    Row("bare", "ptsh logout --proxy=127.0.0.1:3080", 2, "pass both --proxy and --user"),
    Row("bare", "ptsh signup not-a-link", 2, '"not-a-link" is not an invite link'),
    Row("bare", "ptsh signup http://h:1/web/invite/0123456789abcdef", 2, "is not an invite link"),
    Row("bare", "ptsh db ls --format=xml", 2, "Invalid value for '--format'"),
    Row("bare", "ptsh db env aurora --port=abc", 2, "Invalid value for '--port'"),
    Row("bare", "ptsh db connect", 2, "Missing argument"),
    Row("bare", "ptsh proxy db aurora", 2, "only --tunnel mode is supported"),
    Row("bare", "ptsh db env aurora --port=99999", 2, "Invalid value for '--port'"),
    Row("alice", "ptsh proxy db --tunnel --port=99999 aurora", 2, "Invalid value for '--port'"),
    Row("bare", "ptsh recordings ls --last=bogus", 2, '--last "bogus" is not a duration'),
    Row("bare", "ptsh recordings ls --limit=0", 2, "--limit must be at least 1"),
    Row("bare", "pctl tokens add", 2, "Missing option '--type'"),
    Row("admin", "pctl tokens add --type=db --ttl=forever", 2, '--ttl "forever" is not a duration'),
    Row("admin", "pctl tokens add --type=db --ttl=0s", 2, "--ttl must be positive, e.g. --ttl=30m"),
    Row("admin", "pctl tokens add --type=db --ttl=30", 2, '--ttl "30" has no unit'),
    Row("admin", "pctl tokens add --type=db --labels=env", 2, 'label "env" is not KEY=VALUE'),
    Row("admin", "pctl tokens add --type=db --join-method=iam", 2,
        "an IAM token needs --allow-aws-account=ACCOUNT (12 digits)"),
    Row("admin", "pctl tokens add --type=db --allow-aws-account=123456789012", 2,
        "are for IAM tokens: add --join-method=iam"),
    Row("admin", "pctl tokens add --type=db --join-method=oidc", 2, '--join-method must be token or iam (got "oidc")'),
    Row("admin", "pctl users add bob", 2, "pass --roles with at least one role"),
    Row("admin", "pctl users add bob --roles=access --ttl=soon", 2, '--ttl "soon" is not a duration'),
    Row("admin", "pctl users update alice", 2, "Nothing to update. Please provide at least one --set flag."),
    Row("admin", "pctl users rm ,", 2, "pass the user name(s) to delete"),
    Row("admin", "pctl get", 2, "Missing argument"),
    Row("admin", "pctl get nosuchkind", 2, 'unknown resource kind "nosuchkind"; use roles, role/NAME, users'),
    Row("admin", "pctl rm nosuchkind/x", 2, 'unknown resource kind "nosuchkind"'),
    Row("admin", "pctl rm role", 2, "pass KIND/NAME, e.g. role/dba"),
    Row("admin", "pctl lock", 2, "pass exactly one of --user=NAME or --role=NAME"),
    Row("admin", "pctl lock --user=bob --ttl=ever", 2, '--ttl "ever" is not a duration'),
    Row("admin", "pctl auth export --type=bogus", 2, "--type must be one of"),
    Row("admin", "pctl auth sign --out={tmp}/x", 2, "pass exactly one of --user"),
    Row("admin", "pctl auth sign --user=alice --out={tmp}/x --format=xml", 2, "--format must be file or db"),
    Row("admin", "pctl auth sign --user=alice --out={tmp}/x --ttl=1y", 2, '--ttl "1y" is not a duration'),
    Row("admin", "pctl bots add ci", 2, "pass --roles with at least one role"),
    Row("admin", "pctl bots add ci --roles=access --ttl=0", 2, "--ttl must be positive"),
    Row("admin", "pctl audit events --format=xml", 2, "--format must be text, json or jsonl"),
    Row("admin", "pctl audit events --last=bogus", 2, '--last "bogus" is not a duration'),
    Row("admin", "pctl audit events --from=yesterday", 2, "--from must be a date or time"),
    Row("admin", "pctl audit events --limit=0", 2, "--limit must be at least 1"),
    Row("admin", "pctl db ls --format=xml", 2, "Invalid value for '--format'"),
    Row("bare", "pctl -i {admin_identity} --auth-server=127.0.0.1:abc status", 2,
        '"127.0.0.1:abc" is not an address HOST:PORT'),
    Row("bare", "pteleport start --listen=127.0.0.1:abc --data-dir={tmp}/never", 2,
        '--listen "127.0.0.1:abc" is not HOST:PORT with a port from 0 to 65535'),
    Row("bare", "pteleport start --listen=127.0.0.1:99999 --data-dir={tmp}/never", 2, "is not HOST:PORT"),
    Row("bare", "pteleport start --second-factor=sms --data-dir={tmp}/never", 2, "--second-factor must be otp or off"),
    Row("bare", "pteleport db start", 2, "Missing option"),
    Row("bare", "pteleport db start --token=t --proxy=127.0.0.1:abc --name=a --uri=db:5432 --data-dir={tmp}/a", 2,
        '--proxy "127.0.0.1:abc" is not HOST:PORT'),
    Row("bare", "pteleport db start --token=t --proxy={addr} --name=a --uri=db --data-dir={tmp}/a", 2,
        '--uri "db" is not HOST:PORT'),
    Row("bare", "pteleport db start --token=t --proxy={addr} --name=a --uri=db:1 --ca-pin=abc --data-dir={tmp}/a", 2,
        '--ca-pin "abc" must start with sha256:'),
    Row("bare", "pteleport db configure create --output=bogus", 2, '--output must be "stdout", "file"'),
    Row("bare", "pteleport db configure create --name=pg1", 2, "pass both --name and --uri"),
    Row("bare", "pteleport db configure create --name=pg1 --uri=db:5432 --labels=env", 2, 'label "env" is not key=value'),
    Row("bare", "pteleport dev --listen=127.0.0.1:abc --data-dir={tmp}/dev", 2,
        '--listen "127.0.0.1:abc" is not an address HOST:PORT'),
    # --- not logged in, or the login expired (3) -----------------------------------------
    Row("bare", "ptsh status", 3, 'Not logged in; run "ptsh login --proxy=HOST:PORT --user=NAME"'),
    Row("bare", "ptsh db ls", 3, 'Not logged in; run "ptsh login'),
    Row("bare", "ptsh db connect aurora", 3, 'Not logged in; run "ptsh login'),
    Row("bare", "ptsh db login aurora", 3, 'Not logged in; run "ptsh login'),
    Row("bare", "ptsh db env aurora", 3, 'Not logged in; run "ptsh login'),
    Row("bare", "ptsh db config aurora", 3, 'Not logged in; run "ptsh login'),
    Row("bare", "ptsh db logout", 3, 'Not logged in; run "ptsh login'),
    Row("bare", "ptsh proxy db --tunnel aurora", 3, 'Not logged in; run "ptsh login'),
    Row("bare", "ptsh recordings ls", 3, 'Not logged in; run "ptsh login'),
    Row("bare", "ptsh play 0b6f0c0e-6a41-4a8e-9f1e-1f3a5f6d2c11", 3, 'Not logged in; run "ptsh login'),
    Row("bare", "ptsh --proxy=127.0.0.1:3080 db ls", 3,
        'Not logged in to 127.0.0.1:3080; run "ptsh login --proxy=127.0.0.1:3080'),
    Row("bare", "ptsh -i {tmp}/missing.identity db ls", 3, "missing.identity"),
    Row("bare", "pctl status", 3, "pctl found no credentials"),
    Row("bare", "pctl --data-dir={tmp}/nowhere tokens ls", 3,
        "(from --data-dir) holds no admin identity (admin-identity.pem)"),
    Row("bare", "pctl -i {tmp}/missing.identity status", 3, "missing.identity"),
    # --- access denied (4) --------------------------------------------------------------
    Row("alice", "pctl status", 4, 'pctl acted as user "alice" (roles access) of cluster'),
    Row("alice", "pctl tokens ls", 4, 'from the ptsh login of alice at'),
    Row("alice", "pctl users add bob --roles=access", 4, 'pctl acted as user "alice" (roles access)'),
    Row("bare", "pctl -i {alice_identity} tokens add --type=db", 4,
        'pctl acted as user "alice" (roles access) of cluster'),
    Row("alice", "ptsh db connect aurora --db-user=postgres", 4, 'access to database "aurora" denied'),
    Row("alice", "ptsh db login aurora --db-user=postgres", 4, 'access to database "aurora" denied'),
    Row("bare", "ptsh login --proxy={addr} --user=nobody --insecure --password-stdin --otp=123456", 4,
        "invalid user name, password or second factor", stdin="wrong password\n"),
    Row("bare", "pteleport db start --token=0123456789abcdef0123 --proxy={addr} --ca-pin={pin} --name=a "
                "--uri=db:1 --data-dir={tmp}/agent-bad-token", 4, "token"),
    # --- cannot reach (5) -----------------------------------------------------------------
    Row("bare", "ptsh login --proxy={dead} --user=alice --insecure", 5, "cannot reach the cluster at {dead}"),
    Row("bare", "ptsh login --proxy=nosuchhost.invalid:3080 --user=alice --insecure", 5,
        "cannot reach the cluster at nosuchhost.invalid:3080"),
    Row("bare", "ptsh signup --insecure https://{dead}/web/invite/0123456789abcdef", 5, "cannot reach the cluster"),
    Row("bare", "ptsh -i {alice_identity} --proxy={dead} db ls", 5, "cannot reach the cluster at {dead}"),
    Row("bare", "ptsh -i {alice_identity} --proxy={dead} db connect aurora", 5, "cannot reach the cluster at {dead}"),
    Row("bare", "pctl -i {admin_identity} --auth-server={dead} status", 5, "cannot reach the cluster at {dead}"),
    Row("bare", "ptsh login --proxy={addr} --user=alice", 5,
        "the proxy's certificate could not be verified"),
    Row("stale", "ptsh db connect aurora", 5, "cannot reach the proxy at {dead}"),
    Row("alice", "ptsh db connect pgdown", 5, "the database service could not reach localhost:"),
    # --- anything else (1) ----------------------------------------------------------------
    Row("alice", "ptsh db connect nosuch", 1, 'database "nosuch" not found; run "ptsh db ls"'),
    Row("nopsql", "ptsh db connect aurora", 1, "psql was not found on PATH; install the PostgreSQL client"),
    Row("alice", "ptsh db connect gone", 1, 'database "gone" not found; run "ptsh db ls"'),
    Row("alice", "ptsh play 0b6f0c0e-6a41-4a8e-9f1e-1f3a5f6d2c11", 1, "no session"),
    Row("alice", "ptsh db logout nosuch", 1, 'Not logged into database "nosuch"'),
    Row("alice", "ptsh db connect aurora -- -c 'select nosuch'", 1, 'column "nosuch" does not exist', plain=True),
    Row("bare", "ptsh logout --proxy=127.0.0.1:3080 --user=bob", 1, "User bob already logged out from 127.0.0.1:3080.",
        plain=True),
    Row("bare", "ptsh -i {not_identity} db ls", 1, "not_identity"),
    Row("alice", "ptsh proxy db --tunnel --port={busy_port} aurora", 1, "cannot listen on 127.0.0.1:{busy_port}"),
    Row("bare", "ptsh signup --insecure https://{addr}/web/invite/0123456789abcdef", 1,
        "this invite or reset link is invalid, already used or expired"),
    Row("admin", "pctl get role/nosuch", 1, "nosuch"),
    Row("admin", "pctl rm role/nosuch", 1, "nosuch"),
    Row("admin", "pctl rm role/access", 1, "access"),
    Row("admin", "pctl create {tmp}/missing.yaml", 1, "cannot read {tmp}/missing.yaml"),
    Row("admin", "pctl create", 1, "not valid YAML", stdin="kind: role\n  bad: [\n"),
    Row("admin", "pctl create", 1, "unknown field", stdin="kind: role\nversion: v7\nmetadata: {name: x}\n"
                                                           "spec: {allow: {db_lables: {a: b}}}\n"),
    Row("admin", "pctl tokens add --type=db --value=short", 1, "16"),
    Row("admin", "pctl tokens add --type=db --join-method=iam --allow-aws-account=1234", 1,
        'aws_account "1234" is not an AWS account id; use its 12 digits'),
    Row("admin", "pctl create", 1, "an IAM join token needs at least one allow rule",
        stdin="metadata: {name: aws-agents}\nkind: token\nversion: v2\nspec: {roles: [Db], join_method: iam}\n"),
    Row("admin", "pctl create", 1, "spec.admin_user.name",
        stdin="metadata: {name: db-admin}\nkind: db\nversion: v3\nspec: {uri: 'db:5432', admin_user: {}}\n"),
    Row("admin", "pctl create", 1, "options.create_db_user_mode: expected one of off, keep, best_effort_drop",
        stdin="metadata: {name: role-mode}\nkind: role\nversion: v7\nspec: {options: {create_db_user_mode: always}}\n"),
    Row("admin", "pctl tokens add --type=nosuch", 1, "nosuch"),
    Row("admin", "pctl tokens rm 0123456789abcdef", 1, "no token has this value or id"),
    Row("admin", "pctl users add alice --roles=access", 1, "already exists"),
    Row("admin", "pctl users add bob --roles=nosuch", 1, "nosuch"),
    Row("admin", "pctl users add bob --roles=access --ttl=100h", 1, "48h"),
    Row("admin", "pctl users rm nosuch", 1, "nosuch"),
    Row("admin", "pctl users update nosuch --set-roles=access", 1, "nosuch"),
    Row("admin", "pctl users reset nosuch", 1, "nosuch"),
    Row("admin", "pctl locks rm nosuch", 1, "nosuch"),
    Row("admin", "pctl bots rm nosuch", 1, "nosuch"),
    Row("admin", "pctl auth sign --user=nosuch --out={tmp}/nosuch.identity", 1, "nosuch"),
    Row("admin", "pctl auth sign --user=alice --out={not_identity}", 1, "already exists; pass --overwrite"),
    Row("bare", "pctl -c {tmp}/missing.yaml status", 1, "cannot read the config file {tmp}/missing.yaml"),
    Row("bare", "pteleport start -c {tmp}/missing.yaml", 1, "config file {tmp}/missing.yaml does not exist"),
    Row("bare", "pteleport start --listen=nosuchhost.invalid:3080 --data-dir={tmp}/never", 1,
        "cannot listen on nosuchhost.invalid:3080: nosuchhost.invalid is not a name or address of this machine"),
    Row("bare", "pteleport start --listen={busy} --data-dir={tmp}/never", 1, "cannot listen"),
    Row("bare", "pteleport db start --token=t --proxy={addr} --name=a --uri=db:1 --data-dir={tmp}/agent-no-pin", 6,
        "cannot verify the cluster at {addr}: this machine does not trust its web certificate (a test cluster's is "
        'self-signed); pass --ca-pin with the pin from "pctl status"'),
    Row("bare", "pteleport install systemd --output={tmp}/no/such/dir/unit", 1, "cannot write {tmp}/no/such/dir/unit"),
    Row("bare", "pteleport dev --pg-bindir={tmp} --data-dir={tmp}/dev", 1, "has no initdb or postgres"),
    # --- access requests (ptsh request, pctl requests, ptsh login --request-id) -------------
    Row("bare", "ptsh request ls", 3, 'Not logged in; run "ptsh login'),
    Row("alice", "ptsh request create", 2, "pass --roles=ROLE[,ROLE]: the roles to request"),
    Row("alice", "ptsh request create --roles=db --session-ttl=ever", 2, '--session-ttl "ever" is not a duration'),
    Row("alice", "ptsh request review nosuch", 2, "pass exactly one of --approve or --deny"),
    Row("alice", "ptsh login --request-id=nosuch --out={tmp}/x", 2, "--request-id puts the request's roles into your"),
    Row("alice", "ptsh login --request-id=nosuch --request-roles=db", 2,
        "pass --request-id (an existing request) or --request-roles (a new one), not both"),
    Row("alice", "ptsh request create --roles=db", 4,
        'you may not request role "db"; your roles let you request no roles; ask an admin for a role such as '
        '"requester"'),
    Row("alice", "ptsh request create --roles=nosuch", 1, 'role "nosuch" does not exist'),
    Row("alice", "ptsh request show nosuch", 1, 'access request nosuch does not exist; "ptsh request ls" lists yours'),
    Row("alice", "ptsh request review --approve nosuch", 1, "access request nosuch does not exist"),
    Row("alice", "ptsh login --request-id=nosuch", 1, "access request nosuch does not exist"),
    Row("admin", "pctl requests approve nosuch", 1, "access request nosuch does not exist"),
    Row("admin", "pctl requests deny nosuch --reason=no", 1, "access request nosuch does not exist"),
    Row("admin", "pctl requests rm nosuch", 1, "access request nosuch does not exist"),
    Row("admin", "pctl requests ls --format=xml", 2, "Invalid value for '--format'"),
]


@dataclass
class World:
    env: DbEnv
    root: Path
    values: dict[str, str]
    envs: dict[str, dict[str, str]]
    cwd: Path
    pg2: PgServer | None = None
    holder: socket.socket | None = None
    results: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)


def _stale_home(alice_home: Path, target: Path, dead: str) -> Path:
    """alice's ptsh home (with her saved db certificate) whose profile now names a proxy that is down."""
    shutil.copytree(alice_home, target)
    for profile in target.glob("*.yaml"):
        doc = yaml.safe_load(profile.read_text())
        doc["web_proxy_addr"] = dead
        profile.write_text(yaml.safe_dump(doc))
    return target


@pytest.fixture(scope="module")
def world(pg, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("contract")
    pg.create_role("alice", "cert")
    env = make_env(root, pg)
    pg2 = None
    holder = socket.socket()
    try:
        env.start_agent("aurora")
        env.start_agent("gone").stop()  # the cluster forgets "gone": "not found" (no agent, no database)
        pg2 = PgServer.start()
        pg2.trust_client_ca(env.pctl("auth", "export", "--type=db-client").stdout.encode())
        pg2.create_role("alice", "cert")
        env.start_agent("pgdown", f"--ca-cert-file={pg2.ca_cert_file}", uri=f"localhost:{pg2.port}")
        pg2.pause()
        env.add_user("alice", "access", "--db-users=alice", "--db-names=postgres")
        env.login("alice")
        assert env.ptsh("alice", "db", "login", "aurora").returncode == 0
        tmp = root / "files"
        tmp.mkdir()
        (tmp / "not_identity").write_text("not an identity file\n")
        for name, user in (("admin_identity", None), ("alice_identity", "alice")):
            path = tmp / f"{name}.pem"
            if user is None:
                shutil.copy(env.cluster.data_dir / "admin-identity.pem", path)
            else:
                signed = env.pctl("auth", "sign", f"--user={user}", f"--out={path}")
                assert signed.returncode == 0, signed.stderr
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        dead = f"127.0.0.1:{free_port()}"
        values = {
            "addr": env.cluster.addr,
            "dead": dead,
            "tmp": str(tmp),
            "pin": env.pctl_json("status")["ca_pin"],
            "admin_identity": str(tmp / "admin_identity.pem"),
            "alice_identity": str(tmp / "alice_identity.pem"),
            "not_identity": str(tmp / "not_identity"),
            "busy": f"127.0.0.1:{holder.getsockname()[1]}",
            "busy_port": str(holder.getsockname()[1]),
        }
        envs = {
            "bare": base_env(PTSH_HOME=root / "bare-home"),
            "admin": env.cluster.env(PTSH_HOME=root / "admin-home"),
            "alice": base_env(PTSH_HOME=env.home("alice")),
            "stale": base_env(PTSH_HOME=_stale_home(env.home("alice"), root / "stale-home", dead)),
            "nopsql": base_env(PTSH_HOME=env.home("alice"), PATH=str(root / "empty-bin")),
        }
        cwd = root / "cwd"  # an empty directory: no ./.data of a pteleport dev around
        cwd.mkdir()
        yield World(env, root, values, envs, cwd, pg2, holder)
    finally:
        holder.close()
        env.stop()
        if pg2 is not None:
            pg2.stop()


def _argv(row: Row, values: dict[str, str]) -> list[str]:
    import shlex

    words = shlex.split(row.command.format(**values))
    return [PROGRAMS[words[0]], *words[1:]]


@pytest.fixture(scope="module")
def results(world: World) -> dict[str, subprocess.CompletedProcess[str]]:
    def one(row: Row) -> tuple[str, subprocess.CompletedProcess[str]]:
        result = subprocess.run(_argv(row, world.values), env=world.envs[row.who], cwd=world.cwd, input=row.stdin,
                                capture_output=True, text=True, timeout=90)
        return row.id, result

    with ThreadPoolExecutor(max_workers=4) as pool:
        world.results.update(pool.map(one, ROWS))
    return world.results


def test_the_table_has_no_duplicates() -> None:
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_error_path(row: Row, world: World, results: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = results[row.id]
    err = result.stderr
    shown = f"exit {result.returncode}\nstdout: {result.stdout[-600:]}\nstderr: {err}"
    assert result.returncode == row.code, shown
    assert "Traceback" not in err and "unexpected" not in err, shown
    # (WARNING lines may come first; so may the daemon's own log lines, which are not the CLI's message.)
    lines = [line for line in err.splitlines()
             if line.strip() and not line.startswith("WARNING: ") and not LOG_LINE.match(line)]
    assert lines, shown
    first = lines[0]
    if not row.plain:
        assert first.startswith("ERROR: "), shown
        extra = lines[1:]
        assert not extra or (row.code == 2 and extra == [extra[0]] and extra[0].startswith("Run '")), shown
    assert row.says.format(**world.values) in "\n".join(lines), shown


def test_db_connect_checks_first_and_still_opens_one_session(world: World, results: dict) -> None:
    """The session ptsh opens before psql starts is the one psql gets: the audit log shows one session."""
    import time
    from datetime import UTC, datetime

    env = world.env
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    time.sleep(1)
    marker = "contract-one-session"
    done = env.ptsh("alice", "db", "connect", "aurora", "--", "-At", "-c", f"select '{marker}'")
    assert (done.returncode, done.stdout.strip()) == (0, marker), done.stderr
    deadline = time.monotonic() + 30
    while True:
        starts = [e for e in env.events(type="db.session.start", user="alice", **{"from": since})
                  if e["code"] == "TDB00I"]
        queries = [e for e in env.events(type="db.session.query", user="alice", **{"from": since})]
        if any(q.get("db_query") == f"select '{marker}'" for q in queries) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(starts) == 1, starts
    assert [q["sid"] for q in queries if q.get("db_query") == f"select '{marker}'"] == [starts[0]["sid"]]
