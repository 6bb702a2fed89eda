"""The audit log end to end: capture in the agent, ptsh play / recordings, pctl audit, who may read."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dbenv import DbEnv, make_env
from tests.harness import PCTL, Cluster, base_env, run

pytestmark = pytest.mark.slow
GOLDEN = Path(__file__).parent / "golden"
SESSION_FIELDS = {
    "event",
    "code",
    "uid",
    "time",
    "sid",
    "ei",
    "cluster_name",
    "user",
    "db_service",
    "db_protocol",
    "db_uri",
    "db_user",
    "db_name",
    "success",
    "addr.remote",
    "server_id",
}


@pytest.fixture(scope="module")
def env(pg, tmp_path_factory) -> Iterator[DbEnv]:
    pg.create_role("alice", "cert")
    pg.create_role("bencher", "cert", superuser=True)
    e = make_env(tmp_path_factory.mktemp("audit"), pg)
    e.start_agent("aurora")
    e.add_user("alice", "access,db")
    e.add_user("ann", "auditor")
    e.add_user("dave", "db")
    for user in ("alice", "ann", "dave"):
        e.login(user)
    try:
        yield e
    finally:
        e.stop()


def session_of(env: DbEnv, marker: str, timeout: float = 10, since: str | None = None) -> list[dict]:
    """The events of the finished session that ran ``marker``; ``since`` (RFC 3339): look only
    from then on (the listing is oldest first and capped, and a module's earlier tests may
    have logged more than the cap)."""
    window = {"from": since} if since else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = [e for e in env.events(type="db.session.query", **window) if marker in e.get("db_query", "")]
        if hits:
            events = env.events(sid=hits[0]["sid"])
            if events[-1]["event"] == "db.session.end":
                return events
        time.sleep(0.2)
    raise AssertionError(f"no finished session with {marker!r} in the audit log")


def psql(env: DbEnv, user: str, db_user: str, *sql: str) -> subprocess.CompletedProcess[str]:
    args = [a for q in sql for a in ("-c", q)]
    return env.ptsh(user, "db", "connect", f"--db-user={db_user}", "--db-name=postgres", "aurora", "--", "-At", *args)


@pytest.fixture(scope="module")
def alice_session(env: DbEnv) -> list[dict]:
    result = psql(env, "alice", "alice", "select 'play-marker' as m", "select 2 + 2")
    assert result.returncode == 0, result.stderr
    return session_of(env, "play-marker")


def test_session_events_carry_teleports_fields(alice_session: list[dict]) -> None:
    kinds = [(e["event"], e["code"]) for e in alice_session]
    assert kinds == [
        ("db.session.start", "TDB00I"),
        ("db.session.query", "TDB02I"),
        ("db.session.query", "TDB02I"),
        ("db.session.end", "TDB01I"),
    ]
    start = alice_session[0]
    assert SESSION_FIELDS <= set(start), SESSION_FIELDS - set(start)
    assert [e["ei"] for e in alice_session] == [0, 1, 2, 3]
    assert len({e["sid"] for e in alice_session}) == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", start["time"])
    assert alice_session[1]["db_query"] == "select 'play-marker' as m"


def test_play_json_and_text(env: DbEnv, alice_session: list[dict]) -> None:
    sid = alice_session[0]["sid"]
    as_json = env.ptsh("alice", "play", "--format=json", sid)
    assert as_json.returncode == 0, as_json.stderr
    assert [e["uid"] for e in json.loads(as_json.stdout)] == [e["uid"] for e in alice_session]
    text = env.ptsh("alice", "play", sid)
    assert text.returncode == 0, text.stderr
    normalized = re.sub(r"at \w{3} \w{3} \d\d \d\d:\d\d:\d\d UTC \d{4}", "at <TIME>", text.stdout)
    assert normalized == (GOLDEN / "play_session.txt").read_text()


def test_recordings_ls_lists_the_session(env: DbEnv, alice_session: list[dict]) -> None:
    sid = alice_session[0]["sid"]
    listing = env.ptsh("alice", "recordings", "ls")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0].split() == ["ID", "Type", "Participants", "Target", "Timestamp"]
    row = next(line for line in listing.stdout.splitlines() if line.startswith(sid))
    assert row.split()[1:4] == ["postgres", "alice", "aurora"]
    assert any(e["sid"] == sid for e in json.loads(env.ptsh("alice", "recordings", "ls", "--format=json").stdout))
    assert env.ptsh("alice", "recordings", "ls", "--last", "bogus").returncode == 2


def test_who_may_read(env: DbEnv, alice_session: list[dict]) -> None:
    sid = alice_session[0]["sid"]
    assert env.ptsh("ann", "play", "--format=json", sid).returncode == 0  # auditor: everything
    refused = env.ptsh("dave", "play", sid)  # no rules at all
    assert refused.returncode == 4 and "auditor" in refused.stderr
    # dave may still use the database, but alice (access) may not read his session.
    assert psql(env, "dave", "dave-not-a-role", "select 1").returncode != 0
    daves = [e for e in env.events(type="db.session.start") if e["user"] == "dave"]
    assert daves
    hidden = env.ptsh("alice", "play", daves[0]["sid"])
    assert hidden.returncode == 1 and "no session" in hidden.stderr
    unknown = env.ptsh("ann", "play", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().startswith('ERROR: no session "00000000-0000-0000-0000-000000000000" found')


def test_pctl_audit_events_filters_and_formats(env: DbEnv, alice_session: list[dict]) -> None:
    sid = alice_session[0]["sid"]
    by_sid = env.pctl_json("audit", "events", "--sid", sid)
    assert [e["ei"] for e in by_sid] == [0, 1, 2, 3]
    lines = env.pctl("audit", "events", "--sid", sid, "--format=jsonl").stdout.splitlines()
    assert [json.loads(line)["uid"] for line in lines] == [e["uid"] for e in by_sid]
    logins = env.pctl_json("audit", "events", "--type", "user.login", "--user", "alice")
    assert logins and all(e["code"] == "T1000I" and e["user"] == "alice" for e in logins)
    text = env.pctl("audit", "events", "--sid", sid)
    assert "db.session.query" in text.stdout and "play-marker" in text.stdout
    assert env.pctl("audit", "events", "--from", "yesterday").returncode == 2


def test_follow_streams_new_events(env: DbEnv) -> None:
    follower = subprocess.Popen(
        [PCTL, "audit", "events", "--follow", "--format=jsonl", "--type=db.session.query"],
        env=env.cluster.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)
        assert psql(env, "alice", "alice", "select 'follow-marker'").returncode == 0
        deadline = time.monotonic() + 15
        seen = ""
        while time.monotonic() < deadline and "follow-marker" not in seen:
            seen += follower.stdout.readline() if follower.stdout else ""
        assert "follow-marker" in seen
    finally:
        follower.terminate()
        follower.wait(10)


def test_huge_and_hostile_queries_are_kept_safely(env: DbEnv) -> None:
    big = "select 'huge_marker', '" + "x" * 100_000 + "'"
    assert psql(env, "alice", "alice", big).returncode == 0
    events = session_of(env, "huge_marker")
    query = events[1]["db_query"]
    assert len(query.encode()) <= 64 * 1024 and "truncated" in query
    hostile = "select 'bell\x07esc\x1b[31mred' as hostile_marker"
    assert psql(env, "alice", "alice", hostile).returncode == 0
    session = session_of(env, "hostile_marker")
    assert session[1]["db_query"] == hostile  # stored as it was
    shown = env.ptsh("ann", "play", session[0]["sid"]).stdout
    assert "\x1b" not in shown and "\x07" not in shown and "hostile_marker" in shown


def test_query_events_match_what_pgbench_executed(env: DbEnv) -> None:
    from tests.test_db_e2e import open_tunnel

    with open_tunnel(env, "alice", db_user="bencher") as port:
        url = f"postgresql://bencher@127.0.0.1:{port}/postgres?sslmode=disable"
        init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", url], capture_output=True, text=True)
        assert init.returncode == 0, init.stderr
        bench = subprocess.run(
            ["pgbench", "-S", "-M", "simple", "-c", "4", "-j", "2", "-T", "3", "-n", url],
            capture_output=True,
            text=True,
        )
        assert bench.returncode == 0, bench.stderr
    done = int(re.search(r"number of transactions actually processed: (\d+)", bench.stdout).group(1))
    assert done > 100
    sessions = {e["sid"] for e in env.events(type="db.session.start", user="alice") if e.get("db_user") == "bencher"}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # Counted per session (dbenv.events reads at most 10,000 events per call).
        selects = [e for sid in sessions for e in env.events(sid=sid)
                   if e["event"] == "db.session.query" and e["db_query"].startswith("SELECT abalance")]
        if len(selects) >= done:
            break
        time.sleep(0.5)
    assert len(selects) == done


def test_retention_prunes_old_events(tmp_path: Path) -> None:
    config = tmp_path / "pteleport.yaml"
    config.write_text(f"teleport:\n  data_dir: {tmp_path / 'data'}\nauth_service:\n  audit:\n    retention: 2s\n")
    cluster = Cluster(tmp_path / "data", extra_args=["-c", str(config)]).start()
    try:
        env = cluster.env()
        assert run([PCTL, "tokens", "add", "--type=db", "--format=text"], env).returncode == 0
        created = json.loads(run([PCTL, "audit", "events", "--type=join_token.create", "--format=json"], env).stdout)
        assert len(created) == 1
        time.sleep(2.5)
        cluster.restart()
        after = json.loads(run([PCTL, "audit", "events", "--type=join_token.create", "--format=json"], env).stdout)
        assert after == []
    finally:
        cluster.stop(check=False)
    assert base_env()  # the harness stays importable without a cluster


def test_a_poison_event_in_an_agent_spool_is_set_aside_and_later_events_flow(env: DbEnv) -> None:
    """An agent starts with a spool holding an event auth refuses (a bad time) between two
    good ones: the good ones and later sessions are delivered; the bad one is set aside
    beside the spool, logged once, and counted by an audit event."""
    from datetime import UTC, datetime

    from pteleport.audit.events import format_time

    data_dir = env.root / f"agent-{len(env.agents)}"
    data_dir.mkdir(mode=0o700)
    now = format_time(datetime.now(UTC))
    seeded = [
        {"event": "db.session.query", "code": "TDB02I", "uid": "spool-ok-1", "time": now, "sid": "spooled"},
        {"event": "db.session.query", "code": "TDB02I", "uid": "spool-poison", "time": "yesterday", "sid": "spooled"},
        {"event": "db.session.query", "code": "TDB02I", "uid": "spool-ok-2", "time": now, "sid": "spooled"},
    ]
    spool = data_dir / "audit-spool.jsonl"
    spool.write_text("".join(json.dumps(e) + "\n" for e in seeded))
    spool.chmod(0o600)
    agent = env.start_agent("poisoned")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if [e["uid"] for e in env.events(sid="spooled")] == ["spool-ok-1", "spool-ok-2"]:
                break
            time.sleep(0.2)
        assert [e["uid"] for e in env.events(sid="spooled")] == ["spool-ok-1", "spool-ok-2"], agent.log()
        dead = (data_dir / "audit-dead-letter.jsonl").read_text().splitlines()
        assert [json.loads(line)["uid"] for line in dead] == ["spool-poison"]
        notes = env.events(type="audit.events.set_aside")
        assert [(n["code"], n["count"], n["uids"]) for n in notes] == [("TPA00W", 1, ["spool-poison"])]
        started = format_time(datetime.now(UTC))
        result = env.ptsh(
            "alice", "db", "connect", "--db-user=alice", "--db-name=postgres", "poisoned", "--", "-At",
            "-c", "select 'after-poison-marker'",
        )
        assert result.returncode == 0, result.stderr
        assert session_of(env, "after-poison-marker", since=started)[0]["db_service"] == "poisoned"
        errors = [line for line in agent.log().splitlines() if " ERROR " in line]
        assert len(errors) == 1 and "refused 1 events as malformed" in errors[0], agent.log()
    finally:
        agent.stop()
