"""Login state under concurrency: two auth servers on one backend (as an HA pair runs), many
logins at once from threads. Failures are counted exactly, one TOTP code is accepted once,
and the refusals say what docs/cli.md promises."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from common.errors import AccessDenied, PteleportError
from common.identity import KIND_ADMIN, Identity
from common.tls import generate_private_key, public_key_pem
from pteleport.audit.memory_log import MemoryAuditLog
from pteleport.auth import totp
from pteleport.auth.context import AuthSettings
from pteleport.auth.login import GENERIC_FAILURE, REUSED_CODE
from pteleport.auth.server import AuthServer
from pteleport.storage.base import Backend
from pteleport.storage.memory import MemoryBackend
from pteleport.storage.postgres import PostgresBackend
from pteleport.storage.sqlite import SQLiteBackend

ADMIN = Identity(username="admin", kind=KIND_ADMIN)
PASSWORD = "correct horse battery"
NOW = datetime(2026, 11, 24, 12, 0, 10, tzinfo=UTC)  # 10 s into a TOTP step
KEY = public_key_pem(generate_private_key()).decode()


class Pair:
    """Two auth servers sharing one backend store and one audit log."""

    def __init__(self, open_backend: Callable[[Callable[[], datetime]], Backend], max_attempts: int) -> None:
        self.now = NOW
        self.audit = MemoryAuditLog()
        settings = AuthSettings("test", "127.0.0.1:3080", max_attempts=max_attempts)
        clock = self.clock
        self.servers = [AuthServer(open_backend(clock), self.audit, clock, settings) for _ in range(2)]
        self.servers[0].init_cluster()
        self.servers[1].init_cluster()
        invite = self.servers[0].users.add(ADMIN, "alice", ["access"], {}, None)
        token = invite["metadata"]["name"]
        self.secret = self.servers[0].users.invite_details(token)["totp_secret"]
        self.now -= timedelta(seconds=60)  # sign up a while ago, with an older code
        self.servers[0].users.complete_invite(token, PASSWORD, totp.code_at(self.secret, self.now))
        self.now = NOW

    def clock(self) -> datetime:
        return self.now

    def login(self, index: int, password: str, code: str) -> tuple[str, str]:
        """("ok", "") or ("refused", the message); on server index % 2, from its own address."""
        server = self.servers[index % 2]
        remote = f"10.{index // 250}.{index % 250}.1:5000"
        try:
            server.login.login("alice", password, code, KEY, None, remote)
        except PteleportError as err:
            return "refused", err.message
        return "ok", ""

    def failures(self) -> int:
        try:
            return int(self.servers[0].ctx.login_state.get("alice").get("failures", 0))
        except PteleportError:
            return 0

    def locked(self) -> bool:
        return self.servers[1].login._locked_until("alice", self.now) is not None

    def login_events(self, code: str) -> list[dict[str, Any]]:
        return [e for e in self.audit.search(event_types=["user.login"], limit=10_000) if e["code"] == code]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[Any], Backend]]:
    opened: list[Backend] = []
    if request.param == "sqlite":
        path = tmp_path / "backend.db"

        def open_backend(clock: Any) -> Backend:
            opened.append(SQLiteBackend(path, clock=clock))
            return opened[-1]

        yield open_backend
    else:
        pg = request.getfixturevalue("pg")
        dbname = f"login_{uuid.uuid4().hex[:12]}"
        pg.execute(f'CREATE DATABASE "{dbname}"')
        dsn = f"host={pg.socket_dir} port={pg.port} user=postgres dbname={dbname}"

        def open_backend(clock: Any) -> Backend:
            opened.append(PostgresBackend(dsn, clock=clock))
            return opened[-1]

        yield open_backend
        for backend in opened:
            backend.close()
        opened.clear()
        pg.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    for backend in opened:
        backend.close()


def race(count: int, attempt: Callable[[int], tuple[str, str]]) -> list[tuple[str, str]]:
    barrier = threading.Barrier(count)
    results: list[tuple[str, str]] = []
    guard = threading.Lock()

    def run(index: int) -> None:
        barrier.wait()
        outcome = attempt(index)
        with guard:
            results.append(outcome)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == count, "a login did not finish"
    return results


@pytest.mark.slow
def test_fifty_concurrent_wrong_logins_count_fifty_failures(store: Callable[[Any], Backend]) -> None:
    pair = Pair(store, max_attempts=100)
    results = race(50, lambda i: pair.login(i, "wrong password", "000000"))
    assert results == [("refused", GENERIC_FAILURE)] * 50
    assert pair.failures() == 50
    assert not pair.locked()
    assert len(pair.login_events("T1000W")) == 50


@pytest.mark.slow
def test_concurrent_wrong_logins_lock_the_user_at_the_maximum(store: Callable[[Any], Backend]) -> None:
    pair = Pair(store, max_attempts=5)
    results = race(50, lambda i: pair.login(i, "wrong password", "000000"))
    assert results == [("refused", GENERIC_FAILURE)] * 50
    assert pair.locked()
    assert pair.failures() >= 5
    # Locked: even the right password and a fresh code get the generic sentence; the audit
    # log has the real reason.
    code = totp.code_at(pair.secret, pair.now)
    assert pair.login(999, PASSWORD, code) == ("refused", GENERIC_FAILURE)
    assert pair.login_events("T1000W")[-1]["error"] == "user is locked"


def test_one_code_is_accepted_exactly_once_under_concurrency(store: Callable[[Any], Backend]) -> None:
    pair = Pair(store, max_attempts=5)
    code = totp.code_at(pair.secret, pair.now)
    results = race(20, lambda i: pair.login(i, PASSWORD, code))
    assert results.count(("ok", "")) == 1, results
    assert results.count(("refused", REUSED_CODE)) == 19, results
    assert len(pair.login_events("T1000I")) == 1
    assert pair.failures() == 0 and not pair.locked()  # a reused code is not a failure


# --- the messages, one login at a time ---------------------------------------------------


@pytest.fixture
def pair() -> Pair:
    shared: dict[str, Backend] = {}
    return Pair(lambda clock: shared.setdefault("b", MemoryBackend(clock=clock)), max_attempts=3)


def test_the_sign_up_code_reused_within_its_step_says_so_and_does_not_lock(pair: Pair) -> None:
    pair.now -= timedelta(seconds=60)  # back to the sign-up instant
    signup_code = totp.code_at(pair.secret, pair.now)
    for _ in range(5):
        assert pair.login(0, PASSWORD, signup_code) == ("refused", REUSED_CODE)
    assert pair.failures() == 0 and not pair.locked()
    assert pair.login_events("T1000W")[-1]["error"] == "reused second factor"


def test_a_reused_code_with_a_wrong_password_stays_generic_and_counts(pair: Pair) -> None:
    pair.now -= timedelta(seconds=60)
    signup_code = totp.code_at(pair.secret, pair.now)
    assert pair.login(0, "not the password", signup_code) == ("refused", GENERIC_FAILURE)
    assert pair.failures() == 1


def test_wrong_code_and_wrong_password_are_one_generic_sentence(pair: Pair) -> None:
    assert pair.login(0, "not the password", totp.code_at(pair.secret, pair.now)) == ("refused", GENERIC_FAILURE)
    assert pair.login(1, PASSWORD, "123456") == ("refused", GENERIC_FAILURE)
    assert [e["error"] for e in pair.login_events("T1000W")] == ["bad password or unknown user", "bad second factor"]
    assert pair.failures() == 2


def test_a_locked_user_gets_the_generic_sentence_not_its_name(pair: Pair) -> None:
    for i in range(3):
        pair.login(i, "wrong", "000000")
    assert pair.locked()
    outcome, message = pair.login(9, PASSWORD, totp.code_at(pair.secret, pair.now))
    assert (outcome, message) == ("refused", GENERIC_FAILURE)
    assert "alice" not in message and "locked" not in message
    assert pair.login_events("T1000W")[-1]["error"] == "user is locked"
    assert pair.failures() == 3  # attempts while locked do not extend the count
    pair.now += timedelta(minutes=21)  # the lock runs out
    assert pair.login(10, PASSWORD, totp.code_at(pair.secret, pair.now)) == ("ok", "")
    assert pair.failures() == 0


def test_a_good_login_resets_the_failure_count(pair: Pair) -> None:
    pair.login(0, "wrong", "000000")
    pair.login(1, "wrong", "000000")
    assert pair.login(2, PASSWORD, totp.code_at(pair.secret, pair.now)) == ("ok", "")
    assert pair.failures() == 0
    pair.login(3, "wrong", "000000")
    pair.login(4, "wrong", "000000")
    assert not pair.locked()


def test_a_refusal_is_access_denied() -> None:
    pair = Pair(lambda clock: MemoryBackend(clock=clock), max_attempts=3)
    with pytest.raises(AccessDenied):
        pair.servers[0].login.login("alice", "x", "000000", KEY, None, "10.0.0.1:1")


# --- single-use links and tokens, claimed once -------------------------------------------


def test_first_views_of_an_invite_at_once_all_show_one_secret(store: Callable[[Any], Backend]) -> None:
    pair = Pair(store, max_attempts=5)
    token = pair.servers[0].users.add(ADMIN, "erin", ["access"], {}, None)["metadata"]["name"]

    def view(index: int) -> tuple[str, str]:
        try:
            return "ok", pair.servers[index % 2].users.invite_details(token)["totp_secret"]
        except PteleportError as err:
            return "refused", err.message

    results = race(10, view)
    assert {outcome for outcome, _ in results} == {"ok"}, results
    assert len({secret for _, secret in results}) == 1


def test_an_invite_completed_at_once_is_completed_once(store: Callable[[Any], Backend]) -> None:
    pair = Pair(store, max_attempts=5)
    token = pair.servers[0].users.add(ADMIN, "erin", ["access"], {}, None)["metadata"]["name"]
    secret = pair.servers[0].users.invite_details(token)["totp_secret"]
    code = totp.code_at(secret, pair.now)

    def complete(index: int) -> tuple[str, str]:
        try:
            pair.servers[index % 2].users.complete_invite(token, f"password number {index}", code)
        except PteleportError as err:
            return "refused", err.message
        return "ok", str(index)

    results = race(6, complete)
    winners = [detail for outcome, detail in results if outcome == "ok"]
    assert len(winners) == 1, results
    assert {m for o, m in results if o == "refused"} == {
        "this invite or reset link is invalid, already used or expired; ask an admin for a new one"
    }
    assert len([e for e in pair.audit.search(event_types=["user.password_change"]) if e["user"] == "erin"]) == 1
    pair.now += timedelta(seconds=30)
    server = pair.servers[0]
    server.login.login("erin", f"password number {winners[0]}", totp.code_at(secret, pair.now), KEY, None, "10.9.9.9:1")


def test_a_bot_token_used_at_once_joins_once(store: Callable[[Any], Backend]) -> None:
    pair = Pair(store, max_attempts=5)
    token = pair.servers[0].bots.add(ADMIN, "ci", ["access"], {}, None)["token"]

    def join(index: int) -> tuple[str, str]:
        try:
            pair.servers[index % 2].bots.join(token, KEY, None, f"10.8.0.{index}:1")
        except PteleportError as err:
            return "refused", err.message
        return "ok", ""

    results = race(8, join)
    assert results.count(("ok", "")) == 1, results
    assert len([e for e in pair.audit.search(event_types=["bot.join"]) if e["code"] == "TJ001I"]) == 1
