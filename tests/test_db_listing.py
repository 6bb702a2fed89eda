"""What `ptsh db ls` gets from auth (``DatabaseService.list_for`` and ``GET /v1/databases``), in memory.

The listing comes from the registration index, not a storage read per request; what RBAC
says is asked once per set of labels. Agents' heartbeats run in a pool of their own, so
a hundred agents renewing at once cannot hold up a user's listing.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import make_mocked_request

from common.identity import KIND_ADMIN, Identity, identity_from_pem
from common.tls import generate_private_key, public_key_pem
from pteleport.api import app as api
from pteleport.api import offload
from pteleport.audit.memory_log import MemoryAuditLog
from pteleport.auth.context import AuthSettings
from pteleport.auth.server import AuthServer
from pteleport.storage.memory import MemoryBackend

ADMIN = Identity(username="admin", kind=KIND_ADMIN)
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(clock: Clock) -> AuthServer:
    server = AuthServer(MemoryBackend(clock=clock), MemoryAuditLog(), clock, AuthSettings("t", "x:3080"))
    server.init_cluster()
    return server


def join(auth: AuthServer) -> Identity:
    token = auth.tokens.add(ADMIN, ["db"], None, None)["metadata"]["name"]
    key = public_key_pem(generate_private_key()).decode()
    cert, _host_id = auth.tokens.join(token, "Db", None, "agent", key, "10.0.0.1:1")
    return identity_from_pem(cert)


def db(name: str, description: str = "", **labels: str) -> dict:
    return {
        "kind": "db",
        "version": "v3",
        "metadata": {"name": name, "description": description,
                     "labels": {"teleport.dev/origin": "config", **labels}},
        "spec": {"protocol": "postgres", "uri": "localhost:5432"},
    }


def role(name: str, labels: dict[str, str], users: list[str], deny_users: list[str] | None = None) -> dict:
    spec: dict = {"allow": {"db_labels": labels, "db_users": users, "db_names": ["postgres"]}}
    if deny_users:
        spec["deny"] = {"db_users": deny_users}
    return {"kind": "role", "version": "v7", "metadata": {"name": name}, "spec": spec}


def listed(auth: AuthServer, who: Identity) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in auth.databases.list_for(who)}


def test_each_database_gets_what_its_own_labels_allow(auth: AuthServer) -> None:
    auth.ctx.roles.put("prod-reader", role("prod-reader", {"env": "prod"}, ["reader"]))
    auth.ctx.roles.put("dev-all", role("dev-all", {"env": "dev"}, ["*"], deny_users=["postgres"]))
    agent = join(auth)
    auth.databases.heartbeat(agent, [db(f"prod-{i}", env="prod") for i in range(3)]
                             + [db(f"dev-{i}", env="dev") for i in range(3)] + [db("other", env="qa")], "host-1")
    mia = Identity(username="mia", roles=("prod-reader", "dev-all"))

    got = listed(auth, mia)

    assert sorted(got) == ["dev-0", "dev-1", "dev-2", "prod-0", "prod-1", "prod-2"]  # not "other"
    for i in range(3):
        assert got[f"prod-{i}"]["users"] == {"allowed": ["reader"], "denied": ["postgres"]}
        assert got[f"dev-{i}"]["users"] == {"allowed": ["*"], "denied": ["postgres"]}
        assert got[f"dev-{i}"]["names"] == {"allowed": ["postgres"], "denied": []}
        assert got[f"dev-{i}"]["agents"] == ["host-1"]
    assert sorted(listed(auth, ADMIN)) == sorted([*got, "other"])


def test_a_changed_registration_is_listed_as_it_is_now(auth: AuthServer) -> None:
    agent = join(auth)
    auth.databases.heartbeat(agent, [db("aurora", "before")], "host-1")
    assert listed(auth, ADMIN)["aurora"]["metadata"]["description"] == "before"

    auth.databases.heartbeat(agent, [db("aurora", "after")], "host-1")

    assert listed(auth, ADMIN)["aurora"]["metadata"]["description"] == "after"


def test_a_registration_that_expired_is_not_listed(auth: AuthServer, clock: Clock) -> None:
    gone, stays = join(auth), join(auth)
    auth.databases.heartbeat(gone, [db("old")], "host-1")
    clock.now += timedelta(seconds=20)
    auth.databases.heartbeat(stays, [db("new")], "host-2")
    assert sorted(listed(auth, ADMIN)) == ["new", "old"]

    clock.now += timedelta(seconds=15)  # past the first one's 30 s, inside the second's

    assert sorted(listed(auth, ADMIN)) == ["new"]


class _Body:
    """A request payload for ``make_mocked_request``: the bytes, then the end."""

    def __init__(self, data: bytes) -> None:
        self.chunks = [data, b""]

    def set_read_chunk_size(self, size: int) -> None:
        pass

    async def readany(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def test_a_listing_is_answered_while_every_heartbeat_is_stuck(auth: AuthServer, monkeypatch) -> None:
    """More heartbeats than the API has worker threads, all waiting on storage: ``db ls`` still answers."""
    release = threading.Event()
    stuck = threading.Semaphore(0)

    def slow_heartbeat(actor: Identity, databases: list[dict], hostname: str) -> list:
        stuck.release()
        release.wait(60)
        return []

    monkeypatch.setattr(auth.databases, "heartbeat", slow_heartbeat)
    monkeypatch.setattr(api, "caller_from_der", lambda der, auth: ADMIN)
    agent = join(auth)
    app = api.build_app(auth, api.ProxyInfo("x:3080"))
    handlers = {r.resource.canonical: r.handler for r in app.router.routes() if r.resource is not None}
    heartbeats = offload.WORKERS + 2

    async def main() -> list:
        loop = asyncio.get_running_loop()
        body = json.dumps({"hostname": "host-1", "databases": [db("aurora")]}).encode()
        pending = [loop.create_task(handlers["/v1/agents/heartbeat"](make_mocked_request(
            "POST", "/v1/agents/heartbeat", app=app, payload=_Body(body),
            headers={"Content-Type": "application/json"}))) for _ in range(heartbeats)]
        try:
            for _ in range(offload.BACKGROUND_WORKERS):  # the heartbeats' threads are all taken
                assert await loop.run_in_executor(None, stuck.acquire, True, 10), "the heartbeats did not start"
            response = await asyncio.wait_for(
                handlers["/v1/databases"](make_mocked_request("GET", "/v1/databases", app=app)), 30)
            return json.loads(response.body)
        finally:
            release.set()
            await asyncio.gather(*pending)

    try:
        assert agent.is_host
        assert asyncio.run(main()) == []  # answered (nothing registered: the heartbeats never ran)
    finally:
        release.set()
        app[offload.POOL].shutdown(wait=False)
        app[offload.BACKGROUND].shutdown(wait=False)


def test_a_role_changed_while_the_snapshot_is_kept_current_changes_the_next_listing(auth: AuthServer) -> None:
    """With the access snapshot kept current (as in the daemon), the roles are not read per
    listing, but a role change still reaches the next one."""
    auth.ctx.roles.put("reader", role("reader", {"env": "prod"}, ["reader"]))
    agent = join(auth)
    auth.databases.heartbeat(agent, [db("prod-1", env="prod"), db("dev-1", env="dev")], "host-1")
    mia = Identity(username="mia", roles=("reader",))

    async def main() -> tuple[dict, dict, dict]:
        runner = asyncio.get_running_loop().create_task(auth.access.run(poll_every=3600))
        try:
            while not auth.access.kept_current:
                await asyncio.sleep(0.01)
            before = await asyncio.to_thread(listed, auth, mia)
            again = await asyncio.to_thread(listed, auth, mia)
            await asyncio.to_thread(auth.ctx.roles.put, "reader", role("reader", {"env": "dev"}, ["writer"]))
            after = await asyncio.to_thread(listed, auth, mia)
            return before, again, after
        finally:
            runner.cancel()

    before, again, after = asyncio.run(main())

    assert sorted(before) == sorted(again) == ["prod-1"]
    assert sorted(after) == ["dev-1"] and after["dev-1"]["users"]["allowed"] == ["writer"]
