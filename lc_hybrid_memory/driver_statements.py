"""The store's two hot statements — a turn's INSERT, a miss's SELECT — run on the drivers
themselves, prepared once per connection. SQLAlchemy only (its pooled connections, its errors).

SQLAlchemy's execution layer costs more than these statements' round trips (a turn's write
1.02 -> 0.62 ms measured), and the INSERT, sent as text, is planned again on every call (0.13 ms;
0.01 ms prepared). So each statement is compiled once, in asyncpg's ``$n::type`` form, which both
drivers run as a prepared statement: psycopg2 through ``PREPARE``/``EXECUTE`` once per pooled
connection, asyncpg through its own per-connection statement cache. Failures are wrapped as
SQLAlchemy wraps them, a dead connection invalidated, so retries and the error mapping are the
same as through SQLAlchemy.

Behind a pooler that does not keep a session's prepared statements (PgBouncer in transaction
mode), build the store with ``prepared_statements=False``: psycopg2 then goes through SQLAlchemy,
asyncpg sends unnamed statements.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable

__all__ = ["DriverStatement", "HotStatements", "arun_on_asyncpg", "run_on_psycopg2"]

T = TypeVar("T")

_RENDERER = PGDialect_asyncpg()
_PREPARED_KEY = "lc_hybrid_memory_prepared"  # what was prepared on a pooled connection
_NOT_PREPARED = "26000"  # the connection lost its prepared statements (DISCARD ALL...)


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A statement compiled once: its ``$n`` SQL, its parameters in order, its constants, and
    the psycopg2 ``PREPARE``/``EXECUTE`` texts that run it."""

    sql: str
    names: tuple[str, ...]
    constants: Mapping[str, Any]
    prepare_sql: str
    execute_sql: str

    @classmethod
    def render(cls, statement: Executable) -> DriverStatement:
        compiled = statement.compile(dialect=_RENDERER)
        sql = str(compiled)
        names = tuple(compiled.positiontup or ())
        # One prepared name per distinct SQL text (several mapped tables may share a pool).
        name = "lchm_" + hashlib.sha1(sql.encode(), usedforsecurity=False).hexdigest()[:16]
        return cls(
            sql,
            names,
            dict(compiled.params),
            prepare_sql=f"PREPARE {name} AS {sql}",
            execute_sql=f"EXECUTE {name} ({', '.join(['%s'] * len(names))})",
        )

    def values(self, params: Mapping[str, Any]) -> list[Any]:
        """The positional values: the call's parameters, else the statement's own literals."""
        constants = self.constants
        return [params[n] if n in params else constants[n] for n in self.names]


def _wrapped(conn: Connection | AsyncConnection, exc: Exception, sql: str, gone: bool) -> Any:
    return DBAPIError.instance(
        sql,
        None,
        exc,
        Exception,
        hide_parameters=True,
        connection_invalidated=gone,
        dialect=conn.dialect,
    )


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)


def run_on_psycopg2(
    conn: Connection, statement: DriverStatement, params: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """``statement`` executed on the psycopg2 connection under ``conn``; its rows."""
    values = [str(v) if isinstance(v, uuid.UUID) else v for v in statement.values(params)]
    raw = conn.connection.dbapi_connection
    prepared: set[str] = conn.info.setdefault(_PREPARED_KEY, set())
    cursor = raw.cursor()
    sql = statement.sql
    try:
        for attempt in (1, 2):
            if statement.prepare_sql not in prepared:
                cursor.execute(statement.prepare_sql)
                prepared.add(statement.prepare_sql)
            try:
                cursor.execute(statement.execute_sql, values)
                break
            except conn.dialect.loaded_dbapi.Error as exc:
                if attempt == 2 or _sqlstate(exc) != _NOT_PREPARED:
                    raise
                prepared.discard(statement.prepare_sql)
        return cursor.fetchall()
    except conn.dialect.loaded_dbapi.Error as exc:
        gone = conn.dialect.is_disconnect(exc, raw, cursor)
        if gone:
            conn.invalidate(exc)
        raise _wrapped(conn, exc, sql, gone) from exc
    finally:
        cursor.close()


async def arun_on_asyncpg(
    conn: AsyncConnection, statement: DriverStatement, params: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """``statement`` executed on the asyncpg connection under ``conn`` (prepared and cached
    by asyncpg per connection); its rows."""
    fairy = await conn.get_raw_connection()
    driver = fairy.driver_connection
    values = statement.values(params)
    try:
        try:
            records = await driver.fetch(statement.sql, *values)
        except Exception as exc:
            if _sqlstate(exc) != _NOT_PREPARED:
                raise
            await driver.reload_schema_state()  # forgets asyncpg's cached statements
            records = await driver.fetch(statement.sql, *values)
    except Exception as exc:  # asyncpg's errors, and the socket's when the server is gone
        gone = (
            driver.is_closed()
            or isinstance(exc, (OSError, TimeoutError))
            or (_sqlstate(exc) or "").startswith("08")
        )
        if gone:
            await conn.invalidate(exc)
        raise _wrapped(conn, exc, statement.sql, gone) from exc
    return [tuple(record) for record in records]


class HotStatements:
    """The store's way to run its hot statements (a mixin of
    :class:`~lc_hybrid_memory.store.MessageStore`, which provides the connections). On another
    driver than psycopg2 / asyncpg, or unprepared on psycopg2, they go through SQLAlchemy."""

    _prepared: bool
    _rendered: dict[Any, DriverStatement]
    _run: Callable[..., Any]
    _arun: Callable[..., Awaitable[Any]]

    def _driver_statement(self, statement: Any) -> DriverStatement:
        rendered = self._rendered.get(statement)
        if rendered is None:
            rendered = self._rendered[statement] = DriverStatement.render(statement)
        return rendered

    def _fetch_hot(
        self,
        what: str,
        statement: Any,
        params: dict[str, Any],
        shape: Callable[[Any], T],
        *,
        idempotent: bool = True,
    ) -> T:
        """A hot statement, prepared on the psycopg2 connection itself."""
        prepared = self._driver_statement(statement) if self._prepared else None

        def work(conn: Connection) -> T:
            if prepared is None or conn.dialect.driver != "psycopg2":
                return shape(conn.execute(statement, params))
            return shape(run_on_psycopg2(conn, prepared, params))

        return self._run(what, work, idempotent=idempotent)

    async def _afetch_hot(
        self,
        what: str,
        statement: Any,
        params: dict[str, Any],
        shape: Callable[[Any], T],
        *,
        idempotent: bool = True,
    ) -> T:
        """Async :meth:`_fetch_hot`: on the asyncpg connection itself (prepared by asyncpg's
        statement cache unless that is off)."""
        prepared = self._driver_statement(statement)

        async def work(conn: AsyncConnection) -> T:
            if conn.dialect.driver != "asyncpg":
                return shape(await conn.execute(statement, params))
            return shape(await arun_on_asyncpg(conn, prepared, params))

        return await self._arun(what, work, idempotent=idempotent)
