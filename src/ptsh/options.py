"""Options every ptsh command shares (``--proxy``, ``--user``, ``--insecure``, ``--ca-file``).

Teleport users type them after the subcommand (``tsh login --proxy=...``), so each command
repeats them; the value given to the command wins over the global one, which wins over the
environment (``PTSH_PROXY``/``TELEPORT_PROXY``, ``PTSH_USER``/``TELEPORT_USER``).
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ptsh.flags import GLOBALS  # the Typer callback sets it; re-exported here

ProxyOpt = Annotated[
    str | None, typer.Option("--proxy", help="Proxy address HOST:PORT (env PTSH_PROXY or TELEPORT_PROXY).")
]
UserOpt = Annotated[str | None, typer.Option("--user", help="Cluster user name (env PTSH_USER or TELEPORT_USER).")]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="Do not verify the proxy's web certificate (test clusters only).")
]
CaFileOpt = Annotated[
    str | None, typer.Option("--ca-file", help="Trust this CA bundle (PEM) for the proxy's web certificate.")
]


PROXY_ENV = ("PTSH_PROXY", "TELEPORT_PROXY")
USER_ENV = ("PTSH_USER", "TELEPORT_USER")


def _env(names: tuple[str, ...]) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def proxy_value(local: str | None) -> str | None:
    return local or GLOBALS["proxy"] or _env(PROXY_ENV)  # type: ignore[return-value]


def user_value(local: str | None) -> str | None:
    return local or GLOBALS["user"] or _env(USER_ENV)  # type: ignore[return-value]


def insecure_value(local: bool) -> bool:
    return bool(local or GLOBALS["insecure"])


def ca_file_value(local: str | None) -> str | None:
    return local or GLOBALS["ca_file"]  # type: ignore[return-value]
