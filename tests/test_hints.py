"""Every command the CLIs print as a next step works when pasted, on the default local cluster.

The default local cluster is the one `pteleport dev` makes. Each test runs a command, takes
the command(s) it printed, and runs them exactly as printed, in a shell that has only what
`pteleport dev` says a second shell needs. Two things differ from pasting, each said where
it is done: the config path ``/etc/pteleport.yaml`` of ``pctl tokens add``'s commands is a
temporary file (a test must not write /etc), and the agent they start keeps its identity in a
temporary data dir (given as ``PTELEPORT_DATA_DIR``, not by changing the command).
"""

from __future__ import annotations

import getpass
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dbenv import PASSWORD
from tests.devenv import DevRun, printed, remove_outside_pg_root, shell_env
from tests.harness import BIN, PTELEPORT, TotpDevice, base_env, free_port, pty_run

pytestmark = pytest.mark.slow


@dataclass
class Dev:
    run: DevRun
    work: Path
    setup: str  # the lines a second shell needs, joined with "; "
    shell: dict[str, str]
    device: TotpDevice
    pg_port: int
    signup_output: str

    def sh(self, command: str, *, stdin: str = "", env: dict[str, str] | None = None,
           timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", f"{self.setup}; {command}"], env=env or self.shell, cwd=self.work,
                              input=stdin, capture_output=True, text=True, timeout=timeout)

    def login(self, command: str) -> str:
        code, out = pty_run(["bash", "-c", f"cd {self.work}; {self.setup}; {command}"],
                            [("assword", PASSWORD), ("OTP code", lambda _t: self.device.code())], self.shell)
        assert code == 0, out
        return out


def hint(text: str, pattern: str) -> str:
    found = re.findall(pattern, text, re.M)
    assert found, f"no {pattern!r} in:\n{text}"
    return found[-1]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    work = tmp_path_factory.mktemp("hints")
    env = base_env(PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    run = DevRun(work, env, [PTELEPORT, "dev", "--listen", f"127.0.0.1:{free_port()}"])
    try:
        output = run.wait_ready()
        setup, commands = printed(output)
        shell = shell_env(work / "ptsh-home")
        secret: dict[str, str] = {}

        def otp(transcript: str) -> str:
            secret["value"] = re.findall(r"Secret: ([A-Z2-7]+)", transcript)[-1]
            return TotpDevice(secret["value"]).code()

        code, out = pty_run(["bash", "-c", f"{setup}; {commands['ptsh signup']}"],
                            [("new password", PASSWORD), ("Confirm", PASSWORD), ("OTP code", otp)], shell)
        assert code == 0, out
        port = int(hint(output, r"on 127\.0\.0\.1:(\d+), db user"))
        yield Dev(run, work, setup, shell, TotpDevice(secret["value"]), port, out)
    finally:
        run.stop(signal.SIGTERM, group=False)
        remove_outside_pg_root(work / ".data")


def test_not_logged_in_and_signup_say_the_same_login_and_it_works(dev: Dev) -> None:
    status = dev.sh("ptsh status")
    assert status.returncode == 3
    command = hint(status.stderr, r'^ERROR: Not logged in; run "(ptsh login [^"]+)"$')
    after_signup = hint(dev.signup_output, r"^  (ptsh login .*)$")
    assert command == after_signup
    assert "Logged in as:" in dev.login(command)


def test_db_login_hints(dev: Dev) -> None:
    done = dev.sh("ptsh db login demo")
    assert done.returncode == 0, done.stderr
    connect = hint(done.stdout, r"^  (ptsh db connect .*)$")
    psql = dev.sh(connect, stdin="select 'pasted' as hint;\n")
    assert psql.returncode == 0 and "pasted" in psql.stdout, psql.stderr
    tunnel_command = hint(done.stdout, r"^  (ptsh proxy db --tunnel .*)$")
    with background(dev, tunnel_command) as banner:
        client = hint(banner, r"^  (psql '.*')$")
        result = dev.sh(client, stdin="select 'through the tunnel';\n")
        assert "through the tunnel" in result.stdout, result.stderr


def test_db_env_and_config_hints(dev: Dev) -> None:
    port = free_port()
    env = dev.sh(f"ptsh db env demo --port={port}")
    assert env.returncode == 0, env.stderr
    tunnel_command = hint(env.stdout, r"^# start the tunnel first: (.*)$")
    config = dev.sh(f"ptsh db config demo --port={port} --format=cmd")
    with background(dev, tunnel_command):
        exports = "; ".join(line for line in env.stdout.splitlines() if line.startswith("export "))
        result = dev.sh(f"{exports}; psql -At -c 'select 40 + 2'")
        assert result.stdout.strip() == "42", result.stderr
        result = dev.sh(config.stdout.strip(), stdin="select 'config cmd';\n")
        assert "config cmd" in result.stdout, result.stderr


def test_identity_file_hints(dev: Dev) -> None:
    signed = dev.sh(f"pctl auth sign --user={getpass.getuser()} --out=me.identity --ttl=1h")
    assert signed.returncode == 0, signed.stderr
    result = dev.sh(hint(signed.stderr, r"use it with: (.*)$"))
    assert result.returncode == 0 and "demo" in result.stdout, result.stderr


def test_bot_hints(dev: Dev) -> None:
    added = dev.sh("pctl bots add ci-bot --roles=access --db-users=ci --db-names=demo")
    assert added.returncode == 0, added.stderr
    login = hint(added.stdout, r"^> (ptsh login --bot .*)$")
    assert login.endswith(" --insecure")  # this cluster's web certificate is self-signed
    joined = dev.sh(login)
    assert joined.returncode == 0, joined.stderr
    used = dev.sh(hint(added.stdout, r"^> (ptsh -i .*)$"))
    assert used.returncode == 0 and '"demo"' in used.stdout, used.stderr
    then = dev.sh(hint(joined.stderr, r"use it with: (.*)$"))
    assert then.returncode == 0 and "demo" in then.stdout, then.stderr


def test_tokens_add_hints_start_an_agent_that_serves(dev: Dev) -> None:
    added = dev.sh(f"pctl tokens add --type=db --db-name=demo2 --db-uri=localhost:{dev.pg_port}")
    assert added.returncode == 0, added.stderr
    blocks = [b.replace("\\\n", " ") for b in re.findall(r"^> (.*?)(?=\n\n|\Z)", added.stdout, re.M | re.S)]
    sign, configure, start = blocks
    assert sign.startswith("pctl auth sign --format=db --host=localhost")
    assert dev.sh(sign).returncode == 0
    assert all((dev.work / f"server.{ext}").exists() for ext in ("crt", "key", "cas"))
    config = dev.work / "pteleport-db.yaml"  # instead of /etc/pteleport.yaml
    agent_env = {**dev.shell, "PTELEPORT_DATA_DIR": str(dev.work / "agent-demo2")}
    made = dev.sh(configure.replace("/etc/pteleport.yaml", str(config)), env=agent_env)
    assert made.returncode == 0, made.stderr
    log = (dev.work / "agent-demo2.log").open("wb")
    agent = subprocess.Popen(["bash", "-c", f"{dev.setup}; exec {start.replace('/etc/pteleport.yaml', str(config))}"],
                             env=agent_env, cwd=dev.work, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while '"demo2"' not in dev.sh("ptsh db ls --format=json").stdout:
            assert agent.poll() is None and time.monotonic() < deadline, (dev.work / "agent-demo2.log").read_text()
            time.sleep(0.5)
        result = dev.sh("ptsh db connect demo2 -- -At -c 'select 7 * 6'")
        assert result.stdout.strip() == "42", result.stderr
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
        log.close()


class background:
    """A long-running printed command (a tunnel) until the block ends; yields what it printed first."""

    def __init__(self, dev: Dev, command: str) -> None:
        self.proc = subprocess.Popen(["bash", "-c", f"{dev.setup}; exec {command}"], env=dev.shell, cwd=dev.work,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> str:
        assert self.proc.stdout is not None
        lines = []
        while not any(line.startswith("  psql ") for line in lines):
            line = self.proc.stdout.readline()
            assert line, f"the tunnel stopped: {self.proc.stderr.read() if self.proc.stderr else ''}"
            lines.append(line.rstrip("\n"))
        return "\n".join(lines)

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(15)
