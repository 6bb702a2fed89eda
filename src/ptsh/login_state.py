"""The one place ptsh loads credentials: an identity file (``-i FILE`` or ``PTSH_IDENTITY_FILE``)
or else the active profile.

``current_login`` gives a command everything it needs to talk to the cluster: the proxy
address, the certificate and key, the host CA, and the identity in the certificate. With
an identity file no profile and no keyring is touched. An expired login is refused here,
with the sentence that says what to do. ``profile_login`` is the same for one stored
profile, for ``ptsh status`` and ``ptsh login`` (which show expired ones too).

Identity files are checked before use, one clear sentence each: missing (exit 3),
unreadable or not an identity file (exit 1), readable by others (a warning), a key that is
not the certificate's (exit 1), expired (exit 3), and, on the first call that fails to
verify the proxy, issued by another cluster (exit 3).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import BadParameter, ConnectionProblem, NotLoggedIn
from ptsh.flags import IDENTITY_FLAG

if TYPE_CHECKING:
    from common.identity import Identity
    from common.profile import Profile, ProfileStore

IDENTITY_ENV = "PTSH_IDENTITY_FILE"
RENEW_HINT = '"pctl auth sign --user=NAME --out=FILE" or "ptsh login --bot --token=TOKEN --out=FILE"'


@dataclass
class Login:
    proxy: str
    cert: bytes
    host_cas: bytes
    username: str
    cluster: str
    roles: tuple[str, ...]
    expires: datetime | None
    _identity: Identity | None = field(default=None, repr=False)  # parsed from ``cert`` when first needed
    profile: Profile | None = None  # set when the credentials come from a profile
    store: ProfileStore | None = None
    identity_file: str | None = None  # set when they come from an identity file
    _key: bytes | None = field(default=None, repr=False)

    @property
    def identity(self) -> Identity:
        """The identity in the certificate (parsed on first use: ``common.certfacts``)."""
        if self._identity is None:
            from common.identity import identity_from_pem

            self._identity = identity_from_pem(self.cert)
        return self._identity

    @property
    def key(self) -> bytes:
        """The private key; from a profile it is read (file or OS keyring) only when needed."""
        if self._key is None:
            assert self.store is not None and self.profile is not None
            self._key = self.store.read_key(self.profile)
        return self._key

    @property
    def expired(self) -> bool:
        return self.expires is not None and self.expires <= datetime.now(UTC)

    def client(self) -> Any:
        from common.client import ClusterClient, ClusterCredentials

        creds = ClusterCredentials(self.cert, self.key, self.host_cas)
        if self.identity_file is None:
            return ClusterClient(self.proxy, creds=creds)
        login = self

        class IdentityFileClient(ClusterClient):
            def request(self, method: str, path: str, **kw: Any) -> Any:
                try:
                    return super().request(method, path, **kw)
                except (ConnectionProblem, NotLoggedIn) as exc:
                    problem = login.foreign_cluster_problem(exc)
                    if problem:
                        raise NotLoggedIn(problem) from None
                    raise

        return IdentityFileClient(self.proxy, creds=creds)

    def foreign_cluster_problem(self, exc: Exception) -> str | None:
        from common.identity_file import foreign_cluster_problem

        return foreign_cluster_problem(str(self.identity_file), self.proxy, self.cluster, self.host_cas, exc)


def login_command(proxy: str | None = None, *, user: str | None = None) -> str:
    """The ``ptsh login`` to run: for ``proxy``, else for the cluster whose data dir is on this
    host (``pteleport dev``), else with placeholders. ``--insecure`` when that cluster's web
    certificate is the self-signed one pteleport made. ``user=""`` leaves ``--user`` out (ptsh
    login then takes the profile's user)."""
    import getpass

    from common.paths import local_cluster

    local = local_cluster()
    if proxy is None and local is None:
        return "ptsh login --proxy=HOST:PORT --user=NAME"
    address = proxy or (local.proxy if local else "")
    name = getpass.getuser() if user is None else user
    insecure = local is not None and local.self_signed and local.proxy == address
    return f"ptsh login --proxy={address}{f' --user={name}' if name else ''}{' --insecure' if insecure else ''}"


def not_logged_in(proxy: str | None = None) -> NotLoggedIn:
    where = f" to {proxy}" if proxy else ""
    return NotLoggedIn(f'Not logged in{where}; run "{login_command(proxy)}"')


def identity_file_path() -> str | None:
    return IDENTITY_FLAG["path"] or os.environ.get(IDENTITY_ENV) or None


def _host_cas(bundle: bytes, source: str) -> bytes:
    """Of an identity file's CAs, the host CA(s): the only ones that vouch for the proxy."""
    from cryptography.x509.oid import NameOID

    from common.tls import cert_pem, load_certs

    try:
        certs = load_certs(bundle)
    except ValueError:
        raise BadParameter(
            f"{source} holds CA certificates that cannot be read; get a new one with {RENEW_HINT}"
        ) from None
    hosts = [
        c
        for c in certs
        if any(a.value == "host CA" for a in c.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME))
    ]
    return b"".join(cert_pem(c) for c in hosts) if hosts else bundle


def load_identity_file(path: str, proxy: str | None = None) -> Login:
    """An identity file as a Login, after the local checks (no network)."""
    from common import identity_file
    from common.cli import eprint
    from common.identity import identity_from_cert
    from common.tls import load_cert, load_private_key

    source = f"identity file {path}"
    ident = identity_file.load(Path(path), warn=eprint)
    try:
        cert = load_cert(ident.cert)
        identity = identity_from_cert(cert)
        key = load_private_key(ident.key)
    except Exception:
        raise BadParameter(
            f"{source} holds a certificate or key that cannot be read; get a new one with {RENEW_HINT}"
        ) from None
    if key.public_key() != cert.public_key():
        raise BadParameter(
            f"the private key in {source} does not belong to its certificate; get a new one with {RENEW_HINT}"
        )
    address = proxy or ident.proxy
    if not address:
        raise BadParameter(f"{source} names no proxy; pass --proxy=HOST:PORT")
    return Login(
        proxy=address,
        cert=ident.cert,
        host_cas=_host_cas(ident.cas, source),
        username=identity.username,
        cluster=ident.cluster or identity.cluster_name,
        roles=identity.roles,
        expires=identity.expires,
        _identity=identity,
        identity_file=str(path),
        _key=ident.key,
    )


def profile_login(store: ProfileStore, profile: Profile) -> Login:
    """One stored profile as a Login (expired or not); the key is read only when used.

    The certificate's roles and expiry come from its facts file when one was kept for it
    (``common.certfacts``), so that this needs no X.509 parser; else from the certificate.
    """
    from common import certfacts

    cert = store.read_cert(profile)
    path = store.cert_path(profile)
    facts = certfacts.load(path, cert)
    identity = None
    if facts is not None:
        roles = tuple(facts["roles"])
        expires = datetime.fromisoformat(facts["expires"]) if facts.get("expires") else None
    else:
        from common.identity import identity_from_pem

        try:
            identity = identity_from_pem(cert)
        except Exception:
            raise NotLoggedIn(f"the certificate in {path} cannot be read; log in again") from None
        roles, expires = identity.roles, identity.expires
        certfacts.save(path, cert, {"roles": list(roles), "expires": expires.isoformat() if expires else None,
                                    "public_key": _public_key_of(cert)})
    return Login(
        proxy=profile.web_proxy_addr,
        cert=cert,
        host_cas=store.read_cas(profile),
        username=profile.user,
        cluster=profile.cluster,
        roles=roles,
        expires=expires,
        _identity=identity,
        profile=profile,
        store=store,
    )


def _public_key_of(cert: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(cert).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def remember_public_key(login: Login, public_pem: str) -> None:
    """Keep the public half of the login's key in its certificate's facts (``ptsh.savedcert`` sends it).

    The key pair is the login's, so the public half is the certificate's; a profile whose
    facts were written before they held it gets it the first time a command needs it.
    """
    if login.store is None or login.profile is None:
        return
    from common import certfacts

    path = login.store.cert_path(login.profile)
    facts = certfacts.load(path, login.cert)
    if facts is not None and facts.get("public_key") != public_pem:
        certfacts.save(path, login.cert, {**facts, "public_key": public_pem})


def current_login(proxy: str | None = None, *, allow_expired: bool = False) -> Login:
    """The identity file if one is given, else the profile for ``proxy`` (else the active one).

    ``proxy`` is the command's ``--proxy``, else the global one (``ptsh --proxy=... db ls``);
    with an identity file it replaces the address the file names.
    """
    from ptsh.flags import GLOBALS

    proxy = proxy or GLOBALS["proxy"]  # type: ignore[assignment]
    path = identity_file_path()
    if path:
        login = load_identity_file(path, proxy)
    else:
        from common.profile import ProfileStore

        store = ProfileStore()
        try:
            profile = store.find(proxy)
        except NotLoggedIn as exc:
            if exc.message.startswith("Not logged in"):
                raise not_logged_in(proxy) from None
            raise
        login = profile_login(store, profile)
    if not allow_expired and login.expired:
        assert login.expires is not None
        when = login.expires.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if path:
            raise NotLoggedIn(f"the identity file {path} expired at {when}; get a new one with {RENEW_HINT}")
        raise NotLoggedIn(f'your login to {login.proxy} expired at {when}; run "{login_command(login.proxy, user="")}"')
    return login
