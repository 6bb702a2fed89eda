#!/usr/bin/env bash
# A CI job that uses a database through pteleport with nothing but a bot's identity file:
# no password, no browser, no ptsh profile, no keyring.
#
# From the CI system (a secret and a few variables):
#   PTSH_IDENTITY_FILE   the bot's identity file (from "ptsh login --bot"); every ptsh command uses it
#   DB                   the database (default aurora)
#   DB_USER, DB_NAME     the database user and name the bot's roles allow (default reader, postgres)
#   TUNNEL_PORT          a free local port for the tunnel (default 15432)
# Optional, to show how a job branches on ptsh's exit codes:
#   EXPIRED_IDENTITY_FILE  an identity file that has expired: ptsh exits 3
#   DENIED_DB_NAME         a database name the bot's roles do not allow: ptsh exits 4
set -euo pipefail

: "${PTSH_IDENTITY_FILE:?set PTSH_IDENTITY_FILE to the bot identity file}"
export PTSH_IDENTITY_FILE
DB="${DB:-aurora}"
DB_USER="${DB_USER:-reader}"
DB_NAME="${DB_NAME:-postgres}"
TUNNEL_PORT="${TUNNEL_PORT:-15432}"
work="$(mktemp -d)"
tunnel=""

cleanup() {
  if [ -n "$tunnel" ]; then
    kill "$tunnel" 2>/dev/null || true
    wait "$tunnel" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# ptsh's exit codes: 0 ok, 1 error, 2 usage, 3 identity missing or expired,
# 4 access denied, 5 cannot reach the cluster.
explain() {
  case "$1" in
    3) echo "the identity file is missing or expired; issue a new one" ;;
    4) echo "access denied by the bot's roles" ;;
    5) echo "cannot reach the cluster; retry later" ;;
    *) echo "failed with exit code $1" ;;
  esac
}

# 1. The databases this bot may use: JSON on stdout (messages go to stderr).
ptsh db ls --format json > "$work/databases.json"
python3 - "$work/databases.json" "$DB" <<'PY'
import json
import sys

with open(sys.argv[1]) as fh:
    names = [db["metadata"]["name"] for db in json.load(fh)]
print("databases:", ", ".join(names))
if sys.argv[2] not in names:
    sys.exit(f"database {sys.argv[2]} is not among them")
PY

# 2. One query with psql through a short-lived tunnel; on failure, say why and keep the code.
status=0
ptsh db connect "$DB" --db-user="$DB_USER" --db-name="$DB_NAME" -- -At -c 'select current_user' || status=$?
if [ "$status" -ne 0 ]; then
  echo "ptsh db connect: $(explain "$status")" >&2
  exit "$status"
fi

# 3. A tunnel in the background for any PostgreSQL client; plain psql through it.
ptsh proxy db --tunnel --port "$TUNNEL_PORT" --db-user="$DB_USER" --db-name="$DB_NAME" "$DB" \
  > "$work/tunnel.log" 2>&1 &
tunnel=$!
for _ in $(seq 1 100); do
  grep -q "Started authenticated tunnel" "$work/tunnel.log" && break
  kill -0 "$tunnel" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q "Started authenticated tunnel" "$work/tunnel.log"; then
  echo "the tunnel did not start:" >&2
  cat "$work/tunnel.log" >&2
  exit 1
fi
psql "postgres://$DB_USER@127.0.0.1:$TUNNEL_PORT/$DB_NAME?sslmode=disable" -At \
  -c "select 'rows: ' || count(*) from pg_stat_activity where usename = current_user"

# 4. Branching on exit codes.
expect_exit() {
  local want=$1 got=0
  shift
  "$@" > "$work/out" 2> "$work/err" || got=$?
  if [ "$got" -ne "$want" ]; then
    echo "expected exit $want, got $got from: $*" >&2
    cat "$work/err" >&2
    exit 1
  fi
  echo "exit $want, $(explain "$want"): $(head -n 1 "$work/err")"
}
if [ -n "${EXPIRED_IDENTITY_FILE:-}" ]; then
  expect_exit 3 ptsh -i "$EXPIRED_IDENTITY_FILE" db ls --format json
fi
if [ -n "${DENIED_DB_NAME:-}" ]; then
  expect_exit 4 ptsh db connect "$DB" --db-user="$DB_USER" --db-name="$DENIED_DB_NAME" -- -c 'select 1'
fi
echo "CI job done"
