"""Backend interface and its implementations (SQLite, PostgreSQL, memory)."""
