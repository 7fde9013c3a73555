"""Postgres plumbing shared by the SQL modules: driver URLs, the error mapping, connection
returns that never mask an outcome. SQLAlchemy only."""

from __future__ import annotations

import contextlib
import logging

from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from .errors import InvalidMessageError, StoreConfigurationError, StoreUnavailableError

__all__ = ["aclose_quietly", "async_url", "close_quietly", "store_error", "sync_url"]

logger = logging.getLogger(__name__)

# SQLSTATEs: connection lost or server going away / a statement cut by statement_timeout /
# data the server can never take / the table or a column is not there.
_UNAVAILABLE_CLASSES = ("08", "53", "57P")
_TIMED_OUT = "57014"
_INVALID_DATA_CLASSES = ("22", "54")
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
