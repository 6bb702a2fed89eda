"""What the agent presents to a database: TLS settings and the secret for one db user.

Chosen by the database's settings, in this order:
1. ``aws.region`` set (RDS/Aurora): an IAM auth token made locally with boto3;
2. ``password_file`` set: the password in that file (SCRAM, MD5 or cleartext over TLS);
3. otherwise a short-lived client certificate (CN = db user) signed by the cluster's db CA.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from common.client import AsyncClusterClient
from common.errors import BadParameter, ConnectionProblem
from common.tls import generate_private_key, private_key_pem, public_key_pem
from pteleport.dbagent.aws import rds_auth_token
from pteleport.dbagent.upstream import UpstreamTLS

RDS_BUNDLE_URL = "https://truststore.pki.rds.amazonaws.com/{region}/{region}-bundle.pem"
CLIENT_CERT_REFRESH = 8 * 60.0  # seconds; the certificates live 10 minutes


@dataclass
class LocalSettings:
    """Agent-side settings of a database that never leave the agent (paths, secrets)."""

    ca_cert_file: str | None = None
    password_file: str | None = None


def split_uri(uri: str) -> tuple[str, int]:
    host, _, port = uri.rpartition(":")
    if not host or not port.isdigit():
        raise BadParameter(f'database uri "{uri}" must be HOST:PORT')
    return host.strip("[]"), int(port)


class Credentials:
    def __init__(self, client: AsyncClusterClient, data_dir: Path) -> None:
        self.client = client
        self.data_dir = data_dir
        self._certs: dict[tuple[str, str], tuple[float, bytes, bytes]] = {}
        self._lock = asyncio.Lock()

    async def tls_for(self, db: dict, local: LocalSettings) -> UpstreamTLS:
        spec = db["spec"]
        tls = spec.get("tls") or {}
        ca_file = local.ca_cert_file
        if ca_file is None and (tls.get("ca_cert") or spec.get("ca_cert")):
            ca_file = self._write_ca(db["metadata"]["name"], tls.get("ca_cert") or spec["ca_cert"])
        aws = spec.get("aws") or {}
        if ca_file is None and aws.get("region"):
            ca_file = await self._rds_bundle(aws["region"])
        return UpstreamTLS(mode=tls.get("mode", "verify-full"), ca_file=ca_file, server_name=tls.get("server_name"))

    async def secret_for(
        self, db: dict, local: LocalSettings, db_user: str, tls: UpstreamTLS
    ) -> tuple[UpstreamTLS, str | None]:
        spec = db["spec"]
        aws = spec.get("aws") or {}
        if aws.get("region"):
            host, port = split_uri(spec["uri"])
            token = await asyncio.to_thread(
                rds_auth_token, host, port, db_user, aws["region"], aws.get("assume_role_arn"), aws.get("external_id")
            )
            return tls, token
        if local.password_file:
            try:
                password = Path(local.password_file).read_text().rstrip("\n")
            except OSError as exc:
                raise ConnectionProblem(
                    f"the database service cannot read the password file {local.password_file}: {exc.strerror}"
                ) from None
            return tls, password
        cert, key = await self._client_cert(db["metadata"]["name"], db_user)
        return UpstreamTLS(tls.mode, tls.ca_file, tls.server_name, cert, key), None

    async def _client_cert(self, database: str, db_user: str) -> tuple[bytes, bytes]:
        """A db-CA client certificate for ``db_user``; auth issues it only for a database this service serves."""
        async with self._lock:
            cached = self._certs.get((database, db_user))
            if cached and time.monotonic() - cached[0] < CLIENT_CERT_REFRESH:
                return cached[1], cached[2]
            key = generate_private_key()
            body = await self.client.post(
                "/v1/certs/db-client",
                {"database": database, "db_user": db_user, "public_key": public_key_pem(key).decode()},
            )
            cert, key_pem = body["cert"].encode(), private_key_pem(key)
            self._certs[(database, db_user)] = (time.monotonic(), cert, key_pem)
            return cert, key_pem

    def _write_ca(self, name: str, pem: str) -> str:
        path = self.data_dir / "db-cas" / f"{name}.pem"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != pem:
            path.write_text(pem)
        return str(path)

    async def _rds_bundle(self, region: str) -> str:
        """The region's RDS CA bundle, downloaded once and kept in the data dir."""
        path = self.data_dir / "rds" / f"{region}-bundle.pem"
        if path.exists():
            return str(path)
        import httpx

        url = RDS_BUNDLE_URL.format(region=region)
        try:
            async with httpx.AsyncClient(timeout=15) as http:
                response = await http.get(url)
                response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ConnectionProblem(
                f"could not download the RDS CA bundle from {url} ({exc}); download it by hand and set "
                "tls.ca_cert_file for this database"
            ) from None
        if b"BEGIN CERTIFICATE" not in response.content:
            raise ConnectionProblem(f"{url} did not return PEM certificates")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(response.content)
        return str(path)
