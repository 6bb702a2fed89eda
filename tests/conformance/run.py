"""Run one suite's own tests against one endpoint, in the suite's virtualenv, and collect outcomes.

The suite runs as its project runs it (pytest from the unpacked sdist, its own pytest
configuration), with the variables it reads pointed at the endpoint, a per-test time
limit (pytest-timeout) so one hanging test cannot stall the run, and our outcome plugin
(``plugin/conformance_outcomes.py``). Its whole output goes to a log file next to the outcomes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conformance.fetch import Prepared
from tests.conformance.suites import Endpoint

PLUGIN_DIR = Path(__file__).resolve().parent / "plugin"  # only the plugin: nothing else to shadow their imports
PER_TEST_TIMEOUT = 120  # seconds; a test that takes longer fails with "Timeout"


@dataclass
class Outcome:
    outcome: str  # passed, failed, skipped, error
    message: str = ""


@dataclass
class RunResult:
    suite: str
    path: str  # "direct" or "tunnel"
    outcomes: dict[str, Outcome]
    seconds: float
    exit_code: int
    log: Path
    complete: bool = True  # False: the run was stopped at its overall time limit

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes.values() if o.outcome == outcome)


def _env(prepared: Prepared, endpoint: Endpoint, outcomes: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "PYTHON", "PTSH_", "PTELEPORT_", "VIRTUAL_ENV", "PYTEST"))}
    env.update(prepared.suite.env(endpoint))
    env["PYTHONPATH"] = str(PLUGIN_DIR)
    env["CONFORMANCE_OUTCOMES"] = str(outcomes)
    env["PATH"] = f"{prepared.python.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_suite(prepared: Prepared, endpoint: Endpoint, out_dir: Path, select: list[str] | None = None,
              total_timeout: float = 3600) -> RunResult:
    """Run ``select`` (node ids or paths; default: the suite's test paths) against ``endpoint``."""
    suite = prepared.suite
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes_file = out_dir / f"{suite.name}-{endpoint.name}.json"
    log_file = out_dir / f"{suite.name}-{endpoint.name}.log"
    outcomes_file.unlink(missing_ok=True)
    if suite.pytest_config:
        config = prepared.source / suite.pytest_config
    else:  # without one, pytest would pick up the configuration of a directory above the sdist
        config = out_dir / "empty-pytest.ini"
        config.write_text("[pytest]\n")
    argv = [
        str(prepared.pytest), *(select or suite.test_paths), "-c", str(config), "--rootdir", str(prepared.source),
        "-p", "conformance_outcomes", "-p", "no:cacheprovider", "-q", "-rN", "--color=no",
        f"--timeout={PER_TEST_TIMEOUT}", *suite.pytest_args,
    ]
    for nodeid in suite.not_run:
        argv += ["--deselect", nodeid]
    started = time.monotonic()
    complete = True
    with log_file.open("w", encoding="utf-8") as log:
        log.write(f"$ {' '.join(argv)}\n# endpoint {endpoint}\n")
        log.flush()
        proc = subprocess.Popen(argv, cwd=prepared.source, env=_env(prepared, endpoint, outcomes_file),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code = proc.wait(total_timeout)
        except subprocess.TimeoutExpired:
            complete = False
            os.killpg(proc.pid, signal.SIGINT)  # pytest still writes what it has (sessionfinish)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
    seconds = time.monotonic() - started
    if outcomes_file.exists():
        raw = json.loads(outcomes_file.read_text(encoding="utf-8"))
        outcomes = {k: Outcome(v["outcome"], v.get("message", "")) for k, v in raw.items()}
    else:
        tail = log_file.read_text(errors="replace")[-2000:]
        outcomes = {"<run>": Outcome("error", f"the run wrote no outcomes (exit code {code}): {tail[-300:]}")}
    return RunResult(suite.name, endpoint.name, outcomes, seconds, code, log_file, complete)
