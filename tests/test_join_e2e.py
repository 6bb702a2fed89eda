"""`pteleport db start` joining a real cluster: it waits for a proxy that is not up yet, and
stops with one sentence and its own exit code when waiting cannot help (docs/operations.md)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dbenv import DbEnv, make_env
from tests.harness import PTELEPORT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(pg, tmp_path_factory) -> Iterator[DbEnv]:
    e = make_env(tmp_path_factory.mktemp("join"), pg)
    try:
        yield e
    finally:
        e.stop()


def agent_cmd(env: DbEnv, data_dir: Path, token: str, *pins: str) -> list[str]:
    return [
        PTELEPORT, "db", "start", f"--token={token}", f"--proxy={env.cluster.addr}",
        *[f"--ca-pin={p}" for p in pins],
        "--name=joiner", f"--uri=localhost:{env.pg.port}", f"--ca-cert-file={env.pg.ca_cert_file}",
        f"--data-dir={data_dir}", "--nodename=joiner",
    ]


def token(env: DbEnv, *args: str) -> str:
    made = env.pctl("tokens", "add", "--type=db", "--format=text", *args)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def pin(env: DbEnv) -> str:
    return env.pctl_json("status")["ca_pin"]


def run_agent(env: DbEnv, tmp_path: Path, tok: str, *pins: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent_cmd(env, tmp_path / "agent", tok, *pins), env=env.cluster.env(),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]


def test_a_ca_pin_of_another_cluster_stops_at_once_with_exit_6(env: DbEnv, tmp_path: Path) -> None:
    result = run_agent(env, tmp_path, token(env), "sha256:" + "ab" * 32)
    assert result.returncode == 6, result.stderr
    assert errors(result) == [
        f"ERROR: the cluster at {env.cluster.addr} is not the one --ca-pin names (its CA pin is {pin(env)}); "
        'check the address, and the pin with "pctl status" on the cluster'
    ], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "agent" / "host-identity.pem").exists()


def test_no_pin_and_an_untrusted_web_certificate_stops_with_exit_6(env: DbEnv, tmp_path: Path) -> None:
    result = run_agent(env, tmp_path, token(env))
    assert result.returncode == 6, result.stderr
    [line] = errors(result)
    assert line.startswith(f"ERROR: cannot verify the cluster at {env.cluster.addr}: ")
    assert "does not trust its web certificate" in line and line.endswith('pass --ca-pin with the pin from "pctl status"')


def test_a_token_the_cluster_does_not_know_stops_with_exit_4(env: DbEnv, tmp_path: Path) -> None:
    result = run_agent(env, tmp_path, "f" * 32, pin(env))
    assert result.returncode == 4, result.stderr
    assert errors(result) == [
        "ERROR: the cluster refused the join token: the join token is invalid or has expired; "
        'create a new one with "pctl tokens add --type=db"'
    ]
    assert "--ca-pin" not in result.stderr


def test_an_expired_token_stops_with_exit_3_and_says_expired(env: DbEnv, tmp_path: Path) -> None:
    tok = token(env, "--ttl=1s")
    time.sleep(1.5)
    result = run_agent(env, tmp_path, tok, pin(env))
    assert result.returncode == 3, result.stderr
    [line] = errors(result)
    assert line.startswith("ERROR: the join token is no longer valid: the join token expired at ")
    assert line.endswith('UTC; create a new one with "pctl tokens add --type=db"')
    # An expired token is no longer listed.
    listed = env.pctl_json("tokens", "ls")
    from pteleport.auth.tokens import token_id

    assert token_id(tok) not in [t["metadata"]["name"] for t in listed]


def test_an_agent_started_before_its_proxy_joins_once_the_proxy_is_up(env: DbEnv, tmp_path: Path) -> None:
    tok, ca_pin = token(env), pin(env)
    env.cluster.stop()
    log_path = tmp_path / "agent.log"
    with log_path.open("ab") as log:
        agent = subprocess.Popen(agent_cmd(env, tmp_path / "agent", tok, ca_pin), env=env.cluster.env(),
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and log_path.read_text().count("could not join the cluster") < 2:
            assert agent.poll() is None, log_path.read_text()
            time.sleep(0.2)
        tries = [line for line in log_path.read_text().splitlines() if "could not join the cluster" in line]
        assert len(tries) >= 2, log_path.read_text()
        assert all("cannot reach the cluster at" in t and "trying again in" in t for t in tries), tries
        assert "--ca-pin" not in log_path.read_text()  # the cause is named, not the pin blamed
        env.cluster.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "connected to the proxy" not in log_path.read_text():
            assert agent.poll() is None, log_path.read_text()
            time.sleep(0.2)
        assert "connected to the proxy" in log_path.read_text(), log_path.read_text()
        assert "joined cluster" in log_path.read_text()
        env.wait_for_servers("joiner")
    finally:
        agent.terminate()
        agent.wait(30)
    assert agent.returncode == 0, log_path.read_text()
