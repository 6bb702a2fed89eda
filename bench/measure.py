"""The measurements: pgbench, COPY, connects, CLI start-up, idle sessions, many databases.

Each function returns plain numbers; ``bench.run`` pairs them up (same repetition, same
run) and ``bench.report`` turns them into ratios.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import statistics
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.harness import PTELEPORT, PTSH

from bench.deploy import CERT_USER, DB_NAME, DB_SERVICE, Deployment, rss_kib

CLK_TCK = os.sysconf("SC_CLK_TCK")
SRC = Path(__file__).resolve().parent.parent / "src"


def compile_sources() -> None:
    """Byte-compile the project's modules, as installing a package does, before CLI timings.

    The project is installed in editable mode; with ``PYTHONDONTWRITEBYTECODE`` set (some
    shells and CI set it) no ``.pyc`` is ever written for it, and every timed ``ptsh`` run
    compiled each of its modules from source first.
    """
    import compileall

    compileall.compile_dir(str(SRC), quiet=1)


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- pgbench ----------------------------------------------------------------------------------------


@dataclass
class PgbenchResult:
    tps: float
    transactions: int
    cpu_us_per_tx: dict[str, float]  # per watched process, plus "pgbench" itself
    machine_busy: float = 0.0  # fraction of all cores busy during the run (any process)


def pgbench(env: dict[str, str], args: list[str], seconds: float,
            watch: dict[str, list[int]] | None = None) -> PgbenchResult:
    """One pgbench run; ``watch`` names processes whose CPU time per transaction we record."""
    watch = watch or {}
    before = {name: sum(cpu_seconds(p) for p in pids) for name, pids in watch.items()}
    busy0, total0 = machine_busy()
    cmd = ["pgbench", "-n", "-T", str(int(seconds)), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    busy1, total1 = machine_busy()
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    tps = re.search(r"tps = ([\d.]+) \(without initial", out)
    done = re.search(r"number of transactions actually processed: (\d+)", out)
    if proc.returncode != 0 or not tps or not done:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-1500:]}\n{err[-1500:]}")
    n = max(int(done.group(1)), 1)
    cpu = {name: (sum(cpu_seconds(p) for p in pids) - before[name]) / n * 1e6 for name, pids in watch.items()}
    cpu["pgbench"] = (usage.ru_utime + usage.ru_stime) / n * 1e6
    return PgbenchResult(float(tps.group(1)), n, cpu, (busy1 - busy0) / max(total1 - total0, 1e-9))


def pgbench_init(env: dict[str, str], scale: int) -> None:
    # Server-side data generation: the fastest way to a scale-10 database.
    run = subprocess.run(["pgbench", "-i", "-q", "-s", str(scale), "-I", "dtGvp"], env=env,
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"pgbench -i failed:\n{run.stderr}")


# --- COPY -----------------------------------------------------------------------------------------

COPY_SQL = "COPY (SELECT * FROM pgbench_accounts) TO STDOUT"


def copy_bytes(env: dict[str, str]) -> int:
    """How many bytes the COPY sends (counted once, directly)."""
    proc = subprocess.Popen(["psql", "-X", "-q", "-c", COPY_SQL], env=env, stdout=subprocess.PIPE)
    total = 0
    assert proc.stdout is not None
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    if proc.wait() != 0:
        raise RuntimeError("psql COPY failed")
    return total


def copy_seconds(env: dict[str, str], watch: dict[str, list[int]] | None = None) -> tuple[float, dict[str, float]]:
    """Wall time of one ``psql -c 'COPY … TO STDOUT'`` into /dev/null (psql start and connect included),
    and the CPU seconds each watched process (and psql) spent meanwhile."""
    watch = watch or {}
    before = {name: sum(cpu_seconds(p) for p in pids) for name, pids in watch.items()}
    start = time.perf_counter()
    proc = subprocess.Popen(["psql", "-X", "-q", "-c", COPY_SQL], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _pid, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"COPY failed: {err}")
    cpu = {name: sum(cpu_seconds(p) for p in pids) - before[name] for name, pids in watch.items()}
    cpu["psql"] = usage.ru_utime + usage.ru_stime
    return took, cpu


COPY_IN_TABLE = "copy_in_target"


def copy_in_prepare(env: dict[str, str], data: Path) -> int:
    """Write the rows of pgbench_accounts to ``data`` (what ``\\copy ... from stdin`` reads) and
    make an empty UNLOGGED table like it; the bytes of the file."""
    with data.open("wb") as out:
        run = subprocess.run(["psql", "-X", "-q", "-c", COPY_SQL], env=env, stdout=out, stderr=subprocess.PIPE)
    if run.returncode != 0:
        raise RuntimeError(f"psql COPY failed: {run.stderr!r}")
    sql = f"DROP TABLE IF EXISTS {COPY_IN_TABLE}; CREATE UNLOGGED TABLE {COPY_IN_TABLE} (LIKE pgbench_accounts)"
    made = subprocess.run(["psql", "-X", "-q", "-c", sql], env=env, capture_output=True, text=True)
    if made.returncode != 0:
        raise RuntimeError(f"cannot create {COPY_IN_TABLE}: {made.stderr}")
    return data.stat().st_size


def copy_in_seconds(env: dict[str, str], data: Path, truncate_env: dict[str, str],
                    watch: dict[str, list[int]] | None = None) -> tuple[float, dict[str, float]]:
    """Wall time of one ``psql -c '\\copy copy_in_target from stdin'`` fed from ``data`` (psql start and
    connect included), after emptying the table; CPU seconds of each watched process (and psql)."""
    watch = watch or {}
    trunc = subprocess.run(["psql", "-X", "-q", "-c", f"TRUNCATE {COPY_IN_TABLE}"], env=truncate_env,
                           capture_output=True, text=True)
    if trunc.returncode != 0:
        raise RuntimeError(f"TRUNCATE failed: {trunc.stderr}")
    before = {name: sum(cpu_seconds(p) for p in pids) for name, pids in watch.items()}
    start = time.perf_counter()
    with data.open("rb") as feed:
        proc = subprocess.Popen(["psql", "-X", "-q", "-c", f"\\copy {COPY_IN_TABLE} from stdin"], env=env,
                                stdin=feed, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _pid, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"COPY FROM STDIN failed: {err}")
    cpu = {name: sum(cpu_seconds(p) for p in pids) - before[name] for name, pids in watch.items()}
    cpu["psql"] = usage.ru_utime + usage.ru_stime
    return took, cpu


def sessions_per_second(port: int, user: str, seconds: float, tls: bool, concurrency: int = 4) -> float:
    """New sessions a second: ``concurrency`` clients each open a session (to ReadyForQuery), send
    Terminate and close, again and again for ``seconds``."""
    ctx = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

    async def client(deadline: float) -> int:
        done = 0
        while time.perf_counter() < deadline:
            writer = await _open_session(port, user, ctx)
            writer.write(b"X\x00\x00\x00\x04")
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
            done += 1
        return done

    async def go() -> float:
        start = time.perf_counter()
        counts = await asyncio.gather(*(client(start + seconds) for _ in range(concurrency)))
        return sum(counts) / (time.perf_counter() - start)

    return asyncio.run(go())


# --- connections and CLIs ---------------------------------------------------------------------------


def psql_connects(env: dict[str, str], count: int) -> float:
    """Milliseconds per ``psql -c 'select 1'``, over ``count`` sequential runs."""
    start = time.perf_counter()
    for _ in range(count):
        run = subprocess.run(["psql", "-X", "-Atq", "-c", "select 1"], env=env, capture_output=True, text=True)
        if run.returncode != 0 or run.stdout.strip() != "1":
            raise RuntimeError(f"psql failed: {run.stderr}")
    return (time.perf_counter() - start) / count * 1000


def wall_ms(cmd: list[str], env: dict[str, str], expect: Callable[[str], bool] | None = None) -> float:
    start = time.perf_counter()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    took = (time.perf_counter() - start) * 1000
    if run.returncode != 0 or (expect is not None and not expect(run.stdout)):
        raise RuntimeError(f"{' '.join(cmd)} failed ({run.returncode}): {run.stderr[-800:]}")
    return took


def ptsh_connect_cmd() -> list[str]:
    return [PTSH, "db", "connect", f"--db-user={CERT_USER}", f"--db-name={DB_NAME}", DB_SERVICE, "--",
            "-X", "-Atq", "-c", "select 1"]


# --- idle sessions --------------------------------------------------------------------------------


def _startup(user: str) -> bytes:
    body = struct.pack("!i", 196608) + f"user\0{user}\0database\0{DB_NAME}\0application_name\0idle\0\0".encode()
    return struct.pack("!i", len(body) + 4) + body


async def _open_session(port: int, user: str, tls: ssl.SSLContext | None) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if tls is not None:
        writer.write(struct.pack("!ii", 8, 80877103))  # SSLRequest
        await writer.drain()
        if await reader.readexactly(1) != b"S":
            raise RuntimeError("the server refused TLS")
        await writer.start_tls(tls, server_hostname=None)
    writer.write(_startup(user))
    await writer.drain()
    while True:  # until ReadyForQuery
        kind, length = struct.unpack("!ci", await reader.readexactly(5))
        payload = await reader.readexactly(length - 4)
        if kind == b"E":
            raise RuntimeError(f"session refused: {payload!r}")
        if kind == b"Z":
            return writer


async def _open_many(port: int, user: str, count: int, tls: bool, batch: int = 25) -> list[asyncio.StreamWriter]:
    ctx = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    writers: list[asyncio.StreamWriter] = []
    for start in range(0, count, batch):
        writers += await asyncio.gather(*(_open_session(port, user, ctx) for _ in range(min(batch, count - start))))
    return writers


@dataclass
class IdleResult:
    sessions: int
    seconds_to_open: float
    kib_per_session: dict[str, float]  # per watched process (and "total" of those in ``total_of``)


def idle_sessions(port: int, user: str, count: int, watch: dict[str, list[int]], tls: bool = False,
                  settle: float = 1.5) -> IdleResult:
    """Open ``count`` sessions, leave them idle, and see how much each watched process grew."""

    def rss() -> dict[str, int]:
        return {name: sum(rss_kib(p) for p in pids) for name, pids in watch.items()}

    async def go() -> IdleResult:
        warm = await _open_many(port, user, 20, tls)  # first sessions load code and caches
        for w in warm:
            w.close()
        await asyncio.sleep(settle)
        before = rss()
        start = time.perf_counter()
        writers = await _open_many(port, user, count, tls)
        opened = time.perf_counter() - start
        await asyncio.sleep(settle)
        after = rss()
        for w in writers:
            w.close()
        await asyncio.sleep(0.5)
        return IdleResult(count, opened, {k: (after[k] - before[k]) / count for k in watch})

    return asyncio.run(go())


# --- many databases -------------------------------------------------------------------------------


def agent_config(root: Path, index: int, proxy: str, token: str, pin: str, pg_port: int, ca_file: str,
                 per_agent: int) -> Path:
    import yaml

    databases = [
        {
            "name": f"scale-{index:02d}-{i:03d}",
            "description": f"scale test database {i} of agent {index}",
            "protocol": "postgres",
            "uri": f"localhost:{pg_port}",
            "static_labels": {"env": "scale", "agent": f"a{index:02d}"},
            "tls": {"ca_cert_file": ca_file},
        }
        for i in range(per_agent)
    ]
    doc = {
        "version": "v3",
        "teleport": {
            "nodename": f"scale-agent-{index:02d}",
            "data_dir": str(root / f"scale-agent-{index:02d}"),
            "proxy_server": proxy,
            "join_params": {"join_method": "token", "token_name": token},
            "ca_pin": [pin],
            "log": {"severity": "WARN"},
        },
        "auth_service": {"enabled": False},
        "proxy_service": {"enabled": False},
        "db_service": {"enabled": True, "databases": databases},
    }
    path = root / f"scale-agent-{index:02d}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start_scale_agents(dep: Deployment, agents: int, per_agent: int, timeout: float = 90.0) -> float:
    """Start ``agents`` agents serving ``per_agent`` databases each; seconds until all registered."""
    env = dep.env
    pin = env.pctl_json("status")["ca_pin"]
    start = time.perf_counter()
    procs = []
    for index in range(agents):
        token = env.pctl("tokens", "add", "--type=db", "--format=text")
        if token.returncode != 0:
            raise RuntimeError(token.stderr)
        cfg = agent_config(dep.root, index, env.cluster.addr, token.stdout.strip(), pin, dep.pg.port,
                           dep.pg.ca_cert_file, per_agent)
        log = (dep.root / f"scale-agent-{index:02d}.log").open("ab")
        procs.append(subprocess.Popen([PTELEPORT, "start", "-c", str(cfg)], env=env.cluster.env(),
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    from tests.dbenv import Agent

    dep.extra_agents += [Agent(f"scale-{i}", dep.root / f"scale-agent-{i:02d}", p,
                               dep.root / f"scale-agent-{i:02d}.log") for i, p in enumerate(procs)]
    want = agents * per_agent
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        servers = env.pctl_json("get", "db_servers")
        if sum(1 for s in servers if s["metadata"]["name"].startswith("scale-")) >= want:
            return time.perf_counter() - start
        for agent in dep.extra_agents:
            if agent.proc.poll() is not None:
                raise RuntimeError(f"a scale agent exited:\n{agent.log()[-2000:]}")
        time.sleep(1.0)
    raise RuntimeError("the scale agents did not register all their databases in time")


def stop_scale_agents(dep: Deployment) -> None:
    for agent in dep.extra_agents:
        if agent.proc.poll() is None:
            agent.proc.terminate()
    for agent in dep.extra_agents:
        agent.stop()
    dep.extra_agents.clear()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")

