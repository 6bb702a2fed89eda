"""docs/getting-started.md runs verbatim, and prints what it shows (tests/doc_runner.py compares).

Its first part runs `pteleport dev` (its own PostgreSQL); the second sets up a TLS
PostgreSQL by hand, a cluster, an agent and alice, as the page says. Nothing else is set up
here: the page's commands do it all.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.dbenv import PASSWORD
from tests.devenv import remove_outside_pg_root
from tests.doc_runner import run_document
from tests.harness import BIN, TotpDevice, base_env, free_port

pytestmark = pytest.mark.slow
DOC = Path(__file__).resolve().parent.parent / "docs" / "getting-started.md"
GUIDE_PATHS = ["/tmp/pteleport-guide", "/tmp/pteleport-guide-agent", "/tmp/pteleport-guide-alice",
               "/tmp/pteleport-guide-pg", "/tmp/pteleport-db.yaml", "/tmp/token", "/tmp/pteleport-dev.txt",
               "/tmp/pteleport-guide.log", "/tmp/pteleport-db.log"]
PG_DATA = Path("/tmp/pteleport-guide-pg/data")


def _clean() -> None:
    if (PG_DATA / "postmaster.pid").exists():  # a run that failed half-way left its PostgreSQL running
        ctl = shutil.which("pg_ctl") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))), None)
        owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*owner, str(ctl), "-D", str(PG_DATA), "-m", "immediate", "-w", "stop"], capture_output=True,
                       check=False, timeout=60)
    for path in GUIDE_PATHS:
        shutil.rmtree(path, ignore_errors=True) if Path(path).is_dir() else Path(path).unlink(missing_ok=True)


def test_getting_started_runs_verbatim_and_prints_what_it_shows(tmp_path: Path) -> None:
    if shutil.which("initdb") is None and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL's server programs are not installed")
    _clean()
    env = base_env(PATH=f"{BIN}:{base_env()['PATH']}", PG_PORT=str(free_port()), PTSH_HOME=tmp_path / "ptsh-home")

    def otp(transcript: str) -> str:
        secrets = re.findall(r"Secret: ([A-Z2-7]+)", transcript)
        assert secrets, transcript
        return TotpDevice(secrets[-1]).code()  # the last sign-up's authenticator

    try:
        run_document(DOC, tmp_path, env, {
            r"Enter a new password: ": lambda _t: PASSWORD,
            r"Confirm the new password: ": lambda _t: PASSWORD,
            r"Enter password for [^:]*: ": lambda _t: PASSWORD,
            r"Enter an OTP code from a device: ": otp,
        })
    finally:
        for log in ("/tmp/pteleport-guide.log", "/tmp/pteleport-db.log"):
            if Path(log).exists():
                print(f"--- {log}\n{Path(log).read_text()[-3000:]}")
        remove_outside_pg_root(tmp_path / ".data")
        _clean()
