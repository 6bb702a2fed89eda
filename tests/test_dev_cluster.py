"""From a fresh clone to `ptsh db connect demo`: ./scripts/run (pteleport dev), as a newcomer does it.

The tree is copied (what git tracks, and new files; no .venv, no .data) into an empty
temporary directory and ``./scripts/run`` runs there with the installed programs on PATH
(``PTELEPORT_USE_PATH=1``, so no second virtualenv is made). Every command it prints is run
as printed, in a shell that has only what it says a second shell needs.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.dbenv import PASSWORD
from tests.devenv import DevRun, group_members, printed, remove_outside_pg_root, shell_env
from tests.harness import BIN, PTELEPORT, TotpDevice, base_env, free_port, pty_run, run

ROOT = Path(__file__).resolve().parent.parent


def fresh_copy(dest: Path) -> Path:
    """The working tree as a fresh clone would have it (tracked and new files, nothing ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if not source.is_file() or name.startswith((".venv/", ".data/")):
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return dest


@pytest.mark.slow
def test_fresh_clone_to_ptsh_db_connect_demo(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if shutil.which("initdb") is None and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL's server programs are not installed")
    clone = fresh_copy(tmp_path / "pteleport")
    request.addfinalizer(lambda: remove_outside_pg_root(clone / ".data"))
    listen = f"127.0.0.1:{free_port()}"
    env = base_env(PATH=f"{BIN}:{os.environ.get('PATH', '')}", PTELEPORT_USE_PATH="1", PTELEPORT_LISTEN=listen)
    home = tmp_path / "ptsh-home"
    shell = shell_env(home)

    first = DevRun(clone, env)
    try:
        output = first.wait_ready()
        setup, commands = printed(output)
        assert f"export PTELEPORT_DATA_DIR={clone / '.data'}" in setup
        assert list(commands) == ["ptsh signup", "ptsh login", "ptsh db connect"], output
        assert commands["ptsh login"] == f"ptsh login --proxy={listen} --user={getpass.getuser()} --insecure"

        device: dict[str, TotpDevice] = {}

        def otp(transcript: str) -> str:
            if "me" not in device:
                device["me"] = TotpDevice(re.findall(r"Secret: ([A-Z2-7]+)", transcript)[-1])
            return device["me"].code()

        code, out = pty_run(["bash", "-c", f"{setup}; {commands['ptsh signup']}"],
                            [("new password", PASSWORD), ("Confirm", PASSWORD), ("OTP code", otp)], shell)
        assert code == 0, out
        code, out = pty_run(["bash", "-c", f"{setup}; {commands['ptsh login']}"],
                            [("assword", PASSWORD), ("OTP code", lambda _t: device["me"].code())], shell)
        assert code == 0, out
        connect = run(["bash", "-c", f"{setup}; {commands['ptsh db connect']} -- -c 'select 1'"], shell)
        assert connect.returncode == 0, connect.stderr
        assert re.search(r"\?column\?\s*\n-+\n\s*1\n\(1 row\)", connect.stdout), connect.stdout
        sample = run(["bash", "-c", f"{setup}; ptsh db connect demo -- -At -c 'select greeting from greetings "
                                    "order by id'"], shell)
        assert sample.stdout.split() == ["Hello", "Bonjour", "Hei"], sample.stderr
        # The second shell's pctl acts as this cluster's admin.
        status = run(["bash", "-c", f"{setup}; pctl status"], shell)
        assert status.returncode == 0 and "CA pin" in status.stdout, status.stderr
    finally:
        code = first.stop(signal.SIGINT, group=True)  # Ctrl+C in its terminal
    assert code == 0, first.output
    assert group_members(first.proc.pid) == []
    state = json.loads((clone / ".data" / "dev" / "state.json").read_text())
    assert not (Path(state["pg_root"]) / "data" / "postmaster.pid").exists(), "PostgreSQL is still running"

    second = DevRun(clone, env)
    try:
        output = second.wait_ready()
        setup, commands = printed(output)
        assert list(commands) == ["ptsh login", "ptsh db connect"], output  # signed up already: no new link
        assert "/web/invite/" not in output and "/web/reset/" not in output
        again = run(["bash", "-c", f"{setup}; ptsh db connect demo -- -At -c 'select 2'"], shell)
        assert again.returncode == 0 and again.stdout.strip() == "2", again.stderr
    finally:
        code = second.stop(signal.SIGTERM, group=False)  # only the leader: it stops the others
    assert code == 0, second.output
    assert group_members(second.proc.pid) == []


def test_dev_without_postgresql_says_how_to_install_it(tmp_path: Path) -> None:
    from pteleport.dev.postgres import INSTALL, find_bindir

    with pytest.raises(Exception) as caught:
        find_bindir(None, path=str(tmp_path), search=(str(tmp_path / "none" / "*"),))
    assert str(caught.value) == INSTALL
    assert "apt-get install postgresql" in INSTALL
    result = run([PTELEPORT, "dev", "--data-dir", str(tmp_path / "data"), "--pg-bindir", str(tmp_path)], base_env())
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"ERROR: --pg-bindir {tmp_path} has no initdb or postgres; pass the directory of PostgreSQL's server "
        "programs (e.g. /usr/lib/postgresql/15/bin)"
    )
    assert not (tmp_path / "data").exists()


def test_dev_finds_the_newest_packaged_postgresql(tmp_path: Path) -> None:
    from pteleport.dev.postgres import find_bindir

    for version in ("9.6", "15", "13"):
        folder = tmp_path / "lib" / version / "bin"
        folder.mkdir(parents=True)
        for name in ("initdb", "postgres"):
            (folder / name).write_text("#!/bin/sh\n")
            (folder / name).chmod(0o755)
    assert find_bindir(None, path="", search=(str(tmp_path / "lib" / "*" / "bin"),)) == tmp_path / "lib" / "15" / "bin"
    assert find_bindir(None, path=str(tmp_path / "lib" / "9.6" / "bin")) == (tmp_path / "lib" / "9.6" / "bin").resolve()
