"""`pctl auth export` (CA certificates) and `pctl auth sign` (identity files and certificates).

``--format=db --host=...`` makes a PostgreSQL *server* certificate signed by the db CA
(``PREFIX.key``, ``PREFIX.crt``, ``PREFIX.cas``). ``--user=...`` makes an identity file
for a person or a CI job (``--format=file``, the default), or with ``--format=db
--db-service=...`` a database-routed client certificate. Keys are made here and written
0600; they never travel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

auth_app = typer.Typer(help="Export CA certificates and sign certificates.", no_args_is_help=True)

CA_TYPES = {"db-client": "db", "db": "db", "host": "host", "tls-host": "host", "user": "user", "tls-user": "user"}


@auth_app.command("export")
def export(
    ca_type: Annotated[str, typer.Option("--type", help="db-client, db, host or user.")] = "db-client",
) -> None:
    """Print a CA certificate (PEM), e.g. the one PostgreSQL trusts in ssl_ca_file."""
    import sys

    from common.errors import UsageError
    from pctl.connect import client

    kind = CA_TYPES.get(ca_type)
    if kind is None:
        raise UsageError(f'--type must be one of {", ".join(CA_TYPES)} (got "{ca_type}")')
    with client() as api:
        cas = api.get("/v1/cas")["cas"]
    sys.stdout.write(cas[kind])


def _write(path: Path, data: bytes, overwrite: bool, private: bool) -> None:
    from common.errors import AlreadyExists
    from common.identity_file import write_private

    if path.exists() and not overwrite:
        raise AlreadyExists(f"{path} already exists; pass --overwrite to replace it")
    if private:
        write_private(path, data)
    else:
        path.write_bytes(data)


def _write_key_cert_cas(prefix: Path, key: bytes, cert: str, cas: str, overwrite: bool) -> None:
    """PREFIX.key (0600), PREFIX.crt and PREFIX.cas, as tctl auth sign writes them."""
    _write(Path(f"{prefix}.key"), key, overwrite, True)
    _write(Path(f"{prefix}.crt"), cert.encode(), overwrite, False)
    _write(Path(f"{prefix}.cas"), cas.encode(), overwrite, False)


@auth_app.command("sign")
def sign(
    out: Annotated[str, typer.Option("--out", "-o", help="Output file (identity) or prefix (db).")],
    user: Annotated[str | None, typer.Option("--user", help="Sign a user certificate for this user.")] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Sign a database server certificate for HOST[,HOST2].")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="file (identity file) or db (PREFIX.key/.crt/.cas).")] = "file",
    ttl: Annotated[str, typer.Option("--ttl", help="Validity, e.g. 1h or 2190h; the user's roles cap it.")] = "12h",
    db_service: Annotated[
        str | None, typer.Option("--db-service", help="Route the certificate to this database.")
    ] = None,
    db_user: Annotated[str, typer.Option("--db-user", help="Database user the routed certificate is for.")] = "",
    db_name: Annotated[str, typer.Option("--db-name", help="Database name the routed certificate is for.")] = "",
    proxy: Annotated[str | None, typer.Option("--proxy", help="Proxy address to record in the identity file.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files.")] = False,
) -> None:
    """Sign certificates for machines and databases: identity files for CI, db client and server certificates."""
    from datetime import UTC, datetime

    from common.cli import eprint, flag_duration
    from common.durations import format_duration
    from common.errors import AlreadyExists, UsageError
    from common.identity_file import IdentityFile, render
    from common.tls import generate_private_key, private_key_pem, public_key_pem
    from pctl.connect import client

    if bool(user) == bool(host):
        raise UsageError("pass exactly one of --user (a user certificate) or --host (a database server certificate)")
    if fmt not in ("file", "db"):
        raise UsageError(f'--format must be file or db (got "{fmt}")')
    if host and fmt != "db":
        raise UsageError("--host signs a database server certificate: add --format=db")
    if fmt == "db" and user and not db_service:
        raise UsageError("--format=db with --user needs --db-service (and --db-user, --db-name)")
    if (db_user or db_name) and not db_service:
        raise UsageError("--db-user and --db-name route a certificate to a database: add --db-service")
    seconds = int(flag_duration(ttl, "--ttl").total_seconds())
    for path in [Path(out)] if fmt == "file" else [Path(f"{out}.{ext}") for ext in ("key", "crt", "cas")]:
        if path.exists() and not overwrite:
            raise AlreadyExists(f"{path} already exists; pass --overwrite to replace it")
    key = generate_private_key()
    public = public_key_pem(key).decode()
    with client() as api:
        addr = api.addr
        if host:
            hosts = [h.strip() for h in host.split(",") if h.strip()]
            body = api.post("/v1/certs/db-server", {"hosts": hosts, "public_key": public, "ttl_seconds": seconds})
            prefix = Path(out)
            _write_key_cert_cas(prefix, private_key_pem(key), body["cert"], body["ca"], overwrite)
            eprint(
                f"Database server credentials written to {prefix}.key, {prefix}.crt and {prefix}.cas.\n"
                f"In postgresql.conf: ssl_cert_file = '{prefix}.crt', ssl_key_file = '{prefix}.key', "
                f"ssl_ca_file = '{prefix}.cas' (the file PostgreSQL trusts for client certificates)."
            )
            return
        request = {"user": user, "public_key": public, "ttl_seconds": seconds}
        if db_service:
            request.update(database=db_service, db_user=db_user, db_name=db_name)
        body = api.post("/v1/certs/user", request)
    validity = ""
    if body.get("expires"):
        expires = datetime.fromisoformat(body["expires"])
        left = expires - datetime.now(UTC)
        validity = f"valid until {expires.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
        if left.total_seconds() < seconds - 60:
            validity += f", {format_duration(left)}: capped by the roles of {user} or by your own certificate"
    else:
        validity = f"valid for {ttl}"
    cas = body["cas"]
    if fmt == "db":
        prefix = Path(out)
        _write_key_cert_cas(prefix, private_key_pem(key), body["cert"], cas["host"], overwrite)
        from common.addresses import split_host_port

        proxy_host, proxy_port = split_host_port(proxy or addr, 3080)
        eprint(
            f"Database credentials for {user} at {db_service} written to {prefix}.key, {prefix}.crt and "
            f"{prefix}.cas ({validity}). psql: host={proxy_host} port={proxy_port} sslcert={prefix}.crt "
            f"sslkey={prefix}.key sslrootcert={prefix}.cas sslmode=verify-full (the proxy's public port)."
        )
        return
    bundle = (cas["host"] + cas["user"] + cas["db"]).encode()
    ident = IdentityFile(private_key_pem(key), body["cert"].encode(), bundle, proxy or addr, body["cluster_name"])
    _write(Path(out), render(ident), overwrite, True)
    eprint(f"The identity file for {user} is written to {out} ({validity}); use it with: ptsh -i {out} db ls")
