"""Sessions across proxies: two auth+proxy processes on one PostgreSQL, haproxy in front, two agents.

- a CancelRequest sent through the other proxy still cancels the query;
- a lock made through proxy A ends a session carried by proxy B and refuses new ones there;
- the audit events of sessions through both proxies are in the one PostgreSQL audit table,
  and either proxy shows all of them;
- SIGKILL of one proxy, while a loop of ``ptsh db connect`` runs through the load balancer,
  fails at most the run in flight; the next runs go through the other proxy, and the audit
  log has every run that worked, exactly once.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.haenv import HaEnv, make_ha_env
from tests.harness import PCTL, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ha(pg, tmp_path_factory) -> Iterator[HaEnv]:
    root: Path = tmp_path_factory.mktemp("ha-sessions")
    pg.create_role("alice", "cert")
    env = make_ha_env(root, pg, "pteleport_ha_sessions")
    try:
        env.add_user("mia", "access,db")
        env.login("mia")
        env.start_agent("aurora")
        env.start_agent("aurora")
        env.wait_for_servers("aurora", count=2)
        env.wait_mesh()
        yield env
    finally:
        env.stop()


# --- a tiny Postgres client, to hold a session's key and send the cancel elsewhere -------------
def _message(sock: socket.socket) -> tuple[bytes, bytes]:
    head = _exactly(sock, 5)
    length = struct.unpack("!i", head[1:])[0]
    return head[:1], _exactly(sock, length - 4)


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def open_session(port: int) -> tuple[socket.socket, bytes]:
    """A session through the local tunnel on ``port``; returns it and its BackendKeyData body."""
    sock = socket.create_connection(("127.0.0.1", port), 10)
    sock.settimeout(30)
    params = b"user\0alice\0database\0postgres\0\0"
    sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
    key = b""
    while True:
        kind, body = _message(sock)
        if kind == b"K":
            key = body
        elif kind == b"E":
            raise AssertionError(f"the session was refused: {body!r}")
        elif kind == b"Z":
            return sock, key


def query(sock: socket.socket, sql: str) -> list[tuple[bytes, bytes]]:
    payload = sql.encode() + b"\0"
    sock.sendall(b"Q" + struct.pack("!i", 4 + len(payload)) + payload)
    seen = []
    while True:
        kind, body = _message(sock)
        seen.append((kind, body))
        if kind == b"Z":
            return seen


def sqlstate(body: bytes) -> str:
    for field in body.split(b"\0"):
        if field[:1] == b"C":
            return field[1:].decode()
    return ""


def send_cancel(port: int, key: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.sendall(struct.pack("!ii", 8 + len(key), 80877102) + key)
        sock.settimeout(15)
        try:
            sock.recv(1)  # the tunnel closes the connection once the cancel went through
        except OSError:
            pass


def test_a_cancel_request_through_the_other_proxy_cancels_the_query(ha: HaEnv) -> None:
    with ha.tunnel_via("mia", 0) as via_a, ha.tunnel_via("mia", 1) as via_b:
        sock, key = open_session(via_a)
        try:
            assert len(key) >= 8
            result: list[list[tuple[bytes, bytes]]] = []
            worker = threading.Thread(target=lambda: result.append(query(sock, "select pg_sleep(60)")))
            worker.start()
            time.sleep(1.0)  # the query is running on the server
            send_cancel(via_b, key)
            worker.join(30)
            assert result, "the query was not cancelled:\n" + ha.logs()
            errors = [sqlstate(body) for kind, body in result[0] if kind == b"E"]
            assert errors == ["57014"], result[0]
            # The session itself goes on.
            assert any(kind == b"D" for kind, _ in query(sock, "select 1"))
        finally:
            sock.close()


def test_a_lock_made_through_proxy_a_ends_a_session_on_proxy_b_and_refuses_new_ones(ha: HaEnv) -> None:
    with ha.tunnel_via("mia", 1) as via_b:
        sock, _key = open_session(via_b)
        try:
            locked = run([PCTL, "lock", "--user=mia", "--message=ha incident", "--format=json"], ha.proxies[0].env())
            assert locked.returncode == 0, locked.stderr
            lock = json.loads(locked.stdout)
            try:
                ended = None
                deadline = time.monotonic() + 30
                while ended is None and time.monotonic() < deadline:
                    try:
                        answer = query(sock, "select 1")
                    except (ConnectionError, OSError):
                        ended = "closed"
                        break
                    fatal = [body for kind, body in answer if kind == b"E"]
                    if fatal:
                        ended = fatal[0].decode(errors="replace")
                    time.sleep(0.1)
                assert ended is not None, "the session on proxy B went on after the lock:\n" + ha.logs()
                refused = ha.ptsh("mia", "db", "connect", "--db-user=alice", "--db-name=postgres", "aurora",
                                  "--", "-At", "-c", "select 1")
                assert refused.returncode != 0 and "ha incident" in refused.stderr, refused.stderr
            finally:
                name = lock.get("metadata", {}).get("name") or lock.get("name")
                removed = run([PCTL, "rm", f"lock/{name}"], ha.proxies[1].env())
                assert removed.returncode == 0, removed.stderr
        finally:
            sock.close()
    # Unlocked (through proxy B this time): sessions work again through the load balancer.
    deadline = time.monotonic() + 30
    while True:
        again = ha.ptsh("mia", "db", "connect", "--db-user=alice", "--db-name=postgres", "aurora",
                        "--", "-At", "-c", "select 1")
        if again.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.returncode == 0, again.stderr


def marked_run(ha: HaEnv, marker: str):  # type: ignore[no-untyped-def]
    return ha.ptsh("mia", "db", "connect", "--db-user=alice", "--db-name=postgres", "aurora",
                   "--", "-At", "-c", f"select '{marker}'", timeout=60)


def queries_seen(ha: HaEnv, index: int) -> list[str]:
    out = run([PCTL, "audit", "events", "--type=db.session.query", "--limit=100000", "--format=json"],
              ha.proxies[index].env())
    assert out.returncode == 0, out.stderr
    return [e.get("db_query", "") for e in json.loads(out.stdout)]


def test_audit_events_of_sessions_through_both_proxies_are_visible_from_either(ha: HaEnv) -> None:
    markers = []
    for i in range(2):
        with ha.tunnel_via("mia", i) as port:
            sock, _ = open_session(port)
            marker = f"audit-via-{i}-{time.monotonic_ns()}"
            query(sock, f"select '{marker}'")
            sock.close()
            markers.append(f"select '{marker}'")
    deadline = time.monotonic() + 30
    while True:
        seen = [queries_seen(ha, 0), queries_seen(ha, 1)]
        if all(seen[i].count(m) == 1 for i in range(2) for m in markers) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for i in range(2):
        assert [seen[i].count(m) for m in markers] == [1, 1], f"proxy {i} shows {seen[i][-5:]}"


@pytest.mark.fault
def test_sigkill_of_each_proxy_in_turn_fails_only_the_run_in_flight(ha: HaEnv) -> None:
    results: list[tuple[str, int, str]] = []
    stop = threading.Event()

    def loop() -> None:
        n = 0
        while not stop.is_set():
            marker = f"kill-loop-{n}-{time.monotonic_ns()}"
            done = marked_run(ha, marker)
            results.append((marker, done.returncode, done.stdout.strip() + done.stderr.strip()))
            n += 1

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        per_kill = []
        for victim in (0, 1):
            _until_runs(results, len(results) + 5)
            before = len(results)
            ha.kill(victim)
            _until_runs(results, before + 10)
            per_kill.append([r for r in results[before:] if r[1] != 0 or r[0] not in r[2]])
            ha.restart(victim)
            ha.wait_mesh()
    finally:
        stop.set()
        worker.join(120)
    # At most the run that was in flight on the killed proxy fails, per kill.
    for failed in per_kill:
        assert len(failed) <= 1, f"{failed}\n{ha.logs()}"
    worked = [marker for marker, code, out in results if code == 0 and marker in out]
    assert len(worked) >= len(results) - 2
    # Every run that worked is in the one audit table once, seen from either proxy.
    deadline = time.monotonic() + 60
    while True:
        seen = [queries_seen(ha, 0), queries_seen(ha, 1)]
        counts = [[s.count(f"select '{m}'") for m in worked] for s in seen]
        if all(c == 1 for row in counts for c in row) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for row in counts:
        assert set(row) == {1}, f"some runs are missing or doubled in the audit log: {row}"


def _until_runs(results: list, count: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while len(results) < count:
        assert time.monotonic() < deadline, f"the loop made only {len(results)} runs"
        time.sleep(0.1)
