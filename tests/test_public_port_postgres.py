"""PostgreSQL's own protocol on the proxy's one public port (issue 14, option two).

psql connects straight to the port every other client uses, with the certificate from
``pctl auth sign --format=db``: an SSLRequest, then TLS with the client certificate, no
local tunnel and no second listener. Ctrl+C in psql sends a CancelRequest in plain text on
a new connection, without a certificate; the proxy hands its (pid, secret) to the agents and
the one holding that backend cancels the query. A wrong secret cancels nothing.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dbenv import DbEnv, make_env

pytestmark = pytest.mark.slow

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
CANCEL_CODE = 80877102


@dataclass
class Signed:
    env: DbEnv
    prefix: Path

    def dsn(self, **extra: str) -> str:
        host, port = self.env.cluster.addr.rsplit(":", 1)
        params = {
            "host": host,
            "port": port,
            "user": "alice",
            "dbname": "postgres",
            "sslmode": "verify-full",
            "sslcert": f"{self.prefix}.crt",
            "sslkey": f"{self.prefix}.key",
            "sslrootcert": f"{self.prefix}.cas",
            "gssencmode": "disable",
            **extra,
        }
        return " ".join(f"{k}={v}" for k, v in params.items())


@pytest.fixture(scope="module")
def signed(pg, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    pg.create_role("alice", "cert")
    root = tmp_path_factory.mktemp("publicpg")
    env = make_env(root, pg)
    try:
        env.start_agent("aurora")
        env.add_user("alice", "db")
        prefix = root / "alice"
        out = env.pctl("auth", "sign", "--user=alice", "--format=db", "--db-service=aurora", "--db-user=alice",
                       "--db-name=postgres", "--ttl=1h", f"--out={prefix}")
        assert out.returncode == 0, out.stderr
        yield Signed(env, prefix)
    finally:
        env.stop()


def psql(dsn: str, sql: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["psql", dsn, "-At", "-c", sql], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_psql_reaches_the_public_port_with_a_database_certificate(signed: Signed) -> None:
    result = psql(signed.dsn(), "select current_user || '@' || current_database()")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "alice@postgres"
    # The same port still serves TLS clients routed by ALPN: pctl's API calls, in turns with psql.
    for _ in range(2):
        assert signed.env.pctl_json("status")["cluster_name"]
        assert psql(signed.dsn(), "select 1").stdout.strip() == "1"


def test_ptsh_db_config_gives_psql_the_path_without_a_tunnel(signed: Signed) -> None:
    env = signed.env
    env.login("alice")
    assert env.ptsh("alice", "db", "login", "--db-user=alice", "--db-name=postgres", "aurora").returncode == 0
    shown = env.ptsh("alice", "db", "config", "aurora", "--format=json")
    assert shown.returncode == 0, shown.stderr
    direct = json.loads(shown.stdout)["direct"]
    assert direct["port"] == int(env.cluster.addr.rsplit(":", 1)[1])  # the proxy's public port
    result = psql(direct["dsn"], "select 'direct ' || current_user")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "direct alice"
    text = env.ptsh("alice", "db", "config", "aurora").stdout
    assert f'Direct:   psql "{direct["dsn"]}"' in text
    assert env.ptsh("alice", "db", "logout", "aurora").returncode == 0
    after = json.loads(env.ptsh("alice", "db", "config", "aurora", "--db-user=alice", "--db-name=postgres",
                                "--format=json").stdout)
    assert after["direct"] is None  # no database certificate on disk: the tunnel is the way


def test_the_session_is_audited_like_any_other(signed: Signed) -> None:
    result = psql(signed.dsn(application_name="public-port-audit"), "select 'audited on the public port'")
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        queries = [e for e in signed.env.events(type="db.session.query")
                   if e.get("db_query") == "select 'audited on the public port'"]
        if queries:
            break
        time.sleep(0.3)
    assert queries and queries[0]["user"] == "alice"
    starts = [e for e in signed.env.events(type="db.session.start") if e.get("user_agent") == "public-port-audit"]
    assert starts and starts[0]["success"] is True


def test_without_a_client_certificate_psql_is_told_to_log_in(signed: Signed) -> None:
    host, port = signed.env.cluster.addr.rsplit(":", 1)
    result = psql(f"host={host} port={port} user=alice dbname=postgres sslmode=require gssencmode=disable", "select 1")
    assert result.returncode == 2
    assert "log in again" in result.stderr, result.stderr


def test_a_client_that_refuses_tls_is_told_to_use_it(signed: Signed) -> None:
    host, port = signed.env.cluster.addr.rsplit(":", 1)
    result = psql(f"host={host} port={port} user=alice dbname=postgres sslmode=disable gssencmode=disable", "select 1")
    assert result.returncode == 2
    assert "connect with TLS and a client certificate" in result.stderr, result.stderr


def test_plain_http_on_the_public_port_is_told_to_use_https(signed: Signed) -> None:
    host, port = signed.env.cluster.addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"https://" in answer


def test_ctrl_c_in_psql_cancels_the_query(signed: Signed) -> None:
    proc = subprocess.Popen(["psql", signed.dsn(application_name="cancel-me"), "-At", "-c", "select pg_sleep(60)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        _wait_running(signed, "cancel-me")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "canceling statement due to user request" in err, err
    assert proc.returncode == 1


def test_a_cancel_needs_the_right_secret(signed: Signed) -> None:
    with _RawSession(signed) as session:
        session.query("select pg_sleep(60)")
        _wait_running(signed, "raw-cancel")
        wrong = bytes(b ^ 0xFF for b in session.secret)
        _send_cancel(signed, session.pid, wrong)
        assert session.answer_within(2.0) is None  # still running
        _send_cancel(signed, session.pid, session.secret)
        answer = session.answer_within(15.0)
    assert answer is not None and b"57014" in answer  # query_canceled


def test_the_backend_pid_is_the_servers(signed: Signed) -> None:
    with _RawSession(signed) as session:
        session.query("select pg_backend_pid()")
        answer = session.answer_within(10.0)
    assert answer is not None and str(session.pid).encode() in answer


# --- helpers -------------------------------------------------------------------------------
def _wait_running(signed: Signed, application_name: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        active = signed.env.pg.execute(
            f"select count(*) from pg_stat_activity where application_name = '{application_name}' "
            "and state = 'active' and query like '%pg_sleep%'"
        )
        if active[0][0] == 1:
            return
        time.sleep(0.2)
    raise AssertionError(f"the query of {application_name} never started")


def _send_cancel(signed: Signed, pid: int, secret: bytes) -> None:
    host, port = signed.env.cluster.addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(struct.pack("!iii", 16, CANCEL_CODE, pid) + secret)
        assert _read_all(sock) == b""  # the proxy closes it, as PostgreSQL does


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


class _RawSession:
    """A PostgreSQL session opened by hand (SSLRequest, TLS, StartupMessage) to see BackendKeyData."""

    def __init__(self, signed: Signed) -> None:
        self.signed = signed
        self.pid = 0
        self.secret = b""

    def __enter__(self) -> _RawSession:
        host, port = self.signed.env.cluster.addr.rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=10)
        raw.sendall(SSL_REQUEST)
        assert raw.recv(1) == b"S"
        ctx = ssl.create_default_context(cafile=f"{self.signed.prefix}.cas")
        ctx.check_hostname = False
        ctx.load_cert_chain(f"{self.signed.prefix}.crt", f"{self.signed.prefix}.key")
        self.sock = ctx.wrap_socket(raw)
        params = b"user\0alice\0database\0postgres\0application_name\0raw-cancel\0\0"
        self.sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        while True:
            kind, body = self._message()
            if kind == b"K":
                self.pid, self.secret = struct.unpack("!i", body[:4])[0], body[4:8]
            elif kind == b"E":
                raise AssertionError(body)
            elif kind == b"Z":
                return self

    def _message(self) -> tuple[bytes, bytes]:
        head = self._exactly(5)
        return head[:1], self._exactly(struct.unpack("!i", head[1:])[0] - 4)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def query(self, sql: str) -> None:
        body = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!i", 4 + len(body)) + body)

    def answer_within(self, seconds: float) -> bytes | None:
        """Everything up to ReadyForQuery, or None if nothing came within ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            first = self._message()
        except TimeoutError:
            return None
        self.sock.settimeout(10)
        out = first[0] + first[1]
        kind = first[0]
        while kind != b"Z":
            kind, body = self._message()
            out += kind + body
        return out

    def __exit__(self, *exc: object) -> None:
        try:
            self.sock.sendall(b"X\0\0\0\4")
        except OSError:
            pass
        self.sock.close()



def test_past_the_limit_plain_cancels_from_one_address_are_dropped(signed: Signed) -> None:
    """Last in this module: 127.0.0.1 has no plain cancels left for a minute afterwards."""
    with _RawSession(signed) as session:
        session.query("select pg_sleep(60)")
        _wait_running(signed, "raw-cancel")
        wrong = bytes(b ^ 0xFF for b in session.secret)
        for _ in range(120):
            _send_cancel(signed, session.pid, wrong)
        _send_cancel(signed, session.pid, session.secret)  # the right key, but over the limit
        assert session.answer_within(2.0) is None  # still running
    assert "cancel requests within a minute; ignoring more from it" in signed.env.cluster.log()
    signed.env.pg.execute("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'raw-cancel'")
