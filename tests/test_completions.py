"""Shell completion: completions/ is what scripts/gen-completions makes from the apps now, and
the programs answer TAB (bash, zsh, fish) without loading anything heavy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import BIN, base_env

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen-completions"
PROGS = ("ptsh", "pctl", "pteleport")
HEAVY = ("httpx", "cryptography", "keyring", "yaml", "aiohttp", "boto3", "psycopg", "pteleport.process")


def _env(**extra: str) -> dict[str, str]:
    return base_env(PTELEPORT_BIN=str(BIN), **extra)


def test_completions_are_up_to_date() -> None:
    result = subprocess.run([str(SCRIPT), "--check"], capture_output=True, text=True, env=_env(), timeout=60)
    assert result.returncode == 0, (
        f"completions/ is stale: run scripts/gen-completions\n{result.stdout}{result.stderr}"
    )


def test_every_program_has_three_scripts() -> None:
    names = sorted(p.name for p in (ROOT / "completions").iterdir())
    expected = sorted(n for prog in PROGS for n in (f"{prog}.bash", f"_{prog}", f"{prog}.fish"))
    assert names == expected
    for prog in PROGS:
        var = f"_{prog.upper()}_COMPLETE"
        for name in (f"{prog}.bash", f"_{prog}", f"{prog}.fish"):
            assert var in (ROOT / "completions" / name).read_text(), name


def test_check_fails_when_a_script_is_stale(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, copy / "scripts" / "gen-completions")
    shutil.copytree(ROOT / "completions", copy / "completions")
    (copy / "completions" / "ptsh.bash").write_text("# edited by hand\n")
    result = subprocess.run([str(copy / "scripts" / "gen-completions"), "--check"], capture_output=True, text=True,
                            env=_env(), timeout=60)
    assert result.returncode == 1
    assert "completions/ is stale" in result.stderr
    regenerated = subprocess.run([str(copy / "scripts" / "gen-completions")], capture_output=True, text=True,
                                 env=_env(), timeout=60)
    assert regenerated.returncode == 0, regenerated.stderr
    assert (copy / "completions" / "ptsh.bash").read_text() == (ROOT / "completions" / "ptsh.bash").read_text()


def _bash_complete(words: str) -> list[str]:
    """What bash offers after sourcing completions/<prog>.bash and pressing TAB at the end of ``words``."""
    prog = words.split()[0]
    cword = len(words.split()) if words.endswith(" ") else len(words.split()) - 1
    script = (
        f"source {ROOT / 'completions' / (prog + '.bash')}\n"
        f"COMP_WORDS=({words}{chr(34) * 2 if words.endswith(' ') else ''})\n"
        f"COMP_CWORD={cword}\n"
        f"_{prog}_completion {prog}\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = _env(PATH=f"{BIN}:{base_env()['PATH']}")
    result = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("ptsh db ", {"ls", "login", "logout", "connect", "env", "config"}),
        ("ptsh ", {"login", "logout", "status", "db", "proxy", "version"}),
        ("ptsh login --b", {"--bot"}),
        ("pctl bots ", {"add", "ls", "rm"}),
        ("pctl auth sign --db-", {"--db-service", "--db-user", "--db-name"}),
        ("pteleport db ", {"start", "configure"}),
    ],
)
def test_bash_completion_answers(words: str, expected: set[str]) -> None:
    offered = set(_bash_complete(words))
    assert expected <= offered, offered


def test_zsh_and_fish_answers() -> None:
    env = _env(_TYPER_COMPLETE_ARGS="pctl bots ", _PCTL_COMPLETE="complete_zsh")
    zsh = subprocess.run([str(BIN / "pctl")], capture_output=True, text=True, env=env, timeout=30)
    assert zsh.returncode == 0 and '"add":' in zsh.stdout and '"rm":' in zsh.stdout, zsh.stdout + zsh.stderr
    env = _env(_TYPER_COMPLETE_ARGS="ptsh proxy ", _PTSH_COMPLETE="complete_fish",
               _TYPER_COMPLETE_FISH_ACTION="get-args")
    fish = subprocess.run([str(BIN / "ptsh")], capture_output=True, text=True, env=env, timeout=30)
    assert fish.returncode == 0 and fish.stdout.startswith("db"), fish.stdout + fish.stderr


@pytest.mark.parametrize("prog", PROGS)
def test_a_tab_press_loads_nothing_heavy(prog: str) -> None:
    module = "pteleport.cli" if prog == "pteleport" else f"{prog}.cli"
    code = (
        "import os, sys\n"
        f"os.environ['_{prog.upper()}_COMPLETE'] = 'complete_bash'\n"
        f"os.environ['COMP_WORDS'] = '{prog} '\n"
        "os.environ['COMP_CWORD'] = '1'\n"
        "from common.cli import run_app\n"
        f"from {module} import app\n"
        "try:\n"
        f"    run_app(app, {prog!r}, [])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=base_env(), timeout=30)
    assert result.returncode == 0, result.stderr
    assert "HEAVY=\n" in result.stderr, result.stderr
    assert "version" in result.stdout.split()
