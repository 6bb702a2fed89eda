"""The web console's parts in memory: web sessions, Activity paging, navigation by roles, escaping."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from common.errors import AccessDenied, NotLoggedIn
from common.identity import KIND_ADMIN, Identity
from pteleport.api.webui import activity, nav
from pteleport.api.webui.handler import safe_next
from pteleport.api.webui.pages import Choice
from pteleport.api.webui.render import CSP, render
from pteleport.audit.events import make_event
from pteleport.audit.memory_log import MemoryAuditLog
from pteleport.auth import totp
from pteleport.auth.context import AuthSettings
from pteleport.auth.server import AuthServer
from pteleport.auth.websessions import SESSION_ENDED, WebSessionService
from pteleport.storage.memory import MemoryBackend

ADMIN = Identity(username="admin", kind=KIND_ADMIN)
PASSWORD = "correct horse"
DB_ONLY = {
    "kind": "role",
    "version": "v7",
    "metadata": {"name": "dbonly"},
    "spec": {
        "options": {"max_session_ttl": "2h"},
        "allow": {"db_labels": {"*": "*"}, "db_users": ["alice"], "db_names": ["postgres"]},
    },
}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def cluster() -> tuple[AuthServer, Clock, WebSessionService]:
    clock = Clock()
    auth = AuthServer(MemoryBackend(clock=clock), MemoryAuditLog(), clock, AuthSettings("test", "127.0.0.1:3080"))
    auth.init_cluster()
    auth.ctx.roles.put("dbonly", DB_ONLY)
    return auth, clock, WebSessionService(auth.ctx, auth.login)


def add_user(auth: AuthServer, clock: Clock, name: str, roles: list[str]) -> str:
    token = auth.users.add(ADMIN, name, roles, {}, None)["metadata"]["name"]
    secret = auth.users.invite_details(token)["totp_secret"]
    auth.users.complete_invite(token, PASSWORD, totp.code_at(secret, clock.now))
    return secret


def sign_in(auth: AuthServer, clock: Clock, sessions: WebSessionService, name: str, roles: list[str]) -> str:
    secret = add_user(auth, clock, name, roles)
    clock.now += timedelta(seconds=60)
    cookie, _session = sessions.sign_in(name, PASSWORD, totp.code_at(secret, clock.now), "10.0.0.1:4000")
    return cookie


# --- web sessions -----------------------------------------------------------------------------
def test_a_web_session_is_a_certificate_capped_by_the_roles_stored_by_its_hash(cluster) -> None:
    auth, clock, sessions = cluster
    cookie = sign_in(auth, clock, sessions, "dora", ["dbonly"])
    session = sessions.get(cookie)
    assert session.user == "dora" and session.expires == clock.now + timedelta(hours=2)  # max_session_ttl
    everything = b"".join(
        item.key.encode() + item.value for item in auth.ctx.backend.get_range("")
    )
    assert cookie.encode() not in everything
    assert hashlib.sha256(cookie.encode()).hexdigest().encode() in everything
    assert session.csrf_ok(session.csrf) and not session.csrf_ok("") and not session.csrf_ok(session.csrf + "x")
    clock.now += timedelta(hours=2, seconds=1)
    with pytest.raises(NotLoggedIn):
        sessions.get(cookie)


def test_sign_in_is_ptsh_logins_code_with_its_one_sentence_and_audit(cluster) -> None:
    auth, clock, sessions = cluster
    add_user(auth, clock, "eve", ["dbonly"])
    with pytest.raises(AccessDenied, match=r"^invalid user name, password or second factor$"):
        sessions.sign_in("eve", PASSWORD, "000000", "10.0.0.1:4000")
    with pytest.raises(AccessDenied, match=r"^invalid user name, password or second factor$"):
        sessions.sign_in("nobody", PASSWORD, "000000", "10.0.0.1:4000")
    failures = [e for e in auth.ctx.audit.search(event_types=["user.login"]) if e["code"] == "T1000W"]
    assert [e["user"] for e in failures] == ["eve", "nobody"]
    assert list(sessions.store.items()) == []


def test_a_lock_ends_the_session_and_says_why_once(cluster) -> None:
    auth, clock, sessions = cluster
    cookie = sign_in(auth, clock, sessions, "finn", ["dbonly"])
    auth.locks.create(ADMIN, "finn", None, "incident 42", None)
    with pytest.raises(AccessDenied, match="incident 42"):
        sessions.get(cookie)
    with pytest.raises(NotLoggedIn, match=SESSION_ENDED):
        sessions.get(cookie)


def test_deleting_the_user_or_taking_a_role_ends_the_session(cluster) -> None:
    auth, clock, sessions = cluster
    gone = sign_in(auth, clock, sessions, "gus", ["dbonly"])
    stale = sign_in(auth, clock, sessions, "hal", ["dbonly", "auditor"])
    kept = sign_in(auth, clock, sessions, "ida", ["dbonly"])
    auth.users.remove(ADMIN, "gus")
    auth.users.update(ADMIN, "hal", ["dbonly"], {})
    with pytest.raises(AccessDenied, match='user "gus" was deleted'):  # pctl users rm locks the user
        sessions.get(gone)
    with pytest.raises(NotLoggedIn):
        sessions.get(stale)
    assert sessions.get(kept).user == "ida"


def test_logout_ends_the_session(cluster) -> None:
    auth, clock, sessions = cluster
    cookie = sign_in(auth, clock, sessions, "jo", ["dbonly"])
    sessions.end(cookie)
    with pytest.raises(NotLoggedIn, match=SESSION_ENDED):
        sessions.get(cookie)
    sessions.end(cookie)  # twice is no error


# --- navigation ---------------------------------------------------------------------------
def test_the_navigation_follows_the_roles(cluster) -> None:
    auth, _clock, _sessions = cluster

    def labels(*roles: str) -> list[str]:
        return [e.label for e in nav.entries(auth, Identity(username="u", roles=roles))]

    assert labels("dbonly") == ["Databases"]
    assert labels("auditor") == ["Databases", "Activity"]
    assert labels("editor") == ["Databases", "Activity", "Users", "Roles", "Access requests"]
    # The preset access role may list events (as Teleport's does), so pctl audit events and Activity work for it.
    assert labels("access") == ["Databases", "Activity"]
    assert labels("requester") == ["Databases", "Access requests"]
    assert labels("reviewer") == ["Databases", "Access requests"]


def test_other_parts_can_add_a_management_page(cluster, monkeypatch) -> None:
    auth, _clock, _sessions = cluster
    monkeypatch.setattr(nav, "_EXTRA", [])
    nav.register("Reports", "/web/reports", lambda auth, me: "editor" in me.roles)
    assert nav.entries(auth, Identity(username="u", roles=("editor",)))[-1].label == "Reports"
    assert "Reports" not in [e.label for e in nav.entries(auth, Identity(username="u", roles=("dbonly",)))]


# --- Activity paging ---------------------------------------------------------------------------
def test_filtered_pages_walk_the_log_without_skipping_or_repeating() -> None:
    log = MemoryAuditLog()
    start = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    for i in range(130):
        when = start + timedelta(seconds=i)
        log.emit(
            make_event(
                "db.session.query", "TDB02I", clock=lambda w=when: w, cluster_name="test", db_service="ab"[i % 2], n=i
            )
        )

    def search(limit: int, cursor: str | None):
        return log.search_page(limit=limit, order="desc", cursor=cursor)

    def keep(event: dict) -> bool:
        return event["db_service"] == "a"

    seen: list[int] = []
    cursor = None
    sizes = []
    while True:
        events, cursor, _scanned = activity.walk(search, keep, cursor)
        sizes.append(len(events))
        seen.extend(e["n"] for e in events)
        if cursor is None:
            break
    assert seen == list(range(128, -1, -2))  # every "a" event once, newest first
    assert sizes == [50, 15]


def test_a_page_that_finds_little_stops_after_the_scan_limit() -> None:
    log = MemoryAuditLog()
    for i in range(40):
        log.emit(make_event("user.login", "T1000I", clock=lambda: datetime.now(UTC), cluster_name="test", n=i))
    events, cursor, scanned = activity.walk(
        lambda limit, cursor: log.search_page(limit=limit, order="desc", cursor=cursor), lambda e: False, None,
        size=5, scan_limit=20,
    )
    assert events == [] and cursor is not None and scanned >= 20


# --- small pure parts ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("asked", "goes_to"),
    [
        ("/web/activity?user=x", "/web/activity?user=x"),
        ("//evil.example/web/", "/web/databases"),
        ("https://evil.example/web/", "/web/databases"),
        ("/web/\\\\evil.example", "/web/databases"),
        ("/v1/users", "/web/databases"),
        ("/web/x\r\nSet-Cookie: a=b", "/web/databases"),
        ("", "/web/databases"),
    ],
)
def test_after_signing_in_only_this_sites_pages(asked: str, goes_to: str) -> None:
    assert safe_next(asked) == goes_to


def test_the_connect_box_offers_what_the_roles_allow() -> None:
    assert Choice.of(["alice", "bob"], "") == Choice(["alice", "bob"], False, "alice")
    assert Choice.of(["alice", "bob"], "bob").chosen == "bob"
    assert Choice.of(["alice"], "mallory").chosen == "alice"  # not allowed: not offered
    assert Choice.of(["*"], "mallory") == Choice([], True, "mallory")
    assert Choice.of(["*", "alice"], "") == Choice(["alice"], True, "alice")


def test_pages_escape_what_comes_from_the_audit_log() -> None:
    hostile = "<script>alert(1)</script>"
    event = {"event": "db.session.query", "code": "TDB02I", "time": "t", "db_query": hostile, "user": hostile}
    page = render(
        "activity.html",
        me=Identity(username=hostile, roles=("auditor",)),
        nav=[],
        csrf="token",
        path="/web/activity",
        cluster="test",
        rows=[activity._row(event)],
        filters={k: "" for k in ("type", "user", "database", "success", "from", "to")},
        known_types=[],
        older="",
        newest="",
        cut=False,
        scanned=1,
    )
    assert hostile not in page.body and "&lt;script&gt;" in page.body
    assert "unsafe-inline" not in CSP and "script-src 'self'" in CSP


# --- the Activity page itself, over a real auth service in memory ---------------------------------
def activity_page(auth: AuthServer, sessions: WebSessionService, who: Identity, query: dict[str, str]) -> str:
    from multidict import MultiDict

    from pteleport.api.app import ProxyInfo
    from pteleport.api.webui.handler import Viewer, WebCall
    from pteleport.auth.websessions import WebSession

    call = WebCall(
        auth, ProxyInfo("127.0.0.1:3080"), sessions, "GET", "/web/activity", "/web/activity", "10.0.0.1:1",
        {}, MultiDict(query), {}, {}, None, "127.0.0.1:3080",
    )
    call.viewer = Viewer(who, WebSession(who.username, b"", "csrf", datetime.now(UTC)), nav.entries(auth, who))
    return activity.activity(call).body


def test_the_activity_page_filters_by_database_success_and_time_and_pages_on(cluster) -> None:
    import re
    from html import unescape

    auth, clock, sessions = cluster
    start = clock.now
    for i in range(70):
        clock.now = start + timedelta(minutes=i)
        auth.ctx.emit("db.session.query", "TDB02I", user="alice", db_service="ab"[i % 2], db_query=f"select {i}",
                      success=i % 5 != 0)
    auditor = Identity(username="ann", roles=("auditor",))

    def queries(body: str) -> list[int]:
        return [int(n) for n in re.findall(r"select (\d+)</summary>", body)]

    first = activity_page(auth, sessions, auditor, {"database": "a"})
    assert queries(first) == list(range(68, -1, -2))  # 35 matches, newest first, on one page
    failed = activity_page(auth, sessions, auditor, {"database": "a", "success": "no"})
    assert queries(failed) == [60, 50, 40, 30, 20, 10, 0]
    window = activity_page(
        auth, sessions, auditor,
        {"from": (start + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M"),
         "to": (start + timedelta(minutes=14)).strftime("%Y-%m-%dT%H:%M")},
    )
    assert queries(window) == [13, 12, 11, 10]
    page_one = activity_page(auth, sessions, auditor, {"type": "db.session.query"})
    older = unescape(re.search(r'href="(/web/activity\?[^"]*cursor=[^"]*)" id="older"', page_one).group(1))
    from urllib.parse import parse_qsl, urlsplit

    page_two = activity_page(auth, sessions, auditor, dict(parse_qsl(urlsplit(older).query)))
    assert queries(page_one) == list(range(69, 19, -1)) and queries(page_two) == list(range(19, -1, -1))
    assert 'id="older"' not in page_two and 'id="newest"' in page_two
    with pytest.raises(AccessDenied, match="you may not read the audit log"):
        activity_page(auth, sessions, Identity(username="dora", roles=("dbonly",)), {})


def test_without_chromium_the_browser_tests_skip_with_a_warning(monkeypatch) -> None:
    import tests.browser as chromium

    monkeypatch.setattr(chromium, "CHROMIUM", "/nonexistent/chromium")
    with (
        pytest.warns(pytest.PytestWarning, match="BROWSER TESTS SKIPPED: /nonexistent/chromium not found"),
        pytest.raises(pytest.skip.Exception, match="install Debian's chromium"),
    ):
        chromium.require_chromium()


def test_no_template_has_inline_script_style_or_event_handlers() -> None:
    """What the CSP would block in a browser, found before one runs: every page must work under it."""
    import re
    from importlib import resources

    templates = resources.files("pteleport.api.webui").joinpath("templates")
    names = sorted(t.name for t in templates.iterdir() if t.name.endswith(".html"))
    assert "base.html" in names and "login.html" in names
    for name in names:
        text = templates.joinpath(name).read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), name
        assert "<style" not in text and not re.search(r"\sstyle=", text), name
        assert not re.search(r"\son[a-z]+=", text), name
        assert "javascript:" not in text, name
