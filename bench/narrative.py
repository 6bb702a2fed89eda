"""The text of docs/performance.md around the numbers of one run."""

from __future__ import annotations

from typing import Any

from bench.report import _cpu, _tps, cell, fmt, med, ratios

CLI_TARGETS = {"ptsh --help": 100.0, "ptsh version": 100.0, "ptsh db ls (1 database)": 200.0}
DB_LS_TARGET = 400.0
IDLE_TARGET_KIB = 64.0


def _machine(results: dict[str, Any]) -> str:
    mc = results["machine"]
    return (
        f"- CPU: {mc.get('Model name', '?')}, {mc.get('CPU(s)', '?')} cores"
        f" ({mc.get('Thread(s) per core', '?')} thread per core), hypervisor {mc.get('Hypervisor vendor', 'none')},"
        f" {mc.get('memory_gib', '?')} GiB RAM, Linux {mc.get('kernel', '?')}\n"
        f"- Python {mc['python']}, uvloop {mc.get('uvloop')}, {mc.get('openssl', '')}\n"
        f"- {mc.get('postgres')}; {mc.get('pgbench')}; {mc.get('haproxy')}\n"
        f"- run started {results['started']}, took {results['total_s']:.0f} s"
        f" ({', '.join(f'{k} {v:.0f} s' for k, v in results.get('phases_s', {}).items())})"
        + (" — **quick smoke run, one short repetition: not for comparison**" if results.get("quick") else "")
        + "\n"
    )


def _cli_table(results: dict[str, Any]) -> str:
    cli = results.get("cli_ms", {})
    scale = results.get("scale", {})
    lines = ["| command | median ms (min–max) | target |", "|---|---|---|"]
    for name, values in cli.items():
        target = CLI_TARGETS.get(name)
        verdict = ""
        if target is not None:
            verdict = ("met" if med(values) <= target else "**missed**") + f" (≤ {target:g} ms)"
        lines.append(f"| `{name}` | {cell(values)} | {verdict} |")
    if scale:
        n = scale["databases"]
        for key, label in (("ptsh_db_ls_ms", f"ptsh db ls ({n:,} databases, table)"),
                           ("ptsh_db_ls_json_ms", f"ptsh db ls --format=json ({n:,} databases)")):
            values = scale[key]
            verdict = ("met" if med(values) < DB_LS_TARGET else "**missed**") + f" (< {DB_LS_TARGET:g} ms)"
            lines.append(f"| `{label}` | {cell(values)} | {verdict if key == 'ptsh_db_ls_ms' else ''} |")
    return "\n".join(lines) + "\n"


def _idle_table(results: dict[str, Any]) -> str:
    idle = results.get("idle")
    if not idle:
        return ""
    pt = idle["pteleport"]["kib_per_session"]
    hp = idle["haproxy"]["kib_per_session"]
    n = idle["pteleport"]["sessions"]
    total = pt["proxy"] + pt["agent"]
    htotal = hp["hop2 (proxy)"] + hp["hop3 (agent)"]
    verdict = ("met" if total < IDLE_TARGET_KIB else "**missed**") + f" (< {IDLE_TARGET_KIB:g} KiB)"
    return (
        f"{n} sessions opened (StartupMessage → ReadyForQuery) and left idle; resident memory (VmRSS) of each"
        " process after minus before, divided by the number of sessions.\n\n"
        "| KiB per idle session | proxy | agent | proxy + agent | target | local tunnel |\n|---|---|---|---|---|---|\n"
        f"| pteleport | {pt['proxy']:.1f} | {pt['agent']:.1f} | **{total:.1f}** | {verdict} | {pt['ptsh tunnel']:.1f} |\n"
        f"| haproxy chain (hop 2, hop 3, hop 1) | {hp['hop2 (proxy)']:.1f} | {hp['hop3 (agent)']:.1f} |"
        f" {htotal:.1f} | | {hp['hop1 (tunnel)']:.1f} |\n\n"
        f"Opening the {n} sessions took {idle['pteleport']['seconds_to_open']:.1f} s through pteleport and"
        f" {idle['haproxy']['seconds_to_open']:.1f} s through haproxy (25 at a time).\n"
        + _floor(results)
    )


def _floor(results: dict[str, Any]) -> str:
    floor = results.get("tls_floor_kib")
    if not floor:
        return ""
    names = {
        "plain": "plain TCP",
        "asyncio": "TLS, stock asyncio's transport",
        "uvloop": "TLS, uvloop's transport",
        "socket": "TLS on the socket (`common.sockettransport`, what pteleport runs)",
    }
    cells = ", ".join(f"{names[k]} **{v:.1f} KiB**" for k, v in floor.items())
    return (
        "\nThe floor: one idle server-side connection with a do-nothing protocol (`python -m bench.tlsfloor`,"
        f" 400 connections) costs {cells}.\n"
    )


LATENCY_TARGET = 2.0  # max under admin load / max without


def latency_verdict(results: dict[str, Any]) -> tuple[float, str]:
    """(ratio of the tunnel's max round trip under load to its max without, met/missed)."""
    summary = results.get("latency", {}).get("summary", {}).get("tunnel")
    if not summary:
        return float("nan"), "–"
    ratio = summary["loaded"]["max"] / summary["quiet"]["max"]
    return ratio, ("met" if ratio <= LATENCY_TARGET else "**missed**") + f" (≤ {LATENCY_TARGET:g}×)"


def _latency_table(results: dict[str, Any]) -> str:
    lat = results.get("latency")
    if not lat:
        return ""
    labels = {"tunnel": "through the tunnel (ptsh → proxy → agent → PostgreSQL)", "direct": "direct to PostgreSQL"}
    lines = ["| `select 1` round trip (ms) | quiet p50 | p99 | max | under admin load p50 | p99 | max | max ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for name, summary in lat["summary"].items():
        q, ld = summary["quiet"], summary["loaded"]
        lines.append(f"| {labels.get(name, name)} | {q['p50']:.2f} | {q['p99']:.1f} | {q['max']:.1f} | {ld['p50']:.2f} |"
                     f" {ld['p99']:.1f} | **{ld['max']:.1f}** | {ld['max'] / q['max']:.2f}× |")
    ratio, verdict = latency_verdict(results)
    rounds = [r for r in lat["rounds"] if r["loaded"] and r["path"] == "tunnel"]
    counts: dict[str, int] = {}
    for r in rounds:
        for kind, n in r["load_counts"].items():
            counts[kind] = counts.get(kind, 0) + n
    seconds = lat["seconds"]
    total = len(rounds) * (3 + seconds * len(lat["summary"]))
    quiet_rounds = [r for r in lat["rounds"] if not r["loaded"] and r["path"] == "tunnel"]
    per_round = ", ".join(f"{max(q['samples']):.1f} → {max(ld['samples']):.1f}"
                          for q, ld in zip(quiet_rounds, rounds, strict=False) if q["samples"] and ld["samples"])
    return (
        f"One session through `ptsh proxy db --tunnel` sends `select 1` every {lat['interval_ms']:g} ms and times"
        f" each round trip; so does one straight to PostgreSQL, for reference. {len(rounds)} rounds of {seconds:g} s"
        f" each, quiet and under load, alternating. The admin load, against the auth service of the cluster the"
        f" session goes through: {lat['audit_loops']} shell loops of `pctl audit events --limit 10000 --format json`,"
        f" one of `pctl tokens add`, and one that signs up a new user (the invite completion hashes a password) and"
        f" logs them in (a second hash and a certificate). They ran {counts.get('audit', 0)} audit exports,"
        f" {counts.get('tokens', 0)} token creations and {counts.get('login', 0)} sign-ups with a login in about"
        f" {total:.0f} s of load.\n\n"
        + "\n".join(lines)
        + f"\n\nTarget: the tunnel's max under load within {LATENCY_TARGET:g}× its max without: **{ratio:.2f}×**,"
        f" {verdict}. The max is the noisiest number here; per round, quiet → loaded: {per_round} ms.\n"
    )


def _cpu_table(results: dict[str, Any], workload: str = "select_c1", what: str = "1 client") -> str:
    procs = [("pgbench", "pgbench (client)"), ("ptsh tunnel", "ptsh tunnel"), ("proxy", "proxy (pteleport start)"),
             ("agent", "agent (pteleport db start)"), ("auth worker", "auth worker (stores the audit events)"),
             ("haproxy", "haproxy, 3 processes")]
    # The processes each path goes through; the others idle (heartbeats) and are not counted.
    on_path = {"direct": {"pgbench"}, "tunnel": {"pgbench", "ptsh tunnel", "proxy", "agent", "auth worker"},
               "native": {"pgbench", "proxy", "agent", "auth worker"}, "haproxy": {"pgbench", "haproxy"}}
    lines = [f"| CPU µs per transaction, pgbench -S {what} | direct | tunnel | native, public port | haproxy chain |",
             "|---|---|---|---|---|"]
    for proc, label in procs:
        row = [label]
        for path in ("direct", "tunnel", "native", "haproxy"):
            value = _cpu(results, workload, path, proc) if proc in on_path[path] else float("nan")
            row.append(fmt(value) if value == value and value >= 1 else "–")
        lines.append("| " + " | ".join(row) + " |")
    total = []
    for path in ("direct", "tunnel", "native", "haproxy"):
        total.append(sum(v for proc in on_path[path] if (v := _cpu(results, workload, path, proc)) == v and v >= 1))
    lines.append("| **sum of the above** | " + " | ".join(f"**{fmt(t)}**" for t in total) + " |")
    tps = [med(_tps(results, workload, p)) for p in ("direct", "tunnel", "native", "haproxy")]
    lines.append("| wall time per transaction (1 / TPS) | " + " | ".join(fmt(1e6 / t) if t == t else "–" for t in tps)
                 + " |")
    return "\n".join(lines) + "\n"


def _copy_cpu_table(results: dict[str, Any], key: str = "copy_cpu_ms_per_mb", what: str = "the COPY out") -> str:
    cpu = results.get(key)
    if not cpu:
        return ""
    procs = [("psql", "psql (client)"), ("ptsh tunnel", "ptsh tunnel"), ("proxy", "proxy"), ("agent", "agent"),
             ("haproxy", "haproxy, 3 processes")]
    lines = [f"| CPU ms per MB during {what} | direct | tunnel | native, public port | haproxy chain |",
             "|---|---|---|---|---|"]
    for proc, label in procs:
        row = [label]
        for path in ("direct", "tunnel", "native", "haproxy"):
            value = med([r.get(proc, float("nan")) for r in cpu.get(path, [])])
            row.append(f"{value:.1f}" if value == value and value >= 0.05 else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n" + "\n".join(lines) + "\n"


def _options_table(results: dict[str, Any]) -> str:
    lines = ["| option | pgbench -S, 1 client: ratio | pgbench -S, 8 clients: ratio | note |", "|---|---|---|---|"]

    def rc(key: str, path: str, source: dict[str, Any] | None = None) -> str:
        src = source if source is not None else results.get("pgbench", {})
        runs = src.get(key, {})
        rs = ratios([r["tps"] for r in runs.get(path, [])], [r["tps"] for r in runs.get("direct", [])])
        return cell(rs, 2) if rs else "–"

    lines.append(f"| proxy, agent and ptsh on uvloop (the default measured above) | {rc('select_c1', 'tunnel')}"
                 f" | {rc('select_c8', 'tunnel')} | |")
    asyncio_runs = results.get("asyncio")
    if asyncio_runs:
        lines.append(f"| proxy and agent on stock asyncio (no uvloop) | {rc('select_c1', 'tunnel', asyncio_runs)} |"
                     f" {rc('select_c8', 'tunnel', asyncio_runs)} | after a restart, {results['settings']['side_seconds']} s runs |")
    if "tunnel_uvloop_ptsh" in results.get("pgbench", {}).get("select_c1", {}):
        lines.append(f"| a second, identical ptsh tunnel | {rc('select_c1', 'tunnel_uvloop_ptsh')} |"
                     f" {rc('select_c8', 'tunnel_uvloop_ptsh')} | uvloop installed as the event loop policy, which ptsh"
                     " already runs when uvloop is installed: the same path twice, so the spread between them is"
                     " the run's noise |")
    lines.append(f"| PostgreSQL protocol on the proxy's public port (no local tunnel) | {rc('select_c1', 'native')} |"
                 f" {rc('select_c8', 'native')} | psql with sslcert/sslkey from `pctl auth sign --format=db` |")
    lines.append(f"| reference: haproxy, three hops | {rc('select_c1', 'haproxy')} | {rc('select_c8', 'haproxy')} | |")
    return "\n".join(lines) + "\n"


def render(results: dict[str, Any], rows: list[dict[str, Any]], table: str) -> str:
    from bench.analysis import analysis

    return f"""# Performance

Generated by `./scripts/bench` (`python -m bench`); do not edit by hand — the analysis text
lives in `bench/analysis.py`. Absolute numbers depend on the machine; the **ratios** to a
direct connection, measured side by side in the same run, are what we track.

## The machine of this run

{_machine(results)}
## What is compared

- **direct**: `pgbench`/`psql` → PostgreSQL 15 over TLS (`sslmode=require`), as a user
  without pteleport would connect.
- **pteleport tunnel**: `pgbench`/`psql` → `ptsh proxy db --tunnel` (plain, 127.0.0.1) → mTLS →
  proxy (`pteleport start`) → a stream on the agent's reverse-tunnel mux link (one TLS connection
  for all sessions) → agent (`pteleport db start`)
  → TLS + client certificate → PostgreSQL. Every query is parsed and audited by the agent.
- **native, public port**: `pgbench`/`psql` with the certificate from `pctl auth sign
  --format=db` → SSLRequest and mTLS on the proxy's one public port (no local tunnel) →
  agent → PostgreSQL.
- **haproxy chain** (native code reference): client → haproxy → mTLS → haproxy → mTLS →
  haproxy → PostgreSQL, three processes with one thread each. haproxy cannot answer
  PostgreSQL's SSLRequest, so the client's own TLS session to PostgreSQL runs end to end
  through it: three TLS sessions on the path, as with pteleport.

All processes share the same {results['machine'].get('CPU(s)', '?')} cores. Repetitions are interleaved
across paths (drift hits all alike); a ratio is taken between repetition *i* of a path and
repetition *i* of direct; cells show the median and, in brackets, the range.

## Results

{table}
![ratios to direct](performance.png)

### CLI start-up and `ptsh db ls`

{_cli_table(results)}
### Idle sessions: memory

{_idle_table(results)}
### Latency under admin load

{_latency_table(results)}
### Where the CPU goes

CPU time (user + system, from `/proc`) that each process spent per transaction during the
`pgbench -S` runs (medians). Everything runs on the same cores, so with 8 clients the
sum bounds the rate: at most cores / sum transactions per second. The auth worker's share is
the audit log: it stores one event per query (design-notes.md, "What auditing costs auth").

{_cpu_table(results)}
{_cpu_table(results, "select_c8", "8 clients")}{_copy_cpu_table(results)}{_copy_cpu_table(results, "copy_in_cpu_ms_per_mb", "the COPY in")}
### Options measured

{_options_table(results)}
{analysis(results, rows)}"""
