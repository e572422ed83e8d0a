"""Shared ground: PostgreSQL + TimescaleDB.

Owns the schema (alembic migrations under ``store/migrations``), the connection pool,
the hub's own retention job (drop_chunks; the Apache edition has no retention policies),
and the registries every layer shares: the grid tree and versioned grid membership,
users/sessions/API tokens, and the hash-chained audit log.  Imports only from config/.
"""
