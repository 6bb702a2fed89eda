"""Per-address failure limits, coalesced failure audit, and the malformed-request log filter
(pure parts, with controlled clocks), plus the auth service's use of them in memory."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from common.errors import AccessDenied, LimitExceeded, NotFound, exit_code_for
from common.identity import KIND_ADMIN, Identity
from common.tls import generate_private_key, public_key_pem
from pteleport.api.errors import error_response
from pteleport.api.httplog import MalformedRequestFilter
from pteleport.audit.memory_log import MemoryAuditLog
from pteleport.auth.context import AuthSettings
from pteleport.auth.server import AuthServer
from pteleport.auth.throttle import FailureAudit, FailureLimiter, SecretGuard, client_ip
from pteleport.storage.memory import MemoryBackend

ADMIN = Identity(username="admin", kind=KIND_ADMIN)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_client_ip() -> None:
    assert client_ip("10.0.0.1:5555") == "10.0.0.1"
    assert client_ip("[::1]:443") == "::1"
    assert client_ip("::1:443") == "::1"
    assert client_ip("10.0.0.1") == "10.0.0.1"


def test_limiter_refuses_after_max_failures_and_the_window_slides() -> None:
    clock = Clock()
    limiter = FailureLimiter(clock, max_failures=10, window=timedelta(minutes=1))
    for _ in range(9):
        limiter.failed("10.0.0.1")
    limiter.check("10.0.0.1")  # 9 failures: still allowed
    clock.now += timedelta(seconds=20)
    limiter.failed("10.0.0.1")
    with pytest.raises(LimitExceeded, match=r"too many failed attempts from this address; try again in 40 s") as exc:
        limiter.check("10.0.0.1")
    assert exc.value.retry_after == 40
    limiter.check("10.0.0.2")  # other addresses are not affected
    clock.now += timedelta(seconds=39)
    assert limiter.retry_after("10.0.0.1") == 1
    clock.now += timedelta(seconds=1)  # the first 9 left the window
    limiter.check("10.0.0.1")


def test_limiter_memory_is_bounded_under_a_spray() -> None:
    clock = Clock()
    limiter = FailureLimiter(clock, max_failures=3, max_addresses=100)
    for i in range(5000):
        limiter.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(limiter) == 100
    for _ in range(3):
        limiter.failed("192.0.2.1")
    with pytest.raises(LimitExceeded):
        limiter.check("192.0.2.1")  # the most recent offender is kept


def test_failure_audit_emits_the_first_at_once_then_one_per_interval_with_counts() -> None:
    clock = Clock()
    events: list[dict[str, Any]] = []
    audit = FailureAudit(events.append, clock, interval=timedelta(minutes=1))
    audit.record("10.0.0.1", {"error": "bad token", "n": 0})
    assert events == [{"error": "bad token", "n": 0, "attempts": 1, "throttled": 0}]
    for n in range(1, 100):
        clock.now += timedelta(milliseconds=100)
        audit.record("10.0.0.1", {"error": "bad token", "n": n}, throttled=n > 9)
    audit.record("10.0.0.2", {"error": "other"})
    assert len(events) == 2 and events[1]["attempts"] == 1  # another address: its own first event
    assert audit.flush() == 0  # not a minute yet
    clock.now = datetime(2026, 11, 24, 12, 1, tzinfo=UTC)
    assert audit.flush() == 1
    assert events[2] == {"error": "bad token", "n": 99, "attempts": 99, "throttled": 90}
    assert sum(e["attempts"] for e in events if e["error"] == "bad token") == 100
    assert audit.flush(force=True) == 0  # nothing left


def test_failure_audit_rides_on_the_next_event_and_force_flushes() -> None:
    clock = Clock()
    events: list[dict[str, Any]] = []
    audit = FailureAudit(events.append, clock)
    for _ in range(3):
        audit.record("10.0.0.1", {})
    clock.now += timedelta(minutes=2)
    audit.record("10.0.0.1", {})
    assert [e["attempts"] for e in events] == [1, 3]  # the held-back 2 came with the next one
    audit.record("10.0.0.1", {})
    assert audit.flush(force=True) == 1
    assert [e["attempts"] for e in events] == [1, 3, 1]


def test_secret_guard_counts_throttled_refusals() -> None:
    clock = Clock()
    events: list[dict[str, Any]] = []
    guard = SecretGuard(events.append, clock, max_failures=2)
    for _ in range(2):
        guard.check("10.0.0.1:1", {"what": "join"})
        guard.failed("10.0.0.1:1", {"what": "join"})
    for _ in range(5):
        with pytest.raises(LimitExceeded):
            guard.check("10.0.0.1:2", {"what": "join"})
    guard.flush(force=True)
    assert sum(e["attempts"] for e in events) == 7
    assert sum(e["throttled"] for e in events) == 5


def test_limit_exceeded_answers_429_with_retry_after_and_exits_4() -> None:
    err = LimitExceeded("too many failed attempts from this address; try again in 7 s", retry_after=7)
    response = error_response(err)
    assert response.status == 429 and response.headers["Retry-After"] == "7"
    assert "Retry-After" not in error_response(AccessDenied("no")).headers
    assert exit_code_for(err) == 4


def test_the_client_keeps_the_sentence_and_the_retry_after() -> None:
    from common.client import _raise_for

    body = {"error": {"message": "too many failed attempts from this address; try again in 9 s", "kind": "limit_exceeded"}}
    response = httpx.Response(429, json=body, headers={"Retry-After": "9"})
    with pytest.raises(LimitExceeded, match="try again in 9 s") as exc:
        _raise_for(response)
    assert exc.value.retry_after == 9
    with pytest.raises(LimitExceeded):
        _raise_for(httpx.Response(429, text="slow down"))


# --- the log filter -------------------------------------------------------------------------
def _record(exc: BaseException | None, msg: str = "Error handling request from %s") -> logging.LogRecord:
    return logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, msg, ("203.0.113.9",), (type(exc), exc, None) if exc else None
    )


def test_malformed_request_records_become_one_rate_limited_warning(caplog: pytest.LogCaptureFixture) -> None:
    from aiohttp.http_exceptions import BadStatusLine, LineTooLong

    now = [100.0]
    filt = MalformedRequestFilter(per_second=5, clock=lambda: now[0])
    passed = [r for r in (_record(LineTooLong(b"x" * 10, 8190)) for _ in range(200)) if filt.filter(r)]
    assert len(passed) == 5
    line = passed[0]
    assert line.levelno == logging.WARNING and line.exc_info is None
    assert line.getMessage() == (
        "refused a malformed HTTP request from 203.0.113.9: a request line or header is too long "
        "(LineTooLong, answered HTTP 400)"
    )
    secret_line = _record(BadStatusLine("GET /web/invite/0123456789abcdef0123456789abcdef junk"))
    now[0] += 1  # a new second
    assert filt.filter(secret_line)
    assert "0123456789abcdef" not in secret_line.getMessage()  # the request's bytes are never echoed
    with caplog.at_level(logging.WARNING, logger="pteleport.api"):
        assert filt.flush() == 195
        assert filt.flush() == 0
    assert [r.getMessage() for r in caplog.records] == ["suppressed 195 similar lines about malformed HTTP requests"]
    other = _record(RuntimeError("a bug"), "Unhandled exception")
    assert filt.filter(other) and other.exc_info is not None  # real bugs keep their traceback


# --- the auth service (memory backend) ---------------------------------------------------------
@pytest.fixture
def auth() -> AuthServer:
    clock = Clock()
    server = AuthServer(MemoryBackend(clock=clock), MemoryAuditLog(), clock, AuthSettings("test", "127.0.0.1:3080"))
    server.init_cluster()
    return server


def _join(auth: AuthServer, token: str, remote: str) -> bytes:
    key = public_key_pem(generate_private_key()).decode()
    cert, _host_id = auth.tokens.join(token, "Db", None, "db-host", key, remote)
    return cert


def test_join_guesses_are_throttled_but_a_correct_token_from_elsewhere_joins(auth: AuthServer) -> None:
    token = auth.tokens.add(ADMIN, ["db"], None, None)["metadata"]["name"]
    for _ in range(10):
        with pytest.raises(AccessDenied, match="the join token is invalid"):
            _join(auth, "f" * 32, "10.0.0.1:1000")
    with pytest.raises(LimitExceeded):
        _join(auth, token, "10.0.0.1:1001")  # refused without a look at the token
    assert _join(auth, token, "10.0.0.2:1000")
    assert _join(auth, token, "10.0.0.2:1001")  # successes never count


def test_bot_and_invite_guesses_are_throttled(auth: AuthServer) -> None:
    key = public_key_pem(generate_private_key()).decode()
    for _ in range(10):
        with pytest.raises(AccessDenied):
            auth.bots.join("e" * 32, key, None, "10.0.0.1:1")
    with pytest.raises(LimitExceeded):
        auth.bots.join("e" * 32, key, None, "10.0.0.1:1")
    for _ in range(10):
        with pytest.raises(NotFound):
            auth.users.invite_details("d" * 32, "10.0.0.3:1")
    with pytest.raises(LimitExceeded):
        auth.users.complete_invite("d" * 32, "a password", "000000", "10.0.0.3:1")


def test_stored_tokens_hold_no_value_and_older_documents_are_scrubbed(auth: AuthServer) -> None:
    import json

    from pteleport.auth.context import secret_key

    token = auth.tokens.add(ADMIN, ["db"], None, None)["metadata"]["name"]
    invite = auth.users.add(ADMIN, "zed", ["access"], {}, None)
    link = invite["spec"]["url"]
    # what an earlier version stored: the value in the document, the link in the user token
    auth.ctx.tokens.put(secret_key("an-old-token-value-1"), {"kind": "token", "version": "v2",
                        "metadata": {"name": "an-old-token-value-1"}, "spec": {"roles": ["Db"]}})
    old_key = secret_key(invite["metadata"]["name"])
    doc = auth.ctx.user_tokens.get(old_key)
    auth.ctx.user_tokens.put(old_key, {**doc, "url": link})
    auth.init_cluster()  # a restart
    stored = b"".join(item.key.encode() + item.value for item in auth.ctx.backend.get_range(""))
    for secret in (token, invite["metadata"]["name"], link, "an-old-token-value-1"):
        assert secret.encode() not in stored
    names = {d["metadata"]["name"] for d in auth.tokens.list(ADMIN)}
    assert names == {secret_key(token)[:16], secret_key("an-old-token-value-1")[:16]}
    assert json.loads(json.dumps(auth.users.invite_details(invite["metadata"]["name"])))["user"] == "zed"


def test_users_list_shows_the_lock_out(auth: AuthServer) -> None:
    invite = auth.users.add(ADMIN, "amy", ["access"], {}, None)
    auth.users.add(ADMIN, "ben", ["access"], {}, None)
    auth.users.complete_invite(invite["metadata"]["name"], "correct horse", _code(auth, invite["metadata"]["name"]))
    until = auth.ctx.clock() + timedelta(minutes=20)
    auth.ctx.login_state.put("amy", {"failures": 5, "locked_until": until.isoformat()})
    status = {d["metadata"]["name"]: d["status"] for d in auth.users.list(ADMIN)}
    assert status["amy"] == {"is_locked": True, "lock_expires": until.isoformat(), "state": "locked"}
    assert status["ben"] == {"is_locked": False, "state": "invited"}
    auth.ctx.login_state.put("amy", {"failures": 5, "locked_until": (until - timedelta(hours=1)).isoformat()})
    assert {d["metadata"]["name"]: d["status"]["state"] for d in auth.users.list(ADMIN)}["amy"] == "active"


def _code(auth: AuthServer, token: str) -> str:
    from pteleport.auth import totp

    secret = auth.users.invite_details(token)["totp_secret"]
    return totp.code_at(secret, auth.ctx.clock())


def test_login_limit_carries_retry_after(auth: AuthServer) -> None:
    key = public_key_pem(generate_private_key()).decode()
    for i in range(20):
        with pytest.raises(AccessDenied):
            asyncio.run(auth.login.login(f"nobody{i}", "wrong", "000000", key, None, "10.0.0.9:1"))
    with pytest.raises(LimitExceeded) as exc:
        asyncio.run(auth.login.login("nobody", "wrong", "000000", key, None, "10.0.0.9:1"))
    assert exc.value.retry_after and exc.value.retry_after > 0
