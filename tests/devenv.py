"""`pteleport dev` (or ./scripts/run) for end-to-end tests: run it, read what it prints, stop it.

- ``DevRun``: the command in the background, in its own process group (as a terminal's
  foreground job), its output collected line by line;
- ``printed``: the shell set-up lines and the ptsh commands of its numbered steps;
- ``shell_env``: a second shell with none of our programs on PATH (the printed lines add them);
- ``group_members``: what is left of a process group.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.harness import BIN, base_env


def shell_env(home: Path) -> dict[str, str]:
    """A second shell: no pteleport programs on PATH until the printed lines put them there."""
    path = ":".join(p for p in os.environ.get("PATH", "").split(":") if p and Path(p).resolve() != BIN.resolve())
    return base_env(PATH=path or "/usr/bin:/bin", PTSH_HOME=home)


class DevRun:
    """``argv`` (./scripts/run, pteleport dev) in the background, its own process group."""

    def __init__(self, clone: Path, env: dict[str, str], argv: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(argv or ["./scripts/run"], cwd=clone, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.strip() == "ptsh db connect demo" for line in self.lines):
                time.sleep(0.2)  # the blank line after it
                return self.output
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop(signal.SIGTERM, group=True)
        raise AssertionError(f"./scripts/run did not get ready:\n{self.output}")

    def stop(self, sig: int, *, group: bool, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.reader.join(5)
        return code


def group_members(pgid: int) -> list[str]:
    """Processes still in the process group (``pid cmdline``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{entry.name} {cmdline}")
        except (OSError, ValueError, IndexError):
            continue
    return found


def printed(output: str) -> tuple[str, dict[str, str]]:
    """(the shell set-up lines, the commands of each numbered step by their first words)."""
    setup = "; ".join(re.findall(r"^  (export .*)$", output, re.M))
    commands = {" ".join(c.split()[:3 if c.startswith("ptsh db") else 2]): c
                for c in re.findall(r"^  (ptsh .*)$", output, re.M)}
    return setup, commands


def remove_outside_pg_root(data_dir: Path) -> None:
    """As root, pteleport dev keeps PostgreSQL's files under /var/tmp (state.json says where): remove them."""
    import json
    import shutil

    try:
        root = Path(json.loads((data_dir / "dev" / "state.json").read_text())["pg_root"])
    except (OSError, ValueError, KeyError):
        return
    if not root.is_relative_to(data_dir) and root.name.startswith("pteleport-dev-"):
        shutil.rmtree(root, ignore_errors=True)
