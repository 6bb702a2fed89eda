"""Where things live on disk by default: the daemon's data dir (shared by pteleport and pctl).

- ``pteleport start`` keeps its state in ``$PTELEPORT_DATA_DIR``, else /var/lib/pteleport
  for root, else ~/.local/share/pteleport (``default_data_dir``);
- ``pteleport dev`` (and ``./scripts/run``) in ``./.data`` of the directory it runs in
  (``dev_data_dir``);
- pctl, told no data dir, acts as the admin of the cluster in the system data dir (or the
  one /etc/pteleport.yaml names) when that holds an admin identity.

``pteleport.config.default_data_dir`` applies the same rule; pctl cannot import the daemon,
so the rule lives here.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "PTELEPORT_DATA_DIR"
DEFAULT_CONFIG = "/etc/pteleport.yaml"
DEV_DATA_DIR = ".data"
ADMIN_IDENTITY = "admin-identity.pem"


def system_data_dir() -> str:
    """/var/lib/pteleport for root, else ~/.local/share/pteleport."""
    if os.geteuid() == 0:
        return "/var/lib/pteleport"
    return str(Path.home() / ".local" / "share" / "pteleport")


def default_data_dir() -> str:
    """``$PTELEPORT_DATA_DIR``, else the system data dir."""
    return os.environ.get(DATA_DIR_ENV) or system_data_dir()


def dev_data_dir() -> Path:
    """Where ``pteleport dev`` keeps its cluster unless told: ./.data, as an absolute path."""
    return Path.cwd() / DEV_DATA_DIR
