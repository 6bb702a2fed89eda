"""``ptsh.savedcert`` reads what the full path reads, and gives up on everything else.

``ptsh db connect`` reads the saved database certificate with ``os`` and ``json`` only; these
tests lay a profile out with the real ``ProfileStore`` and ``save_db_cert``, and check the
quick reader against ``current_login`` + ``saved_db_cert``, and that every case it does not
recognise goes to the full path (None) instead of being guessed at.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.profile import Profile, ProfileStore
from ptsh import savedcert

PROFILE = Profile("127.0.0.1", "127.0.0.1:3080", "alice", "test-cluster")


def _material(login_ttl: timedelta, db_ttl: timedelta) -> tuple[bytes, bytes, bytes, bytes]:
    """A login certificate, its key, the host CA and a database certificate for the same key."""
    from common.identity import DatabaseRoute, Identity
    from common.tls import generate_private_key, private_key_pem
    from pteleport.ca.authority import new_authority, sign_identity

    now = datetime.now(UTC)
    user_ca = new_authority("user", "test-cluster", now - timedelta(days=1))
    host_ca = new_authority("host", "test-cluster", now - timedelta(days=1))
    key = generate_private_key()
    identity = Identity(username="alice", roles=("access", "db"), cluster_name="test-cluster")
    start = now - timedelta(hours=1)
    login = sign_identity(user_ca, key.public_key(), identity, start, now + login_ttl)
    routed = identity.with_route(DatabaseRoute("aurora", "postgres", "alice", "postgres"))
    db = sign_identity(user_ca, key.public_key(), routed, start, now + db_ttl)
    return login, private_key_pem(key), host_ca.cert_pem, db


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PTSH_KEY_STORAGE", "file")
    monkeypatch.setenv("PTSH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PTSH_IDENTITY_FILE", raising=False)
    return tmp_path / "home"


def _log_in(home: Path, login_ttl: timedelta = timedelta(hours=8), db_ttl: timedelta = timedelta(hours=8)) -> None:
    """What ``ptsh login`` and ``ptsh db login aurora`` leave behind."""
    from ptsh.databases import DbCert, save_db_cert
    from ptsh.login_state import current_login

    cert, key, cas, db = _material(login_ttl, db_ttl)
    ProfileStore(home).save(Profile(**vars(PROFILE)), cert, key, cas)
    login = current_login(None, allow_expired=True)
    save_db_cert(login, DbCert("aurora", "alice", "postgres", db, datetime.now(UTC) + db_ttl))


def test_it_reads_what_the_full_path_reads(home: Path) -> None:
    from ptsh.databases import saved_db_cert
    from ptsh.login_state import current_login

    _log_in(home)
    quick = savedcert.load("aurora", None, None)
    assert quick is not None
    login = current_login(None)
    full = saved_db_cert(login, "aurora")
    assert full is not None
    assert (quick.proxy, quick.key, quick.cas) == (login.proxy, login.key, login.host_cas)
    assert (quick.cert, quick.db_user, quick.db_name, quick.service) == (full.cert, full.db_user, full.db_name, "aurora")
    assert quick.expires is not None and full.expires is not None
    assert abs(datetime.fromisoformat(quick.expires) - full.expires) < timedelta(seconds=1)
    # The names on the command line, when they are the certificate's.
    assert savedcert.load("aurora", "alice", "postgres") is not None


def test_the_public_key_is_kept_in_the_login_facts(home: Path) -> None:
    """``issue`` sends the key's public half without parsing the key: the full path keeps it."""
    from common.tls import load_private_key, public_key_pem
    from ptsh.login_state import current_login

    _log_in(home)
    login = current_login(None)
    facts = json.loads((home / "keys" / "127.0.0.1" / "alice.crt.facts").read_text())["facts"]
    assert facts["public_key"] == public_key_pem(load_private_key(login.key)).decode()


def test_facts_written_before_they_held_the_public_key_get_it_from_the_full_path(home: Path) -> None:
    from common import certfacts
    from common.tls import load_private_key, public_key_pem
    from ptsh.login_state import current_login, remember_public_key

    _log_in(home)
    path = home / "keys" / "127.0.0.1" / "alice.crt"
    login = current_login(None)
    old = {k: v for k, v in certfacts.load(path, login.cert).items() if k != "public_key"}
    certfacts.save(path, login.cert, old)
    assert "public_key" not in certfacts.load(path, login.cert)
    public = public_key_pem(load_private_key(login.key)).decode()
    remember_public_key(login, public)
    assert certfacts.load(path, login.cert) == {**old, "public_key": public}


@pytest.mark.parametrize(
    "case",
    [
        "another database",
        "other db user",
        "other db name",
        "identity file",
        "key in the keyring",
        "profile not in plain form",
        "certificate replaced",
        "facts damaged",
        "key missing",
        "no current profile",
    ],
)
def test_what_it_does_not_recognise_goes_to_the_full_path(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                          case: str) -> None:
    _log_in(home)
    keys = home / "keys" / "127.0.0.1"
    database, db_user, db_name = "aurora", None, None
    if case == "another database":
        database = "other"
    elif case == "other db user":
        db_user = "bob"
    elif case == "other db name":
        db_name = "analytics"
    elif case == "identity file":
        monkeypatch.setenv("PTSH_IDENTITY_FILE", str(home / "id.pem"))
    elif case == "key in the keyring":
        profile = home / "127.0.0.1.yaml"
        profile.write_text(profile.read_text().replace("key_storage: file", "key_storage: keyring"))
    elif case == "profile not in plain form":
        profile = home / "127.0.0.1.yaml"
        profile.write_text(profile.read_text().replace("user: alice", "user: 'alice'"))
    elif case == "certificate replaced":
        db = keys / "alice-db" / "test-cluster" / "aurora.crt"
        db.write_bytes(_material(timedelta(hours=8), timedelta(hours=8))[3])
    elif case == "facts damaged":
        (keys / "alice-db" / "test-cluster" / "aurora.crt.facts").write_text("{not json")
    elif case == "key missing":
        (keys / "alice.key").unlink()
    elif case == "no current profile":
        (home / "current-profile").unlink()
    assert savedcert.load(database, db_user, db_name) is None


def test_a_login_that_expired_goes_to_the_full_path(home: Path) -> None:
    _log_in(home, login_ttl=timedelta(seconds=-5), db_ttl=timedelta(hours=1))
    assert savedcert.load("aurora", None, None) is None


def test_a_certificate_due_for_renewal_is_not_used_as_it_is(home: Path) -> None:
    """Within two minutes of its end, as ``cert_for`` decides (``certificate`` then asks for a new one)."""
    _log_in(home, db_ttl=timedelta(seconds=90))
    assert savedcert.load("aurora", None, None) is None
    later = datetime.now(UTC) + timedelta(minutes=-10)
    assert savedcert.load("aurora", None, None, now=later.timestamp()) is not None


@pytest.mark.parametrize("name", ["../aurora", ".hidden", ""])
def test_database_names_that_are_not_file_names_go_to_the_full_path(home: Path, name: str) -> None:
    _log_in(home)
    assert savedcert.load(name, None, None) is None


def _answering(monkeypatch: pytest.MonkeyPatch, status: int, doc: dict) -> list[dict]:
    """Stand in for auth's POST /v1/certs/database (the request is what is checked here)."""
    import common.minihttps

    sent: list[dict] = []

    def request(host: str, port: int, ctx: object, method: str, path: str, body: bytes | None = None) -> tuple:
        sent.append({"method": method, "path": path, **json.loads(body or b"{}")})
        return status, {}, json.dumps(doc).encode()

    monkeypatch.setattr(common.minihttps, "request", request)
    return sent


def test_a_certificate_due_for_renewal_is_asked_for_again_with_its_names(home: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``cert_for`` does: the saved certificate's db user and name when none are given."""
    _log_in(home, db_ttl=timedelta(seconds=90))
    fresh = _material(timedelta(hours=8), timedelta(hours=8))[3]
    sent = _answering(monkeypatch, 200, {"cert": fresh.decode(), "database": "aurora", "db_user": "alice",
                                         "db_name": "postgres", "expires": "2030-01-01T00:00:00+00:00"})
    got = savedcert.certificate("aurora", None, None)
    assert [(s["path"], s["database"], s["db_user"], s["db_name"]) for s in sent] == [
        ("/v1/certs/database", "aurora", "alice", "postgres")]
    assert sent[0]["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert got is not None and got.cert == fresh and (got.db_user, got.db_name) == ("alice", "postgres")
    # Names on the command line win over the saved ones.
    savedcert.certificate("aurora", "reporter", None)
    assert (sent[-1]["db_user"], sent[-1]["db_name"]) == ("reporter", "postgres")


def test_a_fresh_saved_certificate_asks_auth_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _log_in(home)
    sent = _answering(monkeypatch, 500, {})
    assert savedcert.certificate("aurora", None, None) is not None
    assert sent == []


def test_an_error_answer_is_the_error_the_full_client_raises(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.errors import AccessDenied

    _log_in(home)
    _answering(monkeypatch, 403, {"error": {"kind": "access_denied", "message": "access to db denied"}})
    with pytest.raises(AccessDenied, match=r"^access to db denied$"):
        savedcert.certificate("other", "alice", "postgres")


def test_unreadable_facts_of_a_saved_certificate_go_to_the_full_path(home: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """(The full path reads the certificate itself; asking auth without its names could fail.)"""
    _log_in(home)
    (home / "keys" / "127.0.0.1" / "alice-db" / "test-cluster" / "aurora.crt.facts").write_text("{not json")
    sent = _answering(monkeypatch, 200, {})
    assert savedcert.certificate("aurora", None, None) is None
    assert sent == []
