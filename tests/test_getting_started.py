"""docs/getting-started.md runs verbatim against a fresh cluster, a real agent and PostgreSQL."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.dbenv import PASSWORD
from tests.doc_runner import run_document
from tests.harness import BIN, TotpDevice, base_env

pytestmark = pytest.mark.slow
DOC = Path(__file__).resolve().parent.parent / "docs" / "getting-started.md"
GUIDE_PATHS = ["/tmp/pteleport-guide", "/tmp/pteleport-guide-agent", "/tmp/pteleport-guide-alice",
               "/tmp/pteleport-db.yaml", "/tmp/token", "/tmp/pteleport-db-client-ca.pem"]


def test_getting_started_transcript_runs_verbatim(pg, tmp_path: Path) -> None:
    for path in GUIDE_PATHS:
        shutil.rmtree(path, ignore_errors=True) if Path(path).is_dir() else Path(path).unlink(missing_ok=True)
    pg.create_role("alice", "cert")
    env = base_env(PG_PORT=str(pg.port), PG_CA=pg.ca_cert_file, PATH=f"{BIN}:{base_env()['PATH']}")
    device: dict[str, TotpDevice] = {}

    def otp(transcript: str) -> str:
        if "alice" not in device:
            secret = re.findall(r"Secret: ([A-Z2-7]+)", transcript)
            assert secret, transcript
            device["alice"] = TotpDevice(secret[-1])
        return device["alice"].code()

    def after(index: int, body: str) -> None:
        # Our stand-in PostgreSQL trusts the cluster's db client CA, as the guide asks.
        if "auth export --type=db-client" in body:
            pg.trust_client_ca(Path("/tmp/pteleport-db-client-ca.pem").read_bytes())

    try:
        out = run_document(DOC, tmp_path, env, {
            r"Enter a new password: ": lambda _t: PASSWORD,
            r"Confirm the new password: ": lambda _t: PASSWORD,
            r"Enter password for [^:]*: ": lambda _t: PASSWORD,
            r"Enter an OTP code from a device: ": otp,
        }, after_block=after)
    finally:
        for log in ("/tmp/pteleport-guide.log", "/tmp/pteleport-db.log"):
            if Path(log).exists():
                print(f"--- {log}\n{Path(log).read_text()[-3000:]}")
    assert re.search(r"CA pin\s+sha256:[0-9a-f]{64}", out)
    assert 'role "db" has been created' in out
    assert "Logged in as:       alice" in out
    assert re.search(r"aurora\s+\[\*\]\s+env=dev", out), out
    assert re.search(r"current_user\s*\n-+\s*\n\s*alice", out), out
