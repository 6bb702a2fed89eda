"""The logged-in user as other ptsh commands need it: profile, certificate, API client.

``ptsh db ...`` and ``ptsh proxy db`` build on ``load_session`` and ``cluster_client``.
Imports of httpx/cryptography happen inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from common.errors import NotLoggedIn

if TYPE_CHECKING:
    from common.client import ClusterClient
    from common.identity import Identity
    from common.profile import Profile, ProfileStore


@dataclass
class Session:
    store: ProfileStore
    profile: Profile
    cert: bytes
    identity: Identity

    @property
    def expired(self) -> bool:
        return self.identity.expires is not None and self.identity.expires <= datetime.now(UTC)

    def key(self) -> bytes:
        return self.store.read_key(self.profile)

    def host_cas(self) -> bytes:
        return self.store.read_cas(self.profile)


def open_session(store: ProfileStore, profile: Profile) -> Session:
    from common.identity import identity_from_pem

    cert = store.read_cert(profile)
    try:
        identity = identity_from_pem(cert)
    except Exception:
        raise NotLoggedIn(f"the certificate in {store.cert_path(profile)} cannot be read; log in again") from None
    return Session(store, profile, cert, identity)


def load_session(proxy: str | None = None, *, allow_expired: bool = False) -> Session:
    """The session for ``proxy`` (else the current profile); NotLoggedIn when absent or expired."""
    from common.profile import ProfileStore

    store = ProfileStore()
    profile = store.find(proxy)
    session = open_session(store, profile)
    if session.expired and not allow_expired:
        raise NotLoggedIn(
            f'your login to {profile.web_proxy_addr} expired; run "ptsh login --proxy={profile.web_proxy_addr} '
            f'--user={profile.user}"'
        )
    return session


def cluster_client(session: Session, **kw: Any) -> ClusterClient:
    """An API client that presents the user certificate and trusts only the cluster's host CA."""
    from common.client import ClusterClient, ClusterCredentials

    creds = ClusterCredentials(session.cert, session.key(), session.host_cas())
    return ClusterClient(session.profile.web_proxy_addr, creds=creds, **kw)
