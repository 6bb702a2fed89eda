"""The values of ptsh's global options (``ptsh --proxy=... --user=... COMMAND``), without Typer.

The Typer callback (``ptsh.cli``) sets them; ``ptsh.options`` and ``ptsh.login_state`` read
them. Kept apart from ``ptsh.options`` (which builds Typer option types) so that the fast
paths of ``ptsh.entry`` can read them without importing Typer.
"""

from __future__ import annotations

GLOBALS: dict[str, object] = {"proxy": None, "user": None, "insecure": False, "ca_file": None}
# ``ptsh -i FILE``: the identity file to use instead of the profile (``ptsh.login_state``).
IDENTITY_FLAG: dict[str, str | None] = {"path": None}
