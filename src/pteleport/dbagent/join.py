"""Joining the cluster: verify the CA pin, trade the token for a host certificate, keep it.

Nothing is sent to the cluster before its host CA matched a configured pin (or, with no
pin, the proxy's web certificate verified against the system trust store).

Each failure is sorted by what can fix it (``classify``):

- ``Unreachable`` (no answer, a timeout, auth not ready, too many attempts): waiting may
  fix it, so the agent tries again with a backoff;
- ``JoinError`` (the CA pin does not match, the certificate cannot be verified, the token
  is refused or expired): waiting cannot fix it, so the agent stops with the error's own
  sentence and exit code (``EXIT_*``, docs/operations.md).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from common.client import ClusterClient, ClusterCredentials
from common.errors import (
    AccessDenied,
    BadParameter,
    ConnectionProblem,
    InternalError,
    LimitExceeded,
    NotLoggedIn,
    PteleportError,
)
from common.identity_file import IdentityFile, load, render, write_private
from common.tls import ca_pin, generate_private_key, load_cert, pin_matches, private_key_pem, public_key_pem

log = logging.getLogger("pteleport.dbagent")
IDENTITY_FILE = "host-identity.pem"

# Exit codes of `pteleport db start` when it gives up joining (docs/operations.md).
EXIT_TOKEN_EXPIRED = 3
EXIT_TOKEN_REFUSED = 4
EXIT_UNTRUSTED = 6


class JoinError(PteleportError):
    """A join that trying again cannot fix; ``exit_code`` is what the agent exits with."""

    def __init__(self, message: str, exit_code: int, kind: str = "access_denied") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.kind = kind


class Unreachable(PteleportError):
    """A join that may work later (the proxy is down, starting, or busy); tried again."""

    kind = "connection_problem"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _untrusted(proxy: str) -> JoinError:
    return JoinError(
        f"cannot verify the cluster at {proxy}: this machine does not trust its web certificate (a test cluster's is "
        'self-signed); pass --ca-pin with the pin from "pctl status"',
        EXIT_UNTRUSTED,
    )


def classify(proxy: str, err: PteleportError, pinned: bool = False) -> PteleportError:
    """``err`` from a join step as ``Unreachable`` (try again) or ``JoinError`` (give up).

    A TLS failure means an untrusted cluster only without a pin (the system trust store
    refused the web certificate); with a pin the CAs are read without verification, so a
    TLS failure there is something else on that port, which may go away.
    """
    if isinstance(err, JoinError | Unreachable | BadParameter):
        return err
    if isinstance(err, LimitExceeded):
        return Unreachable(f"the cluster asks to wait: {err.message}", err.retry_after)
    if isinstance(err, NotLoggedIn):
        return JoinError(f"the join token is no longer valid: {err.message}", EXIT_TOKEN_EXPIRED, "not_logged_in")
    if isinstance(err, AccessDenied):
        return JoinError(f"the cluster refused the join token: {err.message}", EXIT_TOKEN_REFUSED)
    if isinstance(err, ConnectionProblem) and err.message.startswith("cannot connect securely") and not pinned:
        return _untrusted(proxy)
    if isinstance(err, ConnectionProblem | InternalError):
        return Unreachable(err.message)
    return err


def fetch_cas(proxy: str, pins: list[str]) -> dict[str, str]:
    """The cluster's public CAs, trusted only if the host CA matches a pin."""
    if pins:
        with ClusterClient(proxy, insecure=True) as client:
            body = client.get("/v1/cas")
        host_ca = load_cert(body["cas"]["host"].encode())
        if not pin_matches(host_ca, pins):
            raise JoinError(
                f"the cluster at {proxy} is not the one --ca-pin names (its CA pin is {ca_pin(host_ca)}); check the "
                'address, and the pin with "pctl status" on the cluster',
                EXIT_UNTRUSTED,
            )
        return body["cas"]
    with ClusterClient(proxy) as client:
        return client.get("/v1/cas")["cas"]


def join(
    data_dir: Path, proxy: str, token: str | None, pins: list[str], nodename: str, method: str = "token"
) -> IdentityFile:
    """Load the host identity from the data dir, or join with the token to get one.

    ``method`` ``iam``: ``token`` is an IAM join token's name, and the proof is this host's
    AWS identity (``join_iam.signed_identity_request``) instead of a secret.

    Raises ``Unreachable`` (try again later), ``JoinError`` (give up) or BadParameter.
    """
    path = data_dir / IDENTITY_FILE
    if path.exists():
        return load(path)
    if not token:
        raise BadParameter("this database service has not joined the cluster yet; pass a join token (--token)")
    try:
        cas = fetch_cas(proxy, pins)
        host_cas = cas["host"].encode()
        key = generate_private_key()
        creds = ClusterCredentials(None, None, host_cas)
        request = {
            "token": token,
            "role": "Db",
            "hostname": nodename or socket.gethostname(),
            "public_key": public_key_pem(key).decode(),
        }
        with ClusterClient(proxy, creds=creds) as client:
            # The cluster assigns the host id and binds the token's scope to it.
            if method == "iam":
                from pteleport.dbagent.join_iam import signed_identity_request

                challenge = client.post("/v1/join/iam/challenge", {})["challenge"]
                request.update(challenge=challenge, request=signed_identity_request(challenge))
                body = client.post("/v1/join/iam", request)
            else:
                body = client.post("/v1/join", request)
    except PteleportError as err:
        raise classify(proxy, err, bool(pins)) from None
    host_id = body["host_id"]
    bundle = (body["cas"]["host"] + body["cas"]["user"] + body["cas"]["db"]).encode()
    ident = IdentityFile(private_key_pem(key), body["cert"].encode(), bundle, proxy, body["cluster_name"])
    write_private(path, render(ident))
    log.info("joined cluster %s as %s", body["cluster_name"], host_id)
    return ident
