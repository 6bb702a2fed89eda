"""docs/ha.md runs verbatim (tests/doc_runner.py compares what it prints): two proxies on one
PostgreSQL, haproxy in front, an agent and a user through it, then proxy A is killed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.dbenv import PASSWORD
from tests.doc_runner import run_document
from tests.haenv import haproxy_binary
from tests.harness import BIN, TotpDevice, base_env, free_port

pytestmark = pytest.mark.slow
DOC = Path(__file__).resolve().parent.parent / "docs" / "ha.md"
ROOT = Path("/tmp/pteleport-ha")


def _clean() -> None:
    pid_file = ROOT / "haproxy.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text().split()[0]), 15)
        except (ValueError, OSError):
            pass
    if (ROOT / "pg" / "postmaster.pid").exists():  # a run that failed half-way left its PostgreSQL running
        ctl = shutil.which("pg_ctl") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))), None)
        owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*owner, str(ctl), "-D", str(ROOT / "pg"), "-m", "immediate", "-w", "stop"],
                       capture_output=True, check=False, timeout=60)
    shutil.rmtree(ROOT, ignore_errors=True)


def test_the_ha_page_runs_verbatim_and_prints_what_it_shows(tmp_path: Path) -> None:
    if shutil.which("initdb") is None and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL's server programs are not installed")
    if not Path(haproxy_binary()).exists():
        pytest.skip("haproxy is not installed")
    _clean()
    path = f"{BIN}:{Path(haproxy_binary()).parent}:{base_env()['PATH']}"
    env = base_env(PATH=path, PG_PORT=str(free_port()), A_PORT=str(free_port()), B_PORT=str(free_port()),
                   LB_PORT=str(free_port()))

    def otp(transcript: str) -> str:
        secrets = re.findall(r"Secret: ([A-Z2-7]+)", transcript)
        assert secrets, transcript
        return TotpDevice(secrets[-1]).code()

    try:
        run_document(DOC, tmp_path, env, {
            r"Enter a new password: ": lambda _t: PASSWORD,
            r"Confirm the new password: ": lambda _t: PASSWORD,
            r"Enter password for [^:]*: ": lambda _t: PASSWORD,
            r"Enter an OTP code from a device: ": otp,
        })
    finally:
        for log in ("proxy-a.log", "proxy-b.log", "agent.log"):
            if (ROOT / log).exists():
                print(f"--- {log}\n{(ROOT / log).read_text()[-3000:]}")
        _clean()
