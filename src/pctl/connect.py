"""How pctl finds its credentials and the cluster: explicitly, and it says which it used.

1. ``-i/--identity FILE``: that identity file.
2. A data dir named on purpose (``--data-dir``, the config file's ``teleport.data_dir``
   with ``-c``, or ``$PTELEPORT_DATA_DIR``): that cluster's admin identity
   (``<data_dir>/admin-identity.pem``), or one sentence naming the directory. Never
   anything else.
3. Told nothing: the admin identity of the cluster whose data dir is on this host
   (``/etc/pteleport.yaml``'s data dir, else the system default of ``common.paths``) when
   there is one, else the current ptsh login.

Every refusal (exit 4) says whose credentials pctl used: user, roles, cluster, source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import AccessDenied, BadParameter, NotLoggedIn, UsageError
from common.paths import ADMIN_IDENTITY

if TYPE_CHECKING:
    from common.client import ClusterClient, ClusterCredentials

STATE: dict[str, Any] = {"config": None, "data_dir": None, "identity": None, "auth_server": None}


@dataclass(frozen=True)
class Found:
    """The credentials pctl acts with, and where they came from (for messages)."""

    addr: str
    creds: ClusterCredentials
    source: str  # "identity file FILE", "the admin identity in DIR", "the ptsh login of USER at PROXY"
    kind: str  # "identity file", "admin" or "profile"
    path: Path | None = None  # the identity file (or admin identity) used

    def who(self) -> str:
        """``user "admin" (roles editor) of cluster "vm", from the admin identity in /srv/pt``."""
        from common.identity import identity_from_pem

        try:
            ident = identity_from_pem(self.creds.cert or b"")
        except Exception:
            return self.source
        roles = ", ".join(ident.roles) or "none"
        return f'user "{ident.username}" (roles {roles}) of cluster "{ident.cluster_name}", from {self.source}'


def _config_data_dir(path: str, *, explicit: bool) -> str | None:
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        if explicit:
            raise BadParameter(f"cannot read the config file {path}: {exc}") from None
        return None
    teleport = doc.get("teleport") if isinstance(doc, dict) else None
    value = teleport.get("data_dir") if isinstance(teleport, dict) else None
    return str(value) if value else None


def chosen_data_dir() -> tuple[Path, str] | None:
    """The data dir named on purpose, and how: (dir, "--data-dir" | "-c FILE" | "PTELEPORT_DATA_DIR")."""
    from common.paths import DATA_DIR_ENV

    if STATE["data_dir"]:
        return Path(STATE["data_dir"]), "--data-dir"
    if STATE["config"]:
        found = _config_data_dir(STATE["config"], explicit=True)
        if not found:
            raise BadParameter(f"the config file {STATE['config']} names no teleport.data_dir; pass --data-dir DIR")
        return Path(found), f"-c {STATE['config']}"
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env), DATA_DIR_ENV
    return None


def host_data_dir() -> Path:
    """The data dir of a cluster on this host when nothing names one (the daemon's defaults)."""
    from common.paths import DEFAULT_CONFIG, system_data_dir

    if os.path.exists(DEFAULT_CONFIG):
        found = _config_data_dir(DEFAULT_CONFIG, explicit=False)
        if found:
            return Path(found)
    return Path(system_data_dir())


def data_dir() -> Path:
    chosen = chosen_data_dir()
    return chosen[0] if chosen else host_data_dir()


def _from_identity_file(path: Path, source: str, kind: str) -> Found:
    from common.cli import eprint
    from common.client import ClusterCredentials
    from common.identity_file import host_cas, load

    ident = load(path, warn=eprint)
    _refuse_expired(ident.cert, source, kind)
    addr = STATE["auth_server"] or ident.proxy
    if not addr:
        raise UsageError(f"pass --auth-server=HOST:PORT: {path} does not say which proxy to reach")
    return Found(addr, ClusterCredentials(ident.cert, ident.key, host_cas(ident.cas)), source, kind, path)


def _refuse_expired(cert: bytes, source: str, kind: str) -> None:
    from datetime import UTC, datetime

    from common.identity import identity_from_pem

    try:
        expires = identity_from_pem(cert).expires
    except Exception:
        raise BadParameter(f"{source} holds a certificate that cannot be read") from None
    if expires is not None and expires <= datetime.now(UTC):
        when = f"{expires.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
        if kind == "admin":
            raise NotLoggedIn(f"{source} expired at {when}; start pteleport with that data dir to renew it")
        raise NotLoggedIn(f'the {source} expired at {when}; get a new one with "pctl auth sign"')


def _from_profile() -> Found | None:
    from datetime import UTC, datetime

    from common.client import ClusterCredentials
    from common.identity import identity_from_pem
    from common.profile import ProfileStore

    store = ProfileStore()
    profile = store.current()
    if profile is None:
        return None
    cert = store.read_cert(profile)
    identity = identity_from_pem(cert)
    if identity.expires is not None and identity.expires <= datetime.now(UTC):
        from common.paths import local_cluster

        local = local_cluster()
        insecure = local.insecure_flag if local is not None and local.proxy == profile.web_proxy_addr else ""
        raise NotLoggedIn(
            f'your ptsh login to {profile.web_proxy_addr} expired; run "ptsh login --proxy={profile.web_proxy_addr}'
            f' --user={profile.user}{insecure}"'
        )
    addr = STATE["auth_server"] or profile.web_proxy_addr
    creds = ClusterCredentials(cert, store.read_key(profile), store.read_cas(profile))
    return Found(addr, creds, f"the ptsh login of {profile.user} at {profile.web_proxy_addr}", "profile")


def find() -> Found:
    """The credentials to act with (see the module's docstring for the order)."""
    if STATE["identity"]:
        path = Path(STATE["identity"])
        return _from_identity_file(path, f"identity file {path}", "identity file")
    chosen = chosen_data_dir()
    if chosen is not None:
        folder, how = chosen
        admin = folder / ADMIN_IDENTITY
        if not admin.exists():
            raise NotLoggedIn(
                f"{folder} (from {how}) holds no admin identity ({ADMIN_IDENTITY}): it is not the data dir of a "
                "cluster started on this host; check the path, or drop it to use your ptsh login"
            )
        return _from_identity_file(admin, f"the admin identity in {folder}", "admin")
    folder = host_data_dir()
    admin = folder / ADMIN_IDENTITY
    problem = None
    if admin.exists():
        try:
            return _from_identity_file(admin, f"the admin identity in {folder}", "admin")
        except NotLoggedIn as exc:
            problem = exc.message
    found = _from_profile()
    if found is not None:
        return found
    if problem:
        raise NotLoggedIn(problem)
    raise NotLoggedIn(
        f"pctl found no credentials: {admin} does not exist, no -i/--identity FILE was given, and ptsh is not "
        "logged in; on the cluster's host pass its data dir (--data-dir DIR or PTELEPORT_DATA_DIR), "
        'elsewhere log in with "ptsh login"'
    )


def credentials() -> tuple[str, ClusterCredentials, str]:
    """(address, credentials, where they came from)."""
    found = find()
    return found.addr, found.creds, found.source


def client() -> ClusterClient:
    """A client with the credentials found; a refusal names them, a refused identity file is explained."""
    from common.client import ClusterClient
    from common.errors import ConnectionProblem

    found = find()

    class PctlClient(ClusterClient):
        def request(self, method: str, path: str, **kw: Any) -> Any:
            try:
                return super().request(method, path, **kw)
            except AccessDenied as exc:
                raise type(exc)(f"{exc.message} (pctl acted as {found.who()})") from None
            except (ConnectionProblem, NotLoggedIn) as exc:
                if found.path is None:
                    raise
                from common.identity_file import foreign_cluster_problem

                cluster = _cluster(found.creds)
                problem = foreign_cluster_problem(found.path, found.addr, cluster, found.creds.host_cas, exc)
                if problem:
                    raise NotLoggedIn(problem) from None
                raise

    return PctlClient(found.addr, creds=found.creds)


def _cluster(creds: ClusterCredentials) -> str:
    from common.identity import identity_from_pem

    try:
        return identity_from_pem(creds.cert or b"").cluster_name
    except Exception:
        return ""
