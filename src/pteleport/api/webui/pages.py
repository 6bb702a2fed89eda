"""The web UI's pages other than the audit ones: sign in and out, databases, account, users, roles.

Each function runs in an auth worker thread (``handler.run_work``) and calls the auth
service exactly as the API route of the matching CLI command does: ``login.login`` (through
the web session service), ``databases.list_for`` (``ptsh db ls``), ``users.list``
(``pctl users ls``), ``resources.get(role)`` (``pctl get roles``), ``whoami``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.errors import NotFound, PteleportError, http_status_for
from pteleport.api.errors import error_headers
from pteleport.api.webui.handler import LOGIN_COOKIE, SESSION_COOKIE, WebCall, safe_next, sign_in_page
from pteleport.api.webui.render import Html, Redirect

HIDDEN_LABELS = ("teleport.dev/", "teleport.hidden/", "teleport.internal/")


# --- signing in and out ------------------------------------------------------------------
def login_form(call: WebCall) -> Html | Redirect:
    if call.cookies.get(SESSION_COOKIE):
        try:
            call.sessions.get(call.cookies[SESSION_COOKIE])
            return Redirect(safe_next(call.query.get("next", "")))
        except Exception:  # noqa: S110 - an old cookie: show the form
            pass
    return sign_in_page(call)


def login_submit(call: WebCall) -> Html | Redirect:
    form = call.form
    try:
        cookie, session = call.sessions.sign_in(
            form.get("user", "").strip(), form.get("password", ""), form.get("otp", "").strip(), call.remote
        )
    except PteleportError as err:  # the sentence ptsh login prints, with its status
        return sign_in_page(call, err.message, http_status_for(err), error_headers(err))
    max_age = max(1, int((session.expires - call.auth.ctx.clock()).total_seconds()))
    return Redirect(safe_next(form.get("next", "")), {SESSION_COOKIE: (cookie, max_age), LOGIN_COOKIE: None})


def logout(call: WebCall) -> Html | Redirect:
    call.sessions.end(call.cookies.get(SESSION_COOKIE, ""))
    return Redirect("/web/login?signed_out=1", {SESSION_COOKIE: None})


def not_found(call: WebCall) -> Html | Redirect:
    raise NotFound(f"there is no page {call.path}; the console starts at /web/databases")


def home(call: WebCall) -> Html | Redirect:
    return Redirect("/web/databases")


# --- databases (ptsh db ls) --------------------------------------------------------------
def shown_labels(labels: dict[str, str]) -> list[tuple[str, str]]:
    """Labels as ``ptsh db ls`` shows them: plain keys first, then keys with a slash; internal ones hidden."""
    items = [(k, v) for k, v in labels.items() if not k.startswith(HIDDEN_LABELS)]
    return sorted((k, v) for k, v in items if "/" not in k) + sorted((k, v) for k, v in items if "/" in k)


def matches(db: dict[str, Any], words: list[str]) -> bool:
    """``ptsh db ls --search``: every word in the name, description, protocol or a label."""
    labels = db["metadata"].get("labels", {})
    text = " ".join(
        [db["metadata"]["name"], db["metadata"].get("description", ""), db["spec"].get("protocol", "")]
        + [f"{k}={v}" for k, v in labels.items()]
    ).lower()
    return all(word.lower() in text for word in words)


@dataclass
class Choice:
    """The db users (or names) a database's Connect box offers: concrete values, or free text."""

    options: list[str]
    free: bool  # the roles allow any value ("*" or a pattern)
    chosen: str

    @classmethod
    def of(cls, allowed: list[str], asked: str) -> Choice:
        concrete = [v for v in allowed if v != "*" and not v.startswith("^")]
        free = len(concrete) != len(allowed)
        if asked and (asked in concrete or free):
            chosen = asked
        else:
            chosen = concrete[0] if concrete else ""
        return cls(concrete, free, chosen)


@dataclass
class Connect:
    """What a database's Connect box shows: the exact ptsh commands, for the chosen db user and name."""

    name: str
    users: Choice
    names: Choice
    login: str
    connect: str
    tunnel: str


def connect_box(call: WebCall, db: dict[str, Any], db_user: str = "", db_name: str = "") -> Connect:
    name = db["metadata"]["name"]
    users = Choice.of(db["users"]["allowed"], db_user)
    names = Choice.of(db["names"]["allowed"], db_name)
    insecure = " --insecure" if call.info.web_cert_self_signed else ""
    route = f"--db-user={users.chosen or 'DB_USER'} --db-name={names.chosen or 'DB_NAME'}"
    return Connect(
        name,
        users,
        names,
        f"ptsh login --proxy={call.auth.ctx.settings.public_addr} --user={call.me().username}{insecure}",
        f"ptsh db connect {name} {route}",
        f"ptsh proxy db --tunnel {name} {route}",
    )


def databases(call: WebCall) -> Html:
    search = call.query.get("search", "").strip()
    words = [w for w in search.replace(",", " ").split() if w]
    dbs = [db for db in call.auth.databases.list_for(call.me()) if matches(db, words)]
    rows = [
        {
            "db": db,
            "labels": shown_labels(db["metadata"].get("labels", {})),
            "connect": connect_box(call, db),
        }
        for db in dbs
    ]
    return call.page("databases.html", rows=rows, search=search)


def database(call: WebCall) -> Html:
    """One database with its Connect box open (also where the box's form goes without JS)."""
    name = call.match["name"]
    for db in call.auth.databases.list_for(call.me()):
        if db["metadata"]["name"] == name:
            box = connect_box(call, db, call.query.get("db_user", "").strip(), call.query.get("db_name", "").strip())
            return call.page("database.html", db=db, labels=shown_labels(db["metadata"].get("labels", {})), connect=box)
    raise NotFound(f'database "{name}" not found; run "ptsh db ls" to see the databases you can use')


# --- account, users, roles ---------------------------------------------------------------
def account(call: WebCall) -> Html:
    me = call.me()
    checker = call.auth.ctx.checker(me)
    session = call.viewer.session if call.viewer else None
    left = (session.expires - call.auth.ctx.clock()) if session else None
    return call.page(
        "account.html",
        who=call.auth.whoami(me),
        max_ttl=_duration(checker.max_session_ttl().total_seconds()),
        expires=session.expires.strftime("%Y-%m-%d %H:%M:%S UTC") if session else "",
        left=_duration(left.total_seconds()) if left else "",
    )


def users(call: WebCall) -> Html:
    return call.page("users.html", users=call.auth.users.list(call.me()))


def roles(call: WebCall) -> Html:
    import yaml

    docs = call.auth.resources.get(call.me(), "role", None)
    rows = [{"doc": doc, "yaml": yaml.safe_dump(doc, sort_keys=False)} for doc in docs]
    return call.page("roles.html", roles=rows)


def _duration(seconds: float) -> str:
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes = rest // 60
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"
