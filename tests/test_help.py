"""`-h` is `--help` everywhere, and `PROG help [COMMAND...]` prints the same text."""

from __future__ import annotations

import pytest

from tests.harness import PCTL, PTELEPORT, PTSH, base_env, run

PROGRAMS = {"ptsh": PTSH, "pctl": PCTL, "pteleport": PTELEPORT}


@pytest.mark.parametrize(("prog", "words"), [
    ("ptsh", []), ("ptsh", ["db", "connect"]), ("pctl", ["tokens", "add"]), ("pteleport", ["dev"]),
])
def test_h_and_help_print_the_help(prog: str, words: list[str]) -> None:
    binary = PROGRAMS[prog]
    long = run([binary, *words, "--help"], base_env())
    short = run([binary, *words, "-h"], base_env())
    spelled = run([binary, "help", *words], base_env())
    assert long.returncode == short.returncode == spelled.returncode == 0, (short.stderr, spelled.stderr)
    assert f"Usage: {' '.join([prog, *words])}" in long.stdout
    assert short.stdout == long.stdout == spelled.stdout
