"""The ``ptsh`` program: its hot paths without Typer; everything else through the Typer app.

Importing Typer (with click, and the pydantic it uses to coerce parameters, and rich to
print help) costs more than the commands people run most. So this module, the console
script's entry point, handles four forms itself and hands every other command line, as
it is, to ``ptsh.cli`` (same behaviour, only slower):

- ``ptsh version``: printed here, as ``ptsh.cli`` prints it.
- help (``ptsh``, ``ptsh help [WORDS]``, ``ptsh [WORDS] --help|-h``): the text, and exit
  code, that the Typer app produced the last time for the same words, in a terminal of the
  same width and with the same colour settings (help only: a command line that is an
  error is not kept). They are kept in ``$XDG_CACHE_HOME/ptsh``
  (default ``~/.cache/ptsh``), one file per key (plain text: see ``_save``); the key
  holds ptsh's version and the size and modification time of every source file of ptsh,
  common, Typer and rich, so changing a command, or upgrading, makes a new entry. A first run records while Typer prints.
- ``ptsh db ls [-v] [--format text|json]``: ``ptsh.dbls`` (one GET, the same table or JSON); on
  any error nothing is printed and the Typer command runs, which gives the sentence and exit code.
- ``ptsh db connect NAME [--db-user U | -u U] [--db-name N | -n N] [--proxy P] [-- PSQL ARGS]``:
  ``ptsh.connect`` runs it; errors become one line and the documented exit code, as in
  ``common.cli.run_app``.

With ``--debug``, ``PTELEPORT_DEBUG`` or shell completion, everything goes to ``ptsh.cli``.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # (importing typing costs more than printing the version)
if TYPE_CHECKING:
    from typing import Any

PROG = "ptsh"
HELP_FLAGS = ("--help", "-h")
_COLOUR_ENV = ("COLUMNS", "LINES", "TERM", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE",
               "COLORTERM", "_TYPER_FORCE_DISABLE_TERMINAL", "TYPER_USE_RICH")


def main() -> None:
    try:
        _main(sys.argv[1:])
    except KeyboardInterrupt:
        print("", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def _main(argv: list[str]) -> None:
    if os.environ.get("_PTSH_COMPLETE") or os.environ.get("PTELEPORT_DEBUG") or "--debug" in argv or "-d" in argv:
        _typer(argv)
    elif argv == ["version"]:
        from common import __version__

        print(f"{PROG} v{__version__} python{sys.version_info.major}.{sys.version_info.minor}")
    elif _is_help(argv):
        _help(argv)
    elif (args := connect_args(argv)) is not None:
        _run_connect(*args)
    elif argv[:2] == ["db", "ls"] and _db_ls(argv[2:]):
        pass
    else:
        _typer(argv)


def _typer(argv: list[str]) -> None:
    from common.cli import run_app
    from ptsh.cli import app

    run_app(app, PROG, argv)


def _db_ls(words: list[str]) -> bool:
    from ptsh.dbls import run

    return run(words)


# --- ptsh db connect ---------------------------------------------------------------------------
_CONNECT_OPTIONS = {"--db-user": "db_user", "-u": "db_user", "--db-name": "db_name", "-n": "db_name",
                    "--proxy": "proxy"}


def connect_args(argv: list[str]) -> tuple[str, str | None, str | None, str | None, list[str]] | None:
    """(database, db user, db name, proxy, psql arguments) of a plain ``db connect``, else None."""
    if argv[:2] != ["db", "connect"]:
        return None
    words = argv[2:]
    psql: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, psql = words[:cut], words[cut + 1 :]
    values: dict[str, str] = {}
    database: str | None = None
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        if word.startswith("--") and eq and name in _CONNECT_OPTIONS:
            values[_CONNECT_OPTIONS[name]] = value
        elif word in _CONNECT_OPTIONS and i + 1 < len(words) and not words[i + 1].startswith("-"):
            values[_CONNECT_OPTIONS[word]] = words[i + 1]
            i += 1
        elif not word.startswith("-") and database is None:
            database = word
        else:
            return None  # anything else: Typer parses it (and explains what is wrong)
        i += 1
    if database is None:
        return None
    return database, values.get("db_user"), values.get("db_name"), values.get("proxy"), psql


def _run_connect(database: str, db_user: str | None, db_name: str | None, proxy: str | None, psql: list[str]) -> None:
    from common.errors import PteleportError, exit_code_for
    from ptsh.connect import connect

    try:
        code = connect(database, db_user, db_name, proxy, psql)
    except PteleportError as err:
        print(f"ERROR: {err.message}", file=sys.stderr, flush=True)
        raise SystemExit(exit_code_for(err)) from None
    except KeyboardInterrupt:
        print("", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    # psql has exited and every socket and thread of the tunnel is closed: skip the
    # interpreter's teardown (module by module, ~3 ms), which nothing here needs.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# --- help -----------------------------------------------------------------------------------------
def _is_help(argv: list[str]) -> bool:
    if not argv or argv[0] == "help":
        return all(not w.startswith("-") for w in argv)
    return argv[-1] in HELP_FLAGS and all(not w.startswith("-") for w in argv[:-1])


def _help(argv: list[str]) -> None:
    path, key = _help_cache(argv)
    saved = _load(path, key) if path is not None else None
    if saved is not None:
        code, out_text, err_text = saved
        sys.stdout.write(out_text)
        sys.stderr.write(err_text)
        sys.stdout.flush()
        raise SystemExit(code)
    out, err = _Tee(sys.stdout), _Tee(sys.stderr)
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    code: Any = 0
    try:
        _typer(argv)
    except SystemExit as exc:
        code = exc.code
        raise
    finally:
        sys.stdout, sys.stderr = out.stream, err.stream
        if path is not None and code in (None, 0, 2) and out.parts and not err.parts:  # help, not an error
            _save(path, (key, code or 0, "".join(out.parts), "".join(err.parts)))


class _Tee:
    """A text stream that also keeps what is written to it (everything else is the stream's)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        written = self.stream.write(text)  # first: click probes with b"", which a text stream refuses
        self.parts.append(text)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _help_cache(argv: list[str]) -> tuple[str | None, str]:
    """Where the help for ``argv`` in this terminal is kept, and its key (None: do not cache).

    The file is named by a CRC of the key and holds the key itself, which must match: the
    CRC only spreads the entries, it does not tell them apart. (hashlib, pathlib, json and
    importlib.util would cost more than the help itself.)
    """
    try:
        from common import __version__

        parts: list[Any] = [__version__, sys.version, argv, [os.environ.get(k) for k in _COLOUR_ENV]]
        for fd in (1, 2):
            tty = os.isatty(fd)
            parts.append([tty, tuple(os.get_terminal_size(fd)) if tty else None])
        here = os.path.dirname(os.path.realpath(__file__))
        dirs = [here, os.path.join(os.path.dirname(here), "common")]
        for name in ("typer", "rich"):
            spec = _find_spec(name)
            if spec is not None and spec.origin:
                dirs.append(os.path.dirname(spec.origin))
        for folder in dirs:
            with os.scandir(folder) as entries:
                parts.append(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries
                                    if e.name.endswith(".py")))
        key = repr(parts)
    except (OSError, ValueError, ImportError):
        return None, ""
    import zlib

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ptsh", f"help-{zlib.crc32(key.encode()):08x}.txt"), key


def _find_spec(name: str) -> Any:
    """``importlib.util.find_spec(name)`` for a top-level module not imported yet, without importlib.util."""
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        spec = find(name, None) if find is not None else None
        if spec is not None:
            return spec
    return None


# An entry: this line, then "CODE LEN(KEY) LEN(OUT) LEN(ERR)", then key, out and err as they are.
_MAGIC = "ptsh help 1\n"


def _load(path: str, key: str) -> tuple[int, str, str] | None:
    """(exit code, stdout, stderr) kept for ``key`` at ``path``, else None."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            text = fh.read()
        if not text.startswith(_MAGIC):
            return None
        sizes, _, rest = text[len(_MAGIC) :].partition("\n")
        code, n_key, n_out, n_err = (int(n) for n in sizes.split())
        if len(rest) != n_key + n_out + n_err or rest[:n_key] != key:
            return None
        return code, rest[n_key : n_key + n_out], rest[n_key + n_out :]
    except (OSError, ValueError):
        return None


def _save(path: str, entry: tuple[str, int, str, str]) -> None:
    """Write the entry whole or not at all (a temporary file renamed into place)."""
    import tempfile

    key, code, out, err = entry
    try:
        folder = os.path.dirname(path)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".help-")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(f"{_MAGIC}{int(code)} {len(key)} {len(out)} {len(err)}\n{key}{out}{err}")
        os.replace(tmp, path)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    main()
