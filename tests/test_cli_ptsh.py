"""ptsh without a cluster: start-up cost, the profile store, status of stored logins, usage errors."""

from __future__ import annotations

import getpass
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.errors import BadParameter, NotLoggedIn, UsageError
from common.profile import FILE, KEYRING, Profile, ProfileStore, profile_name
from tests.harness import PCTL, PTSH, base_env, free_port, run

# (Typer 0.29 itself imports pydantic to convert parameters, so pydantic is not on this list.)
HEAVY = ("httpx", "cryptography", "keyring", "yaml", "segno", "aiohttp", "pteleport", "boto3", "psycopg")


@pytest.mark.parametrize("prog", ["ptsh", "pctl"])
@pytest.mark.parametrize("argv", [["--help"], ["version"]])
def test_help_and_version_import_no_heavy_module(prog: str, argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from common.cli import run_app\n"
        f"from {prog}.cli import app\n"
        "try:\n"
        f"    run_app(app, {prog!r}, {argv!r})\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=base_env(), timeout=30)
    assert result.returncode == 0, result.stderr
    assert "HEAVY=\n" in result.stderr, result.stderr


def test_version_output() -> None:
    result = run([PTSH, "version"], base_env())
    assert result.returncode == 0
    assert result.stdout.startswith("ptsh v")
    assert run([PCTL, "version"], base_env()).stdout.startswith("pctl v")


def test_status_when_not_logged_in(tmp_path: Path) -> None:
    """It says what to run: for the local cluster (pteleport dev), else with placeholders."""
    result = subprocess.run([PTSH, "status"], env=base_env(PTSH_HOME=tmp_path / "home"), cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert result.stderr.strip() == 'ERROR: Not logged in; run "ptsh login --proxy=HOST:PORT --user=NAME"'
    data = tmp_path / ".data"  # what pteleport dev leaves in the directory it ran in
    data.mkdir()
    (data / "process.json").write_text('{"proxy": "127.0.0.1:3080", "public_addr": "127.0.0.1:3081"}')
    (data / "webproxy_cert.pem").write_text("self-signed")
    result = subprocess.run([PTSH, "db", "ls"], env=base_env(PTSH_HOME=tmp_path / "home"), cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    user = getpass.getuser()
    assert result.stderr.strip() == f'ERROR: Not logged in; run "ptsh login --proxy=127.0.0.1:3081 --user={user} --insecure"'


def test_login_needs_a_proxy(tmp_path: Path) -> None:
    result = run([PTSH, "login", "--user=alice"], base_env(PTSH_HOME=tmp_path))
    assert result.returncode == 2
    assert "--proxy=HOST:PORT" in result.stderr


def test_login_to_nothing_says_unreachable(tmp_path: Path) -> None:
    port = free_port()
    result = run([PTSH, "login", f"--proxy=127.0.0.1:{port}", "--user=alice", "--insecure"],
                 base_env(PTSH_HOME=tmp_path))
    assert result.returncode == 5
    assert f"cannot reach the cluster at 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_teleport_env_names_are_fallbacks(tmp_path: Path) -> None:
    port = free_port()
    result = run([PTSH, "login", "--insecure"], base_env(PTSH_HOME=tmp_path, TELEPORT_PROXY=f"127.0.0.1:{port}",
                                                         TELEPORT_USER="alice"))
    assert result.returncode == 5
    assert f"127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize("url", ["not-a-url", "http://h:1/web/invite/0123456789abcdef",
                                 "https://h:1/web/other/0123456789abcdef", "https://h:1/web/invite/a/b"])
def test_signup_refuses_what_is_not_an_invite_link(tmp_path: Path, url: str) -> None:
    result = run([PTSH, "signup", url], base_env(PTSH_HOME=tmp_path))
    assert result.returncode == 2
    assert "is not an invite link" in result.stderr


def test_logout_needs_both_or_neither(tmp_path: Path) -> None:
    env = base_env(PTSH_HOME=tmp_path)
    result = run([PTSH, "logout", "--proxy=127.0.0.1:3080"], env)
    assert result.returncode == 2
    assert "both --proxy and --user" in result.stderr
    result = run([PTSH, "logout"], env)
    assert result.returncode == 0
    assert result.stdout.strip() == "Logged out all users from all proxies."
    result = run([PTSH, "logout", "--proxy=127.0.0.1:3080", "--user=bob"], env)
    assert result.returncode == 1
    assert result.stderr.strip() == "User bob already logged out from 127.0.0.1:3080."


def test_unknown_command_is_a_usage_error() -> None:
    result = run([PTSH, "nosuch"], base_env())
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


# --- the profile store ---------------------------------------------------------------------------
def test_profile_name_is_the_proxy_host() -> None:
    assert profile_name("127.0.0.1:3080") == "127.0.0.1"
    assert profile_name("https://proxy.example.com:443/") == "proxy.example.com"
    assert profile_name("proxy.example.com") == "proxy.example.com"
    assert profile_name("[::1]:3080") == "::1"
    with pytest.raises(BadParameter):
        profile_name("../x:1")


def _login_material(expires_in: timedelta, user: str = "alice") -> tuple[bytes, bytes, bytes]:
    """A user certificate signed by a throw-away CA, its key and the (host) CA."""
    from common.identity import Identity
    from common.tls import generate_private_key, private_key_pem
    from pteleport.ca.authority import new_authority, sign_identity

    now = datetime.now(UTC)
    user_ca = new_authority("user", "test-cluster", now - timedelta(days=1))
    host_ca = new_authority("host", "test-cluster", now - timedelta(days=1))
    key = generate_private_key()
    identity = Identity(username=user, roles=("access", "db"), traits={"db_users": ["alice"]},
                        cluster_name="test-cluster")
    not_after = now + expires_in
    cert = sign_identity(user_ca, key.public_key(), identity, min(now, not_after) - timedelta(hours=1), not_after)
    return cert, private_key_pem(key), host_ca.cert_pem


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_saves_files_0600_in_0700_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTSH_KEY_STORAGE", "file")
    home = tmp_path / "home"
    store = ProfileStore(home)
    cert, key, cas = _login_material(timedelta(hours=12))
    saved = store.save(Profile("127.0.0.1", "127.0.0.1:3080", "alice", "test-cluster"), cert, key, cas)
    assert saved.key_storage == FILE
    assert store.current_name() == "127.0.0.1"
    loaded = store.load("127.0.0.1")
    assert (loaded.web_proxy_addr, loaded.user, loaded.cluster) == ("127.0.0.1:3080", "alice", "test-cluster")
    assert store.read_key(loaded) == key and store.read_cert(loaded) == cert and store.read_cas(loaded) == cas
    for path in (store.key_path(loaded), store.cert_path(loaded), store.ca_path(loaded), store.profile_path("127.0.0.1")):
        assert _mode(path) == 0o600, path
    for folder in (home, home / "keys", store.keys_dir(loaded), store.ca_path(loaded).parent):
        assert _mode(folder) == 0o700, folder
    store.remove(loaded)
    assert store.current() is None
    assert not store.keys_dir(loaded).exists()
    with pytest.raises(NotLoggedIn):
        store.find()


def test_store_uses_a_real_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keyring

    from tests.fake_keyring import JsonKeyring

    monkeypatch.delenv("PTSH_KEY_STORAGE", raising=False)
    monkeypatch.setenv("FAKE_KEYRING_FILE", str(tmp_path / "ring.json"))
    previous = keyring.get_keyring()
    backend = JsonKeyring()
    keyring.set_keyring(backend)
    try:
        store = ProfileStore(tmp_path / "home")
        cert, key, cas = _login_material(timedelta(hours=1))
        saved = store.save(Profile("proxy.example.com", "proxy.example.com:443", "alice", "c"), cert, key, cas)
        assert saved.key_storage == KEYRING
        assert not store.key_path(saved).exists()
        assert backend.get_password("ptsh@proxy.example.com", "alice") == key.decode()
        assert store.read_key(store.load("proxy.example.com")) == key
        store.remove(saved)
        assert backend.get_password("ptsh@proxy.example.com", "alice") is None
    finally:
        keyring.set_keyring(previous)


def test_store_falls_back_to_a_file_when_the_keyring_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import keyring
    from keyring.errors import PasswordSetError

    from tests.fake_keyring import JsonKeyring

    class Locked(JsonKeyring):
        def set_password(self, service: str, username: str, password: str) -> None:
            raise PasswordSetError("the keyring is locked")

    monkeypatch.delenv("PTSH_KEY_STORAGE", raising=False)
    monkeypatch.setenv("FAKE_KEYRING_FILE", str(tmp_path / "ring.json"))
    previous = keyring.get_keyring()
    keyring.set_keyring(Locked())
    try:
        store = ProfileStore(tmp_path / "home")
        cert, key, cas = _login_material(timedelta(hours=1))
        saved = store.save(Profile("p", "p:3080", "alice", "c"), cert, key, cas)
        assert saved.key_storage == FILE
        assert store.key_path(saved).read_bytes() == key
        assert "storing it in a 0600 file" in capsys.readouterr().err
        monkeypatch.setenv("PTSH_KEY_STORAGE", "keyring")
        with pytest.raises(BadParameter, match="cannot store the private key in the OS keyring"):
            store.save(Profile("p", "p:3080", "alice", "c"), cert, key, cas)
    finally:
        keyring.set_keyring(previous)


def test_fail_and_null_keyrings_are_not_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keyring
    from keyring.backends import fail, null

    from common.profile import choose_key_storage

    monkeypatch.delenv("PTSH_KEY_STORAGE", raising=False)
    previous = keyring.get_keyring()
    try:
        for backend in (fail.Keyring(), null.Keyring()):
            keyring.set_keyring(backend)
            assert choose_key_storage() == FILE
    finally:
        keyring.set_keyring(previous)
    monkeypatch.setenv("PTSH_KEY_STORAGE", "vault")
    with pytest.raises(UsageError):
        choose_key_storage()


# --- ptsh status of stored logins ---------------------------------------------------------------
def _store_login(home: Path, expires_in: timedelta, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTSH_KEY_STORAGE", "file")
    cert, key, cas = _login_material(expires_in)
    ProfileStore(home).save(Profile("127.0.0.1", "127.0.0.1:3080", "alice", "test-cluster"), cert, key, cas)


def test_status_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _store_login(tmp_path, timedelta(hours=12), monkeypatch)
    result = run([PTSH, "status"], base_env(PTSH_HOME=tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "> Profile URL:        https://127.0.0.1:3080"
    assert "  Logged in as:       alice" in lines
    assert "  Cluster:            test-cluster" in lines
    assert "  Roles:              access, db" in lines
    assert "  Databases:" in lines
    valid = next(line for line in lines if line.startswith("  Valid until:"))
    assert valid.endswith("[valid for 11h59m]") or valid.endswith("[valid for 12h]"), valid
    assert "+0000 UTC" in valid


def test_status_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    _store_login(tmp_path, timedelta(hours=1), monkeypatch)
    result = run([PTSH, "status", "--format", "json"], base_env(PTSH_HOME=tmp_path))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    active = doc["active"]
    assert active["profile_url"] == "https://127.0.0.1:3080"
    assert active["username"] == "alice"
    assert active["roles"] == ["access", "db"]
    assert active["traits"] == {"db_users": ["alice"]}
    assert active["key_storage"] == "file"
    assert active["databases"] == []
    assert doc["profiles"] == []


def test_status_of_an_expired_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _store_login(tmp_path, -timedelta(minutes=5), monkeypatch)
    result = run([PTSH, "status"], base_env(PTSH_HOME=tmp_path))
    assert result.returncode == 3
    assert "[EXPIRED]" in result.stdout
    assert result.stderr.strip() == "ERROR: Active profile expired."


def test_pctl_refuses_an_expired_ptsh_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _store_login(tmp_path / "home", -timedelta(minutes=5), monkeypatch)
    env = base_env(PTSH_HOME=tmp_path / "home")
    result = run([PCTL, "status"], env)
    assert result.returncode == 3
    assert "expired" in result.stderr and "ptsh login" in result.stderr


def test_pctl_without_any_credentials(tmp_path: Path) -> None:
    result = run([PCTL, "status"], base_env(PTSH_HOME=tmp_path / "home"))
    assert result.returncode == 3
    assert "pctl found no credentials" in result.stderr
    assert "admin-identity.pem does not exist" in result.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_pctl_with_a_data_dir_uses_it_or_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A data dir named on purpose is never swapped for the ptsh login, even when there is one."""
    _store_login(tmp_path / "home", timedelta(hours=1), monkeypatch)
    folder = tmp_path / "data"
    if how == "flag":
        result = run([PCTL, "--data-dir", str(folder), "status"], base_env(PTSH_HOME=tmp_path / "home"))
        source = "--data-dir"
    else:
        result = run([PCTL, "status"], base_env(PTSH_HOME=tmp_path / "home", PTELEPORT_DATA_DIR=folder))
        source = "PTELEPORT_DATA_DIR"
    assert result.returncode == 3
    assert result.stderr.strip() == (
        f"ERROR: {folder} (from {source}) holds no admin identity (admin-identity.pem): it is not the data dir "
        "of a cluster started on this host; check the path, or drop it to use your ptsh login"
    )


def test_logout_removes_a_stored_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _store_login(tmp_path, timedelta(hours=1), monkeypatch)
    env = base_env(PTSH_HOME=tmp_path)
    result = run([PTSH, "logout", "--proxy=127.0.0.1:3080", "--user=alice"], env)
    assert result.returncode == 0
    assert result.stdout.strip() == "Logged out alice from 127.0.0.1:3080."
    assert not (tmp_path / "keys" / "127.0.0.1").exists()
    assert run([PTSH, "status"], env).returncode == 3


def test_keys_never_world_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = os.umask(0)
    try:
        _store_login(tmp_path / "h", timedelta(hours=1), monkeypatch)
    finally:
        os.umask(old)
    for path in (tmp_path / "h").rglob("*"):
        mode = _mode(path)
        assert mode & 0o077 == 0, (path, oct(mode))


# --- identity files (no cluster needed: status reads the file only) ----------------------------------
def _identity_file(path: Path, expires_in: timedelta, mode: int = 0o600) -> Path:
    from common.identity_file import IdentityFile, render, write_private

    cert, key, cas = _login_material(expires_in)
    write_private(path, render(IdentityFile(key, cert, cas, "127.0.0.1:3080", "test-cluster")))
    path.chmod(mode)
    return path


def test_status_of_an_identity_file_uses_no_profile(tmp_path: Path) -> None:
    import json

    identity = _identity_file(tmp_path / "ci.identity", timedelta(hours=1))
    env = base_env(PTSH_HOME=tmp_path / "home", PTSH_KEY_STORAGE="", PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    result = run([PTSH, "-i", str(identity), "status"], env)
    assert result.returncode == 0, result.stderr
    assert f"  Key storage:        identity file ({identity})" in result.stdout.splitlines()
    from_env = run([PTSH, "status", "--format", "json"], {**env, "PTSH_IDENTITY_FILE": str(identity)})
    active = json.loads(from_env.stdout)["active"]
    assert (active["username"], active["key_storage"], active["identity_file"]) == ("alice", "identity file",
                                                                                    str(identity))
    assert not (tmp_path / "home").exists()


def test_identity_file_problems_without_a_cluster(tmp_path: Path) -> None:
    env = base_env(PTSH_HOME=tmp_path / "home")
    expired = _identity_file(tmp_path / "old.identity", -timedelta(minutes=5))
    result = run([PTSH, "-i", str(expired), "db", "ls", "--format", "json"], env)
    assert (result.returncode, result.stdout) == (3, "")
    assert "ERROR: the identity file" in result.stderr and "expired at" in result.stderr
    status = run([PTSH, "-i", str(expired), "status"], env)
    assert status.returncode == 3 and "[EXPIRED]" in status.stdout
    assert status.stderr.strip() == f"ERROR: The identity file {expired} has expired."
    garbage = tmp_path / "garbage.identity"
    garbage.write_text("not one\n")
    result = run([PTSH, "-i", str(garbage), "status"], env)
    assert result.returncode == 1 and "is not a pteleport identity file" in result.stderr
    loose = _identity_file(tmp_path / "loose.identity", timedelta(hours=1), mode=0o644)
    result = run([PTSH, "-i", str(loose), "status", "--format", "json"], env)
    assert result.returncode == 0 and result.stdout.startswith("{")
    assert "WARNING: identity file" in result.stderr and "chmod 600" in result.stderr
