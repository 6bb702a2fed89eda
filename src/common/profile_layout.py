"""Where a ptsh profile's files live under the ptsh home: paths as strings, with ``os.path`` only.

``common.profile.ProfileStore`` writes and reads through these; ``ptsh.savedcert`` (the quick
path of ``ptsh db connect``, which must not import ``pathlib`` or the profile classes) reads
through them too, so the two cannot disagree on a path::

    HOME/current-profile                       the active profile's name
    HOME/NAME.yaml                             the profile (web_proxy_addr, user, cluster, key_storage)
    HOME/keys/NAME/USER.crt, USER.key          the login certificate (+ .facts) and the private key
    HOME/keys/NAME/cas/CLUSTER.pem             the cluster's host CAs
    HOME/keys/NAME/USER-db/CLUSTER/DB.crt      a database certificate of ``ptsh db login`` (+ .facts)
"""

from __future__ import annotations

import os

HOME_ENV = "PTSH_HOME"
CURRENT_PROFILE = "current-profile"


def home() -> str:
    """``$PTSH_HOME``, else ``~/.ptsh``."""
    env = os.environ.get(HOME_ENV)
    return os.path.expanduser(env) if env else os.path.join(os.path.expanduser("~"), ".ptsh")


def profile_file(home: str, name: str) -> str:
    return os.path.join(home, f"{name}.yaml")


def keys_dir(home: str, name: str) -> str:
    return os.path.join(home, "keys", name)


def login_cert(home: str, name: str, user: str) -> str:
    return os.path.join(keys_dir(home, name), f"{user}.crt")


def login_key(home: str, name: str, user: str) -> str:
    return os.path.join(keys_dir(home, name), f"{user}.key")


def cluster_cas(home: str, name: str, cluster: str) -> str:
    return os.path.join(keys_dir(home, name), "cas", f"{cluster}.pem")


def db_dir(home: str, name: str, user: str, cluster: str) -> str:
    return os.path.join(keys_dir(home, name), f"{user}-db", cluster)
