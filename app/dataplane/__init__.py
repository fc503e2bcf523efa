"""The local data plane: a real proxy (Caddy) that Dockyard supervises and programs.

``routes`` derives the routing table from the database rows (pure), ``caddy`` renders it to
Caddy's JSON configuration (pure), ``admin`` talks to Caddy's admin API over a unix socket and
``supervisor`` starts, adopts, reprograms and restarts the Caddy process.
"""
