"""Helpers for end-to-end tests with real processes: a cluster, the CLIs, a pseudo-terminal.

- ``Cluster``: ``pteleport start`` in a temporary data dir on a free port, log to a file,
  ``stop()`` with SIGTERM (asserting a clean exit) and ``restart()``;
- ``run``: a CLI with a per-test environment (``PTSH_HOME``, ``PTELEPORT_DATA_DIR``);
- ``pty_run``: a CLI that reads secrets from a terminal, answered through a pty;
- ``totp_now`` / ``TotpDevice``: authenticator codes (a device never reuses a time step);
- ``signup``: accept an invite through the HTTP API.
"""

from __future__ import annotations

import base64
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
PTELEPORT = str(BIN / "pteleport")
PCTL = str(BIN / "pctl")
PTSH = str(BIN / "ptsh")
STEP = 30
# Time steps already used per TOTP secret (a cluster refuses a step twice).
_USED_STEPS: dict[str, int] = {}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(**extra: str | os.PathLike[str]) -> dict[str, str]:
    """A clean environment for the CLIs: no inherited ptsh/teleport settings, no keyring."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PTSH_", "TELEPORT_", "PTELEPORT_", "PYTHON_KEYRING"))}
    env.setdefault("PTSH_KEY_STORAGE", "file")
    env["COLUMNS"] = "200"
    env["NO_COLOR"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Cluster:
    """A pteleport auth+proxy process on 127.0.0.1:<free port> with its own data dir."""

    def __init__(self, data_dir: Path, *, port: int | None = None, extra_args: list[str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-pteleport.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.addr}"

    def env(self, **extra: str | os.PathLike[str]) -> dict[str, str]:
        """Environment for pctl acting as admin on this cluster's host."""
        return base_env(PTELEPORT_DATA_DIR=self.data_dir, **extra)

    def start(self, timeout: float = 60.0) -> Cluster:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        cmd = [PTELEPORT, "start", "--data-dir", str(self.data_dir), "--listen", self.addr, *self.extra_args]
        self.proc = subprocess.Popen(cmd, env=self.env(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"pteleport exited with {self.proc.returncode}:\n{self.log()}")
            try:
                response = httpx.get(f"{self.url}/webapi/ping", verify=False, timeout=1.0)
                if response.status_code == 200 and (self.data_dir / "admin-identity.pem").exists():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop(check=False)
        raise RuntimeError(f"pteleport did not answer on {self.url} within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, check: bool = True, timeout: float = 15.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if check:
            assert proc.returncode == 0, f"pteleport exited with {proc.returncode}:\n{self.log()}"
        return proc.returncode

    def restart(self) -> Cluster:
        self.stop()
        return self.start()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(check=exc[0] is None)


def run(cmd: list[str], env: dict[str, str], input: str | None = None,
        timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a CLI without a terminal (stdin is ``input`` or empty)."""
    return subprocess.run(
        cmd, env=env, input=input if input is not None else "", capture_output=True, text=True, timeout=timeout
    )


Answer = str | Callable[[str], str]


def pty_run(cmd: list[str], answers: list[tuple[str, Answer]], env: dict[str, str],
            timeout: float = 60.0) -> tuple[int, str]:
    """Run ``cmd`` on a pseudo-terminal; answer each prompt (regex) in order.

    Returns (exit code, everything written to the terminal). An answer may be a callable,
    called with the output so far when its prompt appears (for TOTP codes).
    """
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                start_new_session=True)
    finally:
        os.close(slave)
    output = b""
    pos = 0
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"{cmd} did not finish; output so far:\n{output.decode(errors='replace')}")
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                # drain what is left
                try:
                    while select.select([master], [], [], 0.05)[0]:
                        chunk = os.read(master, 65536)
                        if not chunk:
                            break
                        output += chunk
                except OSError:
                    pass
                break
            while pending:
                pattern, answer = pending[0]
                match = re.search(pattern.encode(), output[pos:])
                if not match:
                    break
                pos += match.end()
                pending.pop(0)
                text = answer(output.decode(errors="replace")) if callable(answer) else answer
                os.write(master, text.encode() + b"\n")
        proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        os.close(master)
    text = output.decode(errors="replace").replace("\r\n", "\n")
    return proc.returncode, text


def _totp(secret: str) -> Any:
    from cryptography.hazmat.primitives.hashes import SHA1
    from cryptography.hazmat.primitives.twofactor.totp import TOTP

    return TOTP(base64.b32decode(secret), 6, SHA1(), STEP, enforce_key_length=False)


def totp_at(secret: str, step: int) -> str:
    return _totp(secret).generate(step * STEP).decode()


def totp_now(secret: str) -> str:
    """The code of the current time step (what an authenticator app shows now)."""
    return totp_at(secret, int(time.time()) // STEP)


class TotpDevice:
    """An authenticator that hands out a code for a step the cluster has not seen yet.

    The cluster accepts the current step and one either side, but never a step at or below
    the last one used; when the next unused step is too far ahead, this waits.
    """

    def __init__(self, secret: str) -> None:
        self.secret = secret

    @property
    def last(self) -> int:
        return _USED_STEPS.get(self.secret, 0)

    def code(self) -> str:
        while True:
            now_step = int(time.time()) // STEP
            step = max(now_step, self.last + 1)
            if step <= now_step + 1:
                _USED_STEPS[self.secret] = step
                return totp_at(self.secret, step)
            time.sleep(0.25)


def invite_token(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def signup(cluster: Cluster, url: str, password: str) -> str:
    """Accept an invite through the HTTP API; returns the TOTP secret (its step is marked used)."""
    import httpx

    token = invite_token(url)
    with httpx.Client(base_url=cluster.url, verify=False, timeout=10) as http:
        details = http.get(f"/v1/invites/{token}")
        details.raise_for_status()
        secret = details.json()["totp_secret"]
        code = TotpDevice(secret).code()
        done = http.post(f"/v1/invites/{token}", json={"password": password, "otp_token": code})
        assert done.status_code == 200, done.text
    return secret


def find_url(text: str) -> str:
    match = re.search(r"https://\S+/web/(?:invite|reset)/[0-9a-f]+", text)
    assert match, f"no invite URL in:\n{text}"
    return match.group(0)
