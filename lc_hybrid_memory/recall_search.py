"""Recall: one search statement per query (the conversation's exact vector ranks and its
full-text ranks), fused into the best messages.

The lexical side searches only the query's specific words: those found in at most
``common_share`` (0.1 %) of the table's messages according to Postgres's own statistics of the
``tsvector`` column (re-read every few minutes). A word shared by many messages ("my", "is",
"from", a frequent name) carries no evidence the vector side lacks and only boosts the wrong
messages; a specific word (an order number, a rare name) does, and then the lexical rank counts
as much as the vector rank.

:class:`SearchMethods` is a part of :class:`~lc_hybrid_memory.recall.MessageRecall`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from .recall_embedders import unit_vector
from .recall_fusion import RankFusion, RecalledMessage, with_neighbours
from .recall_search_sql import Candidate, SearchStatements

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

    from .recall_statements import RecallStatements
    from .store import MessageStore

__all__ = ["SearchMethods", "Vocabulary"]

T = TypeVar("T")

# How often the statistics of common words are re-read (they change with ANALYZE only), and
# how often while the table has none yet.
_COMMON_REFRESH_SECONDS = 600.0
_UNANALYZED_SECONDS = 30.0
# A word in this many messages or fewer is specific whatever the share (a small table).
COMMON_MIN_MESSAGES = 5


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """The table's common words as last read from its statistics."""

    read_at: float = float("-inf")
    analyzed: bool = False
    common: list[str] = field(default_factory=list)


class SearchMethods:
    """``recall`` and ``arecall`` of a :class:`~lc_hybrid_memory.recall.MessageRecall`."""

    if TYPE_CHECKING:
        store: MessageStore
        sql: RecallStatements
        search_sql: SearchStatements
        fusion: RankFusion
        embeddings: Embeddings | None
        model_name: str | None
        candidates: int
        common_share: float
        stopwords: tuple[str, ...]
        _vocabulary: Vocabulary

        def _run(
            self, what: str, work: Callable[[Connection], T], *, transaction: bool = False
        ) -> T: ...

        async def _arun(self, what: str, work: Any, *, transaction: bool = False) -> Any: ...

        def vectors_available(self) -> bool: ...

        async def avectors_available(self) -> bool: ...

    def _vocabulary_due(self) -> bool:
        age = time.monotonic() - self._vocabulary.read_at
        return age > (_COMMON_REFRESH_SECONDS if self._vocabulary.analyzed else _UNANALYZED_SECONDS)

    def _read_vocabulary(self, row: Any) -> list[str]:
        self._vocabulary = Vocabulary(time.monotonic(), bool(row[0]), list(row[1]))
        return self._vocabulary.common

    def _common_lexemes(self) -> list[str]:
        if not self._vocabulary_due():
            return self._vocabulary.common
        stmt = self.sql.common_lexemes_stmt(self.common_share, COMMON_MIN_MESSAGES)
        return self._read_vocabulary(
            self._run("read lexeme statistics", lambda c: c.execute(stmt).one())
        )

    async def _acommon_lexemes(self) -> list[str]:
        if not self._vocabulary_due():
            return self._vocabulary.common
        stmt = self.sql.common_lexemes_stmt(self.common_share, COMMON_MIN_MESSAGES)

        async def work(conn: AsyncConnection) -> Any:
            return (await conn.execute(stmt)).one()

        return self._read_vocabulary(await self._arun("read lexeme statistics", work))

    def _search(
        self,
        session_id: str,
        query: str,
        embedding: list[float] | None,
        exclude_recent: int,
        common: list[str],
    ) -> tuple[Any, dict[str, Any]]:
        stmt = self.search_sql.statement(vectors=embedding is not None)
        return stmt, self.search_sql.params(
            self.store.conversation_key(session_id),
            query=query,
            common=common,
            stopwords=self.stopwords,
            embedding=embedding,
            model=self.model_name,
            candidates=self.candidates,
            exclude_recent=exclude_recent,
        )

    def _neighbours(
        self, session_id: str, hits: list[RecalledMessage], neighbours: int, exclude_recent: int
    ) -> tuple[Any, dict[str, Any]]:
        return self.search_sql.neighbours_stmt(), {
            "conversation_key": self.store.conversation_key(session_id),
            "hit_ids": [hit.id for hit in hits],
            "neighbours": neighbours,
            "exclude_recent": exclude_recent,
        }

    @staticmethod
    def _check(query: str, k: int, exclude_recent: int, neighbours: int = 0) -> None:
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
        if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 0:
            raise ValueError(f"neighbours must be a non-negative integer, got {neighbours!r}")

    def recall(
        self,
        session_id: str,
        query: str,
        *,
        k: int = 5,
        exclude_recent: int = 0,
        neighbours: int = 0,
    ) -> list[RecalledMessage]:
        """The ``k`` messages of the conversation best matching ``query``, best first, leaving
        out its ``exclude_recent`` newest messages; with ``neighbours``, each hit comes with
        that many messages before and after it (the turn around it), in their order."""
        self._check(query, k, exclude_recent, neighbours)
        if not query.strip():
            return []
        embedding = None
        if self.vectors_available():
            assert self.embeddings is not None
            embedding = unit_vector(self.embeddings.embed_query(query))
        stmt, params = self._search(
            session_id, query, embedding, exclude_recent, self._common_lexemes()
        )
        rows = self._run(
            "recall messages", lambda conn: self.search_sql.candidates(conn.execute(stmt, params))
        )
        hits = self.fusion.fuse(rows, k)
        if not neighbours or not hits:
            return hits
        stmt, params = self._neighbours(session_id, hits, neighbours, exclude_recent)
        around = self._run("recall messages", lambda conn: list(conn.execute(stmt, params)))
        return with_neighbours(hits, around)

    async def arecall(
        self,
        session_id: str,
        query: str,
        *,
        k: int = 5,
        exclude_recent: int = 0,
        neighbours: int = 0,
    ) -> list[RecalledMessage]:
        """Async :meth:`recall`."""
        self._check(query, k, exclude_recent, neighbours)
        if not query.strip():
            return []
        embedding = None
        if await self.avectors_available():
            assert self.embeddings is not None
            embedding = unit_vector(await self.embeddings.aembed_query(query))
        common = await self._acommon_lexemes()
        stmt, params = self._search(session_id, query, embedding, exclude_recent, common)

        async def work(conn: AsyncConnection) -> list[Candidate]:
            return self.search_sql.candidates(await conn.execute(stmt, params))

        hits = self.fusion.fuse(await self._arun("recall messages", work), k)
        if not neighbours or not hits:
            return hits
        stmt, params = self._neighbours(session_id, hits, neighbours, exclude_recent)

        async def around(conn: AsyncConnection) -> list[Any]:
            return list(await conn.execute(stmt, params))

        return with_neighbours(hits, await self._arun("recall messages", around))
