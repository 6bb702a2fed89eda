"""The logged-in profile as ``ptsh status`` and ``ptsh login`` show it: profile, certificate,
and the identity inside it. (Commands that call the cluster use ``ptsh.login_state``.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from common.errors import NotLoggedIn

if TYPE_CHECKING:
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


def open_session(store: ProfileStore, profile: Profile) -> Session:
    from common.identity import identity_from_pem

    cert = store.read_cert(profile)
    try:
        identity = identity_from_pem(cert)
    except Exception:
        raise NotLoggedIn(f"the certificate in {store.cert_path(profile)} cannot be read; log in again") from None
    return Session(store, profile, cert, identity)
