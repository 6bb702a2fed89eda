"""`pteleport dev`: a whole local deployment in one foreground command, for trying pteleport.

It starts, in its own process group, the cluster (``pteleport start``: auth + proxy), a
PostgreSQL from the system's binaries with TLS from the cluster's db CA and certificate
authentication, and a database agent (``pteleport start -c``) that serves it as ``demo``,
joined with a token scoped to ``demo``. It makes a db user and a sample database, a
cluster user named after you that may use them, and prints what to run next. State lives
in ``./.data``; a second run reuses it. Ctrl+C or SIGTERM stops everything.

- ``postgres``: find the binaries, initdb, TLS files, pg_hba.conf, run and stop the server;
- ``children``: the processes it starts (their logs, their end, nothing left behind);
- ``cluster``: what it asks the cluster for, and the order of it all.
"""
