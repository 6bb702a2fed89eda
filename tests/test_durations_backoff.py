"""The one duration parser (config, roles, CLI flags) and the one backoff helper."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta

import pytest

from common.backoff import Backoff
from common.durations import format_duration, format_go_duration, parse_duration
from common.errors import BadParameter
from pteleport.config import ConfigError, parse_config


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("30h0m0s", timedelta(hours=30)),
        ("90s", timedelta(seconds=90)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("90d", timedelta(days=90)),
        ("+2h", timedelta(hours=2)),
        (" 8h ", timedelta(hours=8)),
        ("0", timedelta()),
    ],
)
def test_go_durations_and_days_parse(text: str, want: timedelta) -> None:
    assert parse_duration(text) == want


@pytest.mark.parametrize("bad", ["30", "90", "1.5", 30])
def test_a_bare_number_needs_a_unit(bad: object) -> None:
    with pytest.raises(BadParameter, match=r"has no unit; add a unit, e\.g\. \S+m"):
        parse_duration(bad, what="--ttl")


def test_only_ptsh_login_style_reads_a_bare_number_as_minutes() -> None:
    assert parse_duration("90", what="--ttl", bare_minutes=True) == timedelta(minutes=90)
    assert parse_duration("2h", what="--ttl", bare_minutes=True) == timedelta(hours=2)


@pytest.mark.parametrize("bad", ["", "h", "8 hours", "1x", "forever", "-1h", "1h-5m", None, True])
def test_non_durations_are_refused_with_the_flag_named(bad: object) -> None:
    with pytest.raises(BadParameter, match="--last"):
        parse_duration(bad, what="--last")


def test_absurdly_long_durations_are_refused() -> None:
    with pytest.raises(BadParameter, match="too long"):
        parse_duration("99999999999999999999h")


def test_printers() -> None:
    assert format_go_duration(timedelta(hours=30)) == "30h0m0s"
    assert format_go_duration(timedelta(seconds=90)) == "1m30s"
    assert format_go_duration(timedelta(hours=1)) == "1h0m0s"
    assert format_duration(timedelta(hours=11, minutes=59, seconds=30)) == "11h59m"


def test_config_duration_fields_use_the_same_parser() -> None:
    with pytest.raises(ConfigError, match=r"auth_service\.lockout\.lockout_duration: \"20\" has no unit"):
        parse_config({"auth_service": {"lockout": {"lockout_duration": 20}}})
    with pytest.raises(ConfigError, match=r"auth_service\.audit\.retention: .*is not a duration"):
        parse_config({"auth_service": {"audit": {"retention": "ninety days"}}})
    cfg = parse_config({"auth_service": {"audit": {"retention": "30d"}, "lockout": {"lockout_duration": "1h"}}})
    assert parse_duration(cfg.auth_service.audit.retention) == timedelta(days=30)


def test_role_max_session_ttl_uses_the_same_parser() -> None:
    from pteleport.rbac.role import parse_role

    doc = {"kind": "role", "version": "v7", "metadata": {"name": "r"}, "spec": {"options": {"max_session_ttl": "90"}}}
    with pytest.raises(BadParameter, match=r"max_session_ttl.*add a unit"):
        parse_role(doc)


# --- backoff ---------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_maximum_and_resets() -> None:
    backoff = Backoff(0.25, 2.0, random=lambda: 0.5)  # factor 1.0: no jitter
    assert [backoff.next_delay() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert backoff.attempts == 6
    backoff.reset()
    assert backoff.next_delay() == 0.25 and backoff.attempts == 1


def test_backoff_jitter_spreads_each_delay_around_its_base() -> None:
    low = Backoff(1.0, 8.0, jitter=0.5, random=lambda: 0.0)
    high = Backoff(1.0, 8.0, jitter=0.5, random=lambda: 0.999999)
    assert low.next_delay() == 0.5 and low.next_delay() == 1.0
    assert high.next_delay() == pytest.approx(1.5, abs=1e-5) and high.next_delay() == pytest.approx(3.0, abs=1e-5)


def test_backoff_sleeps_through_the_injected_sleep() -> None:
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    backoff = Backoff(0.1, 0.4, random=lambda: 0.5, sleep=fake_sleep)

    async def scenario() -> None:
        for _ in range(4):
            await backoff.wait()

    asyncio.run(scenario())
    assert slept == [0.1, 0.2, 0.4, 0.4]


def test_backoff_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(2, 1)
    with pytest.raises(ValueError):
        Backoff(1, 2, jitter=1.0)


def test_the_tunnel_agent_waits_with_the_backoff_while_the_proxy_is_down() -> None:
    """Nothing listens on the port: each failed dial waits the next delay of the schedule."""
    from common.tls import client_context
    from pteleport.tunnel.agent import TunnelAgent

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: connections are refused
    slept: list[float] = []

    async def scenario() -> None:
        done = asyncio.Event()

        async def fake_sleep(delay: float) -> None:
            slept.append(delay)
            if len(slept) == 5:
                done.set()
                await asyncio.Event().wait()  # park the loop here

        agent = TunnelAgent(
            "127.0.0.1",
            port,
            client_context(insecure=True),
            "agent",
            lambda: [],
            lambda conn: asyncio.sleep(0),
            backoff=lambda: Backoff(0.25, 1.0, random=lambda: 0.5, sleep=fake_sleep),
        )
        task = asyncio.get_running_loop().create_task(agent.run())
        await asyncio.wait_for(done.wait(), 10)
        assert agent.state == "waiting"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert slept == [0.25, 0.5, 1.0, 1.0, 1.0]


def test_longest_is_the_top_of_the_jittered_maximum() -> None:
    """A proxy waits this long for an agent's redial (tunnel/server.py ARRIVAL_WAIT)."""
    top = Backoff(0.25, 10.0, random=lambda: 0.999999)
    delays = [top.next_delay() for _ in range(12)]
    assert top.longest == 15.0
    assert max(delays) <= top.longest and max(delays) > 14.9
