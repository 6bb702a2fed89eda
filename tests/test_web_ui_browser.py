"""The web console in a real headless Chromium, against a real cluster, agents and PostgreSQL.

A user signs in with a computed TOTP code, finds the database, opens its Connect dialog,
runs the command it shows with ptsh, and finds that query in Activity and on the
session's page; a wrong code is refused with ptsh login's sentence; an auditor sees
Activity and a user with database access only does not; logout ends the session; a
post without its CSRF token is refused; the forms work with JavaScript turned off.
With ``PTELEPORT_SCREENSHOTS=DIR`` each page is saved as a PNG (``scripts/screenshots``).
"""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.browser import Browser, require_chromium
from tests.dbenv import PASSWORD, DbEnv, make_env

pytestmark = [pytest.mark.slow, pytest.mark.browser]
GENERIC = "invalid user name, password or second factor"


@pytest.fixture(scope="module")
def env(pg, tmp_path_factory) -> Iterator[DbEnv]:
    require_chromium()
    pg.create_role("alice", "cert")
    e = make_env(tmp_path_factory.mktemp("webui"), pg)
    try:
        e.start_agent("aurora")
        e.start_agent("reports")
        e.add_user("erin", "db,auditor,editor")
        e.add_user("ann", "auditor")
        e.add_user("dave", "db")
        yield e
    finally:
        e.stop()


@pytest.fixture
def browser(env: DbEnv) -> Iterator[Browser]:
    b = Browser(env.cluster.url)
    try:
        yield b
    finally:
        b.close()


def sign_in(b: Browser, env: DbEnv, user: str, code: str | None = None, start: str = "/web/databases") -> None:
    b.open(start)
    b.wait_for(lambda: b.path().startswith("/web/login"))
    b.fill({"user": user, "password": PASSWORD, "otp": code or env.users[user].code()})
    b.find("#sign-in").click()


def run_query_with_ptsh(env: DbEnv, user: str, command: str, sql: str) -> None:
    args = shlex.split(command)
    assert args[0] == "ptsh", command
    result = env.ptsh(user, *args[1:], "--", "-At", "-c", sql)
    assert result.returncode == 0, result.stderr
    assert sql.split("'")[1] in result.stdout


def test_sign_in_connect_run_a_query_and_find_it_in_activity(env: DbEnv, browser: Browser) -> None:
    b = browser
    b.open("/")
    assert "This is the proxy of a pteleport cluster" in b.text()
    b.shot("front")
    b.open("/web/databases")
    b.wait_for(lambda: b.path() == "/web/login?next=/web/databases")
    b.shot("sign-in")
    sign_in(b, env, "erin")
    b.wait_for(lambda: b.path() == "/web/databases")
    # The page runs no inline script and scripts cannot read the session cookie.
    assert b.find_all("script:not([src])") == []
    assert "pt_session" not in b.driver.execute_script("return document.cookie")
    rows = b.wait_for(lambda: {r.get_attribute("data-db"): r.text for r in b.find_all("#databases tbody tr")})
    assert set(rows) == {"aurora", "reports"} and "env=dev" in rows["aurora"]
    b.shot("databases")

    b.fill({"search": "reports"})
    b.find("form.search button").click()
    b.wait_for(lambda: [r.get_attribute("data-db") for r in b.find_all("#databases tbody tr")] == ["reports"])
    b.open("/web/databases")

    # The Connect dialog: the commands follow the db user and name typed in.
    b.find("tr[data-db=aurora] summary").click()
    b.wait_for(lambda: b.find("#connect-aurora").is_displayed())
    login_command = b.find("#login-aurora").text
    assert login_command == f"ptsh login --proxy={env.cluster.addr} --user=erin --insecure"
    b.find("tr[data-db=aurora] [name=db_user]").send_keys("alice")
    b.find("tr[data-db=aurora] [name=db_name]").send_keys("postgres")
    command = b.wait_for(
        lambda: (t := b.find("#connect-aurora").text) == "ptsh db connect aurora --db-user=alice --db-name=postgres"
        and t
    )
    copy = b.find("button[data-copy=connect-aurora]")
    assert copy.is_displayed()
    copy.click()
    b.wait_for(lambda: copy.text == "Copied")
    b.shot("connect")

    # What the dialog shows is what works: log in and run a query with exactly that command.
    env.login("erin")
    marker = f"web-{uuid.uuid4().hex[:8]}"
    run_query_with_ptsh(env, "erin", command, f"select '{marker}' as m")

    # Within 5 s the query is in Activity (newest first) and on the session's page.
    def found() -> bool:
        b.open("/web/activity?type=db.session.query")
        return marker in b.text("#events")

    b.wait_for(found, timeout=5.0, every=0.5)
    b.shot("activity-queries")
    row = next(r for r in b.find_all("#events tbody tr") if marker in r.text)
    row.find_element("css selector", "details summary").click()
    event_json = row.find_element("css selector", "details pre")
    b.wait_for(lambda: event_json.is_displayed())
    assert f'"db_query": "select \'{marker}\' as m"' in event_json.text
    assert '"code": "TDB02I"' in event_json.text
    b.shot("activity-event")

    row.find_element("css selector", "a.sid").click()
    b.wait_for(lambda: b.path().startswith("/web/sessions/"))
    session_page = b.path()

    def ended() -> bool:
        b.open(session_page)
        return "Session ended at" in b.text("#transcript")

    b.wait_for(ended, timeout=5.0, every=0.5)
    transcript = b.find("#transcript").text
    assert f"postgres=> select '{marker}' as m;" in transcript
    assert transcript.startswith('Session started to database "aurora"')
    b.shot("session")

    b.open("/web/activity")
    assert marker in b.text("#events")  # newest first: the session is on the first page
    b.shot("activity")

    # Filters: another user's name finds nothing of erin's.
    b.open("/web/activity?type=db.session.query&user=dave")
    assert marker not in b.text()
    b.open("/web/activity?user=erin&success=no")
    assert marker not in b.text()

    for page, name in (("/web/users", "users"), ("/web/roles", "roles"), ("/web/account", "account")):
        b.open(page)
        b.shot(name)
    assert "db, auditor, editor" in b.text("#roles") and "at most 30h00m" in b.text("#ttl")

    # Logout ends the session on the server: the old cookie is refused afterwards.
    cookie = b.driver.get_cookie("pt_session")["value"]
    b.find("#logout").click()
    b.wait_for(lambda: b.path() == "/web/login?signed_out=1")
    assert "You have signed out." in b.text()
    b.open("/web/activity")
    b.wait_for(lambda: b.path().startswith("/web/login"))
    with httpx.Client(base_url=env.cluster.url, verify=False, timeout=10) as replay:
        replay.cookies.set("pt_session", cookie)
        page = replay.get("/web/activity")
    assert page.status_code == 401 and "your web session has ended; sign in again" in page.text


def test_a_wrong_code_is_refused_and_a_db_only_user_sees_no_activity(env: DbEnv, browser: Browser) -> None:
    b = browser
    sign_in(b, env, "dave", code="000000")
    error = b.wait_for(lambda: b.find("#error").text)
    assert error == GENERIC
    assert b.path() == "/web/login"
    b.shot("sign-in-refused")
    b.fill({"password": PASSWORD, "otp": env.users["dave"].code()})
    b.find("#sign-in").click()
    b.wait_for(lambda: b.path() == "/web/databases")
    nav = b.text("header nav")
    assert "Databases" in nav and "Activity" not in nav and "Users" not in nav
    b.shot("databases-db-only")
    b.open("/web/activity")
    assert b.find("#error").text.startswith("you may not read the audit log; ask an admin for the auditor role")


def test_an_auditor_sees_activity(env: DbEnv, browser: Browser) -> None:
    b = browser
    sign_in(b, env, "ann", start="/web/activity")
    b.wait_for(lambda: b.path() == "/web/activity")
    assert "Activity" in b.text("header nav")
    assert b.find_all("#events tbody tr")  # at least the sign-ins and user creations
    # An auditor has no database access: the list is empty and says what to do.
    b.open("/web/databases")
    assert "Your roles allow no database" in b.text("#empty")


def test_a_post_without_the_csrf_token_is_refused(env: DbEnv, browser: Browser) -> None:
    b = browser
    sign_in(b, env, "ann")
    b.wait_for(lambda: b.path() == "/web/databases")
    b.driver.execute_script("document.querySelector('form[action=\"/web/logout\"] input[name=csrf]').remove()")
    b.find("#logout").click()
    b.wait_for(lambda: "did not come from this site" in b.find("#error").text)
    b.open("/web/account")
    assert b.path() == "/web/account" and "ann" in b.text("#account")  # still signed in


def test_the_forms_work_without_javascript(env: DbEnv) -> None:
    b = Browser(env.cluster.url, javascript=False)
    try:
        sign_in(b, env, "dave")
        b.wait_for(lambda: b.path() == "/web/databases")
        b.find("tr[data-db=aurora] summary").click()
        b.find("tr[data-db=aurora] [name=db_user]").send_keys("alice")
        b.find("tr[data-db=aurora] [name=db_name]").send_keys("postgres")
        assert not b.find("button[data-copy=connect-aurora]").is_displayed()  # copying needs the script
        b.find("tr[data-db=aurora] form.route button").click()
        b.wait_for(lambda: b.path().startswith("/web/databases/aurora?"))
        command = b.find("#connect-aurora").text
        assert command == "ptsh db connect aurora --db-user=alice --db-name=postgres"
        b.find("#logout").click()
        b.wait_for(lambda: b.path() == "/web/login?signed_out=1")
    finally:
        b.close()
