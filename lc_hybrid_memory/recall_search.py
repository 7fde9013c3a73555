"""Recall: one search statement per query (the conversation's exact vector ranks and its
full-text ranks), fused into the best messages.

The lexical query leaves out the words found in a large share of the messages (Postgres's own
statistics of the ``tsvector`` column, re-read every few minutes): they match everything and
drown the rare words.

:class:`SearchMethods` is a part of :class:`~lc_hybrid_memory.recall.MessageRecall`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from .recall_embedders import unit_vector
from .recall_fusion import RankFusion, RecalledMessage
from .recall_search_sql import Candidate, SearchStatements

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

    from .recall_statements import RecallStatements
    from .store import MessageStore

__all__ = ["SearchMethods"]

T = TypeVar("T")

# How often the statistics of common words are re-read (they change with ANALYZE only).
_COMMON_REFRESH_SECONDS = 600.0


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
        _common: tuple[float, list[str]]

        def _run(
            self, what: str, work: Callable[[Connection], T], *, transaction: bool = False
        ) -> T: ...

        async def _arun(self, what: str, work: Any, *, transaction: bool = False) -> Any: ...

        def vectors_available(self) -> bool: ...

        async def avectors_available(self) -> bool: ...

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
        return self.search_sql.search_stmt(
            self.store.conversation_key(session_id),
            query=query,
            common=common,
            embedding=embedding,
            model=self.model_name,
            candidates=self.candidates,
            exclude_recent=exclude_recent,
        )

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
            embedding = unit_vector(self.embeddings.embed_query(query))
        stmt = self._search(session_id, query, embedding, exclude_recent, self._common_lexemes())
        rows = self._run(
            "recall messages", lambda conn: self.search_sql.candidates(conn.execute(stmt))
        )
        return self.fusion.fuse(rows, k)

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
            embedding = unit_vector(await self.embeddings.aembed_query(query))
        common = await self._acommon_lexemes()
        stmt = self._search(session_id, query, embedding, exclude_recent, common)

        async def work(conn: AsyncConnection) -> list[Candidate]:
            return self.search_sql.candidates(await conn.execute(stmt))

        return self.fusion.fuse(await self._arun("recall messages", work), k)
