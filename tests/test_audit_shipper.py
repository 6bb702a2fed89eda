"""The agent's audit shipper keeps events while auth is unreachable and delivers them later."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from common.errors import ConnectionProblem
from pteleport.dbagent.audit_shipper import SPOOL_NAME, AuditShipper


class FlakyAuth:
    """Stands in for the auth API: refuses while ``down``, else records what it receives."""

    def __init__(self) -> None:
        self.down = False
        self.received: list[dict] = []

    async def post(self, path: str, body: dict) -> dict:
        assert path == "/v1/events"
        if self.down:
            raise ConnectionProblem("cannot reach the cluster")
        self.received.extend(body["events"])
        return {"accepted": len(body["events"])}


def events(start: int, count: int) -> list[dict]:
    return [{"uid": f"e{i}", "ei": i} for i in range(start, start + count)]


def test_events_survive_an_outage_and_an_agent_restart_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        auth = FlakyAuth()
        shipper = AuditShipper(auth, tmp_path)
        auth.down = True
        for event in events(0, 700):
            shipper.emit(event)
        with pytest.raises(ConnectionProblem):
            await shipper.flush()
        shipper.spill()  # what run() does after a failed send
        spooled = (tmp_path / SPOOL_NAME).read_text().splitlines()
        assert [json.loads(line)["uid"] for line in spooled] == [f"e{i}" for i in range(700)]
        assert (tmp_path / SPOOL_NAME).stat().st_mode & 0o777 == 0o600
        for event in events(700, 10):
            shipper.emit(event)
        shipper.spill()  # the agent stops while auth is still down
        # A new agent process on the same data dir, with auth back:
        auth.down = False
        fresh = AuditShipper(auth, tmp_path)
        fresh.emit({"uid": "after-restart", "ei": 0})
        await fresh.flush()
        assert [e["uid"] for e in auth.received] == [f"e{i}" for i in range(710)] + ["after-restart"]
        assert not list(tmp_path.iterdir())

    asyncio.run(scenario())


def test_run_loop_spools_on_failure_and_delivers_when_auth_returns(tmp_path: Path) -> None:
    async def scenario() -> None:
        auth = FlakyAuth()
        auth.down = True
        shipper = AuditShipper(auth, tmp_path)
        task = asyncio.create_task(shipper.run())
        for event in events(0, 50):
            shipper.emit(event)
        await asyncio.sleep(0.5)
        assert (tmp_path / SPOOL_NAME).exists() and not shipper.queue
        auth.down = False
        for _ in range(100):
            await asyncio.sleep(0.1)
            if len(auth.received) == 50:
                break
        task.cancel()
        assert [e["uid"] for e in auth.received] == [f"e{i}" for i in range(50)]

    asyncio.run(scenario())
