"""L3 policy: index the conversation's messages off the write path, and recall them.

``add_messages`` stays one INSERT (the trigger of :mod:`.recall_schema` enqueues the new rows in
that same statement) plus one Redis call. Indexing (:mod:`.recall_indexing`) embeds the queue in
batches off the write path; a recall (:mod:`.recall_search`) runs one statement (the
conversation's exact vector ranks and full-text ranks) and fuses the two rankings
(:mod:`.recall_fusion`). This module holds the configuration, the connections and the schema.

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

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from langchain_core.embeddings import Embeddings
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .errors import HybridMemoryError, StoreUnavailableError, VectorsUnavailableError
from .postgres import store_error
from .recall_embedders import embedder_name, resolve_embeddings
from .recall_fusion import RankFusion, RecalledMessage
from .recall_indexing import IndexingMethods, RecallIndexer
from .recall_schema import RecallTables
from .recall_search import SearchMethods, Vocabulary
from .recall_search_sql import SearchStatements
from .recall_statements import RecallStatements
from .store import MessageStore

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

# A text search dictionary is named in SQL: a plain (optionally schema-qualified) name only.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
# pg_advisory_lock key serialising concurrent recall create_schema() calls.
_SCHEMA_LOCK_KEY = 0x6C6368_726563  # "lchrec"


def _raise_store_error(exc: BaseException, what: str) -> None:
    error = store_error(exc, what)
    if error is None:
        raise exc
    if isinstance(error, StoreUnavailableError):
        raise error from exc
    raise error from None


class MessageRecall(IndexingMethods, SearchMethods):
    """Hybrid (full-text + vector) recall over one mapped messages table.

    Args:
        store: the memory's :class:`MessageStore` (its engines and table mapping are used).
        embeddings: any LangChain ``Embeddings``; ``None`` for lexical recall only.
        model_name: the name vectors are stored under (default: :func:`embedder_name`).
        text_search_config: Postgres text search configuration (``simple``: mixed languages).
        candidates: how many of each side's best are fused.
        rrf_k: the reciprocal-rank-fusion constant.
        vector_weight, lexical_weight: weights of the two rankings in the fusion.
        common_share: the lexical side searches only specific words: query words found in
            more than this share of the table's messages (Postgres's statistics of the
            lexemes) are left out of it, and so are the stop words of the ``stopwords``
            text search dictionaries (snowball's English and Portuguese by default).
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
        lexical_weight: float = 1.0,
        common_share: float = 0.001,
        stopwords: Sequence[str] = ("english_stem", "portuguese_stem"),
        roles: Sequence[str] = ("user", "assistant"),
        batch_size: int = 64,
        require_vectors: bool = False,
        trigger: bool = True,
    ) -> None:
        self.store = store
        self.tables = RecallTables(store, text_search_config=text_search_config)
        self.sql = RecallStatements(self.tables)
        self.search_sql = SearchStatements(self.tables)
        self.embeddings = embeddings
        self.model_name = model_name or (
            embedder_name(embeddings) if embeddings is not None else None
        )
        self.candidates = candidates
        self.fusion = RankFusion(
            rrf_k=rrf_k, vector_weight=vector_weight, lexical_weight=lexical_weight
        )
        self.common_share = common_share
        for name in stopwords:
            if not _NAME.fullmatch(name):
                raise ValueError(f"not a text search dictionary name: {name!r}")
        self.stopwords = tuple(stopwords)
        self._vocabulary = Vocabulary()  # the table's common words, read when due
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
            return self.tables.create_schema(
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
                "read the recall state", lambda c: c.execute(self.tables.state_stmt()).one()
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
                return (await conn.execute(self.tables.state_stmt())).one()

            self._learn_state(await self._arun("read the recall state", work))
        elif not self._vectors:
            self._no_vectors()
        return bool(self._vectors)
