"""The certificate of ``ptsh db login``, read for ``ptsh db connect`` with ``os`` and ``json`` only.

A session with a saved certificate needs four files and the proxy's address, all under the
ptsh home as ``common.profile_layout`` places them (``ProfileStore`` writes through it): the
active profile, the login certificate and its facts (expiry, the public half of the key),
the private key, the cluster's host CAs, and the database certificate of ``ptsh db login``
with its facts (db user, db name, expiry).

``certificate`` reads them without the profile classes (``dataclasses``, ``pathlib``) and
decides as ``ptsh.databases.cert_for`` does: the saved certificate when it fits the names
asked for and is not due for renewal, else a new one from auth (one POST by hand,
``common.minihttps``) for those names, or the saved certificate's. It answers only the plain
case; anything else returns None and the full path (``ptsh.login_state.current_login``,
``cert_for``) decides, with its sentences: an identity file, a key in the OS keyring, a
profile not in the plain form ``ProfileStore.save`` writes, facts that are not the
certificate's, a login that expired, a login whose facts lack the public key, a network
error before auth answered. tests/test_savedcert.py checks it against the full path.
"""

from __future__ import annotations

import os
import time

from common import profile_layout as layout
from common.plainyaml import plain_mapping
from ptsh.pgstartup import RENEW_BEFORE


class Saved:
    """What the first session needs: where the proxy is, and the credentials to show it."""

    __slots__ = ("cas", "cert", "db_name", "db_user", "expires", "key", "proxy", "service")

    def __init__(self, proxy: str, cert: bytes, key: bytes, cas: bytes, service: str, db_user: str, db_name: str,
                 expires: str | None) -> None:
        self.proxy, self.cert, self.key, self.cas = proxy, cert, key, cas
        self.service, self.db_user, self.db_name, self.expires = service, db_user, db_name, expires


class _Active:
    """The active profile's login, as its files hold it."""

    def __init__(self, home: str, name: str, profile: dict[str, str], cert: bytes, facts: dict) -> None:
        self.home, self.name = home, name
        self.proxy, self.user = profile["web_proxy_addr"], profile["user"]
        self.cluster = profile.get("cluster") or name
        self.cert, self.facts = cert, facts

    def credentials(self) -> tuple[bytes, bytes]:
        """The user's key and the cluster's CAs (OSError when a file is missing)."""
        key = _read(layout.login_key(self.home, self.name, self.user))
        return key, _read(layout.cluster_cas(self.home, self.name, self.cluster))

    def db_cert_path(self, database: str) -> str:
        return os.path.join(layout.db_dir(self.home, self.name, self.user, self.cluster), f"{database}.crt")


def _active(database: str, now: float) -> _Active | None:
    if os.environ.get("PTSH_IDENTITY_FILE") or not _plain_name(database):
        return None
    home = layout.home()
    try:
        name = _read(os.path.join(home, layout.CURRENT_PROFILE)).decode().strip()
        if not _plain_name(name):
            return None
        profile = plain_mapping(_read(layout.profile_file(home, name)).decode())
    except (OSError, UnicodeDecodeError):
        return None
    if profile is None or profile.get("key_storage", "file") != "file":
        return None
    user = profile.get("user")
    if not profile.get("web_proxy_addr") or not user or not _plain_name(user):
        return None
    login = _with_facts(layout.login_cert(home, name, user))
    if login is None or not _lasts(login[1], now, 0.0):
        return None
    return _Active(home, name, profile, *login)


def _plain_name(name: str) -> bool:
    """A name that is one file name (no ``/``, not hidden, not empty)."""
    return bool(name) and "/" not in name and not name.startswith(".")


def load(database: str, db_user: str | None, db_name: str | None, now: float | None = None) -> Saved | None:
    """The saved certificate for ``database`` in the active profile when it can be used as it is, else None."""
    now = time.time() if now is None else now
    active = _active(database, now)
    found = _saved(active, database) if active is not None else None
    if active is None or not isinstance(found, tuple):
        return None
    return _usable(active, database, db_user, db_name, found, now)


def certificate(database: str, db_user: str | None, db_name: str | None) -> Saved | None:
    """What ``ptsh.databases.cert_for`` decides, on the quick path: the saved certificate when it
    fits and is fresh, else a new one from auth for the names asked for, falling back to the
    saved certificate's names (raises auth's refusal); None: the full path decides."""
    now = time.time()
    active = _active(database, now)
    if active is None:
        return None
    found = _saved(active, database)
    if found is None:
        return _issue(active, database, db_user, db_name)
    if found == "unreadable":
        return None  # (the full path reads the certificate itself)
    usable = _usable(active, database, db_user, db_name, found, now)
    if usable is not None:
        return usable
    _cert, facts = found
    return _issue(active, database, db_user or facts["db_user"], db_name or facts["db_name"])


def _saved(active: _Active, database: str) -> tuple[bytes, dict] | str | None:
    """The saved certificate and its facts; None when there is none, "unreadable" when they do not fit."""
    path = active.db_cert_path(database)
    if not os.path.exists(path):
        return None
    found = _with_facts(path)
    if found is None or not isinstance(found[1].get("db_user"), str) or not isinstance(found[1].get("db_name"), str):
        return "unreadable"
    return found


def _usable(active: _Active, database: str, db_user: str | None, db_name: str | None,
            found: tuple[bytes, dict], now: float) -> Saved | None:
    cert, facts = found
    if (db_user and db_user != facts["db_user"]) or (db_name and db_name != facts["db_name"]):
        return None
    if not _lasts(facts, now, RENEW_BEFORE.total_seconds()):
        return None
    try:
        key, cas = active.credentials()
    except OSError:
        return None
    return Saved(active.proxy, cert, key, cas, database, facts["db_user"], facts["db_name"], facts.get("expires"))


def _issue(active: _Active, database: str, db_user: str | None, db_name: str | None) -> Saved | None:
    """A new certificate for ``database`` from auth (one POST, ``common.minihttps``), not saved.

    Raises the cluster's refusal (RBAC, a lock, an unknown database) as the full client
    would; None when this path cannot ask (no public key in the login's facts, a file
    missing) or the answer is not a plain one (the network's trouble, an odd reply): the
    full path then asks again and says what is wrong.
    """
    import json

    public = active.facts.get("public_key")
    if not isinstance(public, str):
        return None
    from common.errors import from_http_answer
    from common.minihttps import request
    from common.tlsctx import ALPN_HTTP, client_context
    from ptsh.pgstartup import split_proxy_addr

    try:
        key, cas = active.credentials()
        host, port = split_proxy_addr(active.proxy)
        ctx = client_context(cas=cas, cert=active.cert, key=key, alpn=[ALPN_HTTP])
        body = json.dumps({"database": database, "db_user": db_user or "", "db_name": db_name or "",
                           "public_key": public}).encode()
        status, fields, answer = request(host, port, ctx, "POST", "/v1/certs/database", body)
        doc = json.loads(answer) if answer else None
    except Exception:  # the network's trouble, an odd answer, a bad address: the full path has the sentence
        return None
    if status >= 400:
        raise from_http_answer(status, doc, fields.get(b"retry-after", b"").decode(errors="replace"))
    try:
        fresh = (doc["cert"].encode(), doc["database"], doc["db_user"], doc["db_name"])
        expires = doc.get("expires")
    except (KeyError, TypeError, AttributeError):
        return None
    if status != 200 or "expires" not in doc or not (expires is None or isinstance(expires, str)):
        return None  # (an older auth that does not say when it expires: the full path reads the certificate)
    return Saved(active.proxy, fresh[0], key, cas, fresh[1], fresh[2], fresh[3], expires)


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _with_facts(cert_path: str) -> tuple[bytes, dict] | None:
    """A certificate and the facts saved for exactly it (``common.certfacts``), else None."""
    import hashlib
    import json

    try:
        cert = _read(cert_path)
        doc = json.loads(_read(cert_path + ".facts"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("facts"), dict):
        return None
    if doc.get("sha256") != hashlib.sha256(cert).hexdigest():
        return None
    return cert, doc["facts"]


def _lasts(facts: dict, now: float, margin: float) -> bool:
    """Whether the certificate of ``facts`` is still valid ``margin`` seconds from ``now``."""
    expires = facts.get("expires")
    if expires is None:
        return True  # (no expiry recorded: a certificate without one)
    if not isinstance(expires, str):
        return False
    from datetime import datetime

    try:
        return datetime.fromisoformat(expires).timestamp() - now > margin
    except ValueError:
        return False
