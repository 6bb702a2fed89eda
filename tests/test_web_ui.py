"""The web console over HTTP against a real cluster: sessions, CSRF, locks, RBAC, headers.

What a browser shows is tested in a real Chromium (tests/test_web_ui_browser.py); these
tests check what a browser cannot easily show: the cookie's attributes, refused posts,
replayed cookies after logout, a lock or a deletion, and that no secret reaches storage.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import httpx
import pytest

from tests.harness import PCTL, Cluster, TotpDevice, find_url, run, signup

pytestmark = pytest.mark.slow
PASSWORD = "correct horse battery"
GENERIC = "invalid user name, password or second factor"
SHORT_ROLE = """kind: role
version: v7
metadata:
  name: short
spec:
  options:
    max_session_ttl: 1h
  allow:
    db_labels:
      '*': '*'
    db_users: ['alice']
    db_names: ['postgres']
"""
DB_ONLY_ROLE = """kind: role
version: v7
metadata:
  name: dbonly
spec:
  allow:
    db_labels:
      '*': '*'
    db_users: ['alice']
    db_names: ['postgres']
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    with Cluster(Path(tmp_path_factory.mktemp("webui")) / "data") as c:
        for doc in (SHORT_ROLE, DB_ONLY_ROLE):
            created = run([PCTL, "create"], c.env(), input=doc)
            assert created.returncode == 0, created.stderr
        yield c


def add_user(cluster: Cluster, name: str, roles: str) -> TotpDevice:
    result = run([PCTL, "users", "add", name, f"--roles={roles}"], cluster.env())
    assert result.returncode == 0, result.stderr
    return TotpDevice(signup(cluster, find_url(result.stdout), PASSWORD))


def browser(cluster: Cluster) -> httpx.Client:
    return httpx.Client(base_url=cluster.url, verify=False, timeout=15)


def form_token(page: httpx.Response) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def error_of(page: httpx.Response) -> str:
    match = re.search(r'id="error">([^<]*)<', page.text)
    return unescape(match.group(1)) if match else ""


def sign_in(client: httpx.Client, user: str, device: TotpDevice, code: str | None = None) -> httpx.Response:
    form = client.get("/web/login")
    return client.post(
        "/web/login",
        data={"csrf": form_token(form), "user": user, "password": PASSWORD, "otp": code or device.code()},
    )


def text_of(page: httpx.Response) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", page.text)).split())


def test_the_session_cookie_is_httponly_secure_strict_and_capped_by_the_roles(cluster: Cluster) -> None:
    device = add_user(cluster, "carol", "short")
    with browser(cluster) as client:
        done = sign_in(client, "carol", device)
        assert done.status_code == 303 and done.headers["location"] == "/web/databases"
        cookie = next(h for h in done.headers.get_list("set-cookie") if h.startswith("pt_session="))
        attrs = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
        assert {"httponly", "secure", "path"} <= attrs.keys()
        assert attrs["samesite"].lower() == "samesite=strict"
        max_age = int(attrs["max-age"].split("=")[1])
        assert 3500 < max_age <= 3600  # the role's max_session_ttl (1h), as for a certificate
        account = client.get("/web/account")
        assert account.status_code == 200 and "at most 1h00m" in text_of(account)
        # Every page carries the strict policy: scripts only from this origin's files.
        csp = account.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert account.headers["cache-control"] == "no-store"


def test_no_cookie_goes_to_sign_in_and_a_wrong_code_gets_ptsh_logins_sentence(cluster: Cluster) -> None:
    device = add_user(cluster, "dave", "dbonly")
    with browser(cluster) as client:
        first = client.get("/web/activity?user=x")
        assert first.status_code == 303 and first.headers["location"] == "/web/login?next=/web/activity%3Fuser%3Dx"
        wrong = sign_in(client, "dave", device, code="000000")
        assert wrong.status_code == 403
        assert error_of(wrong) == "invalid user name, password or second factor"
        assert "pt_session" not in client.cookies
        assert client.get("/web/databases").status_code == 303
    failures = run([PCTL, "audit", "events", "--type=user.login", "--format=json"], cluster.env())
    assert '"T1000W"' in failures.stdout and '"dave"' in failures.stdout


def test_posts_without_the_csrf_token_or_from_another_origin_are_refused(cluster: Cluster) -> None:
    device = add_user(cluster, "erin", "dbonly")
    with browser(cluster) as client:
        client.get("/web/login")
        no_token = client.post("/web/login", data={"user": "erin", "password": PASSWORD, "otp": device.code()})
        assert no_token.status_code == 403 and "did not come from this site" in error_of(no_token)
        assert sign_in(client, "erin", device).status_code == 303
        page = client.get("/web/databases")
        token = form_token(page)
        forged = client.post("/web/logout", data={})
        assert forged.status_code == 403 and "did not come from this site" in error_of(forged)
        other = client.post("/web/logout", data={"csrf": token}, headers={"Origin": "https://evil.example"})
        assert other.status_code == 403
        assert client.get("/web/databases").status_code == 200  # still signed in
        out = client.post("/web/logout", data={"csrf": token})
        assert out.status_code == 303 and out.headers["location"] == "/web/login?signed_out=1"


def test_logout_ends_the_session_in_storage_not_only_in_the_browser(cluster: Cluster) -> None:
    device = add_user(cluster, "frank", "dbonly")
    with browser(cluster) as client:
        assert sign_in(client, "frank", device).status_code == 303
        stolen = client.cookies["pt_session"]
        token = form_token(client.get("/web/databases"))
        assert client.post("/web/logout", data={"csrf": token}).status_code == 303
    with browser(cluster) as replay:
        replay.cookies.set("pt_session", stolen)
        page = replay.get("/web/databases")
        assert page.status_code == 401 and error_of(page) == "your web session has ended; sign in again"


def test_a_lock_and_a_deletion_end_web_sessions(cluster: Cluster) -> None:
    locked_device = add_user(cluster, "gina", "dbonly")
    deleted_device = add_user(cluster, "hank", "dbonly")
    with browser(cluster) as gina, browser(cluster) as hank:
        assert sign_in(gina, "gina", locked_device).status_code == 303
        assert sign_in(hank, "hank", deleted_device).status_code == 303
        cookie = gina.cookies["pt_session"]
        lock = run([PCTL, "lock", "--user=gina", "--message=incident 42", "--format=json"], cluster.env())
        assert lock.returncode == 0, lock.stderr
        page = gina.get("/web/databases")
        assert page.status_code == 403 and "incident 42" in error_of(page)
        removed = run([PCTL, "users", "rm", "hank"], cluster.env())
        assert removed.returncode == 0, removed.stderr
        gone = hank.get("/web/account")
        assert gone.status_code in (401, 403) and 'user "hank"' in error_of(gone)
    # Lifting the lock does not bring the session back: it ended.
    import json

    name = json.loads(lock.stdout)["metadata"]["name"]
    assert run([PCTL, "locks", "rm", name], cluster.env()).returncode == 0
    with browser(cluster) as replay:
        replay.cookies.set("pt_session", cookie)
        assert error_of(replay.get("/web/databases")) == "your web session has ended; sign in again"


def test_pages_follow_the_same_rbac_as_the_clis(cluster: Cluster) -> None:
    db_device = add_user(cluster, "ivan", "dbonly")
    auditor_device = add_user(cluster, "judy", "auditor")
    with browser(cluster) as ivan, browser(cluster) as judy:
        assert sign_in(ivan, "ivan", db_device).status_code == 303
        assert sign_in(judy, "judy", auditor_device).status_code == 303
        assert 'href="/web/activity"' not in ivan.get("/web/databases").text
        refused = ivan.get("/web/activity")
        assert refused.status_code == 403
        assert error_of(refused).startswith("you may not read the audit log; ask an admin for the auditor role")
        assert ivan.get("/web/users").status_code == 403
        assert 'href="/web/activity"' in judy.get("/web/databases").text
        activity = judy.get("/web/activity", params={"type": "user.login", "user": "ivan"})
        assert activity.status_code == 200
        assert "user.login" in activity.text and 'data-type="user.create"' not in activity.text
        assert judy.get("/web/users").status_code == 403  # auditors read events, not users


def test_the_backend_holds_no_cookie_value(cluster: Cluster) -> None:
    """The record is stored under the cookie's SHA-256: someone who reads the backend cannot sign in."""
    device = add_user(cluster, "kate", "dbonly")
    with browser(cluster) as client:
        assert sign_in(client, "kate", device).status_code == 303
        cookie = client.cookies["pt_session"].encode()
        stored = b"".join(p.read_bytes() for p in cluster.data_dir.rglob("*") if p.is_file())
        assert cookie not in stored
        assert form_token(client.get("/web/databases")).encode() in stored  # the CSRF token is no credential alone


def test_lock_out_and_the_address_limit_apply_to_the_web_sign_in(tmp_path: Path) -> None:
    """The rules of ptsh login, since it is the same code: five failures lock the user out
    (same sentence, even with the right code), twenty from one address are rate-limited."""
    with Cluster(tmp_path / "data") as c:
        created = run([PCTL, "create"], c.env(), input=DB_ONLY_ROLE)
        assert created.returncode == 0, created.stderr
        device = add_user(c, "lena", "dbonly")
        with browser(c) as client:
            for _ in range(5):
                assert error_of(sign_in(client, "lena", device, code="000000")) == GENERIC
            locked = sign_in(client, "lena", device)
            assert locked.status_code == 403 and error_of(locked) == GENERIC
            for i in range(14):
                assert error_of(sign_in(client, f"nobody{i}", device, code="000000")) == GENERIC
            limited = sign_in(client, "lena", device)
            assert limited.status_code == 429 and limited.headers["retry-after"] == "60"
            assert error_of(limited) == "too many failed logins from this address; wait a minute and try again"
        events = run([PCTL, "audit", "events", "--type=user.login", "--format=json"], c.env())
        assert '"user is locked"' in events.stdout


def test_an_unknown_page_is_an_html_404_and_static_files_are_cached(cluster: Cluster) -> None:
    with browser(cluster) as client:
        page = client.get("/web/no/such/page")
        script = client.get("/web/static/app.js")
        again = client.get("/web/static/app.js", headers={"If-None-Match": script.headers["etag"]})
        missing = client.get("/web/static/../../etc/passwd")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert error_of(page) == "there is no page /web/no/such/page; the console starts at /web/databases"
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert again.status_code == 304
    assert missing.status_code == 404
