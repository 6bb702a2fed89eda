"""The agent's first join: which failures are tried again, and which stop it with their own exit code."""

from __future__ import annotations

import asyncio
import logging

import pytest

from common.backoff import Backoff
from common.errors import AccessDenied, ConnectionProblem, InternalError, LimitExceeded, NotLoggedIn
from pteleport.config import parse_config
from pteleport.dbagent import service
from pteleport.dbagent.join import (
    EXIT_TOKEN_EXPIRED,
    EXIT_TOKEN_REFUSED,
    EXIT_UNTRUSTED,
    JoinError,
    Unreachable,
    classify,
)

PROXY = "proxy.example.com:3080"


@pytest.mark.parametrize(
    ("err", "pinned", "exit_code", "says"),
    [
        (AccessDenied("the join token is invalid or has expired; create a new one"), True, EXIT_TOKEN_REFUSED, None),
        (NotLoggedIn("the join token expired at 2026-01-01 00:00:00 UTC; create a new one"), True, EXIT_TOKEN_EXPIRED,
         None),
        (ConnectionProblem("cannot connect securely to x: certificate verify failed"), False, EXIT_UNTRUSTED,
         "does not trust its web certificate"),
    ],
)
def test_causes_waiting_cannot_fix_give_up_with_their_own_code(err, pinned: bool, exit_code: int, says) -> None:
    result = classify(PROXY, err, pinned)
    assert isinstance(result, JoinError) and result.exit_code == exit_code
    assert (says or err.message) in result.message


@pytest.mark.parametrize(
    "err",
    [
        ConnectionProblem("cannot reach the cluster at x: connection refused; check the address"),
        ConnectionProblem("cannot connect securely to x: wrong version number"),  # pinned: not a trust question
        InternalError("the cluster answered HTTP 500"),
        LimitExceeded("too many failed attempts from this address; try again in 30 s", retry_after=30),
    ],
)
def test_causes_that_may_go_away_are_tried_again(err) -> None:
    result = classify(PROXY, err, pinned=True)
    assert isinstance(result, Unreachable)
    if isinstance(err, LimitExceeded):
        assert result.retry_after == 30


def _agent() -> service.DatabaseAgent:
    cfg = parse_config({"teleport": {"proxy_server": PROXY, "auth_token": "t" * 32, "nodename": "a"},
                        "db_service": {"enabled": True}})
    return service.DatabaseAgent(cfg, clock=lambda: None)  # type: ignore[arg-type,return-value]


def test_an_unreachable_proxy_is_tried_until_it_answers(monkeypatch, caplog) -> None:
    tries: list[int] = []

    def join(*_args: object) -> str:
        tries.append(1)
        if len(tries) < 4:
            raise Unreachable(f"cannot reach the cluster at {PROXY}: connection refused (try {len(tries)})")
        return "identity"

    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(service, "join", join)
    with caplog.at_level(logging.INFO, logger="pteleport.dbagent"):
        ident = asyncio.run(_agent()._join(PROXY, Backoff(0.5, 15.0, sleep=sleep, random=lambda: 0.5)))
    assert ident == "identity" and len(tries) == 4
    assert slept == [0.5, 1.0, 2.0]  # growing, never giving up
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all("connection refused" in w and "trying again" in w for w in warnings)
    assert "joined after 3 failed tries" in caplog.text


def test_a_refused_token_stops_at_once(monkeypatch, caplog) -> None:
    def join(*_args: object) -> str:
        raise JoinError("the cluster refused the join token: no such token", EXIT_TOKEN_REFUSED)

    async def sleep(_delay: float) -> None:
        raise AssertionError("a refused token is not tried again")

    monkeypatch.setattr(service, "join", join)
    with pytest.raises(JoinError) as caught, caplog.at_level(logging.ERROR, logger="pteleport.dbagent"):
        asyncio.run(_agent()._join(PROXY, Backoff(0.5, 15.0, sleep=sleep)))
    assert caught.value.exit_code == EXIT_TOKEN_REFUSED
    assert "could not join the cluster: the cluster refused the join token" in caplog.text


def test_a_limit_is_waited_out(monkeypatch) -> None:
    calls: list[int] = []

    def join(*_args: object) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise Unreachable("the cluster asks to wait", retry_after=30)
        return "identity"

    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(service, "join", join)
    assert asyncio.run(_agent()._join(PROXY, Backoff(0.5, 15.0, sleep=sleep))) == "identity"
    assert slept == [30.0]
