"""`ptsh login` and `ptsh logout`.

Login pings the proxy (web trust: the system store, ``--ca-file`` or ``--insecure``), reads
the password and, when the cluster asks for it, a TOTP code, makes the key pair here (the
private key never leaves this machine), and stores the signed certificate in the profile.
"""

from __future__ import annotations

from typing import Annotated

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
    'run "ptsh login" in a terminal (for scripts and CI use an identity file from "pctl auth sign")'
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


def login(
    proxy: ProxyOpt = None,
    user: UserOpt = None,
    ttl: Annotated[
        str | None,
        typer.Option("--ttl", help="Certificate lifetime: minutes (720) or a duration (12h); capped by roles."),
    ] = None,
    insecure: InsecureOpt = False,
    ca_file: CaFileOpt = None,
) -> None:
    """Log in to a cluster and keep a short-lived certificate in the local profile."""
    from common.client import ClusterClient, normalize_addr
    from common.durations import parse_duration
    from common.profile import Profile, ProfileStore, profile_name
    from common.tls import generate_private_key, load_cert, private_key_pem, public_key_pem
    from ptsh.session import open_session
    from ptsh.status import profile_text

    store = ProfileStore()
    proxy = proxy_value(proxy)
    if not proxy:
        current = store.current()
        if current is None:
            raise UsageError("pass --proxy=HOST:PORT: the address of the cluster's proxy")
        proxy = current.web_proxy_addr
    try:
        addr = normalize_addr(proxy)
    except ValueError:
        raise UsageError("pass --proxy=HOST:PORT: the address of the cluster's proxy") from None
    name = profile_name(addr)
    user = user_value(user) or _default_user(name)
    ttl_seconds = None
    if ttl:
        seconds = int(parse_duration(ttl, what="--ttl").total_seconds())
        if seconds <= 0:
            raise BadParameter("--ttl must be positive")
        ttl_seconds = seconds
    with ClusterClient(addr, insecure=insecure_value(insecure), ca_file=ca_file_value(ca_file)) as client:
        ping = client.get("/v1/ping")
        second_factor = str(((ping or {}).get("auth") or {}).get("second_factor") or "off")
        password = prompt_secret(f"Enter password for pteleport user {user}: ", TERMINAL_HINT)
        otp = ""
        if second_factor == "otp":
            otp = prompt_secret("Enter an OTP code from a device: ", TERMINAL_HINT).strip()
        key = generate_private_key()
        answer = client.post(
            "/v1/login",
            {
                "user": user,
                "password": password,
                "otp_token": otp,
                "public_key": public_key_pem(key).decode(),
                "ttl_seconds": ttl_seconds,
            },
        )
    cert = str(answer["cert"]).encode()
    if load_cert(cert).public_key() != key.public_key():
        raise BadParameter("the cluster returned a certificate for another key; not storing it")
    host_ca = str((answer.get("cas") or {}).get("host") or "").encode()
    if not host_ca:
        raise BadParameter("the cluster did not send its host CA; not storing the login")
    profile = Profile(
        name=name,
        web_proxy_addr=addr,
        user=str(answer.get("username") or user),
        cluster=str(answer.get("cluster_name") or ping.get("cluster_name") or name),
    )
    profile = store.save(profile, cert, private_key_pem(key), host_ca)
    print(profile_text(open_session(store, profile), active=True), flush=True)


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
