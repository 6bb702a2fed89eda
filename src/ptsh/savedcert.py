"""The certificate of ``ptsh db login``, read for ``ptsh db connect`` with ``os`` and ``json`` only.

A session with a saved certificate needs four files and the proxy's address, all under the
ptsh home as ``common.profile.ProfileStore`` lays them out::

    current-profile                      the active profile's name
    NAME.yaml                            web_proxy_addr, user, cluster, key_storage (plain lines)
    keys/NAME/USER.crt (+ .facts)        the login certificate; its facts hold its expiry
    keys/NAME/USER.key                   the user's private key (key_storage: file)
    keys/NAME/cas/CLUSTER.pem            the cluster's host CAs
    keys/NAME/USER-db/CLUSTER/DB.crt (+ .facts)   the database certificate, its db user, name, expiry

``load`` reads them without the profile classes (``dataclasses``, ``pathlib`` and
``datetime`` parsing cost more than the rest of the command before the first session). It
answers only the plain case; anything else returns None and the full path
(``ptsh.login_state.current_login``, ``ptsh.databases.cert_for``) decides, with its
sentences: an identity file, ``--proxy``, a key in the OS keyring, a profile not in the
plain form ``ProfileStore.save`` writes, facts that are not the certificate's, a login
that expired, or a database certificate that is missing, for other names, or due for
renewal. tests/test_savedcert.py checks that it reads what the full path reads.
"""

from __future__ import annotations

import os
import time

from common.plainyaml import plain_mapping

RENEW_BEFORE_S = 120.0  # ptsh.pgstartup.RENEW_BEFORE, in seconds


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
        self.proxy, self.user = profile["web_proxy_addr"], profile["user"]
        self.cluster = profile.get("cluster") or name
        self.keys = os.path.join(home, "keys", name)
        self.cert, self.facts = cert, facts

    def credentials(self) -> tuple[bytes, bytes]:
        """The user's key and the cluster's CAs (OSError when a file is missing)."""
        return _read(self.keys, f"{self.user}.key"), _read(self.keys, "cas", f"{self.cluster}.pem")


def _active(database: str, now: float) -> _Active | None:
    if os.environ.get("PTSH_IDENTITY_FILE") or not database or "/" in database or database.startswith("."):
        return None
    env_home = os.environ.get("PTSH_HOME")
    home = os.path.expanduser(env_home) if env_home else os.path.join(os.path.expanduser("~"), ".ptsh")
    try:
        name = _read(home, "current-profile").decode().strip()
        if not name or "/" in name or name.startswith("."):
            return None
        profile = plain_mapping(_read(home, f"{name}.yaml").decode())
    except (OSError, UnicodeDecodeError):
        return None
    if profile is None or profile.get("key_storage", "file") != "file":
        return None
    user = profile.get("user")
    if not profile.get("web_proxy_addr") or not user or "/" in user or user.startswith("."):
        return None
    login = _with_facts(os.path.join(home, "keys", name, f"{user}.crt"))
    if login is None or not _lasts(login[1], now, 0.0):
        return None
    return _Active(home, name, profile, *login)


def load(database: str, db_user: str | None, db_name: str | None, now: float | None = None) -> Saved | None:
    """The saved certificate for ``database`` in the active profile when it can be used as it is, else None."""
    now = time.time() if now is None else now
    active = _active(database, now)
    if active is None:
        return None
    db = _with_facts(os.path.join(active.keys, f"{active.user}-db", active.cluster, f"{database}.crt"))
    if db is None:
        return None
    cert, facts = db
    saved_user, saved_name = facts.get("db_user"), facts.get("db_name")
    if not isinstance(saved_user, str) or not isinstance(saved_name, str):
        return None
    if (db_user and db_user != saved_user) or (db_name and db_name != saved_name):
        return None
    if not _lasts(facts, now, RENEW_BEFORE_S):
        return None
    try:
        key, cas = active.credentials()
    except OSError:
        return None
    return Saved(active.proxy, cert, key, cas, database, saved_user, saved_name, facts.get("expires"))


def issue(database: str, db_user: str | None, db_name: str | None) -> Saved | None:
    """A new certificate for ``database`` from auth (one POST, ``common.minihttps``), not saved.

    Raises the cluster's refusal (RBAC, a lock, an unknown database) as the full client
    would; None when this path cannot ask (no public key in the login's facts, a file
    missing) or the answer is not a plain one (the network's trouble, an odd reply): the
    full path then asks again and says what is wrong.
    """
    import json

    active = _active(database, time.time())
    public = active.facts.get("public_key") if active is not None else None
    if active is None or not isinstance(public, str):
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


def _read(*parts: str) -> bytes:
    with open(os.path.join(*parts), "rb") as fh:
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
