"""tests/ci_job.sh, the CI job docs/ci.md shows, runs against a real deployment; and a bot's
database certificate from `pctl auth sign --format=db` works with plain psql.

The admin side is done here as docs/ci.md describes it: a role, `pctl bots add`, and
`ptsh login --bot` on the "CI runner" (which writes the identity file the job gets as a
secret). The job then runs with nothing else: no ptsh profile, a keyring that fails if
touched, no admin identity.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.dbenv import SEED_ROLE, DbEnv
from tests.harness import BIN, PTSH, Cluster, base_env, free_port, run

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "tests" / "ci_job.sh"
DOC = ROOT / "docs" / "ci.md"
READONLY_ROLE = """kind: role
version: v7
metadata:
  name: db-readonly
spec:
  options:
    max_session_ttl: 8h
  allow:
    db_labels:
      env: dev
    db_users: [reader]
    db_names: [postgres]
"""


@dataclass
class Deployment:
    env: DbEnv
    identity: Path
    expired: Path
    runner_home: Path
    pg_listen_port: int


def job_env(dep: Deployment, **extra: str | Path) -> dict[str, str]:
    """What a CI runner has: the programs on PATH, the secret, and nothing of ours besides."""
    return base_env(
        PATH=f"{BIN}:{base_env()['PATH']}",
        PTSH_HOME=dep.runner_home,
        PTSH_KEY_STORAGE="",
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        PTELEPORT_DATA_DIR=dep.runner_home / "no-admin-here",
        **extra,
    )


def _make_env(root: Path, pg: Any, pg_listen_port: int) -> DbEnv:
    """tests.dbenv.make_env, with the proxy's native PostgreSQL listener on as well."""
    config = root / "pteleport.yaml"
    config.write_text(f"proxy_service:\n  postgres_listen_addr: 127.0.0.1:{pg_listen_port}\n")
    env = DbEnv(root, pg, Cluster(root / "cluster", extra_args=["-c", str(config)]).start())
    ca = env.pctl("auth", "export", "--type=db-client")
    assert ca.returncode == 0, ca.stderr
    pg.trust_client_ca(ca.stdout.encode())
    created = env.pctl("create", input=SEED_ROLE)
    assert created.returncode == 0, created.stderr
    return env


@pytest.fixture(scope="module")
def deployment(pg, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    pg.create_role("reader", "cert")
    root = tmp_path_factory.mktemp("ci")
    pg_listen_port = free_port()
    env = _make_env(root, pg, pg_listen_port)
    try:
        env.start_agent("aurora")
        created = env.pctl("create", input=READONLY_ROLE)
        assert created.returncode == 0, created.stderr
        token = env.pctl("bots", "add", "ci-bot", "--roles=db-readonly", "--format=text")
        assert token.returncode == 0, token.stderr
        runner = root / "runner"
        runner.mkdir()
        identity = runner / "ci.identity"
        login = run(
            [PTSH, "login", "--bot", f"--token={token.stdout.strip()}", f"--proxy={env.cluster.addr}",
             f"--out={identity}", "--insecure"],
            base_env(PTSH_HOME=runner / "ptsh-home", PTSH_KEY_STORAGE=""),
        )
        assert login.returncode == 0, login.stderr
        expired = runner / "expired.identity"
        signed = env.pctl("auth", "sign", "--user=ci-bot", "--ttl=1s", f"--out={expired}")
        assert signed.returncode == 0, signed.stderr
        time.sleep(1.2)
        yield Deployment(env, identity, expired, runner / "ptsh-home", pg_listen_port)
    finally:
        env.stop()


def test_docs_show_the_job_verbatim() -> None:
    doc = DOC.read_text()
    script = JOB.read_text()
    assert f"```bash\n{script}```" in doc, "docs/ci.md must include tests/ci_job.sh verbatim in a ```bash block"


def test_ci_job_runs_with_only_an_identity_file(deployment: Deployment) -> None:
    port = free_port()
    result = subprocess.run(
        ["bash", str(JOB)],
        env=job_env(
            deployment,
            PTSH_IDENTITY_FILE=deployment.identity,
            DB="aurora",
            DB_USER="reader",
            DB_NAME="postgres",
            TUNNEL_PORT=str(port),
            EXPIRED_IDENTITY_FILE=deployment.expired,
            DENIED_DB_NAME="template1",
        ),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    out = result.stdout
    assert "databases: aurora" in out
    assert re.search(r"^reader$", out, re.M), out
    assert re.search(r"^rows: [1-9]", out, re.M), out
    assert re.search(r"^exit 3, the identity file is missing or expired.*ERROR: the identity file .* expired at", out,
                     re.M), out
    assert re.search(r'^exit 4, access denied.*ERROR: access to database "aurora" denied', out, re.M), out
    assert out.rstrip().endswith("CI job done")
    # Cleaned up: the tunnel is gone, and nothing was written into a ptsh home.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert not deployment.runner_home.exists() or not any(deployment.runner_home.iterdir())
    # The audit log saw the bot join and its session.
    env = deployment.env
    joins = env.events(type="bot.join")
    assert any(e["code"] == "TJ001I" and e.get("bot_name") == "ci-bot" for e in joins), joins
    sessions = [e for e in env.events(type="db.session.start", user="ci-bot") if e["code"] == "TDB00I"]
    assert sessions and sessions[0]["db_user"] == "reader"


def test_ci_job_stops_with_exit_3_when_its_identity_expired(deployment: Deployment) -> None:
    result = subprocess.run(
        ["bash", str(JOB)],
        env=job_env(deployment, PTSH_IDENTITY_FILE=deployment.expired, TUNNEL_PORT=str(free_port())),
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 3, result.stderr
    assert "expired at" in result.stderr and "Traceback" not in result.stderr


def test_ci_job_needs_its_identity_file(deployment: Deployment) -> None:
    result = subprocess.run(["bash", str(JOB)], env=job_env(deployment), capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert "set PTSH_IDENTITY_FILE" in result.stderr


def test_identity_file_listing_is_pure_json(deployment: Deployment) -> None:
    """stdout carries the JSON and nothing else, even when there is a warning to give."""
    loose = deployment.runner_home.parent / "loose.identity"
    loose.write_bytes(deployment.identity.read_bytes())
    loose.chmod(0o644)
    result = run([PTSH, "-i", str(loose), "db", "ls", "--format", "json"], job_env(deployment))
    assert result.returncode == 0, result.stderr
    assert [d["metadata"]["name"] for d in json.loads(result.stdout)] == ["aurora"]
    assert "readable by other users" in result.stderr


def test_psql_with_a_db_certificate_from_pctl_auth_sign(deployment: Deployment, tmp_path: Path) -> None:
    """No ptsh at all: psql with sslcert/sslkey/sslrootcert through the proxy's native listener."""
    env = deployment.env
    prefix = tmp_path / "ci"
    signed = env.pctl("auth", "sign", "--user=ci-bot", "--format=db", "--db-service=aurora", "--db-user=reader",
                      "--db-name=postgres", "--ttl=1h", f"--out={prefix}")
    assert signed.returncode == 0, signed.stderr
    assert "sslrootcert" in signed.stderr
    dsn = (f"host=127.0.0.1 port={deployment.pg_listen_port} user=reader dbname=postgres sslmode=verify-full "
           f"sslcert={prefix}.crt sslkey={prefix}.key sslrootcert={prefix}.cas")
    result = subprocess.run(["psql", dsn, "-At", "-c", "select 'native ' || current_user"], capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "native reader"
