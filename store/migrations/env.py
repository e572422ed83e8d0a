"""Alembic environment: plain SQL migrations run over psycopg 3 (no ORM models)."""
from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
url = config.get_main_option("sqlalchemy.url")

engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        # Two hub processes starting at once must not both migrate.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7316001)")
        context.run_migrations()
