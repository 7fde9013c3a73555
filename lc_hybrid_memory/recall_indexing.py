"""Indexing for semantic recall, off the write path: embed the queue in batches, write lexemes
and vectors; backfill, lag, erase and sweep; and :class:`RecallIndexer`, a background thread.

Each batch is one transaction (claim with ``SKIP LOCKED`` → embed → write vectors and lexemes →
dequeue), so an indexer that dies mid-batch loses nothing, re-embeds only that batch, and
several indexers never embed the same row.

:class:`IndexingMethods` is a part of :class:`~lc_hybrid_memory.recall.MessageRecall`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from . import codec
from .recall_embedders import unit_vector
from .recall_schema import vector_literal
from .recall_search import Vocabulary
from .recall_statements import PendingRow

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

    from .recall import MessageRecall
    from .recall_statements import RecallStatements
    from .store import MessageStore

__all__ = ["IndexingMethods", "RecallIndexer"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class IndexingMethods:
    """``index_pending``, ``backfill``, ``lag``, ``forget`` and ``sweep`` of a
    :class:`~lc_hybrid_memory.recall.MessageRecall`."""

    if TYPE_CHECKING:
        store: MessageStore
        sql: RecallStatements
        embeddings: Embeddings | None
        model_name: str | None
        roles: frozenset[str]
        batch_size: int
        _vectors: bool | None
        _vocabulary: Vocabulary

        def _run(
            self, what: str, work: Callable[[Connection], T], *, transaction: bool = False
        ) -> T: ...

        async def _arun(self, what: str, work: Any, *, transaction: bool = False) -> Any: ...

        def vectors_available(self) -> bool: ...

        async def avectors_available(self) -> bool: ...

    def _gather_statistics(self, conn: Connection) -> None:
        """ANALYZE the lexemes table if it has no statistics yet (a new table: autovacuum
        would in a while), so that the lexical side knows the common words from the start."""
        analyzed = conn.execute(self.sql.common_lexemes_stmt(1.0, 0)).one()[0]
        if not analyzed:
            conn.execute(self.sql.analyze_stmt())
        self._vocabulary = Vocabulary(analyzed=True)  # statistics exist: read at the next recall

    def _texts(self, rows: list[PendingRow]) -> list[str | None]:
        """The text to index for each claimed row (``None``: message gone or not indexed)."""
        texts: list[str | None] = []
        for row in rows:
            if row.payload is None and row.content is None:
                texts.append(None)
                continue
            try:
                if row.payload is not None:
                    message = codec.decode(row.payload)
                    role, body = codec.role_of(message), codec.plain_text(message)
                else:
                    role, body = row.role or "", row.content or ""
            except codec.DecodeError:
                role, body = "", ""
            texts.append(body if role in self.roles and body.strip() else "")
        return texts

    def _write_batch(
        self,
        conn: Connection,
        rows: list[PendingRow],
        texts: list[str | None],
        vectors: list[list[float]] | None,
    ) -> int:
        present = [(r, t) for r, t in zip(rows, texts, strict=True) if t is not None]
        if present:
            conn.execute(
                self.sql.write_lexemes_stmt(),
                [
                    {"conversation_id": r.conversation_id, "message_id": r.message_id, "body": t}
                    for r, t in present
                ],
            )
        if vectors is not None and present:
            by_text = iter(vectors)
            params = []
            for r, t in present:
                vector = unit_vector(next(by_text)) if t else None
                params.append(
                    {
                        "conversation_id": r.conversation_id,
                        "message_id": r.message_id,
                        "model": self.model_name,
                        "dimensions": len(vector) if vector is not None else None,
                        "embedding": vector_literal(vector) if vector is not None else None,
                    }
                )
            conn.execute(self.sql.write_vectors_stmt(), params)
            done = [(r.conversation_id, r.message_id) for r, _ in present]
            conn.execute(self.sql.drop_other_models_stmt(done, self.model_name or ""))
        conn.execute(self.sql.dequeue_stmt([ctid for r in rows for ctid in r.ctids]))
        return sum(1 for _, t in present if t)

    def _index_batch(self, conn: Connection, limit: int, semantic: bool) -> tuple[int, int]:
        rows = self.sql.pending_rows(conn.execute(self.sql.claim_stmt(limit)))
        if not rows:
            return 0, 0
        texts = self._texts(rows)
        vectors = None
        if semantic:
            assert self.embeddings is not None
            vectors = self.embeddings.embed_documents([t for t in texts if t])
        return len(rows), self._write_batch(conn, rows, texts, vectors)

    def index_pending(self, *, limit: int | None = None) -> int:
        """Index the queued messages (embed, store vectors and lexemes); how many were indexed.

        Stops when the queue is empty or ``limit`` rows were processed. Each batch is one
        transaction: an error (the embedder's, Postgres's) leaves that batch queued.
        """
        semantic = self.vectors_available()
        indexed = processed = 0
        while limit is None or processed < limit:
            size = self.batch_size if limit is None else min(self.batch_size, limit - processed)
            claimed, written = self._run(
                "index messages",
                lambda conn, size=size: self._index_batch(conn, size, semantic),
                transaction=True,
            )
            if claimed == 0:
                break
            processed += claimed
            indexed += written
        if indexed and not self._vocabulary.analyzed:
            self._run("gather lexeme statistics", self._gather_statistics)
        return indexed

    async def aindex_pending(self, *, limit: int | None = None) -> int:
        """Async :meth:`index_pending`."""
        semantic = await self.avectors_available()
        indexed = processed = 0
        while limit is None or processed < limit:
            size = self.batch_size if limit is None else min(self.batch_size, limit - processed)

            async def work(conn: AsyncConnection, size: int = size) -> tuple[int, int]:
                result = await conn.execute(self.sql.claim_stmt(size))
                rows = self.sql.pending_rows(result)
                if not rows:
                    return 0, 0
                texts = self._texts(rows)
                vectors = None
                if semantic:
                    assert self.embeddings is not None
                    vectors = await self.embeddings.aembed_documents([t for t in texts if t])
                written = await conn.run_sync(
                    lambda sync: self._write_batch(sync, rows, texts, vectors)
                )
                return len(rows), written

            claimed, written = await self._arun("index messages", work, transaction=True)
            if claimed == 0:
                break
            processed += claimed
            indexed += written
        if indexed and not self._vocabulary.analyzed:
            await self._arun(
                "gather lexeme statistics",
                lambda conn: conn.run_sync(self._gather_statistics),
            )
        return indexed

    def backfill(self, *, everything: bool = False) -> int:
        """Enqueue every message without an index entry for the current embedder (existing
        tables, a changed embedder, rows written while the trigger was absent); how many.

        ``everything`` enqueues every message (re-embedding all: each new vector replaces the
        row's old one, which stays searchable until then)."""
        stmt = self.sql.backfill_stmt(
            self.model_name, vectors=self.vectors_available(), everything=everything
        )

        def work(conn: Connection) -> int:
            conn.execute(self.sql.backfill_lock_stmt())
            return conn.execute(stmt).rowcount

        return self._run("enqueue messages", work, transaction=True)

    async def abackfill(self, *, everything: bool = False) -> int:
        """Async :meth:`backfill`."""
        stmt = self.sql.backfill_stmt(
            self.model_name, vectors=await self.avectors_available(), everything=everything
        )

        async def work(conn: AsyncConnection) -> int:
            await conn.execute(self.sql.backfill_lock_stmt())
            return (await conn.execute(stmt)).rowcount

        return await self._arun("enqueue messages", work, transaction=True)

    def lag(self) -> dict[str, float]:
        """``pending`` rows and ``oldest_pending_seconds``."""
        row = self._run("read the recall lag", lambda c: c.execute(self.sql.lag_stmt()).one())
        return {"pending": int(row[0]), "oldest_pending_seconds": float(row[1])}

    async def alag(self) -> dict[str, float]:
        """Async :meth:`lag`."""

        async def work(conn: AsyncConnection) -> Any:
            return (await conn.execute(self.sql.lag_stmt())).one()

        row = await self._arun("read the recall lag", work)
        return {"pending": int(row[0]), "oldest_pending_seconds": float(row[1])}

    def _forget_stmts(self, session_id: str) -> list[Any]:
        key = self.store.conversation_key(session_id)
        return self.sql.forget_stmts(key, vectors=bool(self._vectors is not False))

    def forget(self, session_id: str) -> None:
        """Delete a conversation's vectors, lexemes and pending work (after its messages)."""
        if self._vectors is None:
            self.vectors_available()
        stmts = self._forget_stmts(session_id)
        self._run("erase recall data", lambda conn: [conn.execute(s) for s in stmts])

    async def aforget(self, session_id: str) -> None:
        """Async :meth:`forget`."""
        if self._vectors is None:
            await self.avectors_available()
        stmts = self._forget_stmts(session_id)

        async def work(conn: AsyncConnection) -> None:
            for stmt in stmts:
                await conn.execute(stmt)

        await self._arun("erase recall data", work)

    def sweep(self) -> int:
        """Delete index entries whose message is gone (tables without a cascading key)."""
        stmts = self.sql.sweep_stmts(vectors=self.vectors_available())
        return self._run(
            "sweep recall data", lambda conn: sum(conn.execute(s).rowcount for s in stmts)
        )


class RecallIndexer:
    """A background thread running :meth:`MessageRecall.index_pending` until stopped.

    It indexes while the queue has rows and otherwise waits ``interval`` seconds;
    ``backfill_interval`` (seconds, ``None``: never) also re-derives pending rows from the
    table, for tables without the enqueue trigger, and sweeps orphan entries. Errors (Postgres
    down, the embedder failing) are logged and retried after ``interval``.

    Example::

        indexer = RecallIndexer(memory.recall_index).start()
        ...
        indexer.stop()
    """

    def __init__(
        self,
        recall: MessageRecall,
        *,
        interval: float = 1.0,
        backfill_interval: float | None = None,
    ) -> None:
        self.recall = recall
        self.interval = interval
        self.backfill_interval = backfill_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.indexed = 0
        self.errors = 0

    def start(self) -> RecallIndexer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="lc-hybrid-memory-indexer", daemon=True
            )
            self._thread.start()
        return self

    def run_once(self) -> int:
        """One pass: index everything pending; how many messages were indexed."""
        return self.recall.index_pending()

    def _loop(self) -> None:
        next_backfill = time.monotonic() if self.backfill_interval is not None else None
        while not self._stop.is_set():
            try:
                if next_backfill is not None and time.monotonic() >= next_backfill:
                    self.recall.backfill()
                    self.recall.sweep()
                    next_backfill = time.monotonic() + (self.backfill_interval or 0)
                self.indexed += self.run_once()
            except Exception:  # keep indexing after a failed pass; the batch stays queued
                self.errors += 1
                logger.warning("recall indexing pass failed; retrying", exc_info=True)
            self._stop.wait(self.interval)

    def stop(self, timeout: float | None = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> RecallIndexer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
