"""How pctl finds its credentials and the cluster (tctl's rules).

In order: ``-i/--identity FILE``; the admin identity the daemon writes on the auth host
(``<data_dir>/admin-identity.pem``); the current ptsh profile. The data dir comes from
``--data-dir``, else the config file's ``teleport.data_dir`` (``-c FILE``), else
``$PTELEPORT_DATA_DIR``, else ``/etc/pteleport.yaml`` if present, else the daemon's default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import BadParameter, NotLoggedIn, UsageError

if TYPE_CHECKING:
    from common.client import ClusterClient, ClusterCredentials

ADMIN_IDENTITY = "admin-identity.pem"

STATE: dict[str, Any] = {"config": None, "data_dir": None, "identity": None, "auth_server": None}


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


def data_dir() -> Path:
    from common.paths import DATA_DIR_ENV, DEFAULT_CONFIG, default_data_dir

    if STATE["data_dir"]:
        return Path(STATE["data_dir"])
    if STATE["config"]:
        found = _config_data_dir(STATE["config"], explicit=True)
        if found:
            return Path(found)
    if not os.environ.get(DATA_DIR_ENV) and os.path.exists(DEFAULT_CONFIG):
        found = _config_data_dir(DEFAULT_CONFIG, explicit=False)
        if found:
            return Path(found)
    return Path(default_data_dir())


def _host_cas(bundle: bytes) -> bytes:
    """Of an identity file's CAs, the host CA(s): the only ones that vouch for the proxy."""
    from cryptography.x509.oid import NameOID

    from common.tls import cert_pem, load_certs

    certs = load_certs(bundle)
    hosts = [
        c
        for c in certs
        if any(a.value == "host CA" for a in c.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME))
    ]
    return b"".join(cert_pem(c) for c in hosts) if hosts else bundle


def _from_identity_file(path: Path, source: str) -> tuple[str, ClusterCredentials, str]:
    from common.cli import eprint
    from common.client import ClusterCredentials
    from common.identity_file import load

    ident = load(path, warn=eprint)
    _refuse_expired(ident.cert, source)
    addr = STATE["auth_server"] or ident.proxy
    if not addr:
        raise UsageError(f"pass --auth-server=HOST:PORT: {path} does not say which proxy to reach")
    return addr, ClusterCredentials(ident.cert, ident.key, _host_cas(ident.cas)), source


def _refuse_expired(cert: bytes, source: str) -> None:
    from datetime import UTC, datetime

    from common.identity import identity_from_pem

    try:
        expires = identity_from_pem(cert).expires
    except Exception:
        raise BadParameter(f"{source} holds a certificate that cannot be read") from None
    if expires is not None and expires <= datetime.now(UTC):
        when = f"{expires.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
        if source == "the admin identity":
            raise NotLoggedIn(f"the admin identity expired at {when}; restart pteleport to renew it")
        raise NotLoggedIn(f'the {source} expired at {when}; get a new one with "pctl auth sign"')


def _from_profile() -> tuple[str, ClusterCredentials, str] | None:
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
        raise NotLoggedIn(
            f'your ptsh login to {profile.web_proxy_addr} expired; run "ptsh login --proxy={profile.web_proxy_addr}'
            f' --user={profile.user}"'
        )
    addr = STATE["auth_server"] or profile.web_proxy_addr
    creds = ClusterCredentials(cert, store.read_key(profile), store.read_cas(profile))
    return addr, creds, f"ptsh profile {profile.user}@{profile.name}"


def credentials() -> tuple[str, ClusterCredentials, str]:
    """(address, credentials, where they came from)."""
    if STATE["identity"]:
        path = Path(STATE["identity"])
        return _from_identity_file(path, f"identity file {path}")
    folder = data_dir()
    admin = folder / ADMIN_IDENTITY
    problem = None
    if admin.exists():
        try:
            return _from_identity_file(admin, "the admin identity")
        except NotLoggedIn as exc:
            problem = exc.message
    found = _from_profile()
    if found is not None:
        return found
    if problem:
        raise NotLoggedIn(problem)
    raise NotLoggedIn(
        f"pctl found no credentials: {admin} does not exist (run pctl on the auth host, or point it at the "
        "data dir with --data-dir or -c), no -i/--identity FILE was given, and ptsh is not logged in"
    )


def client() -> ClusterClient:
    """A client with the credentials found; with an identity file, a refused proxy is explained."""
    from common.client import ClusterClient

    addr, creds, source = credentials()
    if not source.startswith("identity file ") and source != "the admin identity":
        return ClusterClient(addr, creds=creds)
    from common.errors import ConnectionProblem
    from common.identity_file import foreign_cluster_problem

    class IdentityFileClient(ClusterClient):
        def request(self, method: str, path: str, **kw: Any) -> Any:
            try:
                return super().request(method, path, **kw)
            except (ConnectionProblem, NotLoggedIn) as exc:
                problem = foreign_cluster_problem(
                    source.removeprefix("identity file "), addr, _cluster(creds), creds.host_cas, exc
                )
                if problem:
                    raise NotLoggedIn(problem) from None
                raise

    return IdentityFileClient(addr, creds=creds)


def _cluster(creds: ClusterCredentials) -> str:
    from common.identity import identity_from_pem

    try:
        return identity_from_pem(creds.cert or b"").cluster_name
    except Exception:
        return ""
