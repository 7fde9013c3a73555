"""L3 policy: index the conversation's messages off the write path, and recall them.

``add_messages`` stays one INSERT (the trigger of :mod:`.vector_store` enqueues the new rows in
that same statement) plus one Redis call. :meth:`MessageRecall.index_pending` embeds the queue
in batches, each batch one transaction (claim with ``SKIP LOCKED`` → embed → write vectors and
lexemes → dequeue), so an indexer that dies mid-batch loses nothing, re-embeds only that batch,
and several indexers never embed the same row. :meth:`MessageRecall.recall` runs one statement
(the conversation's exact vector ranks and full-text ranks) and fuses the two rankings.

Redis is not involved: recall works while Redis is down. On a server without pgvector, recall
is lexical only (with a warning), or :class:`VectorsUnavailableError` with
``require_vectors=True``.

Example:
    .. code-block:: python

        from lc_hybrid_memory import HybridMemory

        memory = HybridMemory.from_urls(
            redis_url="redis://localhost:6379/0",
            database_url="postgresql://localhost/app",
            embeddings="default",
        )
        memory.create_schema()
        memory.index_pending()       # or memory.start_indexer() / the app's worker
        memory.recall("conversation-1", "which city does my sibling live in?", exclude_recent=50)
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from langchain_core.embeddings import Embeddings
from langchain_core.messages import BaseMessage
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import codec
from .errors import HybridMemoryError, StoreUnavailableError
from .postgres import store_error
from .store import MessageStore
from .vector_store import Candidate, PendingRow, RecallStore, vector_literal

__all__ = [
    "MessageRecall",
    "RecallIndexer",
    "RecalledMessage",
    "VectorsUnavailableError",
    "embedder_name",
    "resolve_embeddings",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# pg_advisory_lock key serialising concurrent recall create_schema() calls.
_SCHEMA_LOCK_KEY = 0x6C6368_726563  # "lchrec"
# How often the statistics of common words are re-read (they change with ANALYZE only).
_COMMON_REFRESH_SECONDS = 600.0


class VectorsUnavailableError(HybridMemoryError, RuntimeError):
    """Semantic recall was required but the server has no pgvector (or no vectors table)."""


@dataclass(frozen=True, slots=True)
class RecalledMessage:
    """A recalled message with where it is stored and how well it matched."""

    message: BaseMessage
    id: int
    message_uid: str | None
    role: str
    created_at: datetime | None
    score: float
    vector_rank: int | None
    lexical_rank: int | None


def resolve_embeddings(embeddings: Embeddings | str | None) -> Embeddings | None:
    """``"default"`` → the offline MiniLM embedder; an ``Embeddings`` as is; ``None`` → off."""
    if embeddings is None or isinstance(embeddings, Embeddings):
        return embeddings
    if embeddings == "default":
        from .embeddings import default_embeddings

        return default_embeddings()
    raise ValueError(
        f'embeddings must be "default", an Embeddings object or None, not {embeddings!r}'
    )


def embedder_name(embeddings: Embeddings) -> str:
    """The name vectors are stored under: the class and its model (a new one re-embeds)."""
    own = getattr(embeddings, "model_name", None)
    if isinstance(own, str) and own and type(embeddings).__module__.startswith("lc_hybrid_memory"):
        return own
    model = next(
        (
            value
            for attr in ("model", "model_name", "model_id", "deployment")
            if isinstance(value := getattr(embeddings, attr, None), str) and value
        ),
        None,
    )
    kind = type(embeddings).__name__
    size = getattr(embeddings, "size", None)  # langchain-core's fake embeddings
    if model is None and isinstance(size, int):
        model = f"{size}d"
    return f"{kind}:{model}" if model else kind


def _unit(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to length 1, so that inner product ranks like cosine similarity."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)


def _raise_store_error(exc: BaseException, what: str) -> None:
    error = store_error(exc, what)
    if error is None:
        raise exc
    if isinstance(error, StoreUnavailableError):
        raise error from exc
    raise error from None


class MessageRecall:
    """Hybrid (full-text + vector) recall over one mapped messages table.

    Args:
        store: the memory's :class:`MessageStore` (its engines and table mapping are used).
        embeddings: any LangChain ``Embeddings``; ``None`` for lexical recall only.
        model_name: the name vectors are stored under (default: :func:`embedder_name`).
        text_search_config: Postgres text search configuration (``simple``: mixed languages).
        candidates: how many of each side's best are fused.
        rrf_k: the reciprocal-rank-fusion constant.
        vector_weight, lexical_weight: weights of the two rankings in the fusion.
        common_share: query words found in more than this share of the table's messages
            (Postgres's statistics of the lexemes) are left out of the lexical side.
        roles: roles whose messages are indexed (tool results and system prompts are not).
        batch_size: messages embedded per transaction.
        require_vectors: raise :class:`VectorsUnavailableError` instead of recalling lexically
            when the server lacks pgvector.
        trigger: create the enqueue trigger on the messages table (without it, new rows are
            found by :meth:`backfill`, e.g. the indexer's periodic sweep).
    """

    def __init__(
        self,
        store: MessageStore,
        embeddings: Embeddings | None = None,
        *,
        model_name: str | None = None,
        text_search_config: str = "simple",
        candidates: int = 50,
        rrf_k: int = 60,
        vector_weight: float = 1.0,
        lexical_weight: float = 0.2,
        common_share: float = 0.02,
        roles: Sequence[str] = ("user", "assistant"),
        batch_size: int = 64,
        require_vectors: bool = False,
        trigger: bool = True,
    ) -> None:
        self.store = store
        self.sql = RecallStore(store, text_search_config=text_search_config)
        self.embeddings = embeddings
        self.model_name = model_name or (
            embedder_name(embeddings) if embeddings is not None else None
        )
        self.candidates = candidates
        self.rrf_k = rrf_k
        self.vector_weight = vector_weight
        self.lexical_weight = lexical_weight
        self.common_share = common_share
        self._common: tuple[float, list[str]] = (float("-inf"), [])  # (read at, lexemes)
        self.roles = frozenset(roles)
        self.batch_size = batch_size
        self.require_vectors = require_vectors
        self.trigger = trigger
        self._vectors: bool | None = None  # whether the vectors table exists (learnt once)
        self._warned = False

    # -- running statements ------------------------------------------------------------------

    def _engine(self) -> Engine:
        if self.store.engine is None:
            raise RuntimeError("this memory was built without a sync engine")
        return self.store.engine

    async def _aengine(self) -> AsyncEngine:
        return await self.store.aengine()

    def _run(self, what: str, work: Callable[[Connection], T], *, transaction: bool = False) -> T:
        """``work`` on a connection: autocommit, or one READ COMMITTED transaction."""
        level = "READ COMMITTED" if transaction else "AUTOCOMMIT"
        try:
            with self._engine().connect() as conn:
                conn = conn.execution_options(isolation_level=level)
                if not transaction:
                    return work(conn)
                with conn.begin():
                    return work(conn)
        except (DBAPIError, OSError) as exc:
            _raise_store_error(exc, what)
            raise

    async def _arun(self, what: str, work: Any, *, transaction: bool = False) -> Any:
        level = "READ COMMITTED" if transaction else "AUTOCOMMIT"
        try:
            async with (await self._aengine()).connect() as conn:
                conn = await conn.execution_options(isolation_level=level)
                if not transaction:
                    return await work(conn)
                async with conn.begin():
                    return await work(conn)
        except (DBAPIError, OSError) as exc:
            _raise_store_error(exc, what)
            raise

    # -- schema and state --------------------------------------------------------------------

    def _schema_work(self, conn: Connection) -> bool:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
        try:
            return self.sql.create_schema(
                conn, vectors=self.embeddings is not None, trigger=self.trigger
            )
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK_KEY})

    def create_schema(self) -> None:
        """Create pgvector (if the server has it), the recall tables and the enqueue trigger."""
        self._set_vectors(self._run("create the recall schema", self._schema_work))

    async def acreate_schema(self) -> None:
        """Async :meth:`create_schema`."""

        async def work(conn: AsyncConnection) -> bool:
            return await conn.run_sync(self._schema_work)

        self._set_vectors(await self._arun("create the recall schema", work))

    def _set_vectors(self, exists: bool) -> None:
        self._vectors = exists
        if self.embeddings is not None and not exists:
            self._no_vectors()

    def _no_vectors(self) -> None:
        message = (
            "this Postgres has no pgvector (or no recall vectors table): "
            "recall is lexical (full-text) only"
        )
        if self.require_vectors:
            raise VectorsUnavailableError(message + "; install pgvector on the server")
        if not self._warned:
            self._warned = True
            logger.warning(message)

    def _learn_state(self, row: Any) -> bool:
        vectors, lexemes = bool(row[0]), bool(row[1])
        if not lexemes:
            raise HybridMemoryError("the recall tables do not exist: call create_schema() first")
        self._set_vectors(vectors)
        return vectors

    def vectors_available(self) -> bool:
        """Whether semantic search is on (embedder configured and the vectors table exists)."""
        if self.embeddings is None:
            return False
        if self._vectors is None:
            row = self._run(
                "read the recall state", lambda c: c.execute(self.sql.state_stmt()).one()
            )
            self._learn_state(row)
        elif not self._vectors:
            self._no_vectors()
        return bool(self._vectors)

    async def avectors_available(self) -> bool:
        """Async :meth:`vectors_available`."""
        if self.embeddings is None:
            return False
        if self._vectors is None:

            async def work(conn: AsyncConnection) -> Any:
                return (await conn.execute(self.sql.state_stmt())).one()

            self._learn_state(await self._arun("read the recall state", work))
        elif not self._vectors:
            self._no_vectors()
        return bool(self._vectors)

    # -- indexing ----------------------------------------------------------------------------

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
        keys = [(r.conversation_id, r.message_id) for r in rows]
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
                vector = _unit(next(by_text)) if t else None
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
        conn.execute(self.sql.dequeue_stmt(keys))
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
        return indexed

    def backfill(self) -> int:
        """Enqueue every message without an index entry for the current embedder (existing
        tables, a changed embedder, rows written while the trigger was absent); how many."""
        stmt = self.sql.backfill_stmt(self.model_name, vectors=self.vectors_available())
        return self._run("enqueue messages", lambda conn: conn.execute(stmt).rowcount)

    async def abackfill(self) -> int:
        """Async :meth:`backfill`."""
        stmt = self.sql.backfill_stmt(self.model_name, vectors=await self.avectors_available())

        async def work(conn: AsyncConnection) -> int:
            return (await conn.execute(stmt)).rowcount

        return await self._arun("enqueue messages", work)

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

    # -- recall ------------------------------------------------------------------------------

    def _common_due(self) -> bool:
        return time.monotonic() - self._common[0] > _COMMON_REFRESH_SECONDS

    def _common_lexemes(self) -> list[str]:
        if self._common_due():
            stmt = self.sql.common_lexemes_stmt(self.common_share)
            found = self._run("read lexeme statistics", lambda c: c.execute(stmt).scalar_one())
            self._common = (time.monotonic(), list(found))
        return self._common[1]

    async def _acommon_lexemes(self) -> list[str]:
        if self._common_due():
            stmt = self.sql.common_lexemes_stmt(self.common_share)

            async def work(conn: AsyncConnection) -> Any:
                return (await conn.execute(stmt)).scalar_one()

            self._common = (
                time.monotonic(),
                list(await self._arun("read lexeme statistics", work)),
            )
        return self._common[1]

    def _search(
        self,
        session_id: str,
        query: str,
        embedding: list[float] | None,
        exclude_recent: int,
        common: list[str],
    ) -> Any:
        return self.sql.search_stmt(
            self.store.conversation_key(session_id),
            query=query,
            common=common,
            embedding=embedding,
            model=self.model_name,
            candidates=self.candidates,
            exclude_recent=exclude_recent,
        )

    def fuse(self, candidates: list[Candidate], k: int) -> list[RecalledMessage]:
        """Weighted reciprocal-rank fusion; identical texts collapse to the newest occurrence."""
        scored: list[tuple[float, Candidate]] = []
        for cand in candidates:
            score = 0.0
            if cand.vector_rank is not None:
                score += self.vector_weight / (self.rrf_k + cand.vector_rank)
            if cand.lexical_rank is not None:
                score += self.lexical_weight / (self.rrf_k + cand.lexical_rank)
            scored.append((score, cand))
        scored.sort(key=lambda item: (-item[0], -item[1].id))
        best: dict[str, tuple[float, Candidate, BaseMessage]] = {}
        order: list[str] = []
        for score, cand in scored:
            message = self._decode(cand)
            if message is None:
                continue
            body = codec.plain_text(message)
            seen = best.get(body)
            if seen is None:
                best[body] = (score, cand, message)
                order.append(body)
            elif cand.id > seen[1].id:  # same text, newer: keep the better score, newer row
                best[body] = (seen[0], cand, message)
        results = []
        for body in order[:k]:
            score, cand, message = best[body]
            results.append(
                RecalledMessage(
                    message=message,
                    id=cand.id,
                    message_uid=cand.message_uid,
                    role=codec.role_of(message),
                    created_at=cand.created_at,
                    score=score,
                    vector_rank=cand.vector_rank,
                    lexical_rank=cand.lexical_rank,
                )
            )
        return results

    def _decode(self, cand: Candidate) -> BaseMessage | None:
        try:
            if cand.payload is not None:
                return codec.decode(cand.payload)
            return codec.decode(codec.from_role_and_content(cand.role or "", cand.content))
        except codec.DecodeError:
            logger.error("skipping undecodable message %s in recall", cand.id)
            return None

    @staticmethod
    def _check(query: str, k: int, exclude_recent: int) -> None:
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if (
            isinstance(exclude_recent, bool)
            or not isinstance(exclude_recent, int)
            or exclude_recent < 0
        ):
            raise ValueError(
                f"exclude_recent must be a non-negative integer, got {exclude_recent!r}"
            )

    def recall(
        self, session_id: str, query: str, *, k: int = 5, exclude_recent: int = 0
    ) -> list[RecalledMessage]:
        """The ``k`` messages of the conversation best matching ``query``, best first, leaving
        out its ``exclude_recent`` newest messages."""
        self._check(query, k, exclude_recent)
        if not query.strip():
            return []
        embedding = None
        if self.vectors_available():
            assert self.embeddings is not None
            embedding = _unit(self.embeddings.embed_query(query))
        stmt = self._search(session_id, query, embedding, exclude_recent, self._common_lexemes())
        rows = self._run("recall messages", lambda conn: self.sql.candidates(conn.execute(stmt)))
        return self.fuse(rows, k)

    async def arecall(
        self, session_id: str, query: str, *, k: int = 5, exclude_recent: int = 0
    ) -> list[RecalledMessage]:
        """Async :meth:`recall`."""
        self._check(query, k, exclude_recent)
        if not query.strip():
            return []
        embedding = None
        if await self.avectors_available():
            assert self.embeddings is not None
            embedding = _unit(await self.embeddings.aembed_query(query))
        common = await self._acommon_lexemes()
        stmt = self._search(session_id, query, embedding, exclude_recent, common)

        async def work(conn: AsyncConnection) -> list[Candidate]:
            return self.sql.candidates(await conn.execute(stmt))

        return self.fuse(await self._arun("recall messages", work), k)


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
