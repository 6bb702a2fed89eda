"""The Access requests page: the requests a user may see, and approve/deny for reviewers.

The list is ``auth.requests.list`` (``pctl requests ls``, ``ptsh request ls``), a review is
``auth.requests.review`` (``ptsh request review``): the same checks, audit events and
sentences as the CLIs. A reviewer never sees review buttons on their own request, and a
refused review is the CLI's sentence on an error page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from common.errors import BadParameter
from common.identity import Identity
from pteleport.api.webui.render import Html, Redirect
from pteleport.rbac import request_rules

if TYPE_CHECKING:
    from pteleport.api.webui.handler import WebCall
    from pteleport.auth.server import AuthServer


def visible(auth: AuthServer, identity: Identity) -> bool:
    """Users who may request roles, review requests or read them see the page."""
    if identity.is_host:
        return False
    if identity.is_admin:
        return True
    checker = auth.ctx.checker(identity)
    if checker.rule_allows("access_request", "list"):
        return True
    if request_rules.requestable_patterns(checker.roles, identity.traits):
        return True
    return request_rules.reviews_any(checker.roles, identity.traits)


def _row(call: WebCall, doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    me = call.me()
    reviewed = any(r.get("author") == me.username for r in spec.get("reviews", []))
    can_review = (
        spec.get("state") == "PENDING"
        and spec.get("user") != me.username
        and not reviewed
        and request_rules.may_review(call.auth.ctx.checker(me).roles, me.traits, spec["roles"]) is None
    )
    return {"doc": doc, "spec": spec, "can_review": can_review}


def requests_page(call: WebCall) -> Html:
    rows = [_row(call, doc) for doc in call.auth.requests.list(call.me())]
    return call.page("requests.html", rows=rows, done=call.query.get("done", ""))


def review(call: WebCall) -> Html | Redirect:
    decision = call.form.get("decision", "")
    if decision not in ("approve", "deny"):
        raise BadParameter("choose approve or deny")
    rid = call.match["id"]
    call.auth.requests.review(call.me(), rid, decision == "approve", call.form.get("reason", ""))
    return Redirect(f"/web/requests?done={'approved' if decision == 'approve' else 'denied'}")
