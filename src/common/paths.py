"""Where things live on disk by default: the daemon's data dir (shared by pteleport and pctl).

``pteleport.config.default_data_dir`` applies the same rule; pctl cannot import the daemon,
so the rule lives here too.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "PTELEPORT_DATA_DIR"
DEFAULT_CONFIG = "/etc/pteleport.yaml"


def default_data_dir() -> str:
    """``$PTELEPORT_DATA_DIR``, else /var/lib/pteleport for root, else ~/.local/share/pteleport."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/lib/pteleport"
    return str(Path.home() / ".local" / "share" / "pteleport")
