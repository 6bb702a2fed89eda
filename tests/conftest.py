"""Shared fixtures: a real PostgreSQL (tests/pgserver.py) and the cluster harness (tests/harness.py).

A shell without job control starts background commands with SIGINT ignored, and children
inherit that, so the tests that press Ctrl+C on a ptsh or pteleport (SIGINT) would find it
deaf. The test process takes SIGINT back, so the programs it starts get it as a terminal
would give it.
"""

import signal

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

pytest_plugins = ["tests.pgserver"]
