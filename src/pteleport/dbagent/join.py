"""Joining the cluster: verify the CA pin, trade the token for a host certificate, keep it.

Nothing is sent to the cluster before its host CA matched a configured pin (or, with no
pin, the proxy's web certificate verified against the system trust store).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from common.client import ClusterClient, ClusterCredentials
from common.errors import AccessDenied, BadParameter, ConnectionProblem
from common.identity_file import IdentityFile, load, render, write_private
from common.tls import generate_private_key, load_cert, pin_matches, private_key_pem, public_key_pem

log = logging.getLogger("pteleport.dbagent")
IDENTITY_FILE = "host-identity.pem"


def fetch_cas(proxy: str, pins: list[str]) -> dict[str, str]:
    """The cluster's public CAs, trusted only if the host CA matches a pin."""
    if pins:
        with ClusterClient(proxy, insecure=True) as client:
            body = client.get("/v1/cas")
        host_ca = load_cert(body["cas"]["host"].encode())
        if not pin_matches(host_ca, pins):
            raise AccessDenied(
                f'the cluster at {proxy} does not match --ca-pin; run "pctl status" on the cluster to get the right pin'
            )
        return body["cas"]
    try:
        with ClusterClient(proxy) as client:
            return client.get("/v1/cas")["cas"]
    except ConnectionProblem as exc:
        if "securely" not in exc.message:
            raise  # not reachable at all: that is what to fix first
        raise BadParameter(
            f"cannot verify the cluster at {proxy}: this machine does not trust its web certificate (a test "
            'cluster\'s is self-signed); pass --ca-pin with the pin from "pctl status"'
        ) from None


def join(data_dir: Path, proxy: str, token: str | None, pins: list[str], nodename: str) -> IdentityFile:
    """Load the host identity from the data dir, or join with the token to get one."""
    path = data_dir / IDENTITY_FILE
    if path.exists():
        return load(path)
    if not token:
        raise BadParameter("this database service has not joined the cluster yet; pass a join token (--token)")
    cas = fetch_cas(proxy, pins)
    host_cas = cas["host"].encode()
    key = generate_private_key()
    creds = ClusterCredentials(None, None, host_cas)
    with ClusterClient(proxy, creds=creds) as client:
        # The cluster assigns the host id and binds the token's scope to it.
        body = client.post(
            "/v1/join",
            {
                "token": token,
                "role": "Db",
                "hostname": nodename or socket.gethostname(),
                "public_key": public_key_pem(key).decode(),
            },
        )
    host_id = body["host_id"]
    bundle = (body["cas"]["host"] + body["cas"]["user"] + body["cas"]["db"]).encode()
    ident = IdentityFile(private_key_pem(key), body["cert"].encode(), bundle, proxy, body["cluster_name"])
    write_private(path, render(ident))
    log.info("joined cluster %s as %s", body["cluster_name"], host_id)
    return ident
