"""The navigation: which pages a signed-in user sees, decided by the same checks the API makes.

Each entry is shown only when the user's roles pass the check its page makes
(``AuditService.search`` for Activity, ``authorize(user, list)`` for Users, ...), so a
link never leads to a refusal. ``register`` is the hook for pages that other parts add
(a later page): an entry with a label, a path and a ``visible(auth, identity)`` check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.errors import AccessDenied
from common.identity import Identity

if TYPE_CHECKING:
    from pteleport.auth.server import AuthServer

Visible = Callable[["AuthServer", Identity], bool]


@dataclass(frozen=True)
class Entry:
    label: str
    path: str
    group: str  # "" (top level) or "Management"


def allowed(auth: AuthServer, identity: Identity, resource: str, verb: str) -> bool:
    """Whether ``auth.ctx.authorize`` lets ``identity`` do ``verb`` on ``resource``."""
    try:
        auth.ctx.authorize(identity, resource, verb)
    except AccessDenied:
        return False
    return True


def reads_events(auth: AuthServer, identity: Identity) -> bool:
    """Whether the audit search (``pctl audit events``) lets ``identity`` read events."""
    return auth.audit.may_search(identity)


_BUILT_IN: list[tuple[Entry, Visible]] = [
    (Entry("Databases", "/web/databases", ""), lambda auth, me: not me.is_host),
    (Entry("Activity", "/web/activity", "Management"), reads_events),
    (Entry("Users", "/web/users", "Management"), lambda auth, me: allowed(auth, me, "user", "list")),
    (Entry("Roles", "/web/roles", "Management"), lambda auth, me: allowed(auth, me, "role", "list")),
    (Entry("Access requests", "/web/requests", "Management"), lambda auth, me: _requests_visible(auth, me)),
]


def _requests_visible(auth: AuthServer, identity: Identity) -> bool:
    from pteleport.api.webui.requests import visible

    return visible(auth, identity)
_EXTRA: list[tuple[Entry, Visible]] = []


def register(label: str, path: str, visible: Visible, group: str = "Management") -> None:
    """Add a page to the navigation (call before the app starts serving)."""
    _EXTRA.append((Entry(label, path, group), visible))


def entries(auth: AuthServer, identity: Identity) -> list[Entry]:
    return [entry for entry, visible in _BUILT_IN + _EXTRA if visible(auth, identity)]
