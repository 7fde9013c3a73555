"""L2: the Postgres ``messages`` table, the source of truth. SQL only (SQLAlchemy Core).

Every operation is a single statement run in autocommit mode, so a write is one round trip and
one transaction. Writes carry a ``message_uid`` for every row (the message's own LangChain id, or
a generated one kept out of the message), which makes them idempotent: after a dropped
connection the statement is retried once without any risk of storing a message twice.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Text, and_, cast, delete, func, null, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import Executable

from . import codec
from .errors import InvalidSessionIdError, StoreUnavailableError
from .schema import MessageTable

__all__ = [
    "ConversationSummary",
    "EncodedMessage",
    "MessageStore",
    "StoredMessage",
    "StoredRow",
    "async_url",
    "sync_url",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# pg_advisory_xact_lock key that serialises concurrent create_schema() calls.
_SCHEMA_LOCK_KEY = 0x6C6368_6D656D  # "lchmem"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A stored row as the cache needs it: the row id and the encoded message."""

    id: int
    payload: str


@dataclass(frozen=True, slots=True)
class StoredRow:
    """A stored row with what an operator wants to see besides the message."""

    id: int
    payload: str
    message_uid: str | None
    provider_sid: str | None
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """How many messages a conversation holds and when the last one was stored."""

    messages: int
    last_message_at: datetime | None


@dataclass(frozen=True, slots=True)
class EncodedMessage:
    """A message ready to insert. ``uid`` is its LangChain id, or ``None``."""

    uid: str | None
    role: str
    content: str
    payload: str


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


def _close_quietly(conn: Connection) -> None:
    """Return a connection; if Postgres died meanwhile, discard it without masking the outcome."""
    try:
        conn.close()
    except Exception:  # the driver's own error type, raised while resetting a dead connection
        logger.info("discarding a postgres connection that died", exc_info=True)
        with contextlib.suppress(Exception):
            conn.invalidate()


async def _aclose_quietly(conn: AsyncConnection) -> None:
    try:
        await conn.close()
    except Exception:
        logger.info("discarding a postgres connection that died", exc_info=True)
        with contextlib.suppress(Exception):
            await conn.invalidate()


def _is_unavailable(exc: DBAPIError) -> bool:
    return exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError))


class MessageStore:
    """Reads and writes one conversation's messages in the mapped ``messages`` table.

    Example::

        from sqlalchemy import create_engine
        store = MessageStore(create_engine("postgresql://localhost/app"))
        store.create_schema()
        rows = store.recent("conversation-1", 50)   # oldest first
    """

    def __init__(
        self,
        engine: Engine | None = None,
        async_engine: AsyncEngine | None = None,
        *,
        table: MessageTable | None = None,
        autocommit_engines: bool = False,
    ) -> None:
        if engine is None and async_engine is None:
            raise ValueError("MessageStore needs an engine, an async_engine, or both")
        self.engine = engine
        self.async_engine = async_engine
        # Engines created with isolation_level="AUTOCOMMIT" (from_url) need no per-checkout
        # switch; others (an application's engine) are switched on checkout and back on checkin.
        self._switch_isolation = not autocommit_engines
        self.mapping = table or MessageTable()
        self.table = self.mapping.build()
        c = self.table.c
        if self.mapping.payload is not None:
            self._payload_cols: tuple[Any, ...] = (cast(c.payload, Text),)
        else:
            self._payload_cols = (c.role, c.content)
        self._insert = self._insert_stmt()

    @classmethod
    def from_url(
        cls, database_url: str, *, table: MessageTable | None = None, **engine_kwargs: Any
    ) -> MessageStore:
        """A store with a sync (psycopg2) and an async (asyncpg) engine for ``database_url``."""
        from sqlalchemy import create_engine

        # Every query of the store is served by the (conversation_id, id) index. With stale
        # statistics and short average conversations the planner picks a bitmap scan + sort for
        # a long conversation, reading all of it (21 ms instead of 0.05 ms at 50 000 messages);
        # without bitmap scans, the ordered index scan that stops after `limit` rows always wins.
        # Set on the store's own pool only (behind PgBouncer: ALTER ROLE ... SET instead).
        # Every statement of the store is one transaction by itself: autocommit saves the
        # BEGIN/COMMIT round trips, and leaves nothing to reset when a connection is returned.
        engine_kwargs.setdefault("isolation_level", "AUTOCOMMIT")
        sync_engine = create_engine(
            sync_url(database_url),
            connect_args={"connect_timeout": 5, "options": "-c enable_bitmapscan=off"},
            **engine_kwargs,
        )
        aengine = create_async_engine(
            async_url(database_url),
            connect_args={"timeout": 5, "server_settings": {"enable_bitmapscan": "off"}},
            **engine_kwargs,
        )
        autocommit = engine_kwargs["isolation_level"] == "AUTOCOMMIT"
        return cls(sync_engine, aengine, table=table, autocommit_engines=autocommit)

    # -- statements (shared by the sync and async paths) -------------------------------------

    def conversation_key(self, session_id: str) -> Any:
        """``session_id`` converted to the type of the conversation id column."""
        kind = self.mapping.conversation_id_type
        if kind == "text":
            return session_id
        try:
            return int(session_id) if kind == "bigint" else uuid.UUID(session_id)
        except ValueError as exc:
            raise InvalidSessionIdError(
                f"session id {session_id!r} is not a valid {kind} conversation id"
            ) from exc

    def _in_conversation(self, session_id: str) -> Any:
        """``conversation_id = :key``, written as a closed range for the ordered queries.

        With an equality PostgreSQL treats the column as a constant and drops it from
        ``ORDER BY conversation_id, id``; on a table that also has an index on ``id`` alone (an
        application's ``PRIMARY KEY (id)``) it may then walk that index and filter, reading
        every newer row of other conversations: 915 ms instead of 0.07 ms for an old
        conversation on 1 M rows. The range keeps the ORDER BY whole, so only the
        ``(conversation_id, id)`` index can serve it, as one range scan of the window.
        """
        c = self.table.c
        key = self.conversation_key(session_id)
        return and_(c.conversation_id >= key, c.conversation_id <= key)

    def _recent_stmt(self, session_id: str, limit: int) -> Executable:
        c = self.table.c
        return (
            select(c.id, *self._payload_cols)
            .where(self._in_conversation(session_id))
            .order_by(c.conversation_id.desc(), c.id.desc())
            .limit(limit)
        )

    def _all_stmt(self, session_id: str) -> Executable:
        c = self.table.c
        return (
            select(c.id, *self._payload_cols)
            .where(self._in_conversation(session_id))
            .order_by(c.conversation_id, c.id)
        )

    def _search_stmt(
        self, session_id: str, query: str, limit: int, before_id: int | None
    ) -> Executable:
        c = self.table.c
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        searched = c.content if self.mapping.content is not None else cast(c.payload, Text)
        stmt = (
            select(c.id, *self._payload_cols)
            .where(self._in_conversation(session_id))
            .where(searched.ilike(pattern, escape="\\"))
            .order_by(c.conversation_id.desc(), c.id.desc())
            .limit(limit)
        )
        if before_id is not None:
            stmt = stmt.where(c.id < before_id)
        return stmt

    def _optional(self, name: str) -> Any:
        """The mapped column ``name``, or a typed NULL where the table has no such column."""
        column = self.table.c.get(name)
        return column if column is not None else null()

    def _transcript_stmt(
        self, session_id: str, limit: int | None, before_id: int | None
    ) -> Executable:
        c = self.table.c
        stmt = (
            select(
                c.id,
                *self._payload_cols,
                self._optional("message_uid"),
                self._optional("provider_sid"),
                self._optional("created_at"),
            )
            .where(self._in_conversation(session_id))
            .order_by(c.conversation_id.desc(), c.id.desc())
        )
        if before_id is not None:
            stmt = stmt.where(c.id < before_id)
        return stmt.limit(limit) if limit is not None else stmt

    def _transcript_rows(self, result: Any) -> list[StoredRow]:
        width = len(self._payload_cols)
        rows = []
        for row in result:
            payload = row[1] if width == 1 else codec.from_role_and_content(row[1], row[2])
            uid, provider_sid, created_at = row[1 + width :]
            rows.append(StoredRow(row[0], payload, uid, provider_sid, created_at))
        rows.reverse()
        return rows

    def _turn_reply_stmt(self, session_id: str, turn_id: str) -> Executable:
        if self.mapping.message_uid is None:
            raise ValueError("the mapped table has no message_uid column")
        c = self.table.c
        return (
            select(c.message_uid, self._optional("provider_sid"))
            .where(self._in_conversation(session_id))
            .where(c.message_uid.startswith(f"{turn_id}:", autoescape=True))
            .order_by(c.conversation_id.desc(), c.id.desc())
            .limit(1)
        )

    def _summaries_stmt(self, session_ids: Sequence[str]) -> Executable:
        c = self.table.c
        last = func.max(c.created_at) if "created_at" in c else null()
        keys = [self.conversation_key(sid) for sid in session_ids]
        return (
            select(c.conversation_id, func.count(), last)
            .where(c.conversation_id.in_(keys))
            .group_by(c.conversation_id)
        )

    def _count_stmt(self, session_id: str) -> Executable:
        c = self.table.c
        return select(func.count()).where(c.conversation_id == self.conversation_key(session_id))

    def _clear_stmt(self, session_id: str) -> Executable:
        c = self.table.c
        return delete(self.table).where(c.conversation_id == self.conversation_key(session_id))

    def _insert_stmt(self) -> Executable:
        """The INSERT, built once: executed with a list of rows, SQLAlchemy's insertmanyvalues
        sends one multi-row statement and compiles it once (a ``.values([...])`` statement is
        recompiled on every call: 40 % of a write)."""
        c = self.table.c
        stmt = pg_insert(self.table)
        if self.mapping.message_uid is not None:
            stmt = stmt.on_conflict_do_nothing(index_elements=[c.conversation_id, c.message_uid])
            return stmt.returning(c.id, c.message_uid)
        return stmt.returning(c.id)

    def _append_rows(
        self, session_id: str, messages: Sequence[EncodedMessage]
    ) -> tuple[list[dict[str, Any]], list[str | None]]:
        """The rows to insert and the uid each input row was written with (``None``: no uid
        column, or a repeat within the call)."""
        m = self.mapping
        key = self.conversation_key(session_id)
        uids: list[str | None] = []
        values: list[dict[str, Any]] = []
        seen: set[str] = set()
        for message in messages:
            row: dict[str, Any] = {"conversation_id": key}
            if m.role is not None:
                row["role"] = message.role
            if m.content is not None:
                row["content"] = message.content
            if m.payload is not None:
                row["payload"] = message.payload
            uid: str | None = None
            if m.message_uid is not None:
                # A generated uid makes a retried INSERT idempotent; it never enters the message.
                uid = message.uid if message.uid is not None else f"lchm-{uuid.uuid4().hex}"
                if uid in seen:  # the same id twice in one call is stored once
                    uids.append(None)
                    continue
                seen.add(uid)
                row["message_uid"] = uid
            uids.append(uid)
            values.append(row)
        return values, uids

    def _rows(self, result: Any) -> list[StoredMessage]:
        if self.mapping.payload is not None:
            return [StoredMessage(row[0], row[1]) for row in result]
        return [
            StoredMessage(row[0], codec.from_role_and_content(row[1], row[2])) for row in result
        ]

    @staticmethod
    def _new_ids(result: Any, uids: list[str | None], has_uid: bool) -> list[int | None]:
        """Row id of each input message, ``None`` where it was stored before."""
        rows = list(result)
        if not has_uid:
            # One INSERT draws identity values in VALUES order.
            ids = sorted(row[0] for row in rows)
            return list(ids)
        by_uid = {row[1]: row[0] for row in rows}
        return [by_uid.get(uid) if uid is not None else None for uid in uids]

    # -- running statements ------------------------------------------------------------------

    def _sync_engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("this MessageStore was built without a sync engine")
        return self.engine

    def _async_engine(self) -> AsyncEngine:
        if self.async_engine is None:
            raise RuntimeError("this MessageStore was built without an async engine")
        return self.async_engine

    def _run(self, what: str, work: Callable[[Connection], T], *, idempotent: bool = True) -> T:
        engine = self._sync_engine()
        for attempt in (1, 2):
            conn: Connection | None = None
            try:
                conn = engine.connect()
                if self._switch_isolation:
                    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                return work(conn)
            except DBAPIError as exc:
                if not _is_unavailable(exc):
                    raise
                # A connection that died since its last use (Postgres restarted) is retried once.
                if attempt == 1 and exc.connection_invalidated and idempotent:
                    logger.info("postgres connection was stale; retrying %s once", what)
                    continue
                raise StoreUnavailableError(f"Postgres unavailable: could not {what}") from exc
            finally:
                if conn is not None:
                    _close_quietly(conn)
        raise AssertionError("unreachable")

    async def _arun(self, what: str, work: Any, *, idempotent: bool = True) -> Any:
        engine = self._async_engine()
        for attempt in (1, 2):
            conn: AsyncConnection | None = None
            try:
                conn = await engine.connect()
                if self._switch_isolation:
                    conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                return await work(conn)
            except DBAPIError as exc:
                if not _is_unavailable(exc):
                    raise
                if attempt == 1 and exc.connection_invalidated and idempotent:
                    logger.info("postgres connection was stale; retrying %s once", what)
                    continue
                raise StoreUnavailableError(f"Postgres unavailable: could not {what}") from exc
            except OSError as exc:  # asyncpg raises plain socket errors when it cannot connect
                raise StoreUnavailableError(f"Postgres unavailable: could not {what}") from exc
            finally:
                if conn is not None:
                    await _aclose_quietly(conn)
        raise AssertionError("unreachable")

    # -- schema ------------------------------------------------------------------------------

    def create_schema(self) -> None:
        """Create the table and its indexes if missing (safe to call from many processes)."""
        with self._sync_engine().connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
            try:
                self.table.metadata.create_all(conn, checkfirst=True)
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK_KEY})

    async def acreate_schema(self) -> None:
        """Async :meth:`create_schema`."""
        async with self._async_engine().connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
            try:
                await conn.run_sync(self.table.metadata.create_all, checkfirst=True)
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK_KEY})

    # -- reads -------------------------------------------------------------------------------

    def recent(self, session_id: str, limit: int) -> list[StoredMessage]:
        """The last ``limit`` messages of the conversation, oldest first (one indexed query)."""
        stmt = self._recent_stmt(session_id, limit)
        rows = self._run("read messages", lambda conn: self._rows(conn.execute(stmt)))
        rows.reverse()
        return rows

    async def arecent(self, session_id: str, limit: int) -> list[StoredMessage]:
        """Async :meth:`recent`."""
        stmt = self._recent_stmt(session_id, limit)

        async def work(conn: AsyncConnection) -> list[StoredMessage]:
            return self._rows(await conn.execute(stmt))

        rows = await self._arun("read messages", work)
        rows.reverse()
        return rows

    def all(self, session_id: str) -> list[StoredMessage]:
        """Every message of the conversation, oldest first."""
        stmt = self._all_stmt(session_id)
        return self._run("read messages", lambda conn: self._rows(conn.execute(stmt)))

    async def aall(self, session_id: str) -> list[StoredMessage]:
        """Async :meth:`all`."""
        stmt = self._all_stmt(session_id)

        async def work(conn: AsyncConnection) -> list[StoredMessage]:
            return self._rows(await conn.execute(stmt))

        return await self._arun("read messages", work)

    def search(
        self, session_id: str, query: str, *, limit: int = 10, before_id: int | None = None
    ) -> list[StoredMessage]:
        """Messages whose text contains ``query`` (case-insensitive), newest first."""
        stmt = self._search_stmt(session_id, query, limit, before_id)
        return self._run("search messages", lambda conn: self._rows(conn.execute(stmt)))

    async def asearch(
        self, session_id: str, query: str, *, limit: int = 10, before_id: int | None = None
    ) -> list[StoredMessage]:
        """Async :meth:`search`."""
        stmt = self._search_stmt(session_id, query, limit, before_id)

        async def work(conn: AsyncConnection) -> list[StoredMessage]:
            return self._rows(await conn.execute(stmt))

        return await self._arun("search messages", work)

    def count(self, session_id: str) -> int:
        """How many messages the conversation holds."""
        stmt = self._count_stmt(session_id)
        return self._run("count messages", lambda conn: int(conn.execute(stmt).scalar_one()))

    async def acount(self, session_id: str) -> int:
        """Async :meth:`count`."""
        stmt = self._count_stmt(session_id)

        async def work(conn: AsyncConnection) -> int:
            return int((await conn.execute(stmt)).scalar_one())

        return await self._arun("count messages", work)

    def transcript(
        self, session_id: str, *, limit: int | None = None, before_id: int | None = None
    ) -> list[StoredRow]:
        """The conversation's rows with their ids and metadata, oldest first (the last ``limit``
        before row ``before_id``, or all)."""
        stmt = self._transcript_stmt(session_id, limit, before_id)
        return self._run(
            "read a transcript", lambda conn: self._transcript_rows(conn.execute(stmt))
        )

    async def atranscript(
        self, session_id: str, *, limit: int | None = None, before_id: int | None = None
    ) -> list[StoredRow]:
        """Async :meth:`transcript`."""
        stmt = self._transcript_stmt(session_id, limit, before_id)

        async def work(conn: AsyncConnection) -> list[StoredRow]:
            return self._transcript_rows(await conn.execute(stmt))

        return await self._arun("read a transcript", work)

    def turn_reply(self, session_id: str, turn_id: str) -> tuple[str, str | None] | None:
        """``(message uid, provider sid)`` of the last message stored with id ``<turn_id>:<n>``."""
        stmt = self._turn_reply_stmt(session_id, turn_id)

        def work(conn: Connection) -> tuple[str, str | None] | None:
            row = conn.execute(stmt).one_or_none()
            return None if row is None else (row[0], row[1])

        return self._run("read a turn's reply", work)

    async def aturn_reply(self, session_id: str, turn_id: str) -> tuple[str, str | None] | None:
        """Async :meth:`turn_reply`."""
        stmt = self._turn_reply_stmt(session_id, turn_id)

        async def work(conn: AsyncConnection) -> tuple[str, str | None] | None:
            row = (await conn.execute(stmt)).one_or_none()
            return None if row is None else (row[0], row[1])

        return await self._arun("read a turn's reply", work)

    def summaries(self, session_ids: Sequence[str]) -> dict[str, ConversationSummary]:
        """Message count and last message time of each conversation that has messages."""
        if not session_ids:
            return {}
        by_key = {self.conversation_key(sid): sid for sid in session_ids}
        stmt = self._summaries_stmt(session_ids)

        def work(conn: Connection) -> dict[str, ConversationSummary]:
            return {
                by_key[key]: ConversationSummary(int(n), last)
                for key, n, last in conn.execute(stmt)
            }

        return self._run("summarise conversations", work)

    # -- writes ------------------------------------------------------------------------------

    def append(self, session_id: str, messages: Sequence[EncodedMessage]) -> list[int | None]:
        """Insert ``messages`` in one statement; the new row id of each, ``None`` if stored before.

        Raises :class:`StoreUnavailableError` when Postgres cannot be reached: then nothing is
        known to be stored and the caller must report the failure (retrying is safe for
        messages with ids).
        """
        if not messages:
            return []
        rows, uids = self._append_rows(session_id, messages)
        has_uid = self.mapping.message_uid is not None
        return self._run(
            f"store {len(messages)} message(s)",
            lambda conn: self._new_ids(conn.execute(self._insert, rows), uids, has_uid),
            idempotent=has_uid,
        )

    async def aappend(
        self, session_id: str, messages: Sequence[EncodedMessage]
    ) -> list[int | None]:
        """Async :meth:`append`."""
        if not messages:
            return []
        rows, uids = self._append_rows(session_id, messages)
        has_uid = self.mapping.message_uid is not None

        async def work(conn: AsyncConnection) -> list[int | None]:
            return self._new_ids(await conn.execute(self._insert, rows), uids, has_uid)

        return await self._arun(f"store {len(messages)} message(s)", work, idempotent=has_uid)

    def clear(self, session_id: str) -> int:
        """Delete the conversation's messages; how many were deleted."""
        stmt = self._clear_stmt(session_id)
        return self._run("clear messages", lambda conn: conn.execute(stmt).rowcount)

    async def aclear(self, session_id: str) -> int:
        """Async :meth:`clear`."""
        stmt = self._clear_stmt(session_id)

        async def work(conn: AsyncConnection) -> int:
            return (await conn.execute(stmt)).rowcount

        return await self._arun("clear messages", work)

    def _provider_sid_stmt(self, session_id: str, message_uid: str, provider_sid: str) -> Any:
        if self.mapping.provider_sid is None or self.mapping.message_uid is None:
            raise ValueError("the mapped table has no provider_sid or message_uid column")
        c = self.table.c
        return (
            update(self.table)
            .where(c.conversation_id == self.conversation_key(session_id))
            .where(c.message_uid == message_uid)
            .values(provider_sid=provider_sid)
        )

    def set_provider_sid(self, session_id: str, message_uid: str, provider_sid: str) -> bool:
        """Record the provider's id of a stored message (e.g. the Twilio SID of a sent reply);
        whether the message exists."""
        stmt = self._provider_sid_stmt(session_id, message_uid, provider_sid)
        return self._run("record a provider sid", lambda conn: conn.execute(stmt).rowcount == 1)

    async def aset_provider_sid(self, session_id: str, message_uid: str, provider_sid: str) -> bool:
        """Async :meth:`set_provider_sid`."""
        stmt = self._provider_sid_stmt(session_id, message_uid, provider_sid)

        async def work(conn: AsyncConnection) -> bool:
            return (await conn.execute(stmt)).rowcount == 1

        return await self._arun("record a provider sid", work)

    def close(self) -> None:
        """Dispose of the sync engine's pool (the async one needs :meth:`aclose`)."""
        if self.engine is not None:
            self.engine.dispose()

    async def aclose(self) -> None:
        """Dispose of both engines' pools."""
        if self.async_engine is not None:
            await self.async_engine.dispose()
        self.close()
