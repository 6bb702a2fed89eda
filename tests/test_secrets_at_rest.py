"""Join, bot, invite and reset tokens are kept only as their SHA-256, in every backend.

A real cluster (SQLite, then PostgreSQL) makes each kind of token through the real API and
uses some of them; then the raw storage is read (every byte of the data dir's files, every
row of every PostgreSQL table), with the audit log and the daemon's log, and none of the
token values, nor a link holding one, nor their hex or base64 encodings, may appear.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path

import httpx
import pytest

from tests.harness import PCTL, Cluster, find_url, invite_token, run, signup

pytestmark = pytest.mark.slow


def _ok(cluster: Cluster, *args: str, input: str | None = None) -> str:
    result = run([PCTL, *args], cluster.env(), input=input)
    assert result.returncode == 0, f"pctl {args}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _public_key() -> str:
    from common.tls import generate_private_key, public_key_pem

    return public_key_pem(generate_private_key()).decode()


def _make_every_kind_of_token(cluster: Cluster, static: str) -> dict[str, str]:
    """Secret name -> value, for every token the cluster made or was given, used or pending."""
    found: dict[str, str] = {"static token": static}
    http = httpx.Client(base_url=cluster.url, verify=False, timeout=20)
    try:
        added = json.loads(_ok(cluster, "tokens", "add", "--type=db", "--format=json"))
        found["join token (used)"] = added["token"]
        assert added["id"] == hashlib.sha256(added["token"].encode()).hexdigest()[:16]
        found["join token (pending)"] = _ok(cluster, "tokens", "add", "--type=db", "--ttl=2h", "--format=text").strip()
        found["join token (--value)"] = "chosen-by-the-admin-" + secrets.token_hex(4)
        _ok(cluster, "tokens", "add", "--type=db", f"--value={found['join token (--value)']}")
        found["join token (pctl create)"] = "created-from-yaml-" + secrets.token_hex(4)
        _ok(cluster, "create", input=f"kind: token\nversion: v2\nmetadata:\n  name: {found['join token (pctl create)']}\n"
                                     "spec:\n  roles: [Db]\n")
        for name in ("join token (used)", "static token"):
            joined = http.post("/v1/join", json={"token": found[name], "role": "Db",
                                                 "hostname": "db-host", "public_key": _public_key()})
            assert joined.status_code == 200, joined.text

        _ok(cluster, "create", input="kind: role\nversion: v7\nmetadata: {name: bot-role}\n"
                                     "spec: {allow: {db_labels: {env: dev}, db_users: [ro]}}\n")
        used = json.loads(_ok(cluster, "bots", "add", "ci-used", "--roles=bot-role", "--format=json"))["token"]
        found["bot token (used)"] = used
        done = http.post("/v1/bots/join", json={"token": used, "public_key": _public_key()})
        assert done.status_code == 200, done.text
        found["bot token (pending)"] = json.loads(
            _ok(cluster, "bots", "add", "ci-pending", "--roles=bot-role", "--format=json")
        )["token"]

        opened = json.loads(_ok(cluster, "users", "add", "amy", "--roles=access", "--format=json"))
        found["invite link (opened)"] = opened["spec"]["url"]
        found["invite token (opened)"] = opened["metadata"]["name"]
        assert http.get(f"/v1/invites/{opened['metadata']['name']}").status_code == 200  # stores the TOTP secret
        assert http.get(f"/web/invite/{opened['metadata']['name']}").status_code == 200
        completed = find_url(_ok(cluster, "users", "add", "cora", "--roles=access"))
        found["invite link (completed)"] = completed
        found["invite token (completed)"] = invite_token(completed)
        signup(cluster, completed, "a long enough password")
        reset = json.loads(_ok(cluster, "users", "reset", "cora", "--format=json"))
        found["reset link (pending)"] = reset["spec"]["url"]
        found["reset token (pending)"] = reset["metadata"]["name"]
        replaced = json.loads(_ok(cluster, "users", "add", "dan", "--roles=access", "--format=json"))
        found["invite token (replaced by a reset)"] = replaced["metadata"]["name"]
        _ok(cluster, "users", "reset", "dan")
    finally:
        http.close()
    # What the admin sees afterwards: ids, never values.
    listing = _ok(cluster, "tokens", "ls", "--format=json") + _ok(cluster, "get", "tokens")
    listing += _ok(cluster, "users", "ls", "--format=json") + _ok(cluster, "bots", "ls", "--format=json")
    for name, value in found.items():
        assert value not in listing, f"{name} is shown by a listing"
    static_id = hashlib.sha256(static.encode()).hexdigest()[:16]
    assert static_id in _ok(cluster, "tokens", "ls", "--format=text").split()
    return found


def _encodings(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw)]


def _assert_nowhere(found: dict[str, str], places: dict[str, bytes]) -> None:
    for where, data in places.items():
        for name, value in found.items():
            for encoded in _encodings(value):
                assert encoded not in data, f"the {name} is in {where}"


def _config(tmp_path: Path, static: str, storage: str = "") -> Path:
    path = tmp_path / "pteleport.yaml"
    path.write_text(f"{storage}auth_service:\n  tokens: [\"db:{static}\"]\n")
    return path


def _files(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_sqlite_backend_keeps_no_token_value(tmp_path: Path) -> None:
    static = secrets.token_hex(16)
    cluster = Cluster(tmp_path / "data", extra_args=["-c", str(_config(tmp_path, static))]).start()
    try:
        found = _make_every_kind_of_token(cluster, static)
        audit = _ok(cluster, "audit", "events", "--format=json", "--limit=5000")
        assert '"instance.join"' in audit and '"bot.join"' in audit  # the log is really there
    finally:
        cluster.stop()
    stored = _files(cluster.data_dir)
    assert b"SQLite format 3" in stored  # the backend and the audit log files
    _assert_nowhere(found, {"the data dir (SQLite backend and audit log)": stored, "the audit log": audit.encode(),
                            "the daemon's log": cluster.log().encode()})


def _all_rows(pg, dbname: str) -> bytes:
    import psycopg

    out = []
    with psycopg.connect(pg.superuser_dsn(dbname), autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").fetchall()]
        assert "items" in tables, tables
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"').fetchall():
                for cell in row:
                    out.append(bytes(cell) if isinstance(cell, bytes | memoryview) else str(cell).encode())
    return b"\n".join(out)


def test_postgres_backend_keeps_no_token_value(pg, tmp_path: Path) -> None:
    pg.execute("DROP DATABASE IF EXISTS pteleport_secrets")
    pg.execute("CREATE DATABASE pteleport_secrets")
    static = secrets.token_hex(16)
    storage = ("teleport:\n  storage:\n    type: postgresql\n"
               f"    conn_string: {json.dumps(pg.superuser_dsn('pteleport_secrets'))}\n")
    cluster = Cluster(tmp_path / "data", extra_args=["-c", str(_config(tmp_path, static, storage))]).start()
    try:
        found = _make_every_kind_of_token(cluster, static)
        audit = _ok(cluster, "audit", "events", "--format=json", "--limit=5000")
        assert '"instance.join"' in audit
    finally:
        cluster.stop()
    rows = _all_rows(pg, "pteleport_secrets")
    assert b"user_tokens/" in rows and b"bot_tokens/" in rows and b"tokens/" in rows
    _assert_nowhere(found, {"the PostgreSQL tables": rows, "the data dir": _files(cluster.data_dir),
                            "the audit log": audit.encode(), "the daemon's log": cluster.log().encode()})
