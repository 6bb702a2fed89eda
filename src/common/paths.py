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
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "PTELEPORT_DATA_DIR"
DEFAULT_CONFIG = "/etc/pteleport.yaml"
DEV_DATA_DIR = ".data"
ADMIN_IDENTITY = "admin-identity.pem"
PROCESS_FILE = "process.json"  # the proxy's address, written at every start
SELF_SIGNED_CERT = "webproxy_cert.pem"  # the web certificate pteleport made itself


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


@dataclass(frozen=True)
class LocalCluster:
    """A cluster whose data dir is on this host, as its last start left it (``process.json``)."""

    data_dir: Path
    proxy: str  # the address users reach
    self_signed: bool  # its web certificate is the self-signed one pteleport made

    @property
    def insecure_flag(self) -> str:
        return " --insecure" if self.self_signed else ""


def local_cluster() -> LocalCluster | None:
    """The first of ``$PTELEPORT_DATA_DIR``, ./.data and the system data dir that holds a cluster."""
    import json

    folders = [os.environ.get(DATA_DIR_ENV), str(dev_data_dir()), system_data_dir()]
    for folder in filter(None, folders):
        path = Path(folder)
        try:
            doc = json.loads((path / PROCESS_FILE).read_text())
        except (OSError, ValueError):
            continue
        addr = doc.get("public_addr") or doc.get("proxy") if isinstance(doc, dict) else None
        if addr:
            return LocalCluster(path, str(addr), (path / SELF_SIGNED_CERT).exists())
    return None
