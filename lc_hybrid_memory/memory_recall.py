"""Semantic recall (L3) as a part of the memory: thin delegation to
:class:`~lc_hybrid_memory.recall.MessageRecall`, which owns the indexing, the search and the
fusion.

:class:`RecallMethods` is a part of :class:`~lc_hybrid_memory.memory.HybridMemory`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage

from .errors import HybridMemoryError, StoreUnavailableError

if TYPE_CHECKING:
    from .recall import MessageRecall, RecallIndexer
    from .retriever import ConversationRetriever
    from .store import MessageStore

__all__ = ["RecallMethods", "build_recall", "recall_lag"]


def build_recall(
    store: MessageStore, embeddings: Any, options: dict[str, Any] | None
) -> MessageRecall | None:
    """The recall index for ``embeddings`` (``None``: recall off)."""
    if embeddings is None:
        if options:
            raise ValueError("recall_options need embeddings")
        return None
    from .recall import MessageRecall, resolve_embeddings

    return MessageRecall(store, resolve_embeddings(embeddings), **(options or {}))


def recall_lag(recall: MessageRecall) -> dict[str, Any]:
    """The indexing lag for :meth:`HybridMemory.stats` (``None`` values when unknown)."""
    try:
        lag = recall.lag()
    except (StoreUnavailableError, HybridMemoryError):
        return {"recall_pending": None, "recall_oldest_pending_seconds": None}
    return {
        "recall_pending": lag["pending"],
        "recall_oldest_pending_seconds": lag["oldest_pending_seconds"],
    }


class RecallMethods:
    """``recall``, indexing and the retriever of a memory built with ``embeddings=``."""

    recall_index: MessageRecall | None

    if TYPE_CHECKING:

        def session_id(self, session_id: Any) -> str: ...

    def _recall(self) -> MessageRecall:
        if self.recall_index is None:
            raise HybridMemoryError(
                'recall is off: build the memory with embeddings="default" (or an Embeddings)'
            )
        return self.recall_index

    def recall(
        self,
        session_id: str,
        query: str,
        *,
        k: int = 5,
        exclude_recent: int = 0,
        neighbours: int = 0,
    ) -> list[BaseMessage]:
        """The ``k`` older messages of the conversation best matching ``query`` (hybrid
        full-text + semantic), best first; ``exclude_recent`` leaves out the newest ones;
        ``neighbours`` adds that many messages before and after each hit (the turn around
        it), in the conversation's order."""
        sid = self.session_id(session_id)
        hits = self._recall().recall(
            sid, query, k=k, exclude_recent=exclude_recent, neighbours=neighbours
        )
        return [hit.message for hit in hits]

    async def arecall(
        self,
        session_id: str,
        query: str,
        *,
        k: int = 5,
        exclude_recent: int = 0,
        neighbours: int = 0,
    ) -> list[BaseMessage]:
        """Async :meth:`recall`."""
        sid = self.session_id(session_id)
        hits = await self._recall().arecall(
            sid, query, k=k, exclude_recent=exclude_recent, neighbours=neighbours
        )
        return [hit.message for hit in hits]

    def index_pending(self, *, limit: int | None = None) -> int:
        """Embed and index the messages not yet indexed; how many were indexed."""
        return self._recall().index_pending(limit=limit)

    async def aindex_pending(self, *, limit: int | None = None) -> int:
        """Async :meth:`index_pending`."""
        return await self._recall().aindex_pending(limit=limit)

    def start_indexer(self, **options: Any) -> RecallIndexer:
        """Start a background :class:`~lc_hybrid_memory.recall.RecallIndexer` (stop it with
        ``.stop()``)."""
        from .recall import RecallIndexer

        return RecallIndexer(self._recall(), **options).start()

    def retriever(self, session_id: str, **kwargs: Any) -> ConversationRetriever:
        """A LangChain retriever over the conversation's messages (``k``, ``exclude_recent``)."""
        from .retriever import ConversationRetriever

        sid = self.session_id(session_id)
        return ConversationRetriever(recall=self._recall(), session_id=sid, **kwargs)
