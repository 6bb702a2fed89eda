"""`pctl create | get | rm`: resources as YAML documents (roles, users, databases, tokens)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from common.cli import render, safe_text
from common.errors import BadParameter, UsageError
from common.kinds import KIND_ALIASES
from pctl.output import DataFormatOpt, Fmt, labels_text
from pctl.output import safe_table as table
from pctl.tokens import tokens_table
from pctl.users import users_table

KINDS_HELP = "roles, role/NAME, users, user/NAME, db, db/NAME, tokens, locks, lock/ID, db_servers"


def _jsonable(value: Any) -> Any:
    """YAML may hold dates and timestamps; the API takes JSON."""
    import datetime as dt

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return value


def parse_documents(text: str, source: str) -> list[Any]:
    """Every non-empty YAML document of ``text``; bad YAML is one line naming the line."""
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise BadParameter(f"{source}{where}: {problem} (not valid YAML)") from None
    if not docs:
        raise BadParameter(f"{source} holds no resources")
    return [_jsonable(d) for d in docs]


def create(
    file: Annotated[str | None, typer.Argument(help="YAML file (several documents allowed); stdin if omitted.")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite resources that exist.")] = False,
) -> None:
    """Create or update resources from YAML (a file, or stdin: pctl create <<EOF ... EOF)."""
    from pctl.connect import client

    if file is None or file == "-":
        if sys.stdin.isatty():
            raise UsageError("pass a YAML FILE, or pipe the YAML on stdin (pctl create < role.yaml)")
        text, source = sys.stdin.read(), "stdin"
    else:
        try:
            with open(file, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise BadParameter(f"cannot read {file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise BadParameter(f"{file} is not UTF-8 text") from None
        source = file
    docs = parse_documents(text, source)
    with client() as api:
        answer = api.post("/v1/resources", {"documents": docs, "force": force})
    for message in answer.get("messages", []):
        print(safe_text(message))


def split_ref(ref: str, *, need_name: bool = False) -> tuple[str, str | None]:
    from urllib.parse import quote

    kind, sep, name = ref.strip().partition("/")
    if not kind or (sep and not name):
        raise UsageError(f'"{ref}" is not KIND or KIND/NAME (kinds: {KINDS_HELP})')
    if need_name and not name:
        raise UsageError(f'pass KIND/NAME, e.g. role/dba (got "{ref}")')
    if kind.lower() not in KIND_ALIASES:
        raise UsageError(f'unknown resource kind "{safe_text(kind)}"; use {KINDS_HELP}')
    return quote(kind, safe=""), (quote(name, safe="") if name else None)


def _roles_table(docs: list[dict]) -> str:
    rows = []
    for d in docs:
        allow = d.get("spec", {}).get("allow", {})
        rows.append(
            [
                d["metadata"]["name"],
                labels_text(allow.get("db_labels"), hide_internal=False),
                ",".join(allow.get("db_users", [])),
                ",".join(allow.get("db_names", [])),
            ]
        )
    return table(["Role", "DB Labels", "DB Users", "DB Names"], rows)


def _db_table(docs: list[dict]) -> str:
    rows = [
        [
            d["metadata"]["name"],
            d["spec"].get("protocol", ""),
            d["spec"].get("uri", ""),
            labels_text(d["metadata"].get("labels")),
        ]
        for d in docs
    ]
    return table(["Name", "Protocol", "URI", "Labels"], rows)


def _scope_text(scope: dict | None) -> str:
    if not scope:
        return "any"
    parts = [*scope.get("db_names", [])]
    parts += [f"{k}={'|'.join(v)}" for k, v in sorted((scope.get("db_labels") or {}).items())]
    return ",".join(parts) or "any"


def db_servers_table(docs: list[dict]) -> str:
    rows = []
    for d in docs:
        db = d.get("spec", {}).get("database", {})
        rows.append(
            [
                d["spec"].get("hostname", ""),
                d["spec"].get("host_id", ""),
                db.get("metadata", {}).get("name", d["metadata"]["name"]),
                db.get("spec", {}).get("protocol", ""),
                db.get("spec", {}).get("uri", ""),
                labels_text(db.get("metadata", {}).get("labels")),
                _scope_text(d["spec"].get("scope")),
            ]
        )
    rows.sort(key=lambda r: (r[0], r[2], r[1]))
    return table(["Host", "Host ID", "Name", "Protocol", "URI", "Labels", "Scope"], rows)


def _locks_table(docs: list[dict]) -> str:
    from pctl.locks import locks_table

    return locks_table(docs)


TEXT_TABLES = {
    "lock": _locks_table,
    "role": _roles_table,
    "user": users_table,
    "db": _db_table,
    "db_server": db_servers_table,
    "token": tokens_table,
}


def get(
    ref: Annotated[str, typer.Argument(help=f"What to show: {KINDS_HELP}.")],
    fmt: DataFormatOpt = Fmt.yaml,
) -> None:
    """Show resources as YAML (default), JSON or a table."""
    from pctl.connect import client

    kind, name = split_ref(ref)
    path = f"/v1/resources/{kind}" + (f"/{name}" if name else "")
    with client() as api:
        docs = api.get(path)
    if fmt == Fmt.text:
        to_text = TEXT_TABLES.get(
            KIND_ALIASES.get(kind.lower(), kind), lambda ds: "\n".join(d["metadata"]["name"] for d in ds)
        )
        render(docs, fmt, lambda ds: to_text(ds) if ds else "")
    else:
        render(docs, fmt)


def rm(ref: Annotated[str, typer.Argument(help="KIND/NAME, e.g. role/dba or db/pg1.")]) -> None:
    """Delete a resource."""
    from pctl.connect import client

    kind, name = split_ref(ref, need_name=True)
    with client() as api:
        answer = api.delete(f"/v1/resources/{kind}/{name}")
    print(safe_text(answer.get("message", f"{ref} has been deleted")))
