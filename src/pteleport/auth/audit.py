"""Reading the audit log: who may see which events (auditor/editor everything, access users
the sessions they took part in), searches, and one session's events for `ptsh play`.

Both return one page of at most ``PAGE_LIMIT`` events (fewer if the caller asks for fewer)
and the cursor of the next page: a client that wants more follows the cursor, so nothing
is ever cut silently (``pteleport.audit.records`` has the order).
"""

from __future__ import annotations

from datetime import datetime

from common.errors import AccessDenied, NotFound
from common.identity import Identity
from pteleport.audit.records import Page
from pteleport.auth.context import AuthContext

PAGE_LIMIT = 2_000


class AuditService:
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx

    def _scope(self, actor: Identity, resource: str) -> str | None:
        """None when the actor may read every event; else the only user whose events they may read."""
        if actor.is_admin:
            return None
        checker = self.ctx.checker(actor)
        if checker.rule_allows(resource, "list"):
            return None
        context = {"user": {"metadata": {"name": actor.username}}, "session": {"participants": [actor.username]}}
        if checker.rule_allows(resource, "list", context):
            return actor.username
        raise AccessDenied(
            f"you may not read the audit log; ask an admin for the auditor role (your roles: {', '.join(actor.roles)})"
        )

    def may_search(self, actor: Identity) -> bool:
        """Whether ``search`` lets ``actor`` read any events (the web UI shows Activity then)."""
        try:
            self._scope(actor, "event")
        except AccessDenied:
            return False
        return True

    def search(
        self,
        actor: Identity,
        *,
        from_time: datetime | None = None,
        to_time: datetime | None = None,
        event_types: list[str] | None = None,
        user: str | None = None,
        sid: str | None = None,
        limit: int = 500,
        order: str = "asc",
        after_id: str | None = None,
        cursor: str | None = None,
    ) -> Page:
        """One page of matching events (at most ``PAGE_LIMIT``) and the cursor of the rest."""
        only = self._scope(actor, "event")
        if only is not None:
            if user and user != only:
                raise AccessDenied("you may only read events of your own sessions")
            user = only
        return self.ctx.audit.search_page(
            from_time=from_time,
            to_time=to_time,
            event_types=event_types,
            user=user,
            sid=sid,
            limit=max(1, min(limit, PAGE_LIMIT)),
            order="desc" if order == "desc" else "asc",
            after_id=after_id,
            cursor=cursor,
        )

    def session_events(self, actor: Identity, sid: str, cursor: str | None = None, limit: int = PAGE_LIMIT) -> Page:
        """One page of a session's events, oldest first; an access user sees only their own sessions."""
        only = self._scope(actor, "session")
        page = self.ctx.audit.search_page(
            sid=sid, user=only, limit=max(1, min(limit, PAGE_LIMIT)), order="asc", cursor=cursor
        )
        if not page.events and cursor is None:
            raise NotFound(f'no session "{sid}" found; "ptsh recordings ls" lists recent sessions')
        return page
