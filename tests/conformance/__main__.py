"""``python -m tests.conformance``: run the drivers' suites directly and through ptsh, report side by side.

Prepares each suite (``fetch.py``), stands up one deployment (``deploy.py``), runs every
suite directly and then through the tunnel (the server reset before each run), prints
the report and writes it to docs/conformance.md (``--out``; only when every suite ran). Exit code 1 when a test that
passes directly is lost through the tunnel and is not in the allow-list, or when an
allow-list entry passes both ways now (so the list gets trimmed); 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.conformance import fetch  # noqa: E402
from tests.conformance.compare import Comparison, compare  # noqa: E402
from tests.conformance.deploy import DeployError, deploy  # noqa: E402
from tests.conformance.report import render  # noqa: E402
from tests.conformance.run import run_suite  # noqa: E402
from tests.conformance.suites import SUITES  # noqa: E402


def log(message: str) -> None:
    print(f"[conformance {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _commit() -> str:
    result = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                            text=True, check=False)
    return result.stdout.strip() or "unknown"


def _cpu() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model or platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./scripts/conformance",
        description="Run real drivers' own test suites directly and through ptsh; report side by side.",
    )
    parser.add_argument("--suite", action="append", choices=sorted(SUITES),
                        help="run only this suite (repeat for several); default: all")
    parser.add_argument("--out", help="where to write the report ('-': nowhere); default: docs/conformance.md "
                        "when every suite runs, nowhere otherwise")
    args = parser.parse_args(argv)
    suites = [SUITES[name] for name in (args.suite or SUITES)]
    out = args.out or (str(REPO / "docs" / "conformance.md") if len(suites) == len(SUITES) else "-")
    started = time.monotonic()
    prepared = []
    for suite in suites:
        log(f"preparing {suite.name} {suite.version} (download, SHA-256, venv; cached after the first time)")
        try:
            prepared.append(fetch.prepare(suite))
        except fetch.FetchError as err:
            print(f"ERROR: {err}", file=sys.stderr)
            return 1
    root = Path(tempfile.mkdtemp(prefix="pteleport-conformance-"))
    out_dir = root / "runs"
    try:
        dep = deploy(root / "deploy", log)
    except (DeployError, AssertionError, RuntimeError) as err:
        print(f"ERROR: the deployment did not start (logs in {root / 'deploy'}): {err}", file=sys.stderr)
        return 1
    comparisons: list[Comparison] = []
    try:
        dep.configure(suites)
        server_version = dep.pg.execute("SHOW server_version")[0][0]
        for item in prepared:
            runs = {}
            for path in ("direct", "tunnel"):
                dep.reset(item.suite)
                log(f"{item.suite.name}: running its tests {path}")
                runs[path] = run_suite(item, dep.endpoint(path), out_dir)
                counts = ", ".join(f"{runs[path].count(o)} {o}" for o in ("passed", "failed", "skipped", "error"))
                log(f"{item.suite.name} {path}: {counts} in {runs[path].seconds:.0f} s")
            comparisons.append(compare(runs["direct"], runs["tunnel"]))
    finally:
        dep.stop()
        shutil.rmtree(root / "deploy", ignore_errors=True)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "pteleport": f"commit {_commit()}",
        "PostgreSQL": server_version,
        "Python": platform.python_version(),
        "machine": _cpu(),
        "took": f"{time.monotonic() - started:.0f} s",
    }
    text = render(comparisons, meta, "./scripts/conformance")
    print(text)
    if out != "-":
        Path(out).write_text(text, encoding="utf-8")
        log(f"wrote {out}")
    log(f"logs of each run: {out_dir}")
    new = [(c.suite, d.nodeid) for c in comparisons for d in c.new_losses]
    stale = [(c.suite, n) for c in comparisons for n in c.stale_allowances]
    for suite, nodeid in new:
        print(f"NEW LOSS: {suite} {nodeid} passes directly, not through the tunnel", file=sys.stderr)
    for suite, nodeid in stale:
        print(f"FIXED: {suite} {nodeid} passes both ways now; remove it from tests/conformance/allowlist.py",
              file=sys.stderr)
    return 1 if new or stale else 0


if __name__ == "__main__":
    sys.exit(main())
