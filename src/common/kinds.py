"""Resource kinds as people type them (`pctl get roles`, `pctl rm db/x`) and their canonical names."""

from __future__ import annotations

KIND_ALIASES = {
    "role": "role",
    "roles": "role",
    "user": "user",
    "users": "user",
    "db": "db",
    "dbs": "db",
    "database": "db",
    "databases": "db",
    "token": "token",
    "tokens": "token",
    "db_server": "db_server",
    "db_servers": "db_server",
    "lock": "lock",
    "locks": "lock",
}
