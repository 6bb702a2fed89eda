"""pteleport: the daemon (auth service, proxy, database service)."""
