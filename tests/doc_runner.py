"""Runs the shell blocks of a Markdown document verbatim, in order, in one interactive bash.

Each ```bash block is sourced with ``set -euo pipefail`` inside one bash on a
pseudo-terminal, so variables, background jobs and the current directory carry over from
block to block, and commands that prompt (password, OTP code) get their answers through
the terminal, as a person would type them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pexpect

BLOCK = re.compile(r"^(?P<indent>[ \t]*)```bash\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)


def shell_blocks(markdown: str) -> list[str]:
    blocks = []
    for match in BLOCK.finditer(markdown):
        indent = match.group("indent")
        lines = [line[len(indent):] if line.startswith(indent) else line
                 for line in match.group("body").splitlines()]
        blocks.append("\n".join(lines) + "\n")
    return blocks


Answer = Callable[[str], str]


def run_document(path: Path, workdir: Path, env: dict[str, str], answers: dict[str, Answer],
                 after_block: Callable[[int, str], None] | None = None, timeout: float = 90) -> str:
    """Run every bash block of ``path``; returns the whole terminal transcript.

    ``answers`` maps a prompt regex to a function of the transcript so far that returns
    what to type. Raises AssertionError naming the block when a command fails.
    """
    blocks = shell_blocks(path.read_text())
    assert blocks, f"{path} has no bash blocks"
    shell = pexpect.spawn("bash", ["--norc", "--noprofile"], env=env, cwd=str(workdir), encoding="utf-8",
                          timeout=timeout, dimensions=(50, 200))
    transcript: list[str] = []
    shell.sendline("stty -echo; PS1=''; PS2=''; set -m")
    prompts = list(answers)
    try:
        for index, body in enumerate(blocks):
            script = workdir / f"block-{index}.sh"
            script.write_text("set -euo pipefail\n" + body + "set +euo pipefail\n")
            shell.sendline(f"source {script}; echo __BLOCK_DONE__$?")
            while True:
                which = shell.expect([r"__BLOCK_DONE__(\d+)", pexpect.EOF, *prompts])
                transcript.append(shell.before)
                if which == 0:
                    assert shell.match.group(1) == "0", f"block {index} failed:\n{body}\n{''.join(transcript)}"
                    break
                if which == 1:
                    raise AssertionError(f"block {index} failed (the shell exited):\n{body}\n{''.join(transcript)}")
                transcript.append(shell.after)
                shell.sendline(answers[prompts[which - 2]]("".join(transcript)))
            if after_block is not None:
                after_block(index, body)
    finally:
        shell.sendline("exit")
        shell.close(force=True)
    return "".join(transcript)
