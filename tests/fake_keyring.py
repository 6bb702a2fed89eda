"""A keyring backend for tests: a JSON file named by $FAKE_KEYRING_FILE, priority 1 ("real").

Select it in a subprocess with PYTHON_KEYRING_BACKEND=tests.fake_keyring.JsonKeyring
(and the repository on PYTHONPATH).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.compat import properties
from keyring.errors import PasswordDeleteError

ENV = "FAKE_KEYRING_FILE"


class JsonKeyring(KeyringBackend):
    @properties.classproperty
    def priority(cls) -> float:  # type: ignore[override]
        # Not viable (so never auto-detected) unless a test asks for it.
        if not os.environ.get(ENV):
            raise RuntimeError(f"{ENV} is not set")
        return 1

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.path = Path(path or os.environ.get(ENV) or os.devnull)

    def _load(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _save(self, data: dict[str, str]) -> None:
        self.path.write_text(json.dumps(data))

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(f"{service}\0{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        data[f"{service}\0{username}"] = password
        self._save(data)

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        if data.pop(f"{service}\0{username}", None) is None:
            raise PasswordDeleteError("not found")
        self._save(data)
