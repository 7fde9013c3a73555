"""Postgres plumbing shared by the SQL modules: driver URLs, the error mapping, connection
returns that never mask an outcome. SQLAlchemy only."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .errors import InvalidMessageError, StoreConfigurationError, StoreUnavailableError

__all__ = ["aclose_quietly", "async_url", "close_quietly", "store_error", "sync_url"]

logger = logging.getLogger(__name__)

# SQLSTATEs: connection lost or server going away / a statement cut by statement_timeout /
# data the server can never take (data exceptions, a constraint of the table, limits) / the
# table or a column is not there.
_UNAVAILABLE_CLASSES = ("08", "53", "57P")
_TIMED_OUT = "57014"
_INVALID_DATA_CLASSES = ("22", "23", "54")
_UNDEFINED = ("42P01", "42703", "3D000", "3F000")


def sync_url(database_url: str) -> str:
    """The SQLAlchemy psycopg2 URL for ``postgresql://`` (SQLAlchemy 2.1 would pick psycopg 3)."""
    url = make_url(database_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg2")
    return url.render_as_string(hide_password=False)


def async_url(database_url: str) -> str:
    """The SQLAlchemy asyncpg URL for a sync ``postgresql://`` URL."""
    url = make_url(database_url)
    query = dict(url.query)
    if "sslmode" in query:  # libpq spelling → asyncpg spelling
        query["ssl"] = query.pop("sslmode")
    query.pop("connect_timeout", None)
    return url.set(drivername="postgresql+asyncpg", query=query).render_as_string(
        hide_password=False
    )


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    for candidate in (orig, getattr(orig, "__cause__", None)):
        code = getattr(candidate, "pgcode", None) or getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


def store_error(exc: BaseException, what: str) -> Exception | None:
    """The library's error for a failed statement, ``None`` for one to re-raise as is.

    Server messages of data errors may quote the values, so those errors are raised without
    their cause; connection errors keep theirs (statements only: parameters are hidden).
    """
    if isinstance(exc, OSError):  # asyncpg raises plain socket errors when it cannot connect
        return StoreUnavailableError(f"Postgres unavailable: could not {what}")
    if not isinstance(exc, DBAPIError):
        return None
    code = _sqlstate(exc) or ""
    if code == _TIMED_OUT:
        return StoreUnavailableError(f"Postgres did not answer in time: could not {what}")
    if code.startswith(_INVALID_DATA_CLASSES):
        return InvalidMessageError(
            f"Postgres refused the data (SQLSTATE {code}, {type(exc.orig).__name__}): "
            f"could not {what}"
        )
    if code in _UNDEFINED or "does not exist" in str(exc.orig).split("\n", 1)[0]:
        return StoreConfigurationError(
            f"could not {what}: {str(exc.orig).splitlines()[0]} — check the database URL, "
            "and create the table with memory.create_schema() (or run the app's migrations)"
        )
    if (
        exc.connection_invalidated
        or code.startswith(_UNAVAILABLE_CLASSES)
        or isinstance(exc, InterfaceError)
        or (isinstance(exc, OperationalError) and not code)
    ):
        return StoreUnavailableError(f"Postgres unavailable: could not {what}")
    return None


def close_quietly(conn: Connection) -> None:
    """Return a connection; if Postgres died meanwhile, discard it without masking the outcome."""
    try:
        conn.close()
    except Exception:  # the driver's own error type, raised while resetting a dead connection
        logger.info("discarding a postgres connection that died")
        with contextlib.suppress(Exception):
            conn.invalidate()


async def aclose_quietly(conn: AsyncConnection) -> None:
    try:
        await conn.close()
    except Exception:
        logger.info("discarding a postgres connection that died")
        with contextlib.suppress(Exception):
            await conn.invalidate()


def create_engines(
    database_url: str,
    *,
    statement_timeout_seconds: float,
    connect_timeout_seconds: float,
    async_pool_size: int,
    prepared_statements: bool = True,
    **engine_kwargs: Any,
) -> tuple[Engine, Callable[[], AsyncEngine], dict[str, Any]]:
    """The store's sync engine, a factory of its async engines (one per event loop) and the
    options those are made with."""
    # Every query of the store is served by the (conversation_id, id) index. With stale
    # statistics and short average conversations the planner picks a bitmap scan + sort for
    # a long conversation, reading all of it (21 ms instead of 0.05 ms at 50 000 messages);
    # without bitmap scans, the ordered index scan that stops after `limit` rows always wins.
    # Set on the store's own pool only (behind PgBouncer: ALTER ROLE ... SET instead).
    # The sync pool's only prepared statements are the hot ones (driver_statements), whose
    # generic plans read only the rows they touch: forced, they are never planned again (the
    # server otherwise keeps re-planning the INSERT, its generic estimate being 7 x the custom
    # one: 0.15 ms a write). asyncpg prepares every statement, recall's searches included, so
    # the async pool keeps the server's choice.
    # Every statement of the store is one transaction by itself: autocommit saves the
    # BEGIN/COMMIT round trips, and leaves nothing to reset when a connection is returned.
    engine_kwargs.setdefault("isolation_level", "AUTOCOMMIT")
    engine_kwargs.setdefault("hide_parameters", True)
    timeout_ms = str(int(statement_timeout_seconds * 1000))
    sync_engine = create_engine(
        sync_url(database_url),
        connect_args={
            "connect_timeout": max(1, round(connect_timeout_seconds)),
            "options": f"-c enable_bitmapscan=off -c statement_timeout={timeout_ms}"
            " -c plan_cache_mode=force_generic_plan",
        },
        **engine_kwargs,
    )
    url = async_url(database_url)
    # A fixed pool: overflow connections are opened and closed again under load (0.1 new
    # Postgres connection per turn at 64 concurrent conversations), and the pool's own
    # waiter queue is not first-come first-served (p99 12 x p50). The gate in _arun queues
    # callers in order before they reach the pool, so nobody waits inside it.
    async_kwargs = dict(engine_kwargs)
    if "poolclass" not in async_kwargs:
        async_kwargs.setdefault("pool_size", async_pool_size)
        async_kwargs.setdefault("max_overflow", 0)

    connect_args: dict[str, Any] = {
        "timeout": connect_timeout_seconds,
        "server_settings": {"enable_bitmapscan": "off", "statement_timeout": timeout_ms},
    }
    if not prepared_statements:  # unnamed statements only, asyncpg's and SQLAlchemy's
        connect_args.update(statement_cache_size=0, prepared_statement_cache_size=0)

    def async_engine() -> AsyncEngine:
        return create_async_engine(url, connect_args=connect_args, **async_kwargs)

    return sync_engine, async_engine, async_kwargs
