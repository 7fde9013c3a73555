"""L2: the Postgres ``messages`` table, the source of truth. SQL only (SQLAlchemy Core).

Every operation is a single statement run in autocommit mode, so a write is one round trip and
one transaction, whatever its size. Writes carry a ``message_uid`` for every row (the message's
own LangChain id, or a generated one kept out of the message), which makes them idempotent: after
a dropped connection the statement is retried once without any risk of storing a message twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .driver_statements import DriverStatement, HotStatements
from .errors import StoreUnavailableError
from .loops import PerLoop
from .postgres import aclose_quietly, close_quietly, create_engines, store_error
from .records import EncodedMessage, StoredMessage, WrittenRow
from .schema import MessageTable
from .statements import MessageStatements
from .store_views import OperatorQueries

__all__ = ["MessageStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# pg_advisory_lock key that serialises concurrent create_schema() calls.
_SCHEMA_LOCK_KEY = 0x6C6368_6D656D  # "lchmem"


@dataclass(frozen=True, slots=True)
class _LoopEngine:
    """One event loop's async engine and the first-come first-served gate in front of its pool."""

    engine: AsyncEngine
    gate: asyncio.Semaphore | None


class MessageStore(HotStatements, OperatorQueries):
    """Reads and writes one conversation's messages in the mapped ``messages`` table.

    ``async_engine_factory`` makes an async engine per event loop (what :meth:`from_url` does);
    an ``async_engine`` given as is must be used from its own loop only.

    Example::

        store = MessageStore.from_url("postgresql://localhost/app")
        store.create_schema()
        rows = store.recent("conversation-1", 50)   # oldest first
    """

    def __init__(
        self,
        engine: Engine | None = None,
        async_engine: AsyncEngine | None = None,
        *,
        async_engine_factory: Callable[[], AsyncEngine] | None = None,
        table: MessageTable | None = None,
        autocommit_engines: bool = False,
        async_concurrency: int = 16,
        prepared_statements: bool = True,
    ) -> None:
        if engine is None and async_engine is None and async_engine_factory is None:
            raise ValueError("MessageStore needs an engine, an async engine, or both")
        self.engine = engine
        self._fixed_async = async_engine
        self._async_engines = (
            PerLoop(
                lambda: _LoopEngine(async_engine_factory(), asyncio.Semaphore(async_concurrency)),
                release=lambda loop_engine: loop_engine.engine.dispose(),
                abandon=lambda loop_engine: loop_engine.engine.sync_engine.dispose(close=False),
            )
            if async_engine_factory is not None
            else None
        )
        # Engines created with isolation_level="AUTOCOMMIT" (from_url) need no per-checkout
        # switch; others (an application's engine) are switched on checkout and back on checkin.
        self._switch_isolation = not autocommit_engines
        self.mapping = table or MessageTable()
        self.sql = MessageStatements(self.mapping)
        self._prepared = prepared_statements
        self._rendered: dict[Any, DriverStatement] = {}  # the hot statements, compiled once
        self.table = self.sql.table

    @classmethod
    def from_url(
        cls,
        database_url: str,
        *,
        table: MessageTable | None = None,
        statement_timeout_seconds: float = 30.0,
        connect_timeout_seconds: float = 5.0,
        async_pool_size: int = 16,
        prepared_statements: bool = True,
        **engine_kwargs: Any,
    ) -> MessageStore:
        """A store with a sync (psycopg2) engine and an async (asyncpg) engine per event loop.

        Every statement is bounded by ``statement_timeout_seconds`` (a runaway query cannot hold
        a pooled connection), SQL parameters never appear in errors or logs. Each event loop
        gets a fixed pool of ``async_pool_size`` connections, entered in arrival order.
        ``prepared_statements=False`` behind a pooler that drops them (PgBouncer, transaction
        mode).
        """
        sync_engine, async_engine, async_kwargs = create_engines(
            database_url,
            statement_timeout_seconds=statement_timeout_seconds,
            connect_timeout_seconds=connect_timeout_seconds,
            async_pool_size=async_pool_size,
            prepared_statements=prepared_statements,
            **engine_kwargs,
        )
        return cls(
            sync_engine,
            async_engine_factory=async_engine,
            table=table,
            autocommit_engines=async_kwargs["isolation_level"] == "AUTOCOMMIT",
            async_concurrency=async_kwargs.get("pool_size", async_pool_size),
            prepared_statements=prepared_statements,
        )

    # -- parameters (shared by the sync and async paths) -------------------------------------

    def conversation_key(self, session_id: str) -> Any:
        """A canonical session id as the value of the conversation id column."""
        kind = self.mapping.conversation_id_type
        if kind == "bigint":
            return int(session_id)
        if kind == "uuid":
            return uuid.UUID(session_id)
        return session_id

    def _params(self, session_id: str, **extra: Any) -> dict[str, Any]:
        return {"conversation_key": self.conversation_key(session_id), **extra}

    # -- running statements ------------------------------------------------------------------

    def _sync_engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("this MessageStore was built without a sync engine")
        return self.engine

    async def aengine(self) -> AsyncEngine:
        """The running event loop's async engine (made on first use in that loop)."""
        return (await self._loop_engine()).engine

    async def _loop_engine(self) -> _LoopEngine:
        if self._async_engines is not None:
            return await self._async_engines.get()
        if self._fixed_async is None:
            raise RuntimeError("this MessageStore was built without an async engine")
        return _LoopEngine(self._fixed_async, None)

    @staticmethod
    def _retry_or_raise(
        exc: BaseException, what: str, attempt: int, idempotent: bool, sent: bool
    ) -> None:
        """Return to retry once (a pooled connection that died since its last use), else raise."""
        if (
            attempt == 1
            and idempotent
            and isinstance(exc, DBAPIError)
            and exc.connection_invalidated
        ):
            logger.info("postgres connection was stale; retrying once to %s", what)
            return
        error = store_error(exc, what)
        if error is None:
            raise exc
        if isinstance(error, StoreUnavailableError):
            error.maybe_stored = sent
            raise error from exc
        raise error from None

    def _run(self, what: str, work: Callable[[Connection], T], *, idempotent: bool = True) -> T:
        engine = self._sync_engine()
        sent = False  # whether an attempt may have reached Postgres with the statement
        for attempt in (1, 2):
            conn: Connection | None = None
            try:
                conn = engine.connect()
                if self._switch_isolation:
                    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                sent = True
                return work(conn)
            except (DBAPIError, OSError) as exc:
                self._retry_or_raise(exc, what, attempt, idempotent, sent)
            finally:
                if conn is not None:
                    close_quietly(conn)
        raise AssertionError("unreachable")

    async def _arun(
        self,
        what: str,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        idempotent: bool = True,
    ) -> T:
        loop_engine = await self._loop_engine()
        async with loop_engine.gate or contextlib.nullcontext():
            sent = False
            for attempt in (1, 2):
                conn: AsyncConnection | None = None
                try:
                    conn = await loop_engine.engine.connect()
                    if self._switch_isolation:
                        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    sent = True
                    return await work(conn)
                except (DBAPIError, OSError) as exc:
                    self._retry_or_raise(exc, what, attempt, idempotent, sent)
                finally:
                    if conn is not None:
                        await aclose_quietly(conn)
        raise AssertionError("unreachable")

    def _fetch(self, what: str, stmt: Any, params: dict[str, Any], shape: Callable[[Any], T]) -> T:
        return self._run(what, lambda conn: shape(conn.execute(stmt, params)))

    async def _afetch(
        self, what: str, stmt: Any, params: dict[str, Any], shape: Callable[[Any], T]
    ) -> T:
        async def work(conn: AsyncConnection) -> T:
            return shape(await conn.execute(stmt, params))

        return await self._arun(what, work)

    # -- schema ------------------------------------------------------------------------------

    def create_schema(self) -> None:
        """Create the table and its indexes if missing (safe to call from many processes)."""

        def work(conn: Connection) -> None:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
            try:
                self.table.metadata.create_all(conn, checkfirst=True)
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK_KEY})

        self._run("create the messages table", work)

    async def acreate_schema(self) -> None:
        """Async :meth:`create_schema`."""

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
            try:
                await conn.run_sync(self.table.metadata.create_all, checkfirst=True)
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK_KEY})

        await self._arun("create the messages table", work)

    # -- reads -------------------------------------------------------------------------------

    def recent(self, session_id: str, limit: int) -> list[StoredMessage]:
        """The last ``limit`` messages of the conversation, oldest first (one indexed query)."""
        params = self._params(session_id, limit=limit)
        return self._fetch_hot("read messages", self.sql.recent, params, self.sql.rows)[::-1]

    async def arecent(self, session_id: str, limit: int) -> list[StoredMessage]:
        """Async :meth:`recent`."""
        params = self._params(session_id, limit=limit)
        rows = await self._afetch_hot("read messages", self.sql.recent, params, self.sql.rows)
        return rows[::-1]

    def all(self, session_id: str) -> list[StoredMessage]:
        """Every message of the conversation, oldest first."""
        return self._fetch("read messages", self.sql.all, self._params(session_id), self.sql.rows)

    async def aall(self, session_id: str) -> list[StoredMessage]:
        """Async :meth:`all`."""
        params = self._params(session_id)
        return await self._afetch("read messages", self.sql.all, params, self.sql.rows)

    def _search_params(self, session_id: str, query: str, limit: int) -> dict[str, Any]:
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return self._params(session_id, pattern=pattern, limit=limit)

    def search(self, session_id: str, query: str, *, limit: int = 10) -> list[StoredMessage]:
        """Messages whose text contains ``query`` (case-insensitive), newest first."""
        params = self._search_params(session_id, query, limit)
        return self._fetch("search messages", self.sql.search(), params, self.sql.rows)

    async def asearch(self, session_id: str, query: str, *, limit: int = 10) -> list[StoredMessage]:
        """Async :meth:`search`."""
        params = self._search_params(session_id, query, limit)
        return await self._afetch("search messages", self.sql.search(), params, self.sql.rows)

    def count(self, session_id: str) -> int:
        """How many messages the conversation holds."""
        params = self._params(session_id)
        return self._fetch("count messages", self.sql.count, params, lambda r: int(r.scalar_one()))

    async def acount(self, session_id: str) -> int:
        """Async :meth:`count`."""
        params = self._params(session_id)
        return await self._afetch(
            "count messages", self.sql.count, params, lambda r: int(r.scalar_one())
        )

    # -- writes ------------------------------------------------------------------------------

    def append(self, session_id: str, messages: Sequence[EncodedMessage]) -> list[WrittenRow]:
        """Insert ``messages`` in one statement (one transaction); what happened to each.

        Raises :class:`StoreUnavailableError` when Postgres cannot be reached: then nothing is
        known to be stored and the caller must report the failure (retrying is safe for
        messages with ids).
        """
        if not messages:
            return []
        params, positions = self.sql.insert_params(self.conversation_key(session_id), messages)
        has_uid = self.mapping.message_uid is not None
        return self._fetch_hot(
            f"store {len(messages)} message(s)",
            self.sql.insert,
            params,
            lambda rows: self.sql.written(rows, positions, has_uid),
            idempotent=has_uid,
        )

    async def aappend(
        self, session_id: str, messages: Sequence[EncodedMessage]
    ) -> list[WrittenRow]:
        """Async :meth:`append`."""
        if not messages:
            return []
        params, positions = self.sql.insert_params(self.conversation_key(session_id), messages)
        has_uid = self.mapping.message_uid is not None
        return await self._afetch_hot(
            f"store {len(messages)} message(s)",
            self.sql.insert,
            params,
            lambda rows: self.sql.written(rows, positions, has_uid),
            idempotent=has_uid,
        )

    def clear(self, session_id: str) -> int:
        """Delete the conversation's messages; how many were deleted."""
        params = self._params(session_id)
        return self._fetch("clear messages", self.sql.clear, params, lambda r: r.rowcount)

    async def aclear(self, session_id: str) -> int:
        """Async :meth:`clear`."""
        params = self._params(session_id)
        return await self._afetch("clear messages", self.sql.clear, params, lambda r: r.rowcount)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Dispose of the sync engine's pool (async pools go with their loops, or aclose)."""
        if self.engine is not None:
            self.engine.dispose()
        if self._async_engines is not None:
            self._async_engines.abandon_closed()

    async def aclose(self) -> None:
        """Dispose of this loop's async pool and the sync pool."""
        if self._async_engines is not None:
            await self._async_engines.aclose()
        elif self._fixed_async is not None:
            await self._fixed_async.dispose()
        self.close()
