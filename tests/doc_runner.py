"""Runs the shell blocks of a Markdown document verbatim, in order, in one interactive bash, and
compares what each prints with the ```text block that follows it, line by line.

Each ```bash block is sourced with ``set -euo pipefail`` inside one bash on a
pseudo-terminal, so variables, background jobs and the current directory carry over from
block to block, and commands that prompt (password, OTP code) get their answers through
the terminal, as a person would type them (the answers are not echoed; the prompts are).

A ```text block right after a ```bash block (prose may come between, no other fenced
block) is that block's expected output: every line of it must match the line printed, in
order, with nothing missing or extra (blank lines at the start and end, and spaces at the
end of lines, do not count). In an expected line

- a run of spaces matches one or more spaces, and a run of two or more dashes matches one
  or more dashes, so a table whose column widths depend on a value still matches;
- these placeholders stand for what differs from run to run:

  ``<TOKEN>`` 32 hex digits, ``<ID>`` hex digits and dashes (token ids, UUIDs),
  ``<PIN>`` ``sha256:`` and 64 hex digits, ``<SECRET>`` a base32 TOTP secret,
  ``<PORT>`` a port number, ``<HOST>`` a host name, ``<VERSION>`` a version number,
  ``<TIME>`` a date and/or time, ``<PATH>`` a path, ``<*>`` any text within the line;

- a line that is only ``<...>`` matches any number of lines (none too), e.g. a QR code.

bash's job notices (``[1] 4242``, ``[1]+  Done  ...``) and terminal control sequences are
left out of what was printed before it is compared.

Blocks in other languages (```ini, ```yaml, ```sql, ...) are not run and not compared.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pexpect

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)
PLACEHOLDERS = {
    "TOKEN": r"[0-9a-f]{32}",
    "ID": r"[0-9a-f][0-9a-f-]*",
    "PIN": r"sha256:[0-9a-f]{64}",
    "SECRET": r"[A-Z2-7]{16,}",
    "PORT": r"\d{1,5}",
    "HOST": r"[A-Za-z0-9][A-Za-z0-9._-]*",
    "VERSION": r"\d+(?:\.\d+)*",
    "TIME": r"[0-9A-Za-z][0-9A-Za-z:.+ -]*?",
    "PATH": r"\S+",
    "*": r".*?",
}
_TOKEN = re.compile("<(" + "|".join(re.escape(name) for name in PLACEHOLDERS) + ")>")
ANY_LINES = "<...>"


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int  # where it starts in the document (1-based)
    expected: str | None = None  # for bash: the text block that follows it


def _dedent(indent: str, body: str) -> str:
    lines = [line[len(indent):] if line.startswith(indent) else line for line in body.splitlines()]
    return "\n".join(lines) + "\n"


def blocks(markdown: str) -> list[Block]:
    """The ```bash blocks of a document, each with the ```text block that follows it, if any."""
    fences = [
        (m.group("lang"), _dedent(m.group("indent"), m.group("body")), markdown.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(markdown)
    ]
    found = []
    for index, (lang, body, line) in enumerate(fences):
        if lang != "bash":
            continue
        following = fences[index + 1] if index + 1 < len(fences) else None
        expected = following[1] if following is not None and following[0] == "text" else None
        found.append(Block(lang, body, line, expected))
    return found


def shell_blocks(markdown: str) -> list[str]:
    return [block.body for block in blocks(markdown)]


def _literal(text: str) -> str:
    out = []
    for run in re.finditer(r" +|-{2,}|[^ -]+|-", text):
        piece = run.group(0)
        if piece.startswith(" "):
            out.append(" +")
        elif len(piece) >= 2 and set(piece) == {"-"}:
            out.append("-+")
        else:
            out.append(re.escape(piece))
    return "".join(out)


def line_pattern(expected: str) -> re.Pattern[str]:
    parts, pos = [], 0
    for match in _TOKEN.finditer(expected):
        parts.append(_literal(expected[pos : match.start()]))
        parts.append(PLACEHOLDERS[match.group(1)])
        pos = match.end()
    parts.append(_literal(expected[pos:]))
    return re.compile("".join(parts))


ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # terminal control (bash's bracketed-paste mode, say)


# bash's own job notices ("[1] 4242", "[1]+  Done   cmd"): the shell's, not the programs' output.
JOB_NOTICE = re.compile(r"^\[\d+\][+-]? +(\d+|Done|Exit \d+|Terminated|Killed|Interrupt|Running|Stopped)\b.*$")


def _lines(text: str) -> list[str]:
    text = ESCAPE.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n") if not JOB_NOTICE.match(line.rstrip())]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def mismatch(expected: str, actual: str) -> str | None:
    """None when ``actual`` matches ``expected`` (see the module's docstring), else what differs."""
    want, got = _lines(expected), _lines(actual)
    patterns = [None if line.strip() == ANY_LINES else line_pattern(line) for line in want]
    memo: dict[tuple[int, int], bool] = {}

    def match(i: int, j: int) -> bool:
        if (i, j) in memo:
            return memo[(i, j)]
        if i == len(want):
            ok = j == len(got)
        elif patterns[i] is None:
            ok = match(i + 1, j) or (j < len(got) and match(i, j + 1))
        else:
            ok = j < len(got) and patterns[i].fullmatch(got[j]) is not None and match(i + 1, j + 1)  # type: ignore[union-attr]
        memo[(i, j)] = ok
        return ok

    if match(0, 0):
        return None
    # The first expected line that no printed line at its place matches, for the message.
    for i, pattern in enumerate(patterns):
        if pattern is None:
            break
        if i >= len(got) or not pattern.fullmatch(got[i]):
            shown = got[i] if i < len(got) else "(nothing)"
            return f"line {i + 1}: expected {want[i]!r}, printed {shown!r}"
    return "the lines differ (after a <...>)"


Answer = Callable[[str], str]


def run_document(path: Path, workdir: Path, env: dict[str, str], answers: dict[str, Answer],
                 after_block: Callable[[int, str], None] | None = None, timeout: float = 120) -> str:
    """Run every bash block of ``path``; returns the whole terminal transcript.

    ``answers`` maps a prompt regex to a function of the transcript so far that returns
    what to type. Raises AssertionError naming the block when a command fails or its
    output is not the ```text block after it.
    """
    found = blocks(path.read_text())
    assert found, f"{path} has no bash blocks"
    shell = pexpect.spawn("bash", ["--norc", "--noprofile"], env=env, cwd=str(workdir), encoding="utf-8",
                          timeout=timeout, dimensions=(50, 200))
    transcript: list[str] = []
    shell.sendline("stty -echo; PS1=''; PS2=''; set -m; bind 'set enable-bracketed-paste off'; echo __READ''Y__")
    shell.expect("__READY__")
    prompts = list(answers)
    try:
        for index, block in enumerate(found):
            script = workdir / f"block-{index}.sh"
            script.write_text("set -euo pipefail\n" + block.body + "set +euo pipefail\n")
            shell.sendline(f"source {script}; echo __BLOCK_DONE__$?")
            output: list[str] = []
            while True:
                which = shell.expect([r"__BLOCK_DONE__(\d+)", pexpect.EOF, *prompts])
                output.append(shell.before)
                where = f"{path.name} line {block.line}"
                if which == 0:
                    transcript.extend(output)
                    assert shell.match.group(1) == "0", f"the block at {where} failed:\n{block.body}\n{''.join(output)}"
                    break
                if which == 1:
                    raise AssertionError(f"the block at {where} failed (the shell exited):\n{block.body}\n"
                                         f"{''.join(transcript + output)}")
                output.append(shell.after)
                shell.sendline(answers[prompts[which - 2]]("".join(transcript + output)))
            if block.expected is not None:
                problem = mismatch(block.expected, "".join(output))
                assert problem is None, (
                    f"the block at {where} printed something else than the text block after it ({problem}):\n"
                    f"--- expected\n{block.expected}--- printed\n{''.join(output)}"
                )
            if after_block is not None:
                after_block(index, block.body)
    finally:
        session = shell.pid
        shell.sendline("exit")
        shell.close(force=True)
        _end_session(session)
    return "".join(transcript)


def _end_session(sid: int) -> None:
    """Stop what the document left running in the background (its jobs are in the shell's session)."""
    import os
    import signal
    import time

    def members() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                    fields = stat[stat.rindex(")") + 2 :].split()
                    if fields[0] != "Z" and int(fields[3]) == sid:
                        found.append(int(entry.name))
                except (OSError, ValueError, IndexError):
                    continue
        return found

    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        pids = members()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = members()
            time.sleep(0.2)
