"""Access requests end to end: real daemon, agent, PostgreSQL and psql; ptsh and pctl as users run them.

alice (``access,requester``) asks for the ``db`` role, waits, bob (``access,reviewer``)
approves, and alice's waiting ``ptsh request create`` takes on the role and connects. A
denial reaches a waiting create at once; nobody approves their own request; an expired
request cannot be assumed; a removed request stops the certificate that carries it.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.dbenv import DbEnv, make_env
from tests.harness import PTSH

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(pg, tmp_path_factory) -> Iterator[DbEnv]:
    pg.create_role("alice", "cert")
    e = make_env(tmp_path_factory.mktemp("requests"), pg)
    try:
        e.start_agent("aurora")
        e.add_user("alice", "access,requester")  # no db_users trait: "access" alone reaches no db user
        e.add_user("bob", "access,reviewer")
        e.add_user("rita", "access,requester,reviewer")
        e.add_user("rex", "reviewer")  # reviews on the web only
        for user in ("alice", "bob", "rita"):
            e.login(user)
        yield e
    finally:
        e.stop()


def waiting_create(env: DbEnv, user: str, *args: str, poll: str = "") -> subprocess.Popen[str]:
    environ = {**env.user_env(user), **({"PTSH_REQUEST_WAIT": poll} if poll else {})}
    return subprocess.Popen(
        [PTSH, "request", "create", *args], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def pending_id(env: DbEnv, user: str, roles: list[str]) -> str:
    """The id of ``user``'s pending request for ``roles``, once the cluster has it."""
    for _ in range(150):
        for doc in env.pctl_json("requests", "ls"):
            spec = doc["spec"]
            if spec["user"] == user and spec["roles"] == roles and spec["state"] == "PENDING":
                return doc["metadata"]["name"]
        time.sleep(0.2)
    raise AssertionError("the request never showed up in pctl requests ls")


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def connect(env: DbEnv, user: str) -> subprocess.CompletedProcess[str]:
    return env.ptsh(user, "db", "connect", "aurora", "--db-user=alice", "--db-name=postgres", "--",
                    "-At", "-c", "select 'as-' || current_user")


def test_request_wait_approve_assume_and_connect(env: DbEnv) -> None:
    before = connect(env, "alice")
    assert before.returncode == 4, before.stderr  # her own roles allow no db user
    waiting = waiting_create(env, "alice", "--roles=db", "--reason=incident 42", "--reviewers=bob")
    try:
        rid = pending_id(env, "alice", ["db"])
        # bob sees it and approves it with ptsh; alice cannot see bob's view of others' requests.
        assert rid in [d["metadata"]["name"] for d in json_of(env.ptsh("bob", "request", "ls", "--format=json"))]
        suggested = json_of(env.ptsh("bob", "request", "ls", "--suggested", "--format=json"))
        assert [d["metadata"]["name"] for d in suggested] == [rid]
        assert json_of(env.ptsh("bob", "request", "ls", "--my-requests", "--format=json")) == []
        assert rid in [d["metadata"]["name"] for d in json_of(env.ptsh("alice", "request", "ls", "--my-requests",
                                                                                "--format=json"))]
        review = env.ptsh("bob", "request", "review", "--approve", rid, "--reason=go ahead")
        assert review.returncode == 0, review.stderr
        assert "Successfully submitted review.  Request state: APPROVED" in review.stderr
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, err
    assert "Waiting for request approval..." in out and "Status:" in out and "PENDING" in out
    assert 'Approval received, reason="go ahead"' in out
    assert re.search(rf"^  Active requests: +{rid}$", out, re.M), out
    status = json_of(env.ptsh("alice", "status", "--format=json"))["active"]
    assert status["active_requests"] == [rid] and "db" in status["roles"]
    after = connect(env, "alice")
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == "as-alice"
    codes = {(e["event"], e["code"]) for e in env.events() if e.get("id") == rid}
    assert {("access_request.create", "T5000I"), ("access_request.review", "T5002I"),
            ("access_request.update", "T5001I")} <= codes
    # Removing the request stops the certificate that carries it, at once and everywhere:
    # an open session ends with the reason, and new ones are refused.
    with env.tunnel("alice", db_user="alice", db_name="postgres") as port:
        conn = psycopg.connect(f"postgres://alice@127.0.0.1:{port}/postgres?sslmode=disable", autocommit=True)
        assert conn.execute("select current_user").fetchone() == ("alice",)
        assert env.pctl("requests", "rm", rid).returncode == 0
        ended: Exception | None = None
        for _ in range(150):
            try:
                conn.execute("select 1")
            except psycopg.Error as exc:
                ended = exc
                break
            time.sleep(0.1)
        conn.close()
    assert ended is not None and f"access request {rid} is no longer approved" in str(ended), repr(ended)
    refused = connect(env, "alice")
    assert refused.returncode == 3 and f"access request {rid} is no longer approved" in refused.stderr, refused.stderr
    assert ("access_request.delete", "T5003I") in {(e["event"], e["code"]) for e in env.events() if e.get("id") == rid}
    env.login("alice")  # a new login: her own roles again
    assert json_of(env.ptsh("alice", "status", "--format=json"))["active"]["active_requests"] == []


def test_a_denial_reaches_a_waiting_create(env: DbEnv) -> None:
    # Long polls of 1 s: the denial comes after several of them have ended with "still pending".
    waiting = waiting_create(env, "alice", "--roles=db", "--reason=late night", "--format=json", poll="1")
    try:
        rid = pending_id(env, "alice", ["db"])
        time.sleep(3)
        assert waiting.poll() is None  # still waiting
        denied = env.pctl("requests", "deny", rid, "--reason=not tonight")
        assert denied.returncode == 0, denied.stderr
        assert f"Request {rid} has been set to DENIED." in denied.stdout
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 4, err
    assert f'request {rid} has been set to DENIED, reason="not tonight"' in err
    assert json.loads(out)["spec"]["state"] == "DENIED"  # the script still reads the document
    login = env.ptsh("alice", "login", f"--request-id={rid}")
    assert login.returncode == 4 and "was denied" in login.stderr, login.stderr


def test_nobody_approves_their_own_request(env: DbEnv) -> None:
    created = json_of(env.ptsh("rita", "request", "create", "--roles=db", "--nowait", "--format=json"))
    rid = created["metadata"]["name"]
    assert created["spec"]["state"] == "PENDING"
    own = env.ptsh("rita", "request", "review", "--approve", rid)
    assert own.returncode == 4 and "you cannot review your own access request" in own.stderr, own.stderr
    shown = json_of(env.ptsh("rita", "request", "show", rid, "--format=json"))
    assert shown["spec"]["state"] == "PENDING" and shown["spec"]["reviews"] == []
    refusal = [e for e in env.events(type="access_request.review") if e.get("id") == rid]
    assert refusal and refusal[0]["success"] is False
    # bob may; then rita takes it on with ptsh login --request-id (no password: her login is valid).
    assert env.ptsh("bob", "request", "review", "--approve", rid).returncode == 0
    login = env.ptsh("rita", "login", f"--request-id={rid}")
    assert login.returncode == 0, login.stderr
    assert "Active requests:" in login.stdout and rid in login.stdout
    status = json_of(env.ptsh("rita", "status", "--format=json"))["active"]
    assert status["active_requests"] == [rid] and "db" in status["roles"]
    dropped = env.ptsh("rita", "request", "drop", rid)
    assert dropped.returncode == 0, dropped.stderr
    status = json_of(env.ptsh("rita", "status", "--format=json"))["active"]
    assert status["active_requests"] == [] and "db" not in status["roles"]
    # Not logged in: ptsh login --request-id logs in (password, code), then takes the request on.
    assert env.ptsh("rita", "logout").returncode == 0
    out = env.login("rita", f"--request-id={rid}")
    assert re.search(rf"Active requests: +{rid}", out), out


def test_an_expired_request_cannot_be_assumed(env: DbEnv) -> None:
    # 6 s: time enough for bob's approval on a busy machine (with 2 s it could expire first).
    asked = time.monotonic()
    created = json_of(env.ptsh("alice", "request", "create", "--roles=db", "--nowait", "--request-ttl=6s",
                               "--session-ttl=6s", "--format=json"))
    rid = created["metadata"]["name"]
    assert env.ptsh("bob", "request", "review", "--approve", rid).returncode == 0
    time.sleep(max(0.0, asked + 6.5 - time.monotonic()))  # the session TTL passes (a real clock: the daemon's)
    login = env.ptsh("alice", "login", f"--request-id={rid}")
    assert login.returncode == 4 and f"access request {rid} expired at" in login.stderr, login.stderr
    listed = env.ptsh("alice", "request", "ls")
    assert listed.returncode == 0 and "EXPIRED" in listed.stdout
    late = json_of(env.ptsh("alice", "request", "create", "--roles=db", "--nowait", "--request-ttl=1s",
                            "--format=json"))["metadata"]["name"]
    time.sleep(1.5)
    review = env.ptsh("bob", "request", "review", "--approve", late)
    assert review.returncode == 1 and "has expired" in review.stderr, review.stderr
    expired = {e["id"] for e in env.events(type="access_request.expire")}
    assert {rid, late} <= expired


def test_login_can_create_the_request(env: DbEnv) -> None:
    assert env.ptsh("alice", "logout").returncode == 0
    out = env.login("alice", "--request-roles=db", "--request-reason=on call", "--request-nowait")
    assert "Logged in as:       alice" in out and "Creating request..." in out and "PENDING" in out, out
    rid = pending_id(env, "alice", ["db"])
    approved = env.pctl("requests", "approve", rid, "--format=json")
    assert json.loads(approved.stdout)["spec"]["state"] == "APPROVED", approved.stderr
    login = env.ptsh("alice", "login", f"--request-id={rid}")
    assert login.returncode == 0, login.stderr
    assert connect(env, "alice").stdout.strip() == "as-alice"


# --- the web console's Access requests page ----------------------------------------------------------


def _web_sign_in(env: DbEnv, user: str) -> Any:
    import httpx

    client = httpx.Client(base_url=env.cluster.url, verify=False, timeout=15)
    form = client.get("/web/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token, form.text
    done = client.post("/web/login", data={"csrf": token.group(1), "user": user, "password": "correct horse battery",
                                           "otp": env.users[user].code()})
    assert done.status_code == 303, done.text
    return client


def test_a_reviewer_approves_on_the_web_and_the_requester_cannot_review_their_own(env: DbEnv) -> None:
    made = json_of(env.ptsh("alice", "request", "create", "--roles=db", "--reason=web review", "--nowait",
                            "--format=json"))
    rid = made["metadata"]["name"]
    alice, rex = _web_sign_in(env, "alice"), _web_sign_in(env, "rex")
    try:
        own = alice.get("/web/requests")
        assert own.status_code == 200 and rid in own.text
        assert f"/web/requests/{rid}/review" not in own.text  # no buttons on one's own request
        csrf = re.search(r'name="csrf" value="([^"]+)"', rex.get("/web/databases").text)
        assert csrf
        # Posting anyway gets the CLI's refusal, and nothing changes.
        refused = alice.post(f"/web/requests/{rid}/review", data={"csrf": re.search(
            r'name="csrf" value="([^"]+)"', own.text).group(1), "decision": "approve"})  # type: ignore[union-attr]
        assert refused.status_code in (403, 404), refused.text
        page = rex.get("/web/requests")
        assert 'href="/web/requests"' in page.text and f"/web/requests/{rid}/review" in page.text
        no_token = rex.post(f"/web/requests/{rid}/review", data={"decision": "approve"})
        assert no_token.status_code == 403
        done = rex.post(f"/web/requests/{rid}/review",
                        data={"csrf": csrf.group(1), "decision": "approve", "reason": "looks fine"})
        assert done.status_code == 303 and done.headers["location"] == "/web/requests?done=approved"
        after = rex.get(done.headers["location"])
        assert "Review recorded: approved" in after.text and f"/web/requests/{rid}/review" not in after.text
    finally:
        alice.close()
        rex.close()
    shown = json_of(env.ptsh("alice", "request", "show", rid, "--format=json"))
    assert shown["spec"]["state"] == "APPROVED"
    assert [(r["author"], r["reason"]) for r in shown["spec"]["reviews"]] == [("rex", "looks fine")]
    reviews = [e for e in env.events(type="access_request.review") if e.get("id") == rid or rid in json.dumps(e)]
    assert reviews and reviews[-1]["code"] == "T5002I"
