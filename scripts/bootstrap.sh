# Sourced by scripts/test and scripts/run: a virtualenv in .venv with pteleport installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "ERROR: pteleport needs Python 3.11 or newer ($PYTHON is $("$PYTHON" -V 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  # (grep drops pip's notes about unreachable local package mirrors on some machines)
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | { grep -v '^WARNING: Location' || true; }
  .venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | { grep -v '^WARNING: Location' || true; }
  rm -f .venv/.installed-* && touch "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
# Where PYTHONDONTWRITEBYTECODE is set (CI images and this kind of machine set it), Python
# compiles our modules from source on every start: ~40 ms of `ptsh db connect`. Write their
# bytecode once here, as pip does for a package it installs; a source file changed later is
# compiled fresh again (its stale bytecode is ignored), so this never runs old code.
.venv/bin/python -m compileall -q -j 0 src
