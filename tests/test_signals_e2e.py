"""Signals on real processes: SIGHUP reloads the config, SIGTERM drains (docs/operations.md)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from tests.dbenv import PASSWORD, Agent, DbEnv, make_env
from tests.harness import PCTL, PTELEPORT, Cluster, find_url, run, signup
from tests.test_trust_e2e import tunnel

pytestmark = pytest.mark.slow


def wait_for(check, timeout: float = 20.0, what: str = "it") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def reload_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "reload (SIGHUP)" in line]


# --- SIGHUP -------------------------------------------------------------------------------------------


def test_sighup_applies_the_lockout_reopens_the_log_and_names_what_needs_a_restart(tmp_path: Path) -> None:
    log_file = tmp_path / "pteleport.log"
    config = tmp_path / "pteleport.yaml"
    doc = {
        "teleport": {"data_dir": str(tmp_path / "data"), "log": {"output": str(log_file), "severity": "INFO"}},
        "auth_service": {"lockout": {"max_attempts": 5}},
    }
    config.write_text(yaml.safe_dump(doc))
    cluster = Cluster(tmp_path / "data", extra_args=["-c", str(config)]).start()
    try:
        added = run([PCTL, "users", "add", "lou", "--roles=access"], cluster.env())
        assert added.returncode == 0, added.stderr
        signup(cluster, find_url(added.stdout), PASSWORD)
        doc["auth_service"]["lockout"]["max_attempts"] = 2
        doc["teleport"]["log"]["severity"] = "DEBUG"
        doc["proxy_service"] = {"public_addr": "pteleport.example.com:443"}
        config.write_text(yaml.safe_dump(doc))
        log_file.rename(tmp_path / "pteleport.log.1")  # what logrotate does
        assert cluster.proc is not None
        cluster.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: log_file.exists() and reload_lines(log_file.read_text()), what="the reload line")
        [line] = reload_lines(log_file.read_text())
        assert line.endswith(
            "reload (SIGHUP): reopened the log; applied: auth_service.lockout.max_attempts, teleport.log.severity; "
            "needs a restart: proxy_service.public_addr"
        ), line
        # The auth service (its own process) took the new lock-out: two failures lock now, not five.
        with httpx.Client(base_url=cluster.url, verify=False, timeout=30) as http:
            for _ in range(2):
                refused = http.post("/v1/login", json={"user": "lou", "password": "wrong password", "otp_token": "1",
                                                       "public_key": "x"})
                assert refused.status_code in (400, 403), refused.text
        users = json.loads(run([PCTL, "users", "ls", "--format=json"], cluster.env()).stdout)
        lou = next(u for u in users if u["metadata"]["name"] == "lou")
        assert "locked" in json.dumps(lou).lower(), lou
        assert run([PCTL, "status"], cluster.env()).returncode == 0  # still on the old address
    finally:
        cluster.stop()


def test_sighup_with_a_broken_file_keeps_the_running_config(tmp_path: Path) -> None:
    config = tmp_path / "pteleport.yaml"
    config.write_text(f"teleport:\n  data_dir: {tmp_path / 'data'}\n")
    cluster = Cluster(tmp_path / "data", extra_args=["-c", str(config)]).start()
    try:
        config.write_text("teleport:\n  data_dir: [unclosed\n")
        assert cluster.proc is not None
        cluster.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reload_lines(cluster.log()), what="the reload line")
        [line] = reload_lines(cluster.log())
        assert "ERROR" in line and "reload (SIGHUP): kept the running config:" in line and "not valid YAML" in line
        assert run([PCTL, "status"], cluster.env()).returncode == 0
    finally:
        cluster.stop()


# --- with a database -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(pg, tmp_path_factory) -> Iterator[DbEnv]:
    pg.create_role("dana", "cert")
    root = tmp_path_factory.mktemp("signals")
    e = make_env(root, pg, config=f"teleport:\n  data_dir: {root / 'cluster'}\n  shutdown_timeout: 3s\n")
    e.add_user("dana", "access,db")
    e.login("dana")
    try:
        yield e
    finally:
        e.stop()


def config_agent(env: DbEnv, databases: list[str], timeout: str = "2s") -> tuple[Agent, Path, dict]:
    """``pteleport start -c FILE`` as a database service serving ``databases`` (all on the test PostgreSQL)."""
    token = env.pctl("tokens", "add", "--type=db", "--format=text").stdout.strip()
    index = len(env.agents)
    doc = {
        "version": "v3",
        "teleport": {
            "nodename": f"cfg-agent-{index}",
            "data_dir": str(env.root / f"cfg-agent-{index}"),
            "proxy_server": env.cluster.addr,
            "join_params": {"join_method": "token", "token_name": token},
            "ca_pin": [env.pctl_json("status")["ca_pin"]],
            "shutdown_timeout": timeout,
        },
        "auth_service": {"enabled": False},
        "proxy_service": {"enabled": False},
        "db_service": {"enabled": True, "databases": [_db(env, name) for name in databases]},
    }
    path = env.root / f"cfg-agent-{index}.yaml"
    path.write_text(yaml.safe_dump(doc))
    log_path = env.root / f"cfg-agent-{index}.log"
    proc = subprocess.Popen([PTELEPORT, "start", "-c", str(path)], env=env.cluster.env(),
                            stdout=log_path.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    agent = Agent(databases[0], Path(doc["teleport"]["data_dir"]), proc, log_path)
    env.agents.append(agent)
    agent.wait_connected()
    for name in databases:
        env.wait_for_servers(name)
    return agent, path, doc


def _db(env: DbEnv, name: str) -> dict:
    return {"name": name, "uri": f"localhost:{env.pg.port}", "static_labels": {"env": "dev"},
            "tls": {"ca_cert_file": env.pg.ca_cert_file}}


def test_sighup_makes_an_agent_serve_a_database_added_to_its_file(env: DbEnv) -> None:
    agent, path, doc = config_agent(env, ["first"])
    try:
        doc["db_service"]["databases"].append(_db(env, "second"))
        path.write_text(yaml.safe_dump(doc))
        agent.proc.send_signal(signal.SIGHUP)
        env.wait_for_servers("second")
        [line] = reload_lines(agent.log())
        assert line.endswith("applied: db_service.databases; needs a restart: nothing"), line
        result = env.ptsh("dana", "db", "connect", "--db-user=dana", "--db-name=postgres", "second", "--",
                          "-At", "-c", "select current_user")
        assert result.returncode == 0 and result.stdout.strip() == "dana", result.stderr
    finally:
        assert agent.stop() == 0, agent.log()


# --- SIGTERM ---------------------------------------------------------------------------------------------


def session_events(env: DbEnv, sid: str) -> list[tuple[str, str]]:
    return [(e["event"], e.get("reason", "")) for e in env.events(sid=sid)]


def sid_of(env: DbEnv, marker: str) -> str:
    found: list[str] = []

    def seen() -> bool:
        found[:] = [e["sid"] for e in env.events(type="db.session.query") if marker in e.get("db_query", "")]
        return bool(found)

    wait_for(seen, what=f"the query {marker!r} in the audit log")
    return found[0]


def test_sigterm_on_the_agent_drains_and_delivers_the_sessions_events_before_it_exits(env: DbEnv) -> None:
    agent, _path, _doc = config_agent(env, ["draining"], timeout="2s")
    dsn_db = "draining"
    with _tunnel_to(env, "dana", dsn_db) as dsn:
        idle = psycopg.connect(dsn, autocommit=True)
        idle.execute("select 'agent-drain-marker'").fetchone()
        sid = sid_of(env, "agent-drain-marker")
        agent.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining: 1 open session(s) get up to 2s to finish" in agent.log(), what="the drain")
        agent.proc.wait(30)
        assert agent.proc.returncode == 0, agent.log()
        with pytest.raises(psycopg.errors.AdminShutdown, match="the server is shutting down"):
            idle.execute("select 1")
        idle.close()
    # Delivered before the agent exited: no waiting here.
    assert session_events(env, sid) == [
        ("db.session.start", ""),
        ("db.session.query", ""),
        ("client.disconnect", "the server is shutting down"),
        ("db.session.end", ""),
    ]


@contextlib.contextmanager
def _tunnel_to(env: DbEnv, user: str, database: str) -> Iterator[str]:
    from tests.harness import PTSH, free_port

    port = free_port()
    proc = subprocess.Popen(
        [PTSH, "proxy", "db", "--tunnel", f"--port={port}", f"--db-user={user}", "--db-name=postgres", database],
        env=env.user_env(user), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        banner = proc.stdout.readline() if proc.stdout else ""
        assert f"127.0.0.1:{port}" in banner, banner + (proc.stderr.read() if proc.stderr else "")
        yield f"postgresql://{user}@127.0.0.1:{port}/postgres?sslmode=disable&connect_timeout=10"
    finally:
        proc.terminate()
        proc.wait(10)


def test_sigterm_on_the_proxy_refuses_new_sessions_lets_open_ones_finish_then_ends_the_rest(env: DbEnv) -> None:
    env.start_agent("aurora")
    with tunnel(env, "dana") as dsn:
        idle = psycopg.connect(dsn, autocommit=True)
        idle.execute("select 'proxy-drain-idle'").fetchone()
        finishing = psycopg.connect(dsn, autocommit=True)
        finished: list[object] = []

        def work() -> None:
            finished.append(finishing.execute("select pg_sleep(1.5), 'proxy-drain-busy'").fetchone())
            finishing.close()

        sid = sid_of(env, "proxy-drain-idle")
        busy = threading.Thread(target=work)
        busy.start()
        time.sleep(0.3)
        assert env.cluster.proc is not None
        env.cluster.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining: 2 open session(s) get up to 3s to finish" in env.cluster.log(), what="the drain")
        with pytest.raises(psycopg.OperationalError, match="this proxy is shutting down; connect again in a moment"):
            psycopg.connect(dsn, autocommit=True)
        busy.join(10)
        assert finished and finished[0][1] == "proxy-drain-busy"  # it had the time to finish  # type: ignore[index]
        try:
            with pytest.raises(psycopg.errors.AdminShutdown, match="the server is shutting down"):
                wait_for(lambda: idle.execute("select 1") and False, timeout=10, what="the FATAL")
        except (psycopg.Error, AssertionError) as exc:  # rare under load (about 1 run in 15): keep the logs
            raise AssertionError(f"{exc!r}\n{env.cluster.log()}\n{env.agents[-1].log()}") from exc
        idle.close()
        env.cluster.proc.wait(30)
        assert env.cluster.stop() == 0, env.cluster.log()
    env.cluster.start()
    # The agent ended the session at the proxy's request (and kept its events until auth was back).
    wait_for(lambda: ("db.session.end", "") in session_events(env, sid), what="the session's end event")
    events = env.events(sid=sid)
    assert [e["event"] for e in events[:2]] == ["db.session.start", "db.session.query"]
    # The polls above, until the FATAL (psycopg prepares a statement run five times).
    assert all(e["event"] == "db.session.query" or e["event"].startswith("db.session.postgres.statements.")
               for e in events[2:-2]), events
    assert [(e["event"], e.get("reason")) for e in events[-2:]] == [
        ("client.disconnect", "the server is shutting down"),
        ("db.session.end", None),
    ]
