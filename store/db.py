"""Connections to PostgreSQL/TimescaleDB: URL handling, waiting with backoff, pools."""
from __future__ import annotations

import logging

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_before_delay, wait_exponential

from config.urls import redact_text, redact_url

log = logging.getLogger(__name__)


def sqlalchemy_url(url: str) -> str:
    """The same database URL in SQLAlchemy's psycopg-3 dialect form (for alembic)."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ValueError(f"not a PostgreSQL URL: {redact_url(url)}")


def wait_for_database(url: str, timeout: float = 60.0) -> None:
    """Block until the database accepts a connection, retrying with backoff (0.2 s doubling
    to 5 s, tenacity). Raises TimeoutError naming the (redacted) URL and the last error."""

    def attempt() -> None:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")

    retrying = Retrying(
        retry=retry_if_exception_type(psycopg.OperationalError), wait=wait_exponential(multiplier=0.2, max=5.0),
        stop=stop_before_delay(timeout),
        before_sleep=lambda state: log.info("waiting for database %s (%s)", redact_url(url),
                                            type(state.outcome.exception()).__name__))
    try:
        retrying(attempt)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise TimeoutError(f"database {redact_url(url)} not reachable after {timeout:.0f}s: "
                           f"{redact_text(str(last)).strip()}") from None


def connect(url: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(url, row_factory=dict_row, connect_timeout=10, **kwargs)


def close_quietly(conn: psycopg.Connection | None) -> None:
    """Close a connection that may already be broken (the database went away): the
    worker that holds it is about to reconnect, and the close can only fail."""
    if conn is not None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass


# How long one series of reconnection attempts lasts. psycopg_pool doubles the delay
# between attempts without a cap until this runs out: with an hour, a database away for 30 s
# left the API answering 503 for another 25 s after it came back (its next attempt was that
# far off; tests/faults/test_database.py). Giving up loses nothing: a request that finds no
# connection starts a fresh series (1 s, 2 s, …), so the pool is back as soon as the
# database is.
RECONNECT_TIMEOUT_S = 5.0


def open_pool(url: str, *, min_size: int = 1, max_size: int = 4, name: str = "xlhub",
              autocommit: bool = False) -> ConnectionPool:
    pool = ConnectionPool(
        url, min_size=min_size, max_size=max_size, name=name, open=False,
        kwargs={"row_factory": dict_row, "connect_timeout": 10, "autocommit": autocommit},
        reconnect_timeout=RECONNECT_TIMEOUT_S,
    )
    pool.open(wait=False)
    return pool


async def open_async_pool(url: str, *, min_size: int = 1, max_size: int = 8, name: str = "xlhub-api",
                          autocommit: bool = False) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(
        url, min_size=min_size, max_size=max_size, name=name, open=False,
        kwargs={"row_factory": dict_row, "connect_timeout": 10, "autocommit": autocommit},
        reconnect_timeout=RECONNECT_TIMEOUT_S,      # see open_pool
    )
    await pool.open(wait=False)
    return pool


def timescaledb_info(conn: psycopg.Connection) -> dict:
    """Version and license of the TimescaleDB extension in this database."""
    row = conn.execute(
        "SELECT extversion AS version, current_setting('timescaledb.license', true) AS license "
        "FROM pg_extension WHERE extname = 'timescaledb'"
    ).fetchone()
    if row is None:
        return {"version": None, "license": None}
    return dict(row)
