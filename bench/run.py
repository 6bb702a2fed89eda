"""``python -m bench``: stand everything up on loopback, measure side by side, write docs/performance.md.

Phases, in this order (see docs/performance.md for what each one means):

1. deploy: PostgreSQL, ``pteleport start`` (auth + proxy, native Postgres listener on), one
   ``pteleport db start`` agent, a user logged in with ``ptsh login``, ``ptsh proxy db
   --tunnel``, the haproxy chain; ``pgbench -i -s 10``;
2. pgbench (-S 1 client, -S 8 clients, TPC-B-like 8 clients), repetitions interleaved
   across paths so drift on the machine hits every path alike;
3. COPY of pgbench_accounts; 50 sequential psql connects; ``ptsh db connect``;
4. CLI start-up;
5. 500 idle sessions (memory per session in proxy + agent, and in haproxy for reference);
6. 1,000 databases over 10 agents and ``ptsh db ls``;
7. ``select 1`` latency through the tunnel, quiet and under heavy admin load (bench/latency.py);
8. the proxy and agent restarted on stock asyncio (no uvloop): pgbench -S again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # ``python bench/run.py`` as well as ``python -m bench``
    sys.path.insert(0, str(REPO))

from tests.harness import PCTL, PTSH  # noqa: E402

from bench import measure as m  # noqa: E402
from bench.deploy import CERT_USER, CLUSTER_USER, DB_NAME, DB_SERVICE, Deployment, deploy, has_uvloop  # noqa: E402
from bench.report import write_report  # noqa: E402


class Settings:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.reps = 1 if quick else 3
        self.main_seconds = 3 if quick else 10  # direct and tunnel: the issue's -T 10
        self.side_seconds = 3 if quick else 5  # haproxy, native listener, ptsh on uvloop
        self.scale = 10
        self.copy_reps = 1 if quick else 3
        self.connects = 10 if quick else 50
        self.connect_reps = 1 if quick else 3
        self.session_seconds = 2 if quick else 5
        self.cli_reps = 3 if quick else 7
        self.idle_sessions = 100 if quick else 500
        self.scale_agents = 2 if quick else 10
        self.per_agent = 50 if quick else 100
        self.latency_rounds = 1 if quick else 3
        self.latency_seconds = 5 if quick else 10


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "kernel": platform.release()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, env={"LC_ALL": "C"}).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Hypervisor vendor"):
                info[key.strip()] = value.strip()
    except OSError:
        pass
    info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    for name, cmd in (("postgres", ["psql", "--version"]), ("pgbench", ["pgbench", "--version"]),
                      ("haproxy", ["haproxy", "-v"])):
        try:
            info[name] = subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            info[name] = "not found"
    try:
        import uvloop

        info["uvloop"] = uvloop.__version__
    except ImportError:
        info["uvloop"] = "not installed"
    try:
        import ssl

        info["openssl"] = ssl.OPENSSL_VERSION
    except ImportError:
        pass
    return info


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def run_pgbench(dep: Deployment, s: Settings, results: dict[str, Any], uv_tunnel: Any) -> None:
    watch = {"ptsh tunnel": [dep.tunnel.proc.pid], "proxy": [dep.proxy_pid()], "agent": [dep.agent_pid()],
             "auth worker": [dep.auth_worker_pid()], "haproxy": dep.haproxy.pids()}
    if uv_tunnel is not None:
        watch["ptsh tunnel (uvloop)"] = [uv_tunnel.proc.pid]
    paths: dict[str, tuple[dict[str, str], float]] = {
        "direct": (dep.direct_env(), s.main_seconds),
        "tunnel": (dep.tunnel_env(), s.main_seconds),
        "haproxy": (dep.haproxy_env(), s.side_seconds),
        "native": (dep.native_env(), s.side_seconds),
    }
    if uv_tunnel is not None:
        env = dict(dep.tunnel_env(), PGPORT=str(uv_tunnel.port))
        paths["tunnel_uvloop_ptsh"] = (env, s.side_seconds)
    workloads = {
        "select_c1": (["-S", "-c", "1"], list(paths)),
        "select_c8": (["-S", "-c", "8", "-j", "2"], list(paths)),
        "tpcb_c8": (["-c", "8", "-j", "2"], ["direct", "tunnel", "haproxy"]),
    }
    out: dict[str, dict[str, list[dict]]] = {}
    for name, (args, names) in workloads.items():
        log(f"pgbench {' '.join(args)}: {', '.join(names)} x {s.reps}")
        runs: dict[str, list[dict]] = {n: [] for n in names}
        for rep in range(s.reps):
            order = names[rep % len(names):] + names[: rep % len(names)]
            for path in order:
                env, seconds = paths[path]
                result = m.pgbench(env, args, seconds, watch)
                runs[path].append(asdict(result))
            log(f"  rep {rep + 1}: " + ", ".join(f"{p} {runs[p][-1]['tps']:.0f}" for p in names))
        out[name] = runs
    results["pgbench"] = out


def run_copy_and_connects(dep: Deployment, s: Settings, results: dict[str, Any]) -> None:
    size = m.copy_bytes(dep.direct_env())
    results["copy_bytes"] = size
    paths = {"direct": dep.direct_env(), "tunnel": dep.tunnel_env(), "haproxy": dep.haproxy_env(),
             "native": dep.native_env()}
    log(f"COPY of pgbench_accounts ({size / 1e6:.0f} MB) x {s.copy_reps}")
    watch = {"ptsh tunnel": [dep.tunnel.proc.pid], "proxy": [dep.proxy_pid()], "agent": [dep.agent_pid()],
             "haproxy": dep.haproxy.pids()}
    copy: dict[str, list[float]] = {p: [] for p in paths}
    copy_cpu: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    for _rep in range(s.copy_reps):
        for path, env in paths.items():
            took, cpu = m.copy_seconds(env, watch)
            copy[path].append(size / took / 1e6)
            copy_cpu[path].append({k: v / (size / 1e6) * 1000 for k, v in cpu.items()})  # CPU ms per MB
    results["copy_mb_s"] = copy
    results["copy_cpu_ms_per_mb"] = copy_cpu
    data = dep.root / "copy-in.data"
    size_in = m.copy_in_prepare(dep.direct_env(), data)
    results["copy_in_bytes"] = size_in
    log(f"\\copy ... from stdin ({size_in / 1e6:.0f} MB) x {s.copy_reps}")
    copy_in: dict[str, list[float]] = {p: [] for p in paths}
    copy_in_cpu: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    for _rep in range(s.copy_reps):
        for path, env in paths.items():
            took, cpu = m.copy_in_seconds(env, data, dep.direct_env(), watch)
            copy_in[path].append(size_in / took / 1e6)
            copy_in_cpu[path].append({k: v / (size_in / 1e6) * 1000 for k, v in cpu.items()})
    data.unlink()
    results["copy_in_mb_s"] = copy_in
    results["copy_in_cpu_ms_per_mb"] = copy_in_cpu
    log(f"new sessions per second, {s.session_seconds:g} s x {s.connect_reps}")
    assert dep.tunnel is not None and dep.haproxy is not None
    targets = {"direct": (dep.pg.port, "bench", True), "tunnel": (dep.tunnel.port, CERT_USER, False),
               "haproxy": (dep.haproxy.entry_port, "bench", True)}
    rates: dict[str, list[float]] = {p: [] for p in targets}
    for _rep in range(s.connect_reps):
        for path, (port, user, tls) in targets.items():
            rates[path].append(m.sessions_per_second(port, user, s.session_seconds, tls))
    results["sessions_per_s"] = rates
    log(f"{s.connects} sequential psql connects x {s.connect_reps}")
    connects: dict[str, list[float]] = {p: [] for p in paths}
    for _rep in range(s.connect_reps):
        for path, env in paths.items():
            connects[path].append(m.psql_connects(env, s.connects))
    results["connect_ms"] = connects
    log("ptsh db connect vs psql")
    user_env = {k: v for k, v in dep.env.user_env(CLUSTER_USER).items() if not k.startswith("PG")}
    fresh: dict[str, list[float]] = {"psql": [], "ptsh db connect (new cert)": [], "ptsh db connect (db login)": []}
    login = dep.env.ptsh(CLUSTER_USER, "db", "login", f"--db-user={CERT_USER}", f"--db-name={DB_NAME}", DB_SERVICE)
    assert login.returncode == 0, login.stderr
    saved_reps = max(s.cli_reps, 5)
    for _rep in range(saved_reps):
        fresh["psql"].append(m.wall_ms(["psql", "-X", "-Atq", "-c", "select 1"], dep.direct_env(),
                                       lambda out: out.strip() == "1"))
        fresh["ptsh db connect (db login)"].append(m.wall_ms(m.ptsh_connect_cmd(), user_env,
                                                             lambda out: out.strip() == "1"))
    dep.env.ptsh(CLUSTER_USER, "db", "logout")
    for _rep in range(saved_reps):
        fresh["ptsh db connect (new cert)"].append(m.wall_ms(m.ptsh_connect_cmd(), user_env,
                                                             lambda out: out.strip() == "1"))
    results["ptsh_connect_ms"] = fresh


def run_cli(dep: Deployment, s: Settings, results: dict[str, Any]) -> None:
    log("CLI start-up")
    m.compile_sources()
    user_env = dep.env.user_env(CLUSTER_USER)
    admin_env = dep.env.cluster.env()
    py = sys.executable
    cmds: dict[str, tuple[list[str], dict[str, str]]] = {
        "python -c pass (floor)": ([py, "-c", "pass"], user_env),
        "python -c 'import typer' (floor)": ([py, "-c", "import typer"], user_env),
        "ptsh --help": ([PTSH, "--help"], user_env),
        "ptsh version": ([PTSH, "version"], user_env),
        "ptsh status": ([PTSH, "status"], user_env),
        "ptsh db ls (1 database)": ([PTSH, "db", "ls"], user_env),
        "ptsh db ls --format=json (1 database)": ([PTSH, "db", "ls", "--format=json"], user_env),
        "pctl --help": ([PCTL, "--help"], admin_env),
    }
    out: dict[str, list[float]] = {name: [] for name in cmds}
    for _rep in range(s.cli_reps):
        for name, (cmd, env) in cmds.items():
            out[name].append(m.wall_ms(cmd, env))
    results["cli_ms"] = out


def run_idle(dep: Deployment, s: Settings, results: dict[str, Any]) -> None:
    log(f"{s.idle_sessions} idle sessions through the tunnel, proxy and agent")
    watch = {"proxy": [dep.proxy_pid()], "agent": [dep.agent_pid()], "ptsh tunnel": [dep.tunnel.proc.pid]}
    pt = m.idle_sessions(dep.tunnel.port, CERT_USER, s.idle_sessions, watch)
    log(f"  pteleport: {pt.kib_per_session} KiB per session, opened in {pt.seconds_to_open:.1f}s")
    pids = dep.haproxy.pids()
    hwatch = {"hop1 (tunnel)": pids[:1], "hop2 (proxy)": pids[1:2], "hop3 (agent)": pids[2:]}
    log(f"{s.idle_sessions} idle sessions through the haproxy chain")
    hp = m.idle_sessions(dep.haproxy.entry_port, "bench", s.idle_sessions, hwatch, tls=True)
    log(f"  haproxy: {hp.kib_per_session} KiB per session")
    results["idle"] = {"pteleport": asdict(pt), "haproxy": asdict(hp)}
    floor: dict[str, float] = {}
    for kind in ("plain", "asyncio", "uvloop", "socket") if has_uvloop() else ("plain", "asyncio", "socket"):
        try:
            run = subprocess.run([sys.executable, "-m", "bench.tlsfloor", kind], capture_output=True, text=True,
                                 cwd=REPO, timeout=300)
        except subprocess.TimeoutExpired:
            log(f"  the {kind} floor did not finish in 300 s (a busy machine): left out")
            continue
        if run.returncode == 0:
            floor[kind] = float(run.stdout.strip())
    log(f"  one idle server-side connection in Python: {floor} KiB")
    results["tls_floor_kib"] = floor


def run_scale(dep: Deployment, s: Settings, results: dict[str, Any]) -> None:
    total = s.scale_agents * s.per_agent
    log(f"{total} databases over {s.scale_agents} agents")
    took = m.start_scale_agents(dep, s.scale_agents, s.per_agent)
    log(f"  all registered after {took:.1f}s")
    user_env = dep.env.user_env(CLUSTER_USER)
    m.compile_sources()
    out: dict[str, Any] = {"databases": total + 1, "agents": s.scale_agents + 1, "register_s": took}
    text: list[float] = []
    js: list[float] = []
    for _rep in range(s.cli_reps):
        text.append(m.wall_ms([PTSH, "db", "ls"], user_env, lambda o: o.count("\n") > total))
        js.append(m.wall_ms([PTSH, "db", "ls", "--format=json"], user_env))
    out["ptsh_db_ls_ms"] = text
    out["ptsh_db_ls_json_ms"] = js
    results["scale"] = out
    m.stop_scale_agents(dep)


def run_latency(dep: Deployment, s: Settings, results: dict[str, Any]) -> None:
    from bench.latency import measure

    events = dep.env.pctl("audit", "events", "--limit", "10000", "--format", "json")
    if events.returncode != 0 or events.stdout.count('"uid"') < 10000:
        log("  filling the audit log: pgbench -S through the tunnel for 5 s")
        m.pgbench(dep.tunnel_env(), ["-S", "-c", "1"], 5)
    log(f"select 1 through the tunnel, quiet and under admin load: {s.latency_rounds} x {s.latency_seconds:g} s each")
    assert dep.tunnel is not None
    targets = {"tunnel": (dep.tunnel.port, CERT_USER, DB_NAME), "direct": (dep.pg.port, "bench", DB_NAME)}
    results["latency"] = measure(
        targets, dep.env.cluster.addr, dep.env.cluster.data_dir, PCTL,
        rounds=s.latency_rounds, seconds=s.latency_seconds, log=log)


def run_asyncio_variant(dep: Deployment, s: Settings, results: dict[str, Any]) -> None:
    if dep.loop != "uvloop":
        log("uvloop is not installed: the main run already used stock asyncio")
        return
    log("restarting the proxy and the agent on stock asyncio")
    dep.switch_loop("asyncio")
    watch = {"ptsh tunnel": [dep.tunnel.proc.pid], "proxy": [dep.proxy_pid()], "agent": [dep.agent_pid()]}
    out: dict[str, dict[str, list[dict]]] = {}
    for name, args in (("select_c1", ["-S", "-c", "1"]), ("select_c8", ["-S", "-c", "8", "-j", "2"])):
        runs: dict[str, list[dict]] = {"direct": [], "tunnel": []}
        for _rep in range(s.reps):
            runs["direct"].append(asdict(m.pgbench(dep.direct_env(), args, s.side_seconds, watch)))
            runs["tunnel"].append(asdict(m.pgbench(dep.tunnel_env(), args, s.side_seconds, watch)))
        log(f"  {name}: tunnel {[round(r['tps']) for r in runs['tunnel']]}")
        out[name] = runs
    results["asyncio"] = out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short repetition of everything (a smoke run)")
    parser.add_argument("--out-dir", help="where performance.md/.png go (default docs/, or a temp dir with --quick);"
                        " the raw numbers go to bench/last-run.json (or OUT_DIR/performance.json)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--only", help="run only these phases (comma-separated: pgbench, copy, cli, idle, scale,"
                        " latency, asyncio); the report then holds only their numbers")
    args = parser.parse_args(argv)
    s = Settings(args.quick)
    out_dir = Path(args.out_dir) if args.out_dir else (
        Path(tempfile.mkdtemp(prefix="pteleport-bench-out-")) if args.quick or args.only else REPO / "docs")
    if shutil.which("pgbench") is None or shutil.which("psql") is None:
        print("bench: pgbench and psql are needed (apt-get install postgresql-client postgresql)", file=sys.stderr)
        return 2
    _raise_fd_limit()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="pteleport-bench-"))
    results: dict[str, Any] = {"machine": machine(), "quick": s.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                               "settings": vars(s)}
    dep = deploy(work, log)
    uv_tunnel = None
    phases: dict[str, float] = {}

    only = set(args.only.split(",")) if args.only else None

    def timed(name: str, fn: Any, *args: Any) -> None:
        if only is not None and name.split()[0] not in only:
            return
        t = time.perf_counter()
        fn(dep, s, results, *args)
        phases[name] = time.perf_counter() - t

    try:
        m.pgbench_init(dep.direct_env(), s.scale)
        phases["deploy"] = time.perf_counter() - started
        if has_uvloop() and (only is None or "pgbench" in only):
            uv_tunnel = _start_uvloop_tunnel(dep)
        timed("pgbench", run_pgbench, uv_tunnel)
        if uv_tunnel is not None:
            uv_tunnel.stop()
            uv_tunnel = None
        timed("copy and connects", run_copy_and_connects)
        timed("cli", run_cli)
        timed("idle sessions", run_idle)
        timed("scale", run_scale)
        timed("latency under admin load", run_latency)
        timed("asyncio variant", run_asyncio_variant)
    finally:
        if uv_tunnel is not None:
            uv_tunnel.stop()
        dep.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["phases_s"] = phases
    results["total_s"] = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = REPO / "bench" / "last-run.json" if out_dir == REPO / "docs" else out_dir / "performance.json"
    raw.write_text(json.dumps(results, indent=1))
    if only is not None:  # a partial run: the numbers only (the report needs every phase)
        log(f"done in {results['total_s']:.0f}s: {raw}")
        return 0
    write_report(results, out_dir)
    log(f"done in {results['total_s']:.0f}s: {out_dir / 'performance.md'}")
    return 0


def _start_uvloop_tunnel(dep: Deployment) -> Any:
    """A second ``ptsh proxy db --tunnel``, uvloop installed as the policy.

    ptsh runs uvloop's loop itself when it is installed (``ptsh.tunnel.new_event_loop``), so
    this is the same path as the main tunnel: the spread between the two is the run's noise.
    """
    from bench.deploy import Tunnel, _wrapper

    saved = dep.tunnel
    ptsh_uv = _wrapper(dep.root, "ptsh-uvloop", "import uvloop\nuvloop.install()", "ptsh.cli")
    dep.tunnel = None
    try:
        dep.start_tunnel(ptsh_uv)
        uv: Tunnel | None = dep.tunnel
    finally:
        dep.tunnel = saved
    return uv


if __name__ == "__main__":
    sys.exit(main())
