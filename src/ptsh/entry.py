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
  (default ``~/.cache/ptsh``), one file per key; the key holds ptsh's version and the size
  and modification time of every source file of ptsh, common, Typer and rich, so changing
  a command, or upgrading, makes a new entry. A first run records while Typer prints.
- ``ptsh db ls [-v]``: one GET with ``http.client`` (not httpx) and the same table; on any
  error nothing is printed and the Typer command runs, which gives the sentence and exit code.
- ``ptsh db connect NAME [--db-user U | -u U] [--db-name N | -n N] [--proxy P] [-- PSQL ARGS]``:
  ``ptsh.connect`` runs it; errors become one line and the documented exit code, as in
  ``common.cli.run_app``.

With ``--debug``, ``PTELEPORT_DEBUG`` or shell completion, everything goes to ``ptsh.cli``.
"""

from __future__ import annotations

import os
import sys
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
    elif argv in (["db", "ls"], ["db", "ls", "-v"], ["db", "ls", "--verbose"]) and _db_ls(verbose=len(argv) == 3):
        pass
    else:
        _typer(argv)


def _typer(argv: list[str]) -> None:
    from common.cli import run_app
    from ptsh.cli import app

    run_app(app, PROG, argv)


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
    raise SystemExit(code)


# --- ptsh db ls ----------------------------------------------------------------------------------
def _db_ls(verbose: bool) -> bool:
    """``ptsh db ls [-v]`` with one GET over ``http.client``; False (nothing printed) when
    anything is not as expected, and the Typer command then runs and explains it."""
    import json

    try:
        from ptsh.databases import db_table
        from ptsh.login_state import current_login

        login = current_login(None)
        status, body = _get(login, "/v1/databases")
        if status != 200:
            return False
        dbs = json.loads(body)
        text = db_table(login, dbs, verbose)
    except Exception:  # the Typer command runs instead: it gives the sentence and the exit code
        return False
    print(text)
    if len(dbs) >= 20:
        from ptsh.databases import DB_LS_HINT

        print(DB_LS_HINT, file=sys.stderr, flush=True)
    return True


def _get(login: Any, path: str) -> tuple[int, bytes]:
    """One HTTPS GET to the proxy with the login's certificate (what ``common.client`` sends)."""
    import http.client
    import socket

    from common.tlsctx import ALPN_HTTP, INTERNAL_SNI, client_context
    from ptsh.databases import proxy_host_port

    host, port = proxy_host_port(login)
    ctx = client_context(cas=login.host_cas, cert=login.cert, key=login.key, alpn=[ALPN_HTTP])

    class Connection(http.client.HTTPSConnection):
        def connect(self) -> None:
            raw = socket.create_connection((self.host, self.port), self.timeout)
            self.sock = ctx.wrap_socket(raw, server_hostname=INTERNAL_SNI)

    conn = Connection(host, port, timeout=30)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- help -----------------------------------------------------------------------------------------
def _is_help(argv: list[str]) -> bool:
    if not argv or argv[0] == "help":
        return all(not w.startswith("-") for w in argv)
    return argv[-1] in HELP_FLAGS and all(not w.startswith("-") for w in argv[:-1])


def _help(argv: list[str]) -> None:
    path = _help_cache_path(argv)
    if path is not None:
        try:
            import json

            saved = json.loads(path.read_text())
            sys.stdout.write(saved["out"])
            sys.stderr.write(saved["err"])
            sys.stdout.flush()
            raise SystemExit(int(saved["code"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
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
            _save(path, {"code": code or 0, "out": "".join(out.parts), "err": "".join(err.parts)})


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


def _help_cache_path(argv: list[str]) -> Any:
    """Where the help for ``argv`` in this terminal is kept (None: cannot tell, do not cache)."""
    import hashlib
    from pathlib import Path

    try:
        import importlib.util

        from common import __version__

        parts: list[Any] = [__version__, sys.version, argv, [os.environ.get(k) for k in _COLOUR_ENV]]
        for fd in (1, 2):
            tty = os.isatty(fd)
            parts.append([tty, tuple(os.get_terminal_size(fd)) if tty else None])
        here = Path(__file__).resolve().parent
        dirs = [here, here.parent / "common"]
        for name in ("typer", "rich"):
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.origin:
                dirs.append(Path(spec.origin).parent)
        for folder in dirs:
            with os.scandir(folder) as entries:
                parts.append(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries
                                    if e.name.endswith(".py")))
        key = hashlib.sha256(repr(parts).encode()).hexdigest()[:32]
    except (OSError, ValueError, ImportError):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ptsh" / f"help-{key}.json"


def _save(path: Any, doc: dict[str, Any]) -> None:
    """Write the entry whole or not at all (a temporary file renamed into place)."""
    import json
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".help-")
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)
    except OSError:
        pass


if __name__ == "__main__":
    main()
