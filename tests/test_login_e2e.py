"""The whole user story with real processes, as a person types it.

Admin: start the cluster, ``pctl status``, a join token, the seed role from stdin, invite
alice. Alice: ``ptsh signup`` and ``ptsh login`` through a terminal, ``ptsh status``. Then
what must fail, fails with a clear sentence; and a restart changes nothing users see.

The tests of this module run in order and share one cluster.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.dbenv import SEED_ROLE
from tests.harness import (
    PCTL,
    PTSH,
    Cluster,
    TotpDevice,
    base_env,
    find_url,
    pty_run,
    run,
    signup,
)

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
GENERIC = "invalid user name, password or second factor"


class World:
    """What the steps of the story hand each other."""

    def __init__(self, cluster: Cluster, root: Path) -> None:
        self.cluster = cluster
        self.root = root
        self.alice_home = root / "alice-ptsh"
        self.secrets: dict[str, str] = {}
        self.urls: dict[str, str] = {}
        self.last_code: dict[str, str] = {}

    def admin(self, *args: str, input: str | None = None) -> str:
        result = run([PCTL, *args], self.cluster.env(PTSH_HOME=self.root / "admin-ptsh"), input=input)
        assert result.returncode == 0, f"pctl {args}: {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def user_env(self, home: Path, **extra: str | Path) -> dict[str, str]:
        # No data dir named (and none with an admin identity on this host): pctl and ptsh act as the
        # logged-in user.
        return base_env(PTSH_HOME=home, **extra)

    def invite(self, user: str, roles: str = "access,db") -> str:
        url = find_url(self.admin("users", "add", f"--roles={roles}", user))
        self.urls[user] = url
        return url

    def login(
        self,
        user: str,
        home: Path,
        *,
        password: str = PASSWORD,
        code: str | None = None,
        flags: tuple[str, ...] = ("--insecure",),
        **env: str | Path,
    ) -> tuple[int, str]:
        def otp(_out: str) -> str:
            value = code if code is not None else TotpDevice(self.secrets[user]).code()
            self.last_code[user] = value
            return value

        return pty_run(
            [PTSH, "login", f"--proxy={self.cluster.addr}", f"--user={user}", *flags],
            [(rf"Enter password for pteleport user {user}: ", password), (r"Enter an OTP code from a device: ", otp)],
            self.user_env(home, **env),
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("e2e")
    with Cluster(root / "data") as cluster:
        yield World(cluster, root)


# --- the admin side ---------------------------------------------------------------------------------
def test_admin_sets_up_the_cluster(world: World) -> None:
    status = world.admin("status")
    assert re.search(r"^CA pin   sha256:[0-9a-f]{64}$", status, re.M), status
    token = world.admin("tokens", "add", "--type=db", "--format=text").strip()
    assert re.fullmatch(r"[0-9a-f]{32}", token)
    assert world.admin("create", input=SEED_ROLE) == 'role "db" has been created\n'
    url = world.invite("alice")
    assert url.startswith(f"https://{world.cluster.addr}/web/invite/")


# --- alice --------------------------------------------------------------------------------------------
def test_alice_signs_up_in_a_terminal(world: World) -> None:
    def code(out: str) -> str:
        secret = re.search(r"otpauth://totp/\S+secret=([A-Z2-7]+)", out).group(1)
        world.secrets["alice"] = secret
        return TotpDevice(secret).code()

    exit_code, out = pty_run(
        [PTSH, "signup", world.urls["alice"], "--insecure"],
        [
            ("Enter a new password: ", PASSWORD),
            ("Confirm the new password: ", PASSWORD),
            ("Enter an OTP code from a device: ", code),
        ],
        world.user_env(world.alice_home),
    )
    assert exit_code == 0, out
    assert "Setting up user alice" in out
    assert "▀" in out or "█" in out  # the QR code
    assert f"ptsh login --proxy={world.cluster.addr} --user=alice --insecure" in out


def test_invite_cannot_be_used_twice(world: World) -> None:
    result = run([PTSH, "signup", world.urls["alice"], "--insecure"], world.user_env(world.alice_home))
    assert result.returncode == 1
    assert "invalid, already used or expired" in result.stderr


def test_alice_logs_in_and_sees_her_status(world: World) -> None:
    exit_code, out = world.login("alice", world.alice_home)
    assert exit_code == 0, out
    assert f"> Profile URL:        https://{world.cluster.addr}" in out
    assert "  Logged in as:       alice" in out
    result = run([PTSH, "status"], world.user_env(world.alice_home))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "  Roles:              access, db" in lines
    valid = next(line for line in lines if line.startswith("  Valid until:"))
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0000 UTC \[valid for (11h5\dm|12h)\]$", valid), valid
    home = world.alice_home
    assert (home / "current-profile").read_text().strip() == "127.0.0.1"
    key = home / "keys" / "127.0.0.1" / "alice.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (home / "keys" / "127.0.0.1" / "cas").is_dir()


def test_reused_totp_code_is_refused(world: World) -> None:
    exit_code, out = world.login("alice", world.root / "scratch-1", code=world.last_code["alice"])
    assert exit_code == 4, out
    assert "this code was already used; wait for the next one" in out
    assert GENERIC not in out


def test_the_sign_up_code_cannot_log_in_and_says_why(world: World) -> None:
    """Issue 12: signing up and logging in with the same code within 30 s."""
    import httpx

    url = world.invite("dora")
    token = url.rsplit("/", 1)[1]
    with httpx.Client(base_url=world.cluster.url, verify=False, timeout=10) as http:
        secret = http.get(f"/v1/invites/{token}").json()["totp_secret"]
        code = TotpDevice(secret).code()  # marks its step as used, as the cluster does
        assert http.post(f"/v1/invites/{token}", json={"password": PASSWORD, "otp_token": code}).status_code == 200
    world.secrets["dora"] = secret
    for attempt in range(6):  # more than the lock-out's 5: a reused code is not a failure
        exit_code, out = world.login("dora", world.root / f"scratch-dora-{attempt}", code=code)
        assert exit_code == 4, out
        if "this code was already used; wait for the next one" not in out:
            assert GENERIC in out  # the step and its neighbour passed: the code is now just wrong
            return
    exit_code, out = world.login("dora", world.root / "scratch-dora-ok")
    assert exit_code == 0, out  # six reused codes did not lock dora out


def test_wrong_password_gets_the_generic_message(world: World) -> None:
    exit_code, out = world.login("alice", world.root / "scratch-2", password="not the password", code="000000")
    assert exit_code == 4, out
    assert GENERIC in out
    exit_code, out = world.login("nobody", world.root / "scratch-2", code="000000")
    assert exit_code == 4 and GENERIC in out


def test_login_needs_a_terminal_and_trust(world: World) -> None:
    env = world.user_env(world.root / "scratch-3")
    result = run([PTSH, "login", f"--proxy={world.cluster.addr}", "--user=alice", "--insecure"], env)
    assert result.returncode == 2
    assert "stdin is not a terminal" in result.stderr
    result = run([PTSH, "login", f"--proxy={world.cluster.addr}", "--user=alice"], env)
    assert result.returncode == 5
    assert "could not be verified" in result.stderr and "--ca-file" in result.stderr


def test_five_failures_lock_the_user(world: World) -> None:
    import httpx

    from common.tls import generate_private_key, public_key_pem

    world.secrets["bob"] = signup(world.cluster, world.invite("bob"), PASSWORD)
    key = public_key_pem(generate_private_key()).decode()
    for _ in range(5):
        response = httpx.post(
            world.cluster.url + "/v1/login",
            verify=False,
            json={"user": "bob", "password": "wrong", "otp_token": "000000", "public_key": key},
        )
        assert response.status_code == 403
    exit_code, out = world.login("bob", world.root / "scratch-4")
    assert exit_code == 4, out
    assert GENERIC in out  # the same sentence as a wrong password: it does not tell that bob exists
    assert "bob" not in out.split("Enter an OTP code from a device:")[-1]
    events = json.loads(world.admin("audit", "events", "--type=user.login", "--user=bob", "--format=json"))
    assert events[-1]["code"] == "T1000W" and events[-1]["error"] == "user is locked"


def test_keyring_storage(world: World) -> None:
    """With a real keyring backend, the key goes there and never to disk; pctl can use it."""
    home = world.root / "dave-ptsh"
    world.secrets["dave"] = signup(world.cluster, world.invite("dave"), PASSWORD)
    env = {
        "PTSH_KEY_STORAGE": "",
        "PYTHON_KEYRING_BACKEND": "tests.fake_keyring.JsonKeyring",
        "FAKE_KEYRING_FILE": world.root / "ring.json",
        "PYTHONPATH": Path(__file__).resolve().parents[1],
    }
    exit_code, out = world.login("dave", home, **env)
    assert exit_code == 0, out
    assert "Key storage:        OS keyring" in out
    assert not (home / "keys" / "127.0.0.1" / "dave.key").exists()
    ring = json.loads((world.root / "ring.json").read_text())
    assert "PRIVATE KEY" in ring["ptsh@127.0.0.1\0dave"]
    result = run([PCTL, "tokens", "ls"], world.user_env(home, **env))
    assert result.returncode == 4, result.stderr  # authenticated with the keyring key, but not an editor
    assert 'verb "list" on "token"' in result.stderr


# --- certificates the cluster must refuse -------------------------------------------------------------
def _copy_home(world: World, name: str) -> Path:
    home = world.root / name
    shutil.copytree(world.alice_home, home)
    return home


def test_pctl_as_alice_is_denied_not_refused(world: World) -> None:
    result = run([PCTL, "status"], world.user_env(world.alice_home))
    assert result.returncode == 4
    assert "not allowed" in result.stderr


def test_tampered_certificate_is_refused(world: World) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509 import load_der_x509_certificate, load_pem_x509_certificate

    home = _copy_home(world, "tampered-ptsh")
    cert_path = home / "keys" / "127.0.0.1" / "alice.crt"
    der = bytearray(load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    cert_path.write_bytes(load_der_x509_certificate(bytes(der)).public_bytes(Encoding.PEM))
    result = run([PCTL, "status"], world.user_env(home))
    assert result.returncode == 3, result.stderr
    assert "refused your certificate" in result.stderr and "log in again" in result.stderr


def test_expired_certificate_is_refused(world: World) -> None:
    from common.client import ClusterClient, ClusterCredentials
    from common.errors import NotLoggedIn
    from common.identity import Identity
    from pteleport.ca.authority import CertAuthority, sign_identity
    from pteleport.services.store import JsonStore
    from pteleport.storage.sqlite import SQLiteBackend

    backend = SQLiteBackend(world.cluster.data_dir / "backend" / "sqlite.db")
    try:
        doc = JsonStore(backend, "cas").get("user")
    finally:
        backend.close()
    user_ca = CertAuthority("user", doc["cluster_name"], doc["cert"].encode(), doc["key"].encode())
    home = _copy_home(world, "expired-ptsh")
    keys = home / "keys" / "127.0.0.1"
    from common.tls import load_private_key

    key = load_private_key((keys / "alice.key").read_bytes())
    now = datetime.now(UTC)
    identity = Identity(username="alice", roles=("access", "db"), cluster_name=doc["cluster_name"])
    cert = sign_identity(user_ca, key.public_key(), identity, now - timedelta(hours=2), now - timedelta(hours=1))
    (keys / "alice.crt").write_bytes(cert)

    result = run([PTSH, "status"], world.user_env(home))
    assert result.returncode == 3
    assert "[EXPIRED]" in result.stdout and "Active profile expired." in result.stderr
    result = run([PCTL, "status"], world.user_env(home))
    assert result.returncode == 3 and "expired" in result.stderr
    # The cluster itself refuses it too, with words a user can act on.
    creds = ClusterCredentials(
        cert, (keys / "alice.key").read_bytes(), (keys / "cas").joinpath(f"{doc['cluster_name']}.pem").read_bytes()
    )
    with ClusterClient(world.cluster.addr, creds=creds) as client, pytest.raises(NotLoggedIn, match="expired"):
        client.get("/v1/whoami")


# --- a restart changes nothing users see ------------------------------------------------------------
def test_restart_keeps_everything(world: World) -> None:
    world.secrets["carol"] = signup(world.cluster, world.invite("carol"), PASSWORD)
    admin_before = world.admin("status")
    alice_before = run([PTSH, "status", "--format=json"], world.user_env(world.alice_home)).stdout
    world.cluster.restart()
    assert world.admin("status") == admin_before
    alice_after = run([PTSH, "status", "--format=json"], world.user_env(world.alice_home))
    assert alice_after.returncode == 0 and alice_after.stdout == alice_before
    # alice's certificate is still good (signed by the same CA): denied, not refused.
    assert run([PCTL, "status"], world.user_env(world.alice_home)).returncode == 4
    assert "alice" in world.admin("users", "ls")
    # carol, who signed up before the restart, logs in after it (trusting the web cert by file).
    web_cert = world.cluster.data_dir / "webproxy_cert.pem"
    exit_code, out = world.login("carol", world.root / "carol-ptsh", flags=(f"--ca-file={web_cert}", "--ttl=90"))
    assert exit_code == 0, out
    assert "Logged in as:       carol" in out
    assert re.search(r"\[valid for 1h(29|30)m\]", out), out


def test_reset_link_works_with_ptsh_signup(world: World) -> None:
    url = find_url(world.admin("users", "reset", "carol"))
    assert "/web/reset/" in url

    def code(out: str) -> str:
        secret = re.search(r"secret=([A-Z2-7]+)", out).group(1)
        world.secrets["carol"] = secret
        return TotpDevice(secret).code()

    exit_code, out = pty_run(
        [PTSH, "signup", url, "--insecure"],
        [
            ("Enter a new password: ", "another good password"),
            ("Confirm the new password: ", "another good password"),
            ("Enter an OTP code from a device: ", code),
        ],
        world.user_env(world.root / "carol-ptsh"),
    )
    assert exit_code == 0, out
    assert "Resetting the password of user carol" in out
    again = run([PTSH, "signup", url, "--insecure"], world.user_env(world.root / "carol-ptsh"))
    assert again.returncode == 1 and "already used" in again.stderr


def test_signup_passwords_must_match(world: World) -> None:
    url = world.invite("erin")
    exit_code, out = pty_run(
        [PTSH, "signup", url, "--insecure"],
        [("Enter a new password: ", PASSWORD), ("Confirm the new password: ", "something else")],
        world.user_env(world.root / "erin-ptsh"),
    )
    assert exit_code == 1
    assert "the two passwords do not match" in out


def test_logout(world: World) -> None:
    env = world.user_env(world.alice_home)
    result = run([PTSH, "logout", f"--proxy={world.cluster.addr}", "--user=alice"], env)
    assert result.returncode == 0
    assert result.stdout == f"Logged out alice from {world.cluster.addr}.\n"
    assert not (world.alice_home / "keys" / "127.0.0.1").exists()
    assert run([PTSH, "status"], env).returncode == 3
