"""ptsh's local state: one profile per proxy, the user certificate, the cluster CAs, and the
private key (in the OS keyring when a real backend exists, else in a 0600 file).

Layout (Teleport's ``~/.tsh``; the root is ``$PTSH_HOME``, default ``~/.ptsh``)::

    current-profile                       name of the active profile (the proxy host)
    <proxy-host>.yaml                     web_proxy_addr, user, cluster, key_storage
    keys/<proxy-host>/<user>.crt          user certificate (not secret)
    keys/<proxy-host>/<user>.crt.facts    its user, roles and expiry, read without an X.509 parser
    keys/<proxy-host>/<user>.key          private key, only when it is not in the keyring
    keys/<proxy-host>/cas/<cluster>.pem   the cluster's host CA: trusted for the proxy
    keys/<proxy-host>/<user>-db/<cluster>/<db>.crt   database certificates (ptsh db login), each with .facts

Directories are 0700, secrets 0600 from creation. Keyring entries: service
``ptsh@<proxy-host>``, username ``<user>``, value the PKCS#8 PEM key. ``PTSH_KEY_STORAGE``
(``keyring`` or ``file``) overrides the automatic choice.

Heavy modules (yaml, keyring, and what writing files needs) are imported inside the
functions that need them: reading a profile (every ``ptsh`` command) imports neither.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from common import profile_layout as layout
from common.errors import BadParameter, NotLoggedIn, UsageError
from common.plainyaml import plain_mapping

KEY_STORAGE_ENV = "PTSH_KEY_STORAGE"
KEYRING = "keyring"
FILE = "file"


def ptsh_home() -> Path:
    return Path(layout.home())


def profile_name(proxy_addr: str) -> str:
    """The profile of a proxy is named after its host, as Teleport does (``127.0.0.1``)."""
    addr = proxy_addr.strip()
    for prefix in ("https://", "http://"):
        if addr.startswith(prefix):
            addr = addr[len(prefix) :]
    addr = addr.rstrip("/")
    if addr.startswith("["):
        return addr[1 : addr.index("]")] if "]" in addr else addr.strip("[]")
    host = addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr
    if not host or "/" in host or host in (".", ".."):
        raise BadParameter(f'"{proxy_addr}" is not a proxy address; use HOST:PORT')
    return host


@dataclass
class Profile:
    """What ``<proxy-host>.yaml`` holds."""

    name: str
    web_proxy_addr: str
    user: str
    cluster: str
    key_storage: str = FILE

    @property
    def url(self) -> str:
        return f"https://{self.web_proxy_addr}"


# --- keyring ----------------------------------------------------------------------------------
def _is_real_backend(backend: object) -> bool:
    """A keyring that keeps secrets safe: priority >= 1 and not fail, null or plaintext."""
    try:
        from keyring.backends.chainer import ChainerBackend
    except ImportError:  # pragma: no cover - keyring without the chainer
        ChainerBackend = ()  # type: ignore[assignment,misc]
    if ChainerBackend and isinstance(backend, ChainerBackend):
        return any(_is_real_backend(b) for b in backend.backends)
    name = f"{type(backend).__module__}.{type(backend).__name__}".lower()
    if any(word in name for word in ("fail", "null", "plaintext", "keyrings.alt")):
        return False
    try:
        return float(backend.priority) >= 1  # type: ignore[attr-defined]
    except Exception:
        return False


def real_keyring_available() -> bool:
    try:
        import keyring

        return _is_real_backend(keyring.get_keyring())
    except Exception:
        return False


def keyring_backend_name() -> str:
    try:
        import keyring

        backend = keyring.get_keyring()
        return f"{type(backend).__module__}.{type(backend).__name__}"
    except Exception:
        return "none"


def choose_key_storage() -> str:
    """``keyring`` or ``file``: forced by PTSH_KEY_STORAGE, else keyring only if a real one exists."""
    forced = os.environ.get(KEY_STORAGE_ENV, "").strip().lower()
    if forced in (KEYRING, FILE):
        return forced
    if forced:
        raise UsageError(f'{KEY_STORAGE_ENV} must be "keyring" or "file" (it is "{forced}")')
    return KEYRING if real_keyring_available() else FILE


def _keyring_service(profile: Profile) -> str:
    return f"ptsh@{profile.name}"


# --- the store ------------------------------------------------------------------------------------
class ProfileStore:
    """Profiles and keys under one ptsh home directory."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home if home is not None else ptsh_home()

    # paths
    # (the layout itself: common.profile_layout, which ptsh.savedcert reads through too)
    def profile_path(self, name: str) -> Path:
        return Path(layout.profile_file(str(self.home), name))

    def keys_dir(self, profile: Profile) -> Path:
        return Path(layout.keys_dir(str(self.home), profile.name))

    def cert_path(self, profile: Profile) -> Path:
        return Path(layout.login_cert(str(self.home), profile.name, profile.user))

    def key_path(self, profile: Profile) -> Path:
        return Path(layout.login_key(str(self.home), profile.name, profile.user))

    def ca_path(self, profile: Profile) -> Path:
        return Path(layout.cluster_cas(str(self.home), profile.name, profile.cluster))

    def db_dir(self, profile: Profile) -> Path:
        """Where ``ptsh db login`` keeps database certificates: ``<user>-db/<cluster>/``."""
        return Path(layout.db_dir(str(self.home), profile.name, profile.user, profile.cluster))

    def ensure_dir(self, path: Path) -> None:
        """Create ``path`` and its parents up to the home, all 0700 (mkdir's mode obeys umask)."""
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        current = path
        while True:
            with contextlib.suppress(OSError):
                os.chmod(current, 0o700)
            if current == self.home or self.home not in current.parents:
                break
            current = current.parent

    _mkdir = ensure_dir

    # profiles
    def current_name(self) -> str | None:
        try:
            name = (self.home / layout.CURRENT_PROFILE).read_text().strip()
        except OSError:
            return None
        return name if name and self.profile_path(name).exists() else None

    def set_current(self, name: str) -> None:
        from common.identity_file import write_private

        self._mkdir(self.home)
        write_private(self.home / layout.CURRENT_PROFILE, f"{name}\n".encode())

    def names(self) -> list[str]:
        if not self.home.is_dir():
            return []
        return sorted(p.stem for p in self.home.glob("*.yaml") if p.is_file())

    def load(self, name: str) -> Profile:
        path = self.profile_path(name)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise NotLoggedIn(f'Not logged in to "{name}"; run "ptsh login --proxy={name}:PORT"') from None
        except OSError as exc:
            raise BadParameter(f"cannot read the profile {path}: {exc}; log in again") from None
        doc = plain_mapping(text)
        if doc is None:  # not the plain form ``save`` writes: let the YAML parser read it
            import yaml

            try:
                doc = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                raise BadParameter(f"cannot read the profile {path}: {exc}; log in again") from None
        if not isinstance(doc, dict) or not doc.get("web_proxy_addr") or not doc.get("user"):
            raise BadParameter(f"the profile {path} is damaged; log in again")
        return Profile(
            name=name,
            web_proxy_addr=str(doc["web_proxy_addr"]),
            user=str(doc["user"]),
            cluster=str(doc.get("cluster") or name),
            key_storage=str(doc.get("key_storage") or FILE),
        )

    def current(self) -> Profile | None:
        name = self.current_name()
        return self.load(name) if name else None

    def find(self, proxy: str | None = None) -> Profile:
        """The profile for ``proxy`` (any address form), else the current one; NotLoggedIn if none."""
        if proxy:
            name = profile_name(proxy)
            if not self.profile_path(name).exists():
                raise NotLoggedIn(f'Not logged in to {proxy}; run "ptsh login --proxy={proxy}"')
            return self.load(name)
        profile = self.current()
        if profile is None:
            raise NotLoggedIn("Not logged in.")
        return profile

    # reading credentials
    def read_cert(self, profile: Profile) -> bytes:
        try:
            return self.cert_path(profile).read_bytes()
        except OSError:
            raise NotLoggedIn(f"the certificate of {profile.user} at {profile.name} is missing; log in again") from None

    def read_cas(self, profile: Profile) -> bytes:
        try:
            return self.ca_path(profile).read_bytes()
        except OSError:
            raise NotLoggedIn(f"the CA certificates of {profile.cluster} are missing; log in again") from None

    def read_key(self, profile: Profile) -> bytes:
        if profile.key_storage == KEYRING:
            try:
                import keyring

                value = keyring.get_password(_keyring_service(profile), profile.user)
            except Exception as exc:
                raise NotLoggedIn(
                    f"cannot read the private key of {profile.user} from the OS keyring ({exc}); log in again"
                ) from None
            if not value:
                raise NotLoggedIn(f"the private key of {profile.user} is no longer in the OS keyring; log in again")
            return value.encode()
        try:
            return self.key_path(profile).read_bytes()
        except OSError:
            raise NotLoggedIn(f"the private key of {profile.user} at {profile.name} is missing; log in again") from None

    # writing
    def save(self, profile: Profile, cert: bytes, key: bytes, host_cas: bytes, *, make_current: bool = True) -> Profile:
        """Store a fresh login; returns the profile with the key storage actually used."""
        import yaml

        from common.identity_file import write_private

        storage = choose_key_storage()
        forced = bool(os.environ.get(KEY_STORAGE_ENV))
        old = self.load(profile.name) if self.profile_path(profile.name).exists() else None
        self._mkdir(self.keys_dir(profile) / "cas")
        if storage == KEYRING:
            try:
                import keyring

                keyring.set_password(_keyring_service(profile), profile.user, key.decode())
            except Exception as exc:
                if forced:
                    raise BadParameter(
                        f"cannot store the private key in the OS keyring ({exc}); unset {KEY_STORAGE_ENV} "
                        f"or set it to {FILE}"
                    ) from None
                print(
                    f"warning: the OS keyring refused the key ({exc}); storing it in a 0600 file instead",
                    file=sys.stderr,
                )
                storage = FILE
        if storage == FILE:
            write_private(self.key_path(profile), key)
        else:
            with contextlib.suppress(OSError):
                self.key_path(profile).unlink()
        if old is not None and old.key_storage == KEYRING and (storage == FILE or old.user != profile.user):
            _forget_keyring(old)
        if old is not None and old.user != profile.user:
            self._remove_files(old)
            self._mkdir(self.keys_dir(profile) / "cas")
        write_private(self.cert_path(profile), cert)
        write_private(self.ca_path(profile), host_cas)
        profile.key_storage = storage
        doc = {k: v for k, v in asdict(profile).items() if k != "name"}
        write_private(self.profile_path(profile.name), yaml.safe_dump(doc, sort_keys=False).encode())
        if make_current:
            self.set_current(profile.name)
        return profile

    def _remove_files(self, profile: Profile) -> None:
        import shutil

        keys = self.keys_dir(profile)
        cert = self.cert_path(profile)
        for path in (cert, cert.with_name(cert.name + ".facts"), self.key_path(profile)):  # .facts: common.certfacts
            with contextlib.suppress(OSError):
                path.unlink()
        shutil.rmtree(keys / f"{profile.user}-db", ignore_errors=True)

    def remove(self, profile: Profile) -> None:
        """Forget a login: key (file or keyring), certificates, CAs, profile."""
        import shutil

        if profile.key_storage == KEYRING:
            _forget_keyring(profile)
        shutil.rmtree(self.keys_dir(profile), ignore_errors=True)
        with contextlib.suppress(OSError):
            self.profile_path(profile.name).unlink()
        current = self.home / layout.CURRENT_PROFILE
        try:
            if current.read_text().strip() == profile.name:
                current.unlink()
        except OSError:
            pass

    def remove_all(self) -> list[Profile]:
        import shutil

        removed = []
        for name in self.names():
            try:
                profile = self.load(name)
            except BadParameter:
                with contextlib.suppress(OSError):
                    self.profile_path(name).unlink()
                continue
            self.remove(profile)
            removed.append(profile)
        shutil.rmtree(self.home / "keys", ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.home / layout.CURRENT_PROFILE).unlink()
        return removed

    def logged_in_databases(self, profile: Profile) -> list[str]:
        folder = self.db_dir(profile)
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.crt"))


def _forget_keyring(profile: Profile) -> None:
    try:
        import keyring

        keyring.delete_password(_keyring_service(profile), profile.user)
    except Exception:  # noqa: S110 - already gone, or no keyring: nothing to forget
        pass
