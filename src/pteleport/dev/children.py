"""The processes `pteleport dev` starts: in its process group, logging to files, never left behind.

Each child stays in the caller's process group, so Ctrl+C in the terminal reaches all of
them at once; ``stop`` sends the child's own stop signal and waits, then kills. On Linux a
child also gets a signal when `pteleport dev` itself dies (``PR_SET_PDEATHSIG``), so even a
``kill -9`` of the parent leaves no server running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec hook that asks the kernel to send ``sig`` when the parent exits (Linux only)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before the hook ran
            os._exit(1)

    return hook


class Child:
    """One process: started with ``start``, ended with ``stop`` (its stop signal, then SIGKILL)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        *,
        stop_signal: int = signal.SIGTERM,
        user: Any = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.user = user  # a pwd entry: run as that user (when we are root)
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        extra: dict[str, Any] = {}
        if self.user is not None:
            extra.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            preexec_fn=_die_with_parent(self.stop_signal),
            **extra,
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exited(self) -> int | None:
        """Its exit code once it has ended, else None."""
        return self.proc.poll() if self.proc is not None else None

    def stop(self, timeout: float = 20.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def problem(self) -> str:
        """Why it ended, from its log: its last ``ERROR`` line (or FATAL), else its last line."""
        try:
            lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        for line in reversed(lines[-200:]):
            for mark in ("ERROR: ", "FATAL:  ", "FATAL: ", " ERROR ", " CRITICAL "):
                if mark in line:
                    text = line.split(mark, 1)[1].strip()
                    if text.startswith("[") and "] " in text:
                        text = text.split("] ", 1)[1]  # a log line's [logger] name
                    return text
        return lines[-1] if lines else ""
