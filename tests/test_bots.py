"""Machine users and identity files against real clusters.

`pctl bots add | ls | rm`, `ptsh login --bot` (single-use token, no password ever),
`pctl auth sign` (TTL caps, who may sign for whom), identity files that cannot be used
(one sentence and the right exit code each), and `ptsh login --password-stdin`.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.harness import PCTL, PTSH, Cluster, TotpDevice, base_env, find_url, run, signup

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
ROLES = """kind: role
version: v7
metadata:
  name: db-readonly
spec:
  options:
    max_session_ttl: 2h
  allow:
    db_labels:
      env: dev
    db_users: [reader]
    db_names: [postgres]
---
kind: db
version: v3
metadata:
  name: aurora
  labels:
    env: dev
spec:
  protocol: postgres
  uri: localhost:5432
"""


@dataclass
class World:
    a: Cluster
    b: Cluster
    root: Path

    def admin(self, *args: str, input: str | None = None, cluster: Cluster | None = None):
        cluster = cluster or self.a
        return run([PCTL, *args], cluster.env(PTSH_HOME=self.root / "admin-home"), input=input)

    def ok(self, *args: str, input: str | None = None, cluster: Cluster | None = None) -> str:
        result = self.admin(*args, input=input, cluster=cluster)
        assert result.returncode == 0, f"pctl {args}: {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def env(self, **extra: str | Path) -> dict[str, str]:
        """A machine with no admin identity and no ptsh login."""
        values: dict[str, str | Path] = {"PTSH_HOME": self.root / "nobody-home"}
        values.update(extra)
        return base_env(**values)

    def ptsh(self, *args: str, input: str | None = None, **extra: str | Path):
        return run([PTSH, *args], self.env(**extra), input=input)

    def pctl(self, *args: str, **extra: str | Path):
        return run([PCTL, *args], self.env(**extra))

    def bot_identity(self, name: str, *, roles: str = "db-readonly", ttl: str | None = None) -> Path:
        token = self.ok("bots", "add", name, f"--roles={roles}", "--format=text").strip()
        out = self.root / f"{name}.identity"
        args = ["login", "--bot", f"--token={token}", f"--proxy={self.a.addr}", f"--out={out}", "--insecure"]
        result = self.ptsh(*args, *([f"--ttl={ttl}"] if ttl else []))
        assert result.returncode == 0, result.stderr
        return out

    def signed(self, user: str, name: str, *args: str, cluster: Cluster | None = None) -> Path:
        out = self.root / f"{name}.identity"
        self.ok("auth", "sign", f"--user={user}", f"--out={out}", "--overwrite", *args, cluster=cluster)
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("bots")
    with Cluster(root / "a", extra_args=["--cluster-name", "alpha"]) as a, \
            Cluster(root / "b", extra_args=["--cluster-name", "beta", "--second-factor", "off"]) as b:
        w = World(a, b, root)
        w.ok("create", input=ROLES)
        yield w


def _expires(identity: Path) -> datetime:
    from common.identity import identity_from_pem
    from common.identity_file import parse

    expires = identity_from_pem(parse(identity.read_bytes()).cert).expires
    assert expires is not None
    return expires


# --- pctl bots ------------------------------------------------------------------------------------
def test_bots_add_ls_rm(world: World) -> None:
    doc = json.loads(world.ok("bots", "add", "lister", "--roles=db-readonly", "--ttl=2h", "--format=json"))
    assert doc["name"] == "lister" and doc["roles"] == ["db-readonly"]
    assert re.fullmatch(r"[0-9a-f]{32}", doc["token"])
    left = datetime.fromisoformat(doc["token_expires"]) - datetime.now(UTC)
    assert timedelta(hours=1, minutes=58) < left <= timedelta(hours=2)
    assert doc["proxy"]
    listed = json.loads(world.ok("bots", "ls", "--format=json"))
    mine = next(b for b in listed if b["name"] == "lister")
    assert mine["token_expires"] == doc["token_expires"] and mine["last_join"] is None
    assert "lister" in world.ok("bots", "ls")
    assert "lister" in world.ok("bots", "ls", "--format=yaml")
    users = json.loads(world.ok("users", "ls", "--format=json"))
    assert any(u["metadata"]["name"] == "lister" for u in users)
    created = [e for e in json.loads(world.ok("audit", "events", "--type=user.create", "--format=json"))
               if e.get("name") == "lister"]
    assert created and created[0]["code"] == "T1002I"
    assert world.ok("bots", "rm", "lister").strip() == 'Bot "lister" has been deleted'
    assert not any(b["name"] == "lister" for b in json.loads(world.ok("bots", "ls", "--format=json")))
    gone = world.admin("bots", "rm", "lister")
    assert gone.returncode == 1 and 'bot "lister" does not exist' in gone.stderr


def test_bots_add_bad_input(world: World) -> None:
    no_roles = world.admin("bots", "add", "x1")
    assert no_roles.returncode == 2 and "--roles" in no_roles.stderr  # a missing option: usage
    unknown = world.admin("bots", "add", "x2", "--roles=nosuch")
    assert unknown.returncode == 1 and 'role "nosuch" does not exist' in unknown.stderr
    world.ok("bots", "add", "twice", "--roles=db-readonly")
    again = world.admin("bots", "add", "twice", "--roles=db-readonly")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_bot_token_is_single_use(world: World) -> None:
    token = world.ok("bots", "add", "once", "--roles=db-readonly", "--format=text").strip()
    first = world.root / "once.identity"
    args = ["login", "--bot", f"--token={token}", f"--proxy={world.a.addr}", "--insecure"]
    result = world.ptsh(*args, f"--out={first}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "The identity file for bot once is written to" in result.stderr
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    text = first.read_text()
    assert text.startswith("# pteleport identity file\n# proxy: ") and "# cluster: alpha" in text
    assert text.count("PRIVATE KEY-----") == 2 and text.count("BEGIN CERTIFICATE") == 4  # cert + 3 CAs
    assert not (world.root / "nobody-home").exists()  # no profile was written
    second = world.ptsh(*args, f"--out={world.root / 'twice.identity'}")
    assert second.returncode == 4
    assert second.stderr.strip() == (
        "ERROR: the bot join token is invalid, already used or expired; ask an admin for a new one (pctl bots add)"
    )
    joins = json.loads(world.ok("audit", "events", "--type=bot.join", "--format=json"))
    assert any(e["code"] == "TJ001I" and e["bot_name"] == "once" and e["success"] for e in joins)
    assert any(e["code"] == "TJ001E" and not e["success"] for e in joins)
    listed = next(b for b in json.loads(world.ok("bots", "ls", "--format=json")) if b["name"] == "once")
    assert listed["last_join"] and listed["token_expires"] is None
    status = json.loads(world.ptsh("-i", str(first), "status", "--format=json").stdout)
    assert status["active"]["username"] == "once" and status["active"]["key_storage"] == "identity file"


def test_token_from_a_file(world: World) -> None:
    token = world.ok("bots", "add", "fromfile", "--roles=db-readonly", "--format=text").strip()
    token_file = world.root / "token.txt"
    token_file.write_text(token + "\n")
    out = world.root / "fromfile.identity"
    result = world.ptsh("login", "--bot", f"--token={token_file}", f"--proxy={world.a.addr}", f"--out={out}",
                        "--insecure")
    assert result.returncode == 0, result.stderr


def test_bot_login_usage_errors(world: World) -> None:
    proxy = f"--proxy={world.a.addr}"
    cases = [
        (["login", "--bot", proxy, "--out=x.identity"], "pass --token=TOKEN"),
        (["login", "--bot", "--token=abc", proxy], "pass --out=FILE"),
        (["login", "--token=abc", proxy, "--out=x.identity"], "add --bot"),
    ]
    for args, words in cases:
        result = world.ptsh(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr
    existing = world.root / "exists.identity"
    existing.write_text("x")
    result = world.ptsh("login", "--bot", "--token=abc", proxy, f"--out={existing}", "--insecure")
    assert result.returncode == 1 and "--overwrite" in result.stderr


def test_bot_never_logs_in_with_a_password(world: World) -> None:
    import httpx

    from common.tls import generate_private_key, public_key_pem

    world.ok("bots", "add", "nopass", "--roles=db-readonly")
    key = public_key_pem(generate_private_key()).decode()
    response = httpx.post(f"{world.a.url}/v1/login", verify=False,
                          json={"user": "nopass", "password": "", "otp_token": "", "public_key": key})
    assert response.status_code == 403
    assert response.json()["error"]["message"] == "invalid user name, password or second factor"
    reset = world.admin("users", "reset", "nopass")
    assert reset.returncode == 1
    assert reset.stderr.strip().startswith('ERROR: "nopass" is a bot: it never has a password')


def test_bot_certificate_is_capped_by_its_roles(world: World) -> None:
    identity = world.bot_identity("capped", ttl="10h")
    assert _expires(identity) - datetime.now(UTC) <= timedelta(hours=2)
    default = world.bot_identity("default-ttl")
    assert _expires(default) - datetime.now(UTC) <= timedelta(hours=1)


# --- pctl auth sign ----------------------------------------------------------------------------------
def test_auth_sign_identity_file_is_capped_and_usable(world: World) -> None:
    world.ok("bots", "add", "signed-bot", "--roles=db-readonly")
    out = world.root / "signed-bot.identity"
    result = world.admin("auth", "sign", "--user=signed-bot", "--ttl=10h", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "capped by the roles of signed-bot" in result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert timedelta(hours=1, minutes=58) < _expires(out) - datetime.now(UTC) <= timedelta(hours=2)
    status = world.ptsh("-i", str(out), "status", "--format=json")
    assert status.returncode == 0, status.stderr
    active = json.loads(status.stdout)["active"]
    assert active["username"] == "signed-bot" and active["roles"] == ["db-readonly"]
    assert active["cluster"] == "alpha" and active["identity_file"] == str(out)
    exists = world.admin("auth", "sign", "--user=signed-bot", f"--out={out}")
    assert exists.returncode == 1 and "--overwrite" in exists.stderr
    usage = world.admin("auth", "sign", "--user=signed-bot", "--format=db", f"--out={out}")
    assert usage.returncode == 2 and "--db-service" in usage.stderr
    nobody = world.admin("auth", "sign", "--user=nosuch", f"--out={world.root / 'nosuch.identity'}")
    assert nobody.returncode == 1 and 'user "nosuch" does not exist' in nobody.stderr


def test_auth_sign_format_db_writes_three_files(world: World) -> None:
    from common.identity import identity_from_pem
    from common.tls import load_certs

    world.ok("bots", "add", "dbcert-bot", "--roles=db-readonly")
    prefix = world.root / "dbcert"
    world.ok("auth", "sign", "--user=dbcert-bot", "--format=db", "--db-service=aurora", "--db-user=reader",
             "--db-name=postgres", "--ttl=1h", f"--out={prefix}")
    key, crt, cas = (Path(f"{prefix}.{ext}") for ext in ("key", "crt", "cas"))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ident = identity_from_pem(crt.read_bytes())
    assert ident.username == "dbcert-bot" and ident.route is not None
    assert (ident.route.service_name, ident.route.username, ident.route.database) == ("aurora", "reader", "postgres")
    assert [c.subject.rfc4514_string() for c in load_certs(cas.read_bytes())] == ["OU=host CA,O=alpha,CN=alpha"]
    denied = world.admin("auth", "sign", "--user=dbcert-bot", "--format=db", "--db-service=aurora",
                         "--db-user=postgres", "--db-name=postgres", f"--out={prefix}-2")
    assert denied.returncode == 4
    assert 'access to database "aurora" denied' in denied.stderr


def test_who_may_sign_for_whom(world: World) -> None:
    world.ok("bots", "add", "imp-bot", "--roles=db-readonly")
    world.ok("users", "add", "ed", "--roles=editor")
    world.ok("users", "add", "other", "--roles=access")
    ed = world.signed("ed", "ed")

    def sign_as(identity: Path, user: str) -> tuple[int, str]:
        result = world.pctl("-i", str(identity), "auth", "sign", f"--user={user}",
                            f"--out={world.root / f'by-{identity.stem}-{user}.identity'}", "--overwrite")
        return result.returncode, result.stderr

    code, err = sign_as(ed, "imp-bot")
    assert code == 4, err
    assert err.strip().startswith(
        'ERROR: you may not sign certificates for "imp-bot": none of your roles (editor) allows impersonating them;'
    )
    # Oneself: allowed, and never beyond one's own certificate.
    short = world.signed("ed", "ed-short", "--ttl=30m")
    code, err = sign_as(short, "ed")
    assert code == 0, err
    assert _expires(world.root / "by-ed-short-ed.identity") <= _expires(short)
    # Teleport's allow.impersonate: named users, with roles they may have.
    world.ok("create", input="""kind: role
version: v7
metadata:
  name: ci-signer
spec:
  allow:
    impersonate:
      users: [imp-bot, other]
      roles: [db-readonly]
""")
    world.ok("users", "update", "ed", "--set-roles=editor,ci-signer")
    ed = world.signed("ed", "ed-signer")
    code, err = sign_as(ed, "imp-bot")
    assert code == 0, err
    code, err = sign_as(ed, "other")  # other has the role access, which ci-signer does not list
    assert code == 4 and "allows impersonating them" in err
    # A certificate signed by impersonation cannot impersonate further.
    code, err = sign_as(world.root / "by-ed-signer-imp-bot.identity", "other")
    assert code == 4 and 'signed by "ed"' in err
    # A rule allowing verb impersonate on user; a deny wins over it.
    world.ok("create", input="""kind: role
version: v7
metadata:
  name: any-signer
spec:
  allow:
    rules:
    - resources: [user]
      verbs: [impersonate]
  deny:
    impersonate:
      users: [imp-bot]
""")
    world.ok("users", "update", "ed", "--set-roles=editor,any-signer")
    ed = world.signed("ed", "ed-any")
    code, err = sign_as(ed, "other")
    assert code == 0, err
    code, err = sign_as(ed, "imp-bot")
    assert code == 4 and 'denies impersonating them' in err


# --- identity files that cannot be used -----------------------------------------------------------------
def test_identity_file_problems(world: World) -> None:
    world.ok("bots", "add", "probe-bot", "--roles=db-readonly")
    good = world.signed("probe-bot", "probe")

    def db_ls(path: Path | str, **extra: str | Path) -> tuple[int, str, str]:
        result = world.ptsh("-i", str(path), "db", "ls", "--format", "json", **extra)
        return result.returncode, result.stdout, result.stderr

    code, out, err = db_ls(good)
    assert code == 0 and json.loads(out) == [], err

    missing = world.root / "missing.identity"
    code, out, err = db_ls(missing)
    assert (code, out) == (3, "")
    assert err.strip().startswith(f"ERROR: identity file {missing} does not exist; create one with")

    garbage = world.root / "garbage.identity"
    garbage.write_text("hello\n")
    code, _, err = db_ls(garbage)
    assert code == 1 and "is not a pteleport identity file" in err

    code, _, err = db_ls(world.root)
    assert code == 1 and "is a directory" in err

    mixed = world.root / "mixed.identity"
    other_key = world.signed("probe-bot", "probe-2").read_text()
    text = good.read_text()
    key_re = re.compile(r"-----BEGIN PRIVATE KEY-----.*?-----END PRIVATE KEY-----\n", re.S)
    mixed.write_text(key_re.sub(lambda _m: key_re.search(other_key).group(0), text))
    code, _, err = db_ls(mixed)
    assert code == 1 and "does not belong to its certificate" in err

    loose = world.root / "loose.identity"
    loose.write_bytes(good.read_bytes())
    loose.chmod(0o644)
    code, out, err = db_ls(loose)
    assert code == 0 and json.loads(out) == []
    assert err.strip() == f"WARNING: identity file {loose} is readable by other users; run: chmod 600 {loose}"

    expired = world.signed("probe-bot", "expired", "--ttl=1s")
    import time

    time.sleep(1.2)
    code, out, err = db_ls(expired)
    assert (code, out) == (3, "")
    assert re.match(rf"ERROR: the identity file {re.escape(str(expired))} expired at \d{{4}}-\d\d-\d\d", err), err
    env_code = world.ptsh("db", "ls", "--format", "json", PTSH_IDENTITY_FILE=expired)
    assert env_code.returncode == 3 and "expired at" in env_code.stderr

    # Issued by cluster beta, used against alpha's proxy.
    world.ok("users", "add", "probe-bot", "--roles=access", cluster=world.b)
    foreign = world.signed("probe-bot", "foreign", cluster=world.b)
    code, _, err = db_ls(foreign)  # the file names beta's proxy: fine there
    assert code == 0, err
    result = world.ptsh("-i", str(foreign), "db", "ls", "--format=json", f"--proxy={world.a.addr}")
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().startswith(
        f'ERROR: the identity file {foreign} was issued by cluster "beta", but the proxy at {world.a.addr} belongs '
        'to cluster "alpha"'
    )
    pctl = world.pctl("-i", str(foreign), "--auth-server", world.a.addr, "status")
    assert pctl.returncode == 3 and 'issued by cluster "beta"' in pctl.stderr
    # A proxy that is down is "cannot reach", not "foreign".
    down = world.ptsh("-i", str(good), "db", "ls", "--proxy=127.0.0.1:1")
    assert down.returncode == 5 and "cannot reach the cluster" in down.stderr


def test_unreadable_identity_file(world: World, tmp_path: Path) -> None:
    from common.errors import BadParameter
    from common.identity_file import load

    path = tmp_path / "locked.identity"
    path.write_text("x")
    path.chmod(0)
    if os.geteuid() != 0:  # root reads anything; then check the message through the loader
        result = world.ptsh("-i", str(path), "db", "ls")
        assert result.returncode == 1 and "cannot be read by this user" in result.stderr
        return
    original = Path.read_bytes

    def refuse(self: Path) -> bytes:
        if self == path:
            raise PermissionError(13, "Permission denied")
        return original(self)

    mp = pytest.MonkeyPatch()
    mp.setattr(Path, "read_bytes", refuse)
    try:
        with pytest.raises(BadParameter, match="cannot be read by this user; check its owner and mode"):
            load(path)
    finally:
        mp.undo()


def test_login_refuses_an_identity_flag(world: World) -> None:
    result = world.ptsh("-i", "x.identity", "login", f"--proxy={world.a.addr}")
    assert result.returncode == 2 and "drop -i/--identity" in result.stderr


# --- ptsh login --password-stdin -------------------------------------------------------------------------
def test_password_stdin(world: World) -> None:
    url = find_url(world.ok("users", "add", "scripted", "--roles=access"))
    device = TotpDevice(signup(world.a, url, PASSWORD))
    home = world.root / "scripted-home"
    args = ["login", "--password-stdin", f"--proxy={world.a.addr}", "--user=scripted", "--insecure"]
    no_otp = world.ptsh(*args, input=PASSWORD + "\n", PTSH_HOME=home)
    assert no_otp.returncode == 2
    assert "WARNING: reading the password from stdin" in no_otp.stderr
    assert "ERROR: this cluster asks for a second factor: pass --otp CODE with --password-stdin" in no_otp.stderr
    empty = world.ptsh(*args, input="", PTSH_HOME=home)
    assert empty.returncode == 2 and "stdin held no password" in empty.stderr
    wrong = world.ptsh(*args, "--otp", "000000", input="wrong password\n", PTSH_HOME=home)
    assert wrong.returncode == 4 and "invalid user name, password or second factor" in wrong.stderr
    ok = world.ptsh(*args, "--otp", device.code(), input=PASSWORD + "\n", PTSH_HOME=home)
    assert ok.returncode == 0, ok.stderr
    assert "Logged in as:       scripted" in ok.stdout
    status = world.ptsh("status", "--format=json", PTSH_HOME=home)
    assert json.loads(status.stdout)["active"]["username"] == "scripted"


def test_password_stdin_to_an_identity_file_without_second_factor(world: World) -> None:
    import httpx

    url = find_url(world.ok("users", "add", "scripted2", "--roles=access", cluster=world.b))
    token = url.rsplit("/", 1)[1]
    done = httpx.post(f"{world.b.url}/v1/invites/{token}", verify=False,
                      json={"password": PASSWORD, "otp_token": ""})
    assert done.status_code == 200, done.text
    out = world.root / "scripted2.identity"
    result = world.ptsh("login", "--password-stdin", f"--proxy={world.b.addr}", "--user=scripted2", "--insecure",
                        f"--out={out}", input=PASSWORD + "\n", PTSH_HOME=world.root / "scripted2-home")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "The identity file for user scripted2 is written to" in result.stderr
    assert not (world.root / "scripted2-home").exists()
    status = world.ptsh("-i", str(out), "status", "--format=json")
    assert json.loads(status.stdout)["active"]["cluster"] == "beta"
