"""A JSON document store over one key prefix of the backend: the base of every typed store."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from common.errors import NotFound
from pteleport.storage.base import Backend, Item


class JsonStore:
    """Documents (JSON objects) kept under ``<prefix>/<name>``.

    ``on_write``, when set, is called after every successful write or delete through this
    store (the auth service rebuilds its access snapshot that way).
    """

    def __init__(self, backend: Backend, prefix: str, on_write: Callable[[], None] | None = None) -> None:
        self.backend = backend
        self.prefix = prefix.rstrip("/") + "/"
        self.on_write = on_write

    def _wrote(self) -> None:
        if self.on_write is not None:
            self.on_write()

    def key(self, name: str) -> str:
        return self.prefix + name

    def get(self, name: str) -> dict[str, Any]:
        return json.loads(self.backend.get(self.key(name)).value)

    def get_item(self, name: str) -> Item:
        return self.backend.get(self.key(name))

    def exists(self, name: str) -> bool:
        try:
            self.backend.get(self.key(name))
        except NotFound:
            return False
        return True

    def create(self, name: str, doc: dict[str, Any], expires: datetime | None = None) -> None:
        self.backend.create(Item(self.key(name), _dump(doc), expires))
        self._wrote()

    def put(self, name: str, doc: dict[str, Any], expires: datetime | None = None) -> None:
        self.backend.put(Item(self.key(name), _dump(doc), expires))
        self._wrote()

    def update(self, name: str, doc: dict[str, Any], expires: datetime | None = None) -> None:
        self.backend.update(Item(self.key(name), _dump(doc), expires))
        self._wrote()

    def swap(self, expected: Item, doc: dict[str, Any], expires: datetime | None = None) -> None:
        self.backend.compare_and_swap(expected, Item(expected.key, _dump(doc), expires))
        self._wrote()

    def delete(self, name: str) -> None:
        self.backend.delete(self.key(name))
        self._wrote()

    def list(self) -> list[dict[str, Any]]:
        return [json.loads(item.value) for item in self.backend.get_range(self.prefix)]

    def items(self) -> Iterator[tuple[str, dict[str, Any], Item]]:
        for item in self.backend.get_range(self.prefix):
            yield item.key[len(self.prefix) :], json.loads(item.value), item


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()
