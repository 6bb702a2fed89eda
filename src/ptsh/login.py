"""`ptsh login` and `ptsh logout`.

Login pings the proxy (web trust: the system store, ``--ca-file`` or ``--insecure``), makes
the key pair here (the private key never leaves this machine), and stores the certificate
the cluster signs: in the profile, or with ``--out FILE`` in a 0600 identity file.

- a person: the password and, when the cluster asks for it, a TOTP code, from the
  terminal; ``--password-stdin`` (and ``--otp CODE``) for the rare script that must;
- a machine user: ``--bot --token=TOKEN --out=FILE`` trades the single-use join token from
  ``pctl bots add`` for an identity file; no password, no profile, no keyring.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from common.cli import eprint, prompt_secret
from common.errors import BadParameter, UsageError
from ptsh.options import (
    CaFileOpt,
    InsecureOpt,
    ProxyOpt,
    UserOpt,
    ca_file_value,
    insecure_value,
    proxy_value,
    user_value,
)

TERMINAL_HINT = (
    'run "ptsh login" in a terminal; scripts and CI use an identity file ("ptsh -i FILE", made by '
    '"ptsh login --bot" or "pctl auth sign"), or pass --password-stdin'
)
STDIN_WARNING = (
    "WARNING: reading the password from stdin; a password in a script is easy to leak. "
    'Prefer a bot: "pctl bots add" then "ptsh login --bot --token=TOKEN --out=FILE".'
)


def _default_user(proxy_name: str) -> str:
    import getpass

    from common.profile import ProfileStore

    try:
        current = ProfileStore().current()
    except Exception:
        current = None
    if current is not None and current.name == proxy_name:
        return current.user
    return getpass.getuser()


def _ttl_seconds(ttl: str | None) -> int | None:
    if not ttl:
        return None
    from common.cli import flag_duration

    return int(flag_duration(ttl, "--ttl", example="8h", bare_minutes=True).total_seconds())


def _read_token(value: str) -> str:
    """``--token`` is the token, or a file that holds it (keeps it out of the process list)."""
    path = Path(value)
    if "/" in value and path.is_file():
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise BadParameter(f"cannot read the token file {value}: {exc.strerror or exc}") from None
    return value.strip()


def _password_from_stdin() -> str:
    eprint(STDIN_WARNING)
    line = sys.stdin.readline()
    password = line[:-1] if line.endswith("\n") else line
    if password.endswith("\r"):
        password = password[:-1]
    if not password:
        raise UsageError("--password-stdin: stdin held no password (pipe it in: ... | ptsh login --password-stdin)")
    return password


def _write_identity(out: str, key_pem: bytes, answer: dict[str, Any], proxy: str, overwrite: bool) -> None:
    from common.identity_file import IdentityFile, render, write_private

    path = Path(out)
    if path.exists() and not overwrite:
        raise BadParameter(f"{out} already exists; pass --overwrite to replace it")
    cas = answer.get("cas") or {}
    bundle = "".join(str(cas.get(kind, "")) for kind in ("host", "user", "db")).encode()
    ident = IdentityFile(key_pem, str(answer["cert"]).encode(), bundle, proxy, str(answer.get("cluster_name", "")))
    write_private(path, render(ident))


def _check_answer(answer: dict[str, Any], key: Any) -> bytes:
    from common.tls import load_cert

    cert = str(answer["cert"]).encode()
    if load_cert(cert).public_key() != key.public_key():
        raise BadParameter("the cluster returned a certificate for another key; not storing it")
    if not (answer.get("cas") or {}).get("host"):
        raise BadParameter("the cluster did not send its host CA; not storing the login")
    return cert


def login(
    proxy: ProxyOpt = None,
    user: UserOpt = None,
    ttl: Annotated[
        str | None,
        typer.Option("--ttl", help="Certificate lifetime: minutes (720) or a duration (12h); capped by roles."),
    ] = None,
    insecure: InsecureOpt = False,
    ca_file: CaFileOpt = None,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="Write an identity file (0600) here instead of a profile."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the --out file if it exists.")] = False,
    bot: Annotated[bool, typer.Option("--bot", help="Log in as a machine user with --token (needs --out).")] = False,
    token: Annotated[
        str | None, typer.Option("--token", help="The bot's single-use join token (or a file holding it).")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin (scripts).")
    ] = False,
    otp: Annotated[str | None, typer.Option("--otp", help="The second-factor code, for --password-stdin.")] = None,
    request_id: Annotated[
        str | None, typer.Option("--request-id", help="Assume this approved access request (ptsh request ls).")
    ] = None,
    request_roles: Annotated[
        str | None, typer.Option("--request-roles", help="After logging in, request these roles and wait for them.")
    ] = None,
    request_reason: Annotated[str, typer.Option("--request-reason", help="Why (with --request-roles).")] = "",
    request_reviewers: Annotated[
        str, typer.Option("--request-reviewers", help="Suggested reviewers (with --request-roles).")
    ] = "",
    request_nowait: Annotated[
        bool, typer.Option("--request-nowait", help="Create the request (--request-roles) but do not wait.")
    ] = False,
) -> None:
    """Log in to a cluster: a profile for a person, or an identity file (--out) for scripts and bots."""
    from common.client import ClusterClient, normalize_addr
    from common.profile import Profile, ProfileStore, profile_name
    from common.tls import generate_private_key, private_key_pem, public_key_pem
    from ptsh.login_state import IDENTITY_ENV, IDENTITY_FLAG, identity_file_path, profile_login
    from ptsh.status import profile_text

    if bot:
        if not token:
            raise UsageError('pass --token=TOKEN with --bot: the join token "pctl bots add" printed')
        if not out:
            raise UsageError("pass --out=FILE with --bot: a bot's identity goes into a file, never into a profile")
        if password_stdin or otp:
            raise UsageError("--bot logs in with its join token; --password-stdin and --otp are for people")
    elif token:
        raise UsageError("--token is for machine users: add --bot")
    elif IDENTITY_FLAG["path"]:
        raise UsageError("ptsh login makes a new login; drop -i/--identity (commands use the identity file directly)")
    elif identity_file_path() and not out:
        eprint(
            f"WARNING: {IDENTITY_ENV} is set, so the other ptsh commands keep using that identity file, not this login"
        )
    if (request_id or request_roles) and (bot or out):
        raise UsageError("--request-id puts the request's roles into your profile; it does not go with --bot or --out")
    if request_id and request_roles:
        raise UsageError("pass --request-id (an existing request) or --request-roles (a new one), not both")
    store = ProfileStore()
    proxy = proxy_value(proxy)
    if request_id:
        from ptsh.requests import login_with_request

        if login_with_request(proxy, user_value(user), request_id):
            return
    if not proxy:
        current = None if (bot or out) else store.current()
        if current is None:
            raise UsageError("pass --proxy=HOST:PORT: the address of the cluster's proxy")
        proxy = current.web_proxy_addr
    try:
        addr = normalize_addr(proxy)
    except UsageError as exc:
        raise UsageError(f"--proxy {exc.message}") from None
    name = profile_name(addr)
    ttl_seconds = _ttl_seconds(ttl)
    if out and Path(out).exists() and not overwrite:
        raise BadParameter(f"{out} already exists; pass --overwrite to replace it")
    key = generate_private_key()
    with ClusterClient(addr, insecure=insecure_value(insecure), ca_file=ca_file_value(ca_file)) as client:
        ping = client.get("/v1/ping")
        if bot:
            assert token is not None
            answer = client.post(
                "/v1/bots/join",
                {"token": _read_token(token), "public_key": public_key_pem(key).decode(), "ttl_seconds": ttl_seconds},
            )
        else:
            user = user_value(user) or _default_user(name)
            second_factor = str(((ping or {}).get("auth") or {}).get("second_factor") or "off")
            if password_stdin:
                password = _password_from_stdin()
            else:
                password = prompt_secret(f"Enter password for pteleport user {user}: ", TERMINAL_HINT)
            code = (otp or "").strip()
            if second_factor == "otp" and not code:
                if password_stdin:
                    raise UsageError("this cluster asks for a second factor: pass --otp CODE with --password-stdin")
                code = prompt_secret("Enter an OTP code from a device: ", TERMINAL_HINT).strip()
            answer = client.post(
                "/v1/login",
                {
                    "user": user,
                    "password": password,
                    "otp_token": code,
                    "public_key": public_key_pem(key).decode(),
                    "ttl_seconds": ttl_seconds,
                },
            )
    cert = _check_answer(answer, key)
    if out:
        _write_identity(out, private_key_pem(key), answer, addr, overwrite)
        from common.identity import identity_from_pem

        ident = identity_from_pem(cert)
        until = f"{ident.expires:%Y-%m-%d %H:%M:%S} UTC" if ident.expires else "its expiry"
        kind = "bot" if bot else "user"
        eprint(
            f"The identity file for {kind} {ident.username} is written to {out} (valid until {until}); "
            f"use it with: ptsh -i {out} db ls"
        )
        return
    profile = Profile(
        name=name,
        web_proxy_addr=addr,
        user=str(answer.get("username") or user),
        cluster=str(answer.get("cluster_name") or ping.get("cluster_name") or name),
    )
    host_ca = str(answer["cas"]["host"]).encode()
    profile = store.save(profile, cert, private_key_pem(key), host_ca)
    if request_id:
        from ptsh.requests import assume_after_login

        assume_after_login(request_id)
    if request_roles:
        from ptsh.requests import create

        print(profile_text(profile_login(store, profile), active=True), flush=True)
        create(roles=request_roles, reason=request_reason, reviewers=request_reviewers, nowait=request_nowait)
        return
    print(profile_text(profile_login(store, profile), active=True), flush=True)


def logout(proxy: ProxyOpt = None, user: UserOpt = None) -> None:
    """Remove the certificates and keys of one login (--proxy and --user) or of all."""
    from common.profile import ProfileStore, profile_name
    from ptsh.options import GLOBALS

    proxy = proxy or GLOBALS["proxy"]  # type: ignore[assignment]
    user = user or GLOBALS["user"]  # type: ignore[assignment]
    store = ProfileStore()
    if bool(proxy) != bool(user):
        raise UsageError("pass both --proxy and --user to log out one user, or neither to log out all")
    if not proxy:
        store.remove_all()
        print("Logged out all users from all proxies.")
        return
    name = profile_name(proxy)
    if store.profile_path(name).exists():
        profile = store.load(name)
        if profile.user == user:
            store.remove(profile)
            print(f"Logged out {user} from {proxy}.")
            return
    eprint(f"User {user} already logged out from {proxy}.")
    raise SystemExit(1)
