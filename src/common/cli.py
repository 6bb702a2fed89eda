"""What the three CLIs share: running a Typer app with one clear line per error and the
documented exit codes, output formats, and reading secrets from a terminal.

Only typer and the standard library are imported at module level, so ``--help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import timedelta
from enum import Enum, StrEnum
from typing import Annotated, Any, NoReturn

import typer

from common.errors import EXIT_USAGE, BadParameter, PteleportError, UsageError, exit_code_for
from common.text import safe_text, table  # noqa: F401  (re-exported: the CLIs import them from here)


class Format(StrEnum):
    text = "text"
    json = "json"
    yaml = "yaml"


class DataFormat(StrEnum):
    yaml = "yaml"
    json = "json"
    text = "text"


FORMAT_OPTION = typer.Option(Format.text, "--format", "-f", help="Output format: text, json or yaml.")

DEBUG = {"on": bool(os.environ.get("PTELEPORT_DEBUG"))}
# Every program and subcommand takes -h as well as --help (set once, in run_app).
HELP_OPTIONS = ["-h", "--help"]


def eprint(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def fail(message: str, code: int = 1) -> NoReturn:
    eprint(f"ERROR: {message}")
    raise SystemExit(code)


def run_app(app: typer.Typer, prog: str, argv: list[str] | None = None) -> None:
    """Run a Typer app; errors become one line on stderr and the documented exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get(completion_var(prog)):
        enable_completion()
    if "--debug" in argv or "-d" in argv[:1]:
        DEBUG["on"] = True
    try:
        result = app(args=argv, prog_name=prog, standalone_mode=False, help_option_names=HELP_OPTIONS)
    except PteleportError as err:
        if DEBUG["on"]:
            import traceback

            traceback.print_exc()
        eprint(f"ERROR: {err.message}")
        if err.detail and DEBUG["on"]:
            eprint(f"detail: {err.detail}")
        raise SystemExit(exit_code_for(err)) from None
    except KeyboardInterrupt:
        eprint("")
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except BrokenPipeError:
        raise SystemExit(0) from None
    except Exception as exc:
        _click_error(exc, prog)
    if isinstance(result, int) and not isinstance(result, bool):
        raise SystemExit(result)


def completion_var(prog: str) -> str:
    """The variable the shell sets when it asks for completions: ``_PTSH_COMPLETE``."""
    return f"_{prog.replace('-', '_').upper()}_COMPLETE"


def enable_completion() -> None:
    """Register Typer's bash, zsh and fish completion classes.

    Our apps say ``add_completion=False`` (no ``--install-completion`` options, and nothing
    loaded at start-up); the scripts in completions/ call the program back with
    ``_PROG_COMPLETE=complete_<shell>``, and only then is this run.
    """
    from typer.completion import completion_init

    completion_init()


def _click_error(exc: Exception, prog: str) -> NoReturn:
    from typer import exceptions as typer_exc
    from typer._click import exceptions as click_exc  # typer vendors click

    if isinstance(exc, typer_exc.Abort):
        eprint("Aborted.")
        raise SystemExit(130)
    if isinstance(exc, click_exc.ClickException):
        if isinstance(exc, click_exc.UsageError):
            if isinstance(exc, click_exc.NoArgsIsHelpError) or not exc.format_message():
                raise SystemExit(EXIT_USAGE)  # the help was printed already
            ctx = exc.ctx
            hint = f"\nRun '{ctx.command_path} --help' for usage." if ctx is not None else ""
            eprint(f"ERROR: {exc.format_message()}{hint}")
            raise SystemExit(EXIT_USAGE)
        eprint(f"ERROR: {exc.format_message()}")
        raise SystemExit(exc.exit_code)
    if isinstance(exc, typer_exc.Exit):
        raise SystemExit(exc.exit_code)
    if DEBUG["on"]:
        raise exc
    if isinstance(exc, OSError):
        # A system call failed where no command expected it: its own words, not a class name.
        what = exc.strerror or str(exc) or type(exc).__name__
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        eprint(f"ERROR: {what}{where}; run with --debug for details")
        raise SystemExit(1)
    eprint(f"ERROR: unexpected {type(exc).__name__}: {exc} (run with --debug for details)")
    raise SystemExit(1)


def flag_duration(
    text: str, flag: str, *, example: str = "1h", bare_minutes: bool = False, positive: bool = True
) -> timedelta:
    """A duration given on the command line: a value that is not one is wrong usage (exit 2)."""
    from common.durations import parse_duration

    try:
        delta = parse_duration(text, what=flag, bare_minutes=bare_minutes)
    except BadParameter as exc:
        raise UsageError(exc.message) from None
    if positive and delta.total_seconds() <= 0:
        raise UsageError(f"{flag} must be positive, e.g. {flag}={example}")
    return delta


def render(data: Any, fmt: Format | str, text: Callable[[Any], str] | None = None) -> None:
    """Print ``data`` as JSON or YAML to stdout, or with ``text`` for the text format."""
    fmt = fmt.value if isinstance(fmt, Enum) else fmt
    if fmt == "json":
        import json

        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    elif fmt == "yaml":
        import yaml

        if isinstance(data, list):
            sys.stdout.write(yaml.safe_dump_all(data, sort_keys=False, default_flow_style=False) if data else "")
        else:
            sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    else:
        out = text(data) if text is not None else str(data)
        if out:
            sys.stdout.write(out if out.endswith("\n") else out + "\n")
    sys.stdout.flush()


def prompt_secret(prompt: str, flag_hint: str) -> str:
    """Ask on the terminal without echo; refuse (never wait) when stdin is not a terminal."""
    if not sys.stdin.isatty():
        raise UsageError(f"{prompt.rstrip(': ')} is needed but stdin is not a terminal; {flag_hint}")
    import getpass

    return getpass.getpass(prompt)


def prompt_line(prompt: str, flag_hint: str) -> str:
    if not sys.stdin.isatty():
        raise UsageError(f"{prompt.rstrip(': ')} is needed but stdin is not a terminal; {flag_hint}")
    sys.stderr.write(prompt)
    sys.stderr.flush()
    return sys.stdin.readline().strip()


def add_version_command(app: typer.Typer, prog: str) -> None:
    """`PROG version [--format text|json|yaml]`, the same for the three programs."""

    @app.command()
    def version(
        fmt: Format = typer.Option(Format.text, "--format", "-f", help="Output format: text, json or yaml."),
    ) -> None:
        """Print the version."""
        from common import __version__

        doc = {"version": __version__, "python": f"{sys.version_info.major}.{sys.version_info.minor}"}
        render(doc, fmt, lambda d: f"{prog} v{d['version']} python{d['python']}")


def add_help_command(app: typer.Typer, prog: str) -> None:
    """`PROG help [COMMAND...]`: the same text as `PROG [COMMAND...] --help`."""

    @app.command("help")
    def help_(
        command: Annotated[
            list[str] | None, typer.Argument(help="The command to explain, e.g. db connect.", show_default=False)
        ] = None,
    ) -> None:
        """Show the help of the program or of one of its commands."""
        print_help(app, prog, command or [])


def print_help(app: typer.Typer, prog: str, words: list[str]) -> None:
    import typer.main
    from typer._click.core import Context
    from typer.core import TyperGroup

    command: Any = typer.main.get_command(app)
    ctx = Context(command, info_name=prog, help_option_names=HELP_OPTIONS)
    for index, word in enumerate(words):
        sub = command.get_command(ctx, word) if isinstance(command, TyperGroup) else None
        if sub is None:
            known = " ".join([prog, *words[:index]])
            raise UsageError(f'"{" ".join([prog, *words[: index + 1]])}" is not a command; run "{known} --help" for the list')
        command, ctx = sub, Context(sub, info_name=word, parent=ctx)
    print(command.get_help(ctx))  # as --help does: Typer prints with rich and returns "", else plain text
