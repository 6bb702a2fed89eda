"""The credentials a ptsh command works with: the active profile, or an identity file (-i).

``current_login`` returns everything a command needs to talk to the cluster: the proxy
address, the user's certificate and key, the host CA, and the identity in the certificate.
An expired login is refused here, with the sentence that says what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.errors import NotLoggedIn

IDENTITY_ENV = "PTSH_IDENTITY_FILE"
IDENTITY_FLAG: dict[str, str | None] = {"path": None}


@dataclass
class Login:
    proxy: str
    cert: bytes
    key: bytes
    host_cas: bytes
    username: str
    cluster: str
    roles: tuple[str, ...]
    expires: datetime | None
    profile: Any = None  # common.profile.Profile when logged in through a profile

    def client(self) -> Any:
        from common.client import ClusterClient, ClusterCredentials

        return ClusterClient(self.proxy, creds=ClusterCredentials(self.cert, self.key, self.host_cas))


def _first_cert(bundle: bytes) -> bytes:
    end = b"-----END CERTIFICATE-----"
    head, sep, _rest = bundle.partition(end)
    return head + sep + b"\n" if sep else bundle


def identity_file_path() -> str | None:
    return IDENTITY_FLAG["path"] or os.environ.get(IDENTITY_ENV) or None


def current_login(proxy: str | None = None, *, allow_expired: bool = False) -> Login:
    from common.identity import identity_from_pem

    path = identity_file_path()
    if path:
        from common import identity_file
        from common.cli import eprint

        ident = identity_file.load(Path(path), warn=eprint)
        cert_identity = identity_from_pem(ident.cert)
        login = Login(
            proxy=proxy or ident.proxy,
            cert=ident.cert,
            key=ident.key,
            host_cas=_first_cert(ident.cas),
            username=cert_identity.username,
            cluster=ident.cluster or cert_identity.cluster_name,
            roles=cert_identity.roles,
            expires=cert_identity.expires,
        )
        if not login.proxy:
            raise NotLoggedIn(f"identity file {path} names no proxy; pass --proxy")
    else:
        from common.profile import ProfileStore

        store = ProfileStore()
        profile = store.find(proxy)
        cert = store.read_cert(profile)
        cert_identity = identity_from_pem(cert)
        login = Login(
            proxy=profile.web_proxy_addr,
            cert=cert,
            key=store.read_key(profile),
            host_cas=store.read_cas(profile),
            username=profile.user,
            cluster=profile.cluster,
            roles=cert_identity.roles,
            expires=cert_identity.expires,
            profile=profile,
        )
    if not allow_expired and login.expires is not None and login.expires <= datetime.now(UTC):
        if path:
            raise NotLoggedIn(f'the identity file {path} has expired; issue a new one with "pctl auth sign"')
        raise NotLoggedIn(f'your login to {login.proxy} has expired; run "ptsh login --proxy={login.proxy}"')
    return login
