"""The invite page in a browser: QR code and otpauth URI, a form that sets password and TOTP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import httpx
import pytest

from tests.harness import PCTL, Cluster, find_url, run, totp_now

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    with Cluster(Path(tmp_path_factory.mktemp("web")) / "data") as c:
        yield c


def invite(cluster: Cluster, name: str) -> str:
    result = run([PCTL, "users", "add", name, "--roles=access"], cluster.env())
    assert result.returncode == 0, result.stderr
    return find_url(result.stdout)


def test_the_invite_page_enrols_an_authenticator_and_sets_the_password(cluster: Cluster) -> None:
    url = invite(cluster, "erin")
    with httpx.Client(verify=False, timeout=10) as browser:
        page = browser.get(url)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "no-store" in page.headers["cache-control"]
        assert "<svg" in page.text and "Welcome, erin" in page.text
        uri = unescape(re.search(r"<code>(otpauth://[^<]+)</code>", page.text).group(1))
        secret = re.search(r"secret=([A-Z2-7]+)", uri).group(1)
        mismatch = browser.post(url, data={"password": "password-one", "confirm": "password-two",
                                           "otp": totp_now(secret)})
        assert "the two passwords do not match" in mismatch.text
        done = browser.post(url, data={"password": "password-one", "confirm": "password-one",
                                       "otp": totp_now(secret)})
        assert done.status_code == 200 and "Password set for erin" in done.text
        # The command to paste works on this cluster: its web certificate is self-signed.
        assert f"ptsh login --proxy={cluster.addr} --user=erin --insecure" in unescape(done.text)
        again = browser.get(url)
        assert again.status_code == 404 and "invalid, already used or expired" in again.text


def test_a_bad_token_and_hostile_names_are_shown_safely(cluster: Cluster) -> None:
    with httpx.Client(verify=False, timeout=10) as browser:
        page = browser.get(f"{cluster.url}/web/invite/<script>alert(1)<script>")
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
        assert "<script>" not in page.text and "This link cannot be used" in page.text


def test_the_front_page_says_what_this_is(cluster: Cluster) -> None:
    """A browser pointed at the proxy gets a page, not a JSON 404, with the invite pages' headers."""
    with httpx.Client(verify=False, timeout=10) as browser:
        page = browser.get(f"{cluster.url}/")
        invite_page = browser.get(invite(cluster, "frank"))
        other = browser.get(f"{cluster.url}/no/such/page")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for header in ("cache-control", "referrer-policy", "content-security-policy"):
        assert page.headers[header] == invite_page.headers[header], header
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", page.text)).split())
    assert "This is the proxy of a pteleport cluster" in text
    assert f"ptsh login --proxy={cluster.addr} --user=NAME --insecure" in text  # its web certificate is self-signed
    assert "docs/getting-started.md" in text
    assert other.status_code == 404 and other.headers["content-type"].startswith("application/json")
