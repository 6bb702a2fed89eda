"""Guessing secrets against a running daemon: per-address 429s, a handful of counted audit
events instead of one per guess, and a log that stays short and holds no token.

Clients bind to 127.0.0.2 (the guesser) or 127.0.0.1 (everyone else); both reach the
cluster's 127.0.0.1 listener, and the cluster tells them apart by source address.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import ssl
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import PCTL, PTSH, Cluster, base_env, run

pytestmark = pytest.mark.slow
GUESSER = "127.0.0.2"
GUESSES = 100
SENTENCE = re.compile(r"^too many failed attempts from this address; try again in (\d+) s$")


def _client(cluster: Cluster, source: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=source, verify=False)
    return httpx.Client(base_url=cluster.url, transport=transport, timeout=20)


def _public_key() -> str:
    from common.tls import generate_private_key, public_key_pem

    return public_key_pem(generate_private_key()).decode()


def _ok(cluster: Cluster, *args: str, input: str | None = None) -> str:
    result = run([PCTL, *args], cluster.env(), input=input)
    assert result.returncode == 0, f"pctl {args}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _guess(send, count: int = GUESSES) -> list[httpx.Response]:  # type: ignore[no-untyped-def]
    return [send(secrets.token_hex(16)) for _ in range(count)]


def _assert_throttled(answers: list[httpx.Response], refused: int, json_body: bool = True) -> None:
    statuses = [a.status_code for a in answers]
    assert statuses[:10] == [refused] * 10, statuses
    assert statuses[10:] == [429] * (len(answers) - 10), statuses
    last = answers[-1]
    wait = int(last.headers["Retry-After"])
    assert 0 < wait <= 60
    if json_body:
        error = last.json()["error"]
        assert error["kind"] == "limit_exceeded"
        match = SENTENCE.match(error["message"])
        assert match and 0 < int(match.group(1)) <= 60, error["message"]
    else:
        assert "too many failed attempts from this address" in last.text


def _events(cluster: Cluster, code: str) -> list[dict]:
    events = json.loads(_ok(cluster, "audit", "events", "--format=json", "--limit=5000"))
    return [e for e in events if e["code"] == code]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("guessing")
    config = root / "pteleport.yaml"
    config.write_text("teleport:\n  log:\n    severity: DEBUG\n")  # anything logged at all shows here
    with Cluster(root / "data", extra_args=["-c", str(config)]) as c:
        yield c


def test_join_guesses_end_in_429_while_a_correct_token_from_elsewhere_joins(cluster: Cluster) -> None:
    token = _ok(cluster, "tokens", "add", "--type=db", "--format=text").strip()
    key = _public_key()

    def join(client: httpx.Client, value: str) -> httpx.Response:
        return client.post("/v1/join", json={"token": value, "role": "Db", "hostname": "g",
                                             "public_key": key})

    with _client(cluster, GUESSER) as guesser, _client(cluster, "127.0.0.1") as agent:
        answers = _guess(lambda value: join(guesser, value))
        _assert_throttled(answers, 403)
        assert join(guesser, token).status_code == 429  # not even the right token, from that address
        joined = join(agent, token)
        assert joined.status_code == 200, joined.text
        assert "BEGIN CERTIFICATE" in joined.json()["cert"]


def test_bot_join_guesses_end_in_429(cluster: Cluster) -> None:
    key = _public_key()
    with _client(cluster, GUESSER) as guesser:
        answers = _guess(lambda value: guesser.post("/v1/bots/join", json={"token": value, "public_key": key}))
    _assert_throttled(answers, 403)


def test_invite_guesses_end_in_429_on_the_api_and_the_web_page(cluster: Cluster) -> None:
    invite = json.loads(_ok(cluster, "users", "add", "ivy", "--roles=access", "--format=json"))
    with _client(cluster, GUESSER) as guesser, _client(cluster, "127.0.0.1") as user:
        answers = _guess(lambda value: guesser.get(f"/v1/invites/{value}"))
        _assert_throttled(answers, 404)
        page = guesser.get(f"/web/invite/{invite['metadata']['name']}")
        assert page.status_code == 429 and int(page.headers["Retry-After"]) > 0
        assert "too many failed attempts from this address" in page.text and "text/html" in page.headers["Content-Type"]
        assert guesser.post(f"/web/reset/{secrets.token_hex(16)}", data={"password": "x", "confirm": "x"}).status_code == 429
        assert user.get(f"/v1/invites/{invite['metadata']['name']}").json()["user"] == "ivy"


def test_web_page_guesses_end_in_429_pages(tmp_path: Path) -> None:
    with Cluster(tmp_path / "data") as fresh, _client(fresh, GUESSER) as guesser:
        answers = _guess(lambda value: guesser.get(f"/web/invite/{value}"), 30)
        _assert_throttled(answers, 404, json_body=False)


def test_ptsh_sees_the_sentence_and_exit_code_4(cluster: Cluster, tmp_path: Path) -> None:
    key = _public_key()
    with _client(cluster, "127.0.0.1") as local:
        for _ in range(10):
            assert local.post("/v1/bots/join", json={"token": secrets.token_hex(16), "public_key": key}).status_code == 403
    result = run([PTSH, "login", "--bot", f"--token={secrets.token_hex(16)}", f"--proxy={cluster.addr}",
                  f"--out={tmp_path / 'bot.identity'}", "--insecure"], base_env(PTSH_HOME=tmp_path / "home"))
    assert result.returncode == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: too many failed attempts from this address; try again in")


def test_the_audit_log_holds_a_few_counted_events_not_one_per_guess(cluster: Cluster) -> None:
    """Runs after the guessing tests: a restart flushes what was held back (a burst is not lost)."""
    cluster.restart()
    joins = [e for e in _events(cluster, "TJ002E") if e["addr.remote"].startswith(GUESSER + ":")]
    assert 1 <= len(joins) <= 3, joins
    assert sum(e["attempts"] for e in joins) == GUESSES + 1  # the guesses and the right token sent too late
    assert sum(e["throttled"] for e in joins) == GUESSES + 1 - 10
    bots = [e for e in _events(cluster, "TJ001E") if e["addr.remote"].startswith(GUESSER + ":")]
    assert 1 <= len(bots) <= 3 and sum(e["attempts"] for e in bots) == GUESSES, bots
    invites = [e for e in _events(cluster, "T3007W") if e["addr.remote"].startswith(GUESSER + ":")]
    assert 1 <= len(invites) <= 3 and sum(e["attempts"] for e in invites) == GUESSES + 2, invites
    assert all(e["event"] == "auth" and e["success"] is False for e in invites)


def _burst(cluster: Cluster, payloads: list[bytes]) -> None:
    """Open one TLS connection per payload first, then send them all: one burst of bad requests."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    conns = [ctx.wrap_socket(socket.create_connection(("127.0.0.1", cluster.port), timeout=10),
                             server_hostname="localhost") for _ in payloads]
    try:
        for conn, data in zip(conns, payloads, strict=True):
            try:
                conn.sendall(data)
            except OSError:
                pass  # the server may close while we still send
        for conn in conns:
            try:
                conn.recv(200)
            except OSError:
                pass
    finally:
        for conn in conns:
            conn.close()


def test_oversized_and_malformed_requests_log_one_line_each_rate_limited(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "data").start()
    try:
        big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
        junk = b"GET /web/invite/" + b"f" * 32 + b" HTTP/1.1 junk\r\n\r\n"
        _burst(cluster, [big, junk] * 100)
    finally:
        cluster.stop()  # the shutdown writes the last "suppressed" summary
    log = cluster.log()
    assert "Traceback" not in log and "Error handling request" not in log
    pattern = r"^(\S+ \d\d:\d\d:\d\d),\d+ WARNING \[aiohttp\.server(?:, auth worker)?\] refused a malformed HTTP request from 127\.0\.0\.1: (.*)$"
    lines = re.findall(pattern, log, re.M)
    suppressed = [int(n) for n in re.findall(r"suppressed (\d+) similar lines about malformed HTTP requests", log)]
    assert len(lines) + sum(suppressed) == 200, (len(lines), suppressed)  # each one accounted for
    per_second = Counter(second for second, _what in lines)
    assert max(per_second.values()) <= 10, per_second  # 5 a second (a clock second may straddle two)
    assert sum(suppressed) > 0
    assert {what for _second, what in lines} <= {
        "a request line or header is too long (LineTooLong, answered HTTP 400)",
        "a malformed request line (BadStatusLine, answered HTTP 400)",
    }
    assert "f" * 32 not in log


def test_invite_link_refusals_log_no_token(cluster: Cluster) -> None:
    """At DEBUG level, neither a 404 nor a bad body on an invite link logs the token in it."""
    guess = secrets.token_hex(16)
    used = json.loads(_ok(cluster, "users", "add", "lou", "--roles=access", "--format=json"))["metadata"]["name"]
    _ok(cluster, "users", "rm", "lou")  # the link is gone with the user
    with _client(cluster, "127.0.0.1") as client:
        for value in (guess, used):
            assert client.get(f"/v1/invites/{value}").status_code in (404, 429)
            assert client.get(f"/web/invite/{value}").status_code in (404, 429)
            assert client.get(f"/web/reset/{value}").status_code in (404, 429)
            bad = client.post(f"/v1/invites/{value}", content=b"{not json", headers={"Content-Type": "application/json"})
            assert bad.status_code == 400
    log = cluster.log()
    assert "GET /v1/invites/{token}: this invite or reset link is invalid" in log  # logged, by its route
    assert guess not in log and used not in log
