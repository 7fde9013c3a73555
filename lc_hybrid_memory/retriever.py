"""A LangChain retriever over one conversation's older messages (semantic recall).

Example:
    .. code-block:: python

        retriever = memory.retriever("conversation-1", k=4, exclude_recent=50)
        docs = retriever.invoke("which city does my sister live in?")
        docs[0].page_content, docs[0].metadata["score"]
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from . import codec
from .recall import MessageRecall, RecalledMessage

__all__ = ["ConversationRetriever"]


def _document(hit: RecalledMessage, session_id: str) -> Document:
    return Document(
        page_content=codec.plain_text(hit.message),
        metadata={
            "session_id": session_id,
            "row_id": hit.id,
            "message_id": hit.message.id or hit.message_uid,
            "role": hit.role,
            "created_at": hit.created_at.isoformat() if hit.created_at is not None else None,
            "score": hit.score,
        },
    )


class ConversationRetriever(BaseRetriever):
    """The ``k`` messages of one conversation best matching the query, best first, as
    ``Document`` objects (content: the message text; metadata: ``row_id``, ``message_id``,
    ``role``, ``created_at``, ``score``, ``session_id``). ``k`` and ``exclude_recent`` may also be
    given per call: ``retriever.invoke(query, k=3)``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    recall: MessageRecall
    session_id: str
    k: int = Field(default=4, ge=1)
    exclude_recent: int = Field(default=0, ge=0)

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        exclude_recent: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        hits = self.recall.recall(
            self.session_id,
            query,
            k=self.k if k is None else k,
            exclude_recent=self.exclude_recent if exclude_recent is None else exclude_recent,
        )
        return [_document(hit, self.session_id) for hit in hits]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        exclude_recent: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        hits = await self.recall.arecall(
            self.session_id,
            query,
            k=self.k if k is None else k,
            exclude_recent=self.exclude_recent if exclude_recent is None else exclude_recent,
        )
        return [_document(hit, self.session_id) for hit in hits]
