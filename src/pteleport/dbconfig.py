"""`pteleport db configure create` and `db start`: a database service config from flags.

Every value here comes from a flag, so one of the wrong form is wrong usage (exit 2).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from common.errors import BadParameter, UsageError
from common.identity_file import write_private
from pteleport.config import default_data_dir, parse_config

DEFAULT_CONFIG_PATH = "/etc/pteleport.yaml"


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise UsageError(f'label "{part}" is not key=value; use --labels=env=prod,team=data')
        labels[key.strip()] = value.strip()
    return labels


def read_token(value: str) -> str:
    """--token takes the token itself or a file that holds it (as Teleport's does)."""
    if os.path.sep in value and os.path.exists(value):
        try:
            return Path(value).read_text().strip()
        except OSError as exc:
            raise BadParameter(f"cannot read the token file {value}: {exc.strerror}") from None
    return value


def agent_config_dict(
    *,
    token: str,
    proxy: str,
    name: str | None,
    uri: str | None,
    protocol: str,
    ca_pins: list[str],
    labels: str,
    description: str,
    aws_region: str | None,
    ca_cert_file: str | None,
    tls_mode: str,
    password_file: str | None,
    data_dir: str | None,
    nodename: str | None,
    resource_labels: str = "",
) -> dict[str, Any]:
    for pin in ca_pins:
        if not pin.startswith("sha256:"):
            raise UsageError(f'--ca-pin "{pin}" must start with sha256: (copy it from "pctl status")')
    teleport: dict[str, Any] = {
        "nodename": nodename or socket.gethostname(),
        "data_dir": data_dir or default_data_dir(),
        "proxy_server": proxy,
        "join_params": {"join_method": "token", "token_name": read_token(token)},
    }
    if ca_pins:
        teleport["ca_pin"] = ca_pins
    db_service: dict[str, Any] = {"enabled": True}
    if resource_labels:
        db_service["resources"] = [{"labels": parse_labels(resource_labels)}]
    else:
        db_service["resources"] = [{"labels": {"*": "*"}}]
    if name or uri:
        if not (name and uri):
            raise UsageError("pass both --name and --uri to add a database")
        db: dict[str, Any] = {"name": name, "protocol": protocol, "uri": uri}
        if description:
            db["description"] = description
        if labels:
            db["static_labels"] = parse_labels(labels)
        tls: dict[str, Any] = {}
        if tls_mode != "verify-full":
            tls["mode"] = tls_mode
        if ca_cert_file:
            tls["ca_cert_file"] = os.path.abspath(ca_cert_file)  # the agent may run elsewhere than here
        if tls:
            db["tls"] = tls
        if aws_region:
            db["aws"] = {"region": aws_region}
        if password_file:
            db["password_file"] = os.path.abspath(password_file)
        db_service["databases"] = [db]
    doc = {
        "version": "v3",
        "teleport": teleport,
        "db_service": db_service,
        "auth_service": {"enabled": False},
        "proxy_service": {"enabled": False},
        "ssh_service": {"enabled": False},
    }
    parse_config(doc, "the generated config")  # refuse what would not start
    return doc


def render_config(doc: dict[str, Any]) -> str:
    return "#\n# pteleport database service configuration (pteleport db configure create)\n#\n" + yaml.safe_dump(
        doc, sort_keys=False, default_flow_style=False
    )


def write_output(text: str, output: str) -> None:
    if output == "stdout":
        sys.stdout.write(text)
        return
    if output == "file":
        path = DEFAULT_CONFIG_PATH
    elif output.startswith("file://"):
        path = output[len("file://") :]
    else:
        raise UsageError('--output must be "stdout", "file" or "file:///PATH"')
    # The file holds the join token: keep it private.
    write_private(path, text.encode())
    print(
        f"Wrote config to file {path!r}. Now you can start the server:\n\n  pteleport start --config={path}",
        file=sys.stderr,
    )
