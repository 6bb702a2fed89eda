"""``select 1`` round trips through an open tunnel, without and with heavy admin load.

Each piece runs in a process of its own, so that neither the probe nor the load shares a
GIL with anything it measures:

- ``python -m bench.latency probe``: one session through ``ptsh proxy db --tunnel``; a
  ``select 1`` every ``--interval-ms`` for ``--seconds``; prints the round trips (ms) as JSON;
- the admin load (``AdminLoad``): several shell loops of ``pctl audit events --limit 10000``,
  one of ``pctl tokens add``, and ``python -m bench.latency logins``, which signs up new users
  (the invite completion hashes a password) and logs each one in over the HTTP API (a second
  hash and a certificate), one after another.

``measure`` alternates quiet and loaded rounds of the same length in one run, so drift on
the machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

AUDIT_LOOPS = 3


# --- the probe (its own process) -----------------------------------------------------------------


def _startup(user: str, database: str) -> bytes:
    body = struct.pack("!i", 196608) + f"user\0{user}\0database\0{database}\0application_name\0probe\0\0".encode()
    return struct.pack("!i", len(body) + 4) + body


def _read_until_ready(sock: socket.socket, buf: bytearray) -> None:
    """Read messages until ReadyForQuery; raise on an ErrorResponse."""
    while True:
        while len(buf) < 5:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the tunnel closed the session")
            buf += chunk
        kind = buf[0:1]
        (length,) = struct.unpack("!i", buf[1:5])
        while len(buf) < 1 + length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the tunnel closed the session")
            buf += chunk
        payload = bytes(buf[5 : 1 + length])
        del buf[: 1 + length]
        if kind == b"E":
            raise RuntimeError(f"the session was refused: {payload!r}")
        if kind == b"Z":
            return


def probe(port: int, user: str, database: str, seconds: float, interval: float) -> list[float]:
    """Round trips (ms) of ``select 1`` on one session, one every ``interval`` seconds."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    sock.sendall(_startup(user, database))
    _read_until_ready(sock, buf)
    body = b"select 1\0"
    query = b"Q" + struct.pack("!i", len(body) + 4) + body
    for _ in range(20):  # warm up: first queries load code and caches on every hop
        sock.sendall(query)
        _read_until_ready(sock, buf)
    samples: list[float] = []
    end = time.perf_counter() + seconds
    next_at = time.perf_counter()
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if now < next_at:
            time.sleep(next_at - now)
        start = time.perf_counter()
        sock.sendall(query)
        _read_until_ready(sock, buf)
        samples.append((time.perf_counter() - start) * 1000)
        next_at = start + interval
    sock.sendall(b"X" + struct.pack("!i", 4))
    sock.close()
    return samples


# --- logins and sign-ups (its own process) ------------------------------------------------------------


def logins(proxy: str, data_dir: str, count_file: str, prefix: str) -> None:
    """Until killed: create a user (pctl), complete the invite, log in with password + TOTP."""
    import httpx
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from tests.harness import PCTL, base_env, find_url, invite_token, totp_at

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    env = base_env(PTELEPORT_DATA_DIR=data_dir)
    password = "correct horse battery"  # noqa: S105
    n = 0
    with httpx.Client(base_url=f"https://{proxy}", verify=False, timeout=30) as http:  # noqa: S501
        while True:
            n += 1
            name = f"{prefix}{n}"
            made = subprocess.run([PCTL, "users", "add", name, "--roles=access"], env=env, capture_output=True,
                                  text=True, stdin=subprocess.DEVNULL)
            if made.returncode != 0:
                raise RuntimeError(made.stderr)
            token = invite_token(find_url(made.stdout))
            secret = http.get(f"/v1/invites/{token}").json()["totp_secret"]
            step = int(time.time()) // 30
            done = http.post(f"/v1/invites/{token}", json={"password": password, "otp_token": totp_at(secret, step)})
            done.raise_for_status()
            login = http.post("/v1/login", json={"user": name, "password": password,
                                                 "otp_token": totp_at(secret, step + 1),
                                                 "public_key": public.decode(), "ttl_seconds": 3600})
            login.raise_for_status()
            with open(count_file, "a") as f:
                f.write("login\n")


# --- the load, seen from the bench ----------------------------------------------------------------------


@dataclass
class AdminLoad:
    """The admin load's processes; ``counts`` says how much of each kind ran."""

    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def start(cls, proxy: str, data_dir: Path, pctl: str, audit_loops: int = AUDIT_LOOPS, nice: int = 0) -> AdminLoad:
        from tests.harness import base_env

        root = Path(tempfile.mkdtemp(prefix="pteleport-load-"))
        load = cls(root)
        env = base_env(PTELEPORT_DATA_DIR=data_dir)
        loops = [("audit", f"{pctl} audit events --limit 10000 --format json")] * audit_loops
        loops.append(("tokens", f"{pctl} tokens add --type=db --format=text"))
        for kind, cmd in loops:
            script = f"while :; do {cmd} >/dev/null 2>>{root}/errors && echo {kind} >> {root}/count; done"
            load.procs.append(subprocess.Popen(["nice", "-n", str(nice), "bash", "-c", script], env=env,
                                               start_new_session=True, stdin=subprocess.DEVNULL))
        prefix = f"load{os.getpid()}x{int(time.time() * 1000) % 100000}u"
        repo = Path(__file__).resolve().parent.parent
        load.procs.append(subprocess.Popen(
            ["nice", "-n", str(nice), sys.executable, "-m", "bench.latency", "logins", "--proxy", proxy, "--data-dir", str(data_dir),
             "--count-file", str(root / "count"), "--prefix", prefix],
            env=env, cwd=repo, start_new_session=True, stdin=subprocess.DEVNULL,
            stderr=(root / "errors").open("ab")))
        return load

    def counts(self) -> dict[str, int]:
        try:
            lines = (self.root / "count").read_text().split()
        except FileNotFoundError:
            return {}
        return {kind: lines.count(kind) for kind in sorted(set(lines))}

    def errors(self) -> str:
        try:
            return (self.root / "errors").read_text()[-2000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> dict[str, int]:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait()
        counts = self.counts()
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)
        return counts


@dataclass
class Round:
    path: str
    loaded: bool
    samples: list[float]
    load_counts: dict[str, int] = field(default_factory=dict)
    load_errors: str = ""


def summary(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max": ordered[-1],
    }


def run_probe(target: tuple[int, str, str], seconds: float, interval_ms: float) -> list[float]:
    port, user, database = target
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-m", "bench.latency", "probe", "--port", str(port), "--user", user, "--db", database,
         "--seconds", str(seconds), "--interval-ms", str(interval_ms)],
        cwd=repo, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"the latency probe failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def measure(targets: dict[str, tuple[int, str, str]], proxy: str, data_dir: Path, pctl: str, *, rounds: int,
            seconds: float, interval_ms: float = 10.0, warmup: float = 3.0, nice: int = 0,
            log: Any = print) -> dict[str, Any]:
    """Quiet and loaded rounds, alternating; in each, one probe per target (port, user, database).

    The admin load goes to the auth service at ``proxy`` (whose admin identity is in
    ``data_dir``): the one the tunnel's sessions go through, or another process.
    """
    out: list[Round] = []
    for i in range(rounds):
        for name, target in targets.items():
            out.append(Round(name, False, run_probe(target, seconds, interval_ms)))
        load = AdminLoad.start(proxy, data_dir, pctl, nice=nice)
        loaded: dict[str, list[float]] = {}
        try:
            time.sleep(warmup)  # every loop is running by now
            for name, target in targets.items():
                loaded[name] = run_probe(target, seconds, interval_ms)
        finally:
            errors = load.errors()
            counts = load.stop()
        for name, samples in loaded.items():
            out.append(Round(name, True, samples, counts, errors))
        parts = []
        for name in targets:
            q = summary(next(r.samples for r in reversed(out) if r.path == name and not r.loaded))
            ld = summary(loaded[name])
            parts.append(f"{name}: quiet p50 {q['p50']:.2f} p99 {q['p99']:.2f} max {q['max']:.1f}, loaded p50"
                         f" {ld['p50']:.2f} p99 {ld['p99']:.2f} max {ld['max']:.1f} ms")
        log(f"  round {i + 1}: {'; '.join(parts)}; load {counts}")
        if not counts.get("audit"):
            raise RuntimeError(f"the admin load did not run: {errors}")
    return {
        "rounds": [asdict(r) for r in out],
        "summary": {
            name: {
                "quiet": summary([x for r in out if r.path == name and not r.loaded for x in r.samples]),
                "loaded": summary([x for r in out if r.path == name and r.loaded for x in r.samples]),
            }
            for name in targets
        },
        "seconds": seconds,
        "interval_ms": interval_ms,
        "audit_loops": AUDIT_LOOPS,
        "nice": nice,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--interval-ms", type=float, default=10)
    lg = sub.add_parser("logins")
    lg.add_argument("--proxy", required=True)
    lg.add_argument("--data-dir", required=True)
    lg.add_argument("--count-file", required=True)
    lg.add_argument("--prefix", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "probe":
        print(json.dumps(probe(args.port, args.user, args.db, args.seconds, args.interval_ms / 1000)))
    else:
        logins(args.proxy, args.data_dir, args.count_file, args.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
