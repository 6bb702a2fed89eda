"""`ptsh request create | ls | show | review | drop` (tsh request), and assuming a request into the profile.

``create`` prints the request and, unless ``--nowait``, waits for the decision with a long
poll (``GET /v1/requests/ID?wait=...``), so an approval or a denial arrives at once. On
approval it gets a certificate with the extra roles (capped by the request's session TTL)
and stores it in the profile, as ``ptsh login --request-id=ID`` does. ``drop`` gets a
certificate without them again. With ``--format json`` the request document goes to stdout
and the progress lines to stderr, so a script can drive every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from common.cli import Format, eprint, render, safe_text

if TYPE_CHECKING:
    from ptsh.login_state import Login

request_app = typer.Typer(help="Request extra roles, review requests, and assume approved ones.", no_args_is_help=True)

FormatOpt = Annotated[Format, typer.Option("--format", help="Output format: text, json or yaml.")]
IdArg = Annotated[str, typer.Argument(metavar="ID", help="The request's ID (ptsh request ls).")]
WAIT_SECONDS = 20  # per long poll; PTSH_REQUEST_WAIT overrides it (tests use short polls)


def _path(rid: str) -> str:
    from urllib.parse import quote

    return f"/v1/requests/{quote(rid, safe='')}"


def _seconds(value: str | None, flag: str) -> int | None:
    if not value:
        return None
    from common.cli import flag_duration

    return int(flag_duration(value, flag).total_seconds())


def _split(values: str | None) -> list[str]:
    return [v.strip() for v in (values or "").split(",") if v.strip()]


def assume(login: Login, add: list[str], drop: list[str]) -> dict[str, Any]:
    """Trade the profile's certificate for one with (or without) the requests' roles; store it."""
    from common.errors import BadParameter
    from common.tls import load_cert, load_private_key, public_key_pem

    if login.profile is None or login.store is None:
        raise BadParameter(
            "an identity file cannot take on an access request; log in with a profile (ptsh login) to assume it"
        )
    key = login.key
    public = public_key_pem(load_private_key(key)).decode()
    with login.client() as api:
        answer = api.post("/v1/certs/reissue", {"public_key": public, "add": add, "drop": drop})
    cert = str(answer["cert"]).encode()
    if load_cert(cert).public_key() != load_private_key(key).public_key():
        raise BadParameter("the cluster returned a certificate for another key; not storing it")
    login.store.save(login.profile, cert, key, login.host_cas)
    return answer


def _print_status() -> None:
    from ptsh.login_state import current_login
    from ptsh.status import profile_text

    print(profile_text(current_login(), active=True), flush=True)


@request_app.command("create")
def create(
    roles: Annotated[str, typer.Option("--roles", help="Roles to request, comma-separated.")] = "",
    reason: Annotated[str, typer.Option("--reason", help="Why you need them (reviewers read it).")] = "",
    reviewers: Annotated[str, typer.Option("--reviewers", help="Suggested reviewers, comma-separated.")] = "",
    nowait: Annotated[bool, typer.Option("--nowait", help="Print the request and return; do not wait.")] = False,
    request_ttl: Annotated[
        str | None, typer.Option("--request-ttl", help="How long the request may wait for review (default 1h).")
    ] = None,
    session_ttl: Annotated[
        str | None, typer.Option("--session-ttl", help="How long the granted roles last (default: your login's).")
    ] = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Request extra roles; wait for the decision and assume them (unless --nowait)."""
    import os
    import time

    from common.errors import AccessDenied, UsageError
    from common.request_text import LOGIN_HINT, request_text, status_of
    from ptsh.login_state import current_login

    wanted = _split(roles)
    if not wanted:
        raise UsageError("pass --roles=ROLE[,ROLE]: the roles to request")
    body = {
        "roles": wanted,
        "reason": reason,
        "reviewers": _split(reviewers),
        "request_ttl_seconds": _seconds(request_ttl, "--request-ttl"),
        "session_ttl_seconds": _seconds(session_ttl, "--session-ttl"),
    }
    text = fmt == Format.text
    say = print if text else eprint
    login = current_login()
    say("Creating request...")
    with login.client() as api:
        doc = api.post("/v1/requests", body)
        rid = doc["metadata"]["name"]
        if text:
            print(request_text(doc))
            print(f"\nhint: {LOGIN_HINT}\n", flush=True)
        if nowait:
            if not text:
                render(doc, fmt)
            return
        say("Waiting for request approval...")
        wait = float(os.environ.get("PTSH_REQUEST_WAIT") or WAIT_SECONDS)
        try:
            while status_of(doc) == "PENDING":
                doc = api.get(_path(rid), params={"wait": wait})
                if status_of(doc) == "PENDING":
                    time.sleep(0.1)
        except KeyboardInterrupt:
            eprint(f"\nThe request stays pending; once approved, run: ptsh login --request-id={rid}")
            raise
    state = status_of(doc)
    if state != "APPROVED":
        why = doc["spec"].get("resolve_reason")
        if not text:
            render(doc, fmt)
        if state == "EXPIRED":
            raise AccessDenied(f"request {rid} expired before it was reviewed; create a new one")
        raise AccessDenied(f"request {rid} has been set to {state}" + (f', reason="{why}"' if why else ""))
    why = doc["spec"].get("resolve_reason")
    say(f'\nApproval received, reason="{safe_text(why)}"' if why else "\nApproval received, getting updated certificates...")
    if login.profile is None:
        say(f"(an identity file cannot take on the request; log in with a profile, then ptsh login --request-id={rid})")
    else:
        assume(login, [rid], [])
    if text:
        print()
        if login.profile is not None:
            _print_status()
    else:
        render(doc, fmt)


@request_app.command("ls")
def ls(
    mine: Annotated[bool, typer.Option("--my-requests", help="Only your own requests.")] = False,
    reviewable: Annotated[
        bool, typer.Option("--reviewable", help="Only others' requests you have not reviewed yet.")
    ] = False,
    suggested: Annotated[bool, typer.Option("--suggested", help="Only requests that suggest you as a reviewer.")] = False,
    fmt: FormatOpt = Format.text,
) -> None:
    """List the access requests you may see: yours, and those you may review."""
    from common.request_text import LOGIN_HINT, requests_table
    from ptsh.login_state import current_login

    login = current_login()
    with login.client() as api:
        docs = api.get("/v1/requests")
    me = login.username

    def reviewed(doc: dict[str, Any]) -> bool:
        return any(r.get("author") == me for r in doc["spec"].get("reviews") or [])

    if mine:
        docs = [d for d in docs if d["spec"]["user"] == me]
    if reviewable:
        docs = [d for d in docs if d["spec"]["user"] != me and not reviewed(d)]
    if suggested:
        docs = [d for d in docs if d["spec"]["user"] != me and not reviewed(d)
                and me in (d["spec"].get("suggested_reviewers") or [])]
    if fmt != Format.text:
        render(docs, fmt)
        return
    print(requests_table(docs))
    if docs:
        print("\nhint: use 'ptsh request show <request-id>' for additional details")
        print(f"      {LOGIN_HINT}")


@request_app.command("show")
def show(request_id: IdArg, fmt: FormatOpt = Format.text) -> None:
    """Show one access request, its reviews and its state."""
    from common.request_text import LOGIN_HINT, request_text
    from ptsh.login_state import current_login

    with current_login().client() as api:
        doc = api.get(_path(request_id))
    if fmt != Format.text:
        render(doc, fmt)
        return
    print(request_text(doc))
    print(f"\nhint: {LOGIN_HINT}")


@request_app.command("review")
def review(
    request_id: IdArg,
    approve: Annotated[bool, typer.Option("--approve", help="Approve the request.")] = False,
    deny: Annotated[bool, typer.Option("--deny", help="Deny the request.")] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why (the requester reads it).")] = "",
    fmt: FormatOpt = Format.text,
) -> None:
    """Approve or deny someone else's access request (your roles' review_requests decide which)."""
    from common.errors import UsageError
    from ptsh.login_state import current_login

    if approve == deny:
        raise UsageError("pass exactly one of --approve or --deny")
    with current_login().client() as api:
        doc = api.post(f"{_path(request_id)}/reviews", {"approve": approve, "reason": reason})
    if fmt != Format.text:
        render(doc, fmt)
        return
    eprint(f"Successfully submitted review.  Request state: {doc['spec']['state']}")


@request_app.command("drop")
def drop(
    request_ids: Annotated[
        list[str], typer.Argument(metavar="ID...", help='Requests to drop from your certificate ("*" for all).')
    ],
    fmt: FormatOpt = Format.text,
) -> None:
    """Drop assumed access requests: a new certificate without their roles."""
    from ptsh.login_state import current_login

    answer = assume(current_login(), [], list(request_ids))
    if fmt != Format.text:
        render({k: answer[k] for k in ("username", "roles", "active_requests", "expires")}, fmt)
        return
    _print_status()


def login_with_request(proxy: str | None, user: str | None, request_id: str) -> bool:
    """``ptsh login --request-id``: with a valid login for ``proxy`` (as ``user``, if given), assume
    without a password.

    Returns False when there is no such login (the caller logs in first, then assumes)."""
    from common.errors import NotLoggedIn
    from ptsh.login_state import current_login

    try:
        login = current_login(proxy)
    except NotLoggedIn:
        return False
    if login.profile is None or (user and user != login.username):
        return False
    assume(login, [request_id], [])
    _print_status()
    return True


def assume_after_login(request_id: str) -> None:
    """After a fresh ``ptsh login --request-id``: take on the request."""
    from ptsh.login_state import current_login

    assume(current_login(), [request_id], [])
