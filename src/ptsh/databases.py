"""What `ptsh db` and `ptsh proxy db` do, without Typer: list, certificates, tunnels.

``ptsh db ls`` imports this module before its one request, so asyncio and threading
are imported only by the tunnel code that uses them.

Database certificates are issued by auth after an RBAC check and are bound to the user's
own key (the same key as the login, which never leaves this machine). ``ptsh db login``
keeps one on disk next to the profile; ``db connect`` and ``proxy db`` use one in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from common.errors import NotFound
from ptsh.connect import connection_url, conninfo_value  # noqa: F401  (connection_url: ptsh proxy db and ptsh db config use it from here)
from ptsh.login_state import Login

DB_LS_HINT = "hint: filter the list with labels (ptsh db ls env=prod) or --search WORDS"


@dataclass
class DbCert:
    database: str
    db_user: str
    db_name: str
    cert: bytes
    expires: datetime | None


def list_databases(login: Login) -> list[dict[str, Any]]:
    with login.client() as client:
        return client.get("/v1/databases")


def filter_databases(dbs: list[dict], labels: dict[str, str], search: list[str]) -> list[dict]:
    out = []
    for db in dbs:
        have = db["metadata"].get("labels", {})
        if any(have.get(k) != v for k, v in labels.items()):
            continue
        if search:
            text = " ".join(
                [db["metadata"]["name"], db["metadata"].get("description", ""), db["spec"].get("protocol", "")]
                + [f"{k}={v}" for k, v in have.items()]
            ).lower()
            if not all(word.lower() in text for word in search):
                continue
        out.append(db)
    return out


def _format_labels(labels: dict[str, str], verbose: bool) -> str:
    hidden = ("teleport.dev/", "teleport.hidden/", "teleport.internal/")
    items = [(k, v) for k, v in labels.items() if verbose or not k.startswith(hidden)]
    plain = sorted((k, v) for k, v in items if "/" not in k)
    slashed = sorted((k, v) for k, v in items if "/" in k)
    return ",".join(f"{k}={v}" for k, v in plain + slashed)


def _users_cell(db: dict) -> str:
    users = db.get("users", {})
    allowed = users.get("allowed", [])
    denied = users.get("denied", [])
    cell = "[" + ", ".join(allowed) + "]"
    if denied:
        cell += " except: [" + ", ".join(denied) + "]"
    return cell


def db_table(login: Login, dbs: list[dict], verbose: bool) -> str:
    """The text of ``ptsh db ls``: one row per database, the ones logged in to marked with ``>``."""
    from common.text import safe_text, table

    active = set(logged_in_databases(login))
    headers = ["Name", "Description", "Allowed Users", "Labels", "Connect"]
    if verbose:
        headers = ["Name", "Description", "Protocol", "Type", "URI", "Allowed Users", "Labels", "Connect"]
    rows = []
    for db in dbs:
        name = db["metadata"]["name"]
        connect = ""
        shown = name
        if name in active:
            saved = saved_db_cert(login, name)
            if saved is not None:
                shown = f"> {name} (user: {saved.db_user}, db: {saved.db_name})"
                connect = f"ptsh db connect {name}"
        aws = (db["spec"].get("aws") or {}).get("region")
        row = [safe_text(shown), safe_text(db["metadata"].get("description", ""))]
        if verbose:
            row += [db["spec"].get("protocol", ""), "rds" if aws else "self-hosted", db["spec"].get("uri", "")]
        row += [_users_cell(db), safe_text(_format_labels(db["metadata"].get("labels", {}), verbose)), connect]
        rows.append(row)
    return table(headers, rows)


def issue_db_cert(login: Login, database: str, db_user: str, db_name: str) -> DbCert:
    from common.identity import identity_from_pem
    from common.tls import load_private_key, public_key_pem
    from ptsh.login_state import remember_public_key

    public = public_key_pem(load_private_key(login.key)).decode()
    with login.client() as client:
        body = client.post(
            "/v1/certs/database",
            {"database": database, "db_user": db_user, "db_name": db_name, "public_key": public},
        )
    remember_public_key(login, public)
    cert = body["cert"].encode()
    return DbCert(body["database"], body["db_user"], body["db_name"], cert, identity_from_pem(cert).expires)


def db_cert_path(login: Login, database: str) -> Any:
    if login.profile is None:
        return None
    from common.profile import ProfileStore

    return ProfileStore().db_dir(login.profile) / f"{database}.crt"


def saved_db_cert(login: Login, database: str) -> DbCert | None:
    """The certificate from ``ptsh db login`` for this database, if any (its facts: ``common.certfacts``)."""
    path = db_cert_path(login, database)
    if path is None or not path.exists():
        return None
    from common import certfacts

    cert = path.read_bytes()
    facts = certfacts.load(path, cert)
    if facts is None:
        from common.identity import identity_from_pem

        ident = identity_from_pem(cert)
        route = ident.route
        facts = db_cert_facts(route.username if route else None, route.database if route else None, ident.expires)
        certfacts.save(path, cert, facts)
    if facts.get("db_user") is None:
        return None
    expires = datetime.fromisoformat(facts["expires"]) if facts.get("expires") else None
    return DbCert(database, facts["db_user"], facts["db_name"], cert, expires)


def save_db_cert(login: Login, cert: DbCert) -> None:
    from common.identity_file import write_private
    from common.profile import ProfileStore

    path = db_cert_path(login, cert.database)
    if path is None:
        return
    from common import certfacts

    ProfileStore()._mkdir(path.parent)
    write_private(path, cert.cert)
    # Its facts now, so that ``ptsh db connect`` reads them instead of the certificate (``ptsh.savedcert``).
    certfacts.save(path, cert.cert, db_cert_facts(cert.db_user, cert.db_name, cert.expires))


def db_cert_facts(db_user: str | None, db_name: str | None, expires: datetime | None) -> dict[str, Any]:
    return {"db_user": db_user, "db_name": db_name, "expires": expires.isoformat() if expires else None}


def logged_in_databases(login: Login) -> list[str]:
    if login.profile is None:
        return []
    from common.profile import ProfileStore

    return ProfileStore().logged_in_databases(login.profile)


def logout_databases(login: Login, database: str | None) -> list[str]:
    names = logged_in_databases(login)
    if database:
        if database not in names:
            raise NotFound(f'Not logged into database "{database}"')
        names = [database]
    elif not names:
        raise NotFound("Not logged into any databases")
    for name in names:
        path = db_cert_path(login, name)
        if path is not None:
            from common import certfacts

            path.unlink(missing_ok=True)
            certfacts.forget(path)
    return names


def cert_for(login: Login, database: str, db_user: str | None, db_name: str | None) -> DbCert:
    """A usable certificate: the saved one when it matches and is fresh, else a new one."""
    from ptsh.pgstartup import RENEW_BEFORE

    saved = saved_db_cert(login, database)
    now = datetime.now(UTC)
    if (
        saved is not None
        and (not db_user or db_user == saved.db_user)
        and (not db_name or db_name == saved.db_name)
        and (saved.expires is None or saved.expires - now > RENEW_BEFORE)
    ):
        return saved
    if saved is not None:
        db_user = db_user or saved.db_user
        db_name = db_name or saved.db_name
    return issue_db_cert(login, database, db_user or "", db_name or "")


def direct_connection(login: Login, database: str, db_user: str, db_name: str) -> dict[str, Any] | None:
    """psql straight to the proxy's public port with the files of ``ptsh db login`` (no tunnel).

    Only when psql can read every file: a key kept in the system keyring never goes to disk,
    and without ``ptsh db login`` there is no database certificate (None: use the tunnel).
    """
    from common.profile import FILE

    path = db_cert_path(login, database)
    store, profile = login.store, login.profile
    if path is None or store is None or profile is None or not path.exists():
        return None
    key, cas = store.key_path(profile), store.ca_path(profile)
    if profile.key_storage != FILE or not key.exists() or not cas.exists():
        return None
    host, port = proxy_host_port(login)
    facts = {"host": host, "port": port, "user": db_user, "database": db_name,
             "ca": str(cas), "cert": str(path), "key": str(key)}
    parts = {"host": host, "port": port, "user": db_user, "dbname": db_name, "sslmode": "verify-full",
             "sslrootcert": cas, "sslcert": path, "sslkey": key}
    facts["dsn"] = " ".join(f"{k}={conninfo_value(str(v))}" for k, v in parts.items())
    return facts


def proxy_host_port(login: Login) -> tuple[str, int]:
    from ptsh.pgstartup import split_proxy_addr

    return split_proxy_addr(login.proxy)


def relogin_hint(login: Login) -> str:
    """What to do when the login behind a tunnel no longer works."""
    if login.identity_file is not None:
        from ptsh.login_state import RENEW_HINT

        return f"get a new identity file with {RENEW_HINT}"
    from ptsh.login_state import login_command

    return f"run `{login_command(login.proxy, user='')}`"


def _reloaded(login: Login) -> Login:
    """The same user's login as it is on disk now (``ptsh login`` may have renewed it), else ``login``."""
    from ptsh.login_state import load_identity_file, profile_login

    try:
        if login.identity_file is not None:
            fresh = load_identity_file(login.identity_file, login.proxy)
        elif login.store is not None:
            fresh = profile_login(login.store, login.store.find(login.proxy))
        else:
            return login
    except Exception:
        return login
    same = fresh.username == login.username and fresh.cluster == login.cluster
    return fresh if same and not fresh.expired else login


def tunnel_certs(login: Login, cert: DbCert, on_warning: Any = None) -> Any:
    """The CertSource of a tunnel: renews ``cert`` with the current login, or says what to do."""
    from common.errors import NotLoggedIn
    from ptsh.tunnel import CertSource

    state = {"login": login, "cert": cert}

    def refresh() -> tuple[bytes, bytes]:
        current = _reloaded(state["login"])  # type: ignore[arg-type]
        if current.expired:
            if current.identity_file is not None:
                raise NotLoggedIn(f"the identity file {current.identity_file} expired; {relogin_hint(current)}")
            raise NotLoggedIn(f"your ptsh login expired; {relogin_hint(current)}")
        old: DbCert = state["cert"]  # type: ignore[assignment]
        try:
            new = issue_db_cert(current, old.database, old.db_user, old.db_name)
        except NotLoggedIn as err:
            raise NotLoggedIn(f"the cluster no longer accepts your login ({err.message}); {relogin_hint(current)}") from None
        state.update(login=current, cert=new)
        return new.cert, current.key

    return CertSource(cert.cert, login.key, login.host_cas, refresh, on_warning=on_warning, expires=cert.expires)


class BackgroundTunnel:
    """A LocalTunnel on its own event-loop thread, for `ptsh db connect` (psql runs in front).

    Its refusals reach psql as ErrorResponses; warnings (a renewal that failed while the
    certificate still worked) are kept in ``warnings`` for after psql exits.
    """

    def __init__(self, login: Login, cert: DbCert) -> None:
        import threading

        from ptsh.tunnel import LocalTunnel, new_event_loop

        host, port = proxy_host_port(login)
        self.warnings: list[str] = []
        self.loop = new_event_loop()
        self.tunnel = LocalTunnel(
            host, port, tunnel_certs(login, cert, self.warnings.append), relogin=relogin_hint(login)
        )
        self.thread = threading.Thread(target=self.loop.run_forever, name="ptsh-tunnel", daemon=True)

    def begin(self) -> None:
        """Start the event-loop thread (``preflight`` needs it; ``start`` does it too)."""
        if not self.thread.is_alive():
            self.thread.start()

    def start(self, port: int = 0, sock: Any = None) -> int:
        """Serve psql on 127.0.0.1 (``port``, or the listening socket ``sock``); the port."""
        import asyncio

        self.begin()
        return asyncio.run_coroutine_threadsafe(self.tunnel.start("127.0.0.1", port, sock), self.loop).result(10)

    def preflight(self, params: dict[str, str]) -> None:
        """Open the first session now (see ``LocalTunnel.preflight``); raises what stops it."""
        import asyncio

        asyncio.run_coroutine_threadsafe(self.tunnel.preflight(params), self.loop).result(60)

    def stop(self) -> None:
        import asyncio

        try:
            asyncio.run_coroutine_threadsafe(self.tunnel.close(), self.loop).result(5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


async def run_tunnel(
    login: Login, database: str, db_user: str | None, db_name: str | None, port: int, announce: Any
) -> None:
    """`ptsh proxy db --tunnel`: serve until cancelled, renewing the certificate before it expires.

    Clients that arrive when it has expired renew it too; each refusal goes to the client
    (an ErrorResponse psql prints) and to this process's stderr.
    """
    import asyncio

    from common.cli import eprint
    from common.errors import PteleportError
    from ptsh.tunnel import LocalTunnel

    cert = cert_for(login, database, db_user, db_name)
    host, proxy_port = proxy_host_port(login)
    source = tunnel_certs(login, cert, lambda message: eprint(f"WARNING: {message}"))
    tunnel = LocalTunnel(
        host, proxy_port, source, on_error=lambda message: eprint(f"ERROR: {message}"), relogin=relogin_hint(login)
    )
    bound = await tunnel.start("127.0.0.1", port)
    announce(cert, bound)
    try:
        while True:
            await asyncio.sleep(30)
            try:
                await source.current()
            except PteleportError:
                pass  # the next client gets the refusal (and it is printed then)
    finally:
        await tunnel.close()
