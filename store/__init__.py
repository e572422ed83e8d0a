"""Shared ground: PostgreSQL + TimescaleDB, and the process plumbing of every long-running
process of the hub. See store/README.md.

Owns the schema (alembic migrations under ``store/migrations``), the connection pools,
the hub's own retention job (drop_chunks; the Apache edition has no retention policies),
the registries every layer shares (the grid tree and versioned grid membership,
users/sessions/API tokens, the hash-chained audit log), and: worker heartbeats
(workers.py), LISTEN loops (listen.py), the source → current grid cache (sources.py) and
the reconnect schedules (backoff.py). Imports only from config/.
"""
