"""The access snapshot (locks, users' current roles) that every hop checks certificates against.

``AccessStateSource`` builds an ``rbac.revocation.AccessState`` from storage and keeps the
latest one in memory, so the proxy and the API check a certificate without touching storage
on the event loop. ``run()`` (started by the process) rebuilds it in a worker thread every
``REFRESH_EVERY`` seconds (``FEED_REFRESH_EVERY`` when the backend's change feed wakes it:
``poke()``, for changes made by any process sharing the backend), and at once after
``changed()`` (a lock, a user change or a role change made here). Listeners registered with ``on_change`` hear of every new version; the proxy uses
that to tell connected agents to fetch the snapshot again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime

from common.errors import AccessDenied, NotFound, NotLoggedIn, PteleportError
from common.identity import Identity
from pteleport.rbac.access_request import APPROVED
from pteleport.rbac.locks import Lock, parse_lock
from pteleport.rbac.revocation import AccessState, Refusal, RequestGrant, UserAccess, lock_refusal, user_refusal
from pteleport.services.store import JsonStore

log = logging.getLogger("pteleport.auth.access")
REFRESH_EVERY = 1.0
FEED_REFRESH_EVERY = 10.0  # with a change feed, polling is only the safety net
FEED_KINDS = ("users", "roles", "locks")  # the storage kinds the snapshot is made of


def user_created(doc: dict) -> datetime | None:
    when = ((doc.get("spec") or {}).get("created_by") or {}).get("time")
    try:
        return datetime.fromisoformat(when) if when else None
    except (TypeError, ValueError):
        return None


class AccessStateSource:
    def __init__(
        self,
        users: JsonStore,
        locks: JsonStore,
        roles: JsonStore,
        clock: Callable[[], datetime],
        requests: JsonStore | None = None,
    ) -> None:
        self.users = users
        self.locks = locks
        self.roles = roles
        self.requests = requests
        self.clock = clock
        self._state: AccessState | None = None
        self._build_lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[Callable[[AccessState], None]] = []
        # Called (in the writer's thread) after every change made here, once the snapshot is rebuilt.
        self.after_change: list[Callable[[], None]] = []

    # --- building ---------------------------------------------------------------------------
    def build(self) -> AccessState:
        """Read storage and make a new snapshot (blocking: call it in a worker thread)."""
        with self._build_lock:
            locks: list[Lock] = []
            for doc in self.locks.list():
                try:
                    locks.append(parse_lock(doc))
                except Exception:  # a damaged lock must not unlock everything else
                    log.exception("skipped an unreadable lock document")
            users = {
                doc["metadata"]["name"]: UserAccess(frozenset(doc["spec"].get("roles") or []), user_created(doc))
                for doc in self.users.list()
            }
            roles = hashlib.sha256(
                json.dumps(self.roles.list(), sort_keys=True).encode()
            ).hexdigest()[:32]
            state = AccessState.build(locks, users, roles, self._grants())
            self._state = state
            return state

    def _grants(self, only: tuple[str, ...] | None = None) -> dict[str, RequestGrant]:
        """Approved access requests (all, or those named in ``only``, read one by one)."""
        if self.requests is None:
            return {}
        if only is None:
            docs = self.requests.list()
        else:
            docs = []
            for rid in only:
                try:
                    docs.append(self.requests.get(rid))
                except NotFound:
                    continue
        grants = {}
        for doc in docs:
            spec = doc.get("spec") or {}
            if spec.get("state") == APPROVED:
                grants[str(doc["metadata"]["name"])] = RequestGrant(str(spec.get("user")), frozenset(spec.get("roles") or []))
        return grants

    @property
    def kept_current(self) -> bool:
        """Whether ``run`` keeps the snapshot current (every role change moves ``roles_version``)."""
        return self._wake is not None

    def current(self) -> AccessState:
        """The latest snapshot (built now, blocking, if there is none yet)."""
        return self._state if self._state is not None else self.build()

    # --- checking ---------------------------------------------------------------------------
    def refusal(self, identity: Identity) -> Refusal | None:
        """Why ``identity``'s certificate may not be used now (None: it may).

        A refusal that rests on the user's record is confirmed against storage first: another
        auth process may have created or changed the user after this snapshot was built.
        """
        state = self.current()
        reason = lock_refusal(state, identity, self.clock())
        if reason is not None:
            return reason
        reason = user_refusal(state.users.get(identity.username), identity, state.requests)
        if reason is None:
            return None
        try:
            doc = self.users.get(identity.username)
        except NotFound:
            return reason
        grants = self._grants(identity.active_requests) if identity.active_requests else {}
        return user_refusal(UserAccess(frozenset(doc["spec"].get("roles") or []), user_created(doc)), identity, grants)

    async def refusal_async(self, identity: Identity) -> Refusal | None:
        """``refusal`` for the event loop: the snapshot in memory, and the storage read that
        confirms a refusal resting on the user's record in a worker thread."""
        state = self.current() if self._state is not None else await asyncio.to_thread(self.current)
        reason = lock_refusal(state, identity, self.clock())
        if reason is not None:
            return reason
        if user_refusal(state.users.get(identity.username), identity, state.requests) is None:
            return None
        return await asyncio.to_thread(self.refusal, identity)

    def check(self, identity: Identity) -> None:
        """The refusal as an error: NotLoggedIn when logging in again helps (or the user is gone), else AccessDenied."""
        reason = self.refusal(identity)
        if reason is not None:
            raise as_error(reason)

    def check_locks(self, identity: Identity) -> None:
        """Only the locks (for issuing a certificate to someone whose record was just read)."""
        reason = lock_refusal(self.current(), identity, self.clock())
        if reason is not None:
            raise as_error(reason)

    # --- keeping it fresh ------------------------------------------------------------------
    def on_change(self, listener: Callable[[AccessState], None]) -> None:
        self._listeners.append(listener)

    def changed(self) -> None:
        """Something this process changed (lock, user, role): rebuild now, tell listeners soon.

        Called by the auth services right after they wrote; safe from any thread.
        """
        self.build()
        if self._wake is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
        for hook in list(self.after_change):
            hook()

    def poke(self) -> None:
        """The change feed says users, roles or locks changed: rebuild now (call on the loop)."""
        if self._wake is not None:
            self._wake.set()

    async def run(self, poll_every: float = REFRESH_EVERY) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        seen = ""
        while True:
            try:
                state = await asyncio.to_thread(self.build)
            except Exception as exc:
                log.warning("could not refresh locks and users from storage: %s", exc)
            else:
                if state.version != seen:
                    seen = state.version
                    for listener in list(self._listeners):
                        try:
                            listener(state)
                        except Exception:
                            log.exception("an access-state listener failed")
            try:
                await asyncio.wait_for(self._wake.wait(), poll_every)
            except TimeoutError:
                pass
            self._wake.clear()


def as_error(reason: Refusal) -> PteleportError:
    """A lock is a refusal (AccessDenied, exit 4); otherwise the login is no good (NotLoggedIn, exit 3)."""
    return AccessDenied(reason.message) if reason.kind == "lock" else NotLoggedIn(reason.message)
