"""What operators and the app's delivery bookkeeping read of a memory: transcripts with their
metadata, the cache's state, conversation summaries, a turn's reply and its delivery mark.

:class:`OperatorViews` is a part of :class:`~lc_hybrid_memory.memory.HybridMemory`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage

from .cache import CacheState
from .records import ConversationSummary, StoredRow

if TYPE_CHECKING:
    from .guarded_cache import GuardedCache
    from .policy import MemoryPolicy
    from .store import MessageStore

__all__ = ["OperatorViews", "TranscriptEntry", "TurnReply"]


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One stored message with its row id and metadata, as an operator sees it."""

    row_id: int
    message_id: str | None
    message: BaseMessage | None  # None: the stored payload could not be decoded
    created_at: datetime | None
    provider_sid: str | None


@dataclass(frozen=True, slots=True)
class TurnReply:
    """The last stored message of a turn (ids ``<turn id>:<n>``) and its delivery mark."""

    message_id: str
    provider_sid: str | None

    @property
    def delivered(self) -> bool:
        return self.provider_sid is not None


class OperatorViews:
    """Reads beside the chat history (Postgres, and the cache for its state)."""

    store: MessageStore
    _guard: GuardedCache
    _policy: MemoryPolicy

    if TYPE_CHECKING:

        def session_id(self, session_id: Any) -> str: ...

    def transcript(
        self, session_id: str, *, limit: int | None = None, before_id: int | None = None
    ) -> list[TranscriptEntry]:
        """The stored messages with row ids, message ids, times and delivery marks, oldest first
        (Postgres; ``limit``/``before_id`` page backwards)."""
        sid = self.session_id(session_id)
        return self._entries(sid, self.store.transcript(sid, limit=limit, before_id=before_id))

    async def atranscript(
        self, session_id: str, *, limit: int | None = None, before_id: int | None = None
    ) -> list[TranscriptEntry]:
        """Async :meth:`transcript`."""
        sid = self.session_id(session_id)
        rows = await self.store.atranscript(sid, limit=limit, before_id=before_id)
        return self._entries(sid, rows)

    def _entries(self, sid: str, rows: list[StoredRow]) -> list[TranscriptEntry]:
        entries = []
        for row in rows:
            decoded = self._policy.decode([(row.id, row.payload)], sid)
            message = decoded[0] if decoded else None
            entries.append(
                TranscriptEntry(row.id, row.message_uid, message, row.created_at, row.provider_sid)
            )
        return entries

    def cache_state(self, session_id: str) -> CacheState | None:
        """The row ids the Redis list holds and its TTL; ``None`` when not cached or Redis is
        unreachable."""
        sid = self.session_id(session_id)
        state = self._guard.call(sid, "state", (sid,), write=False)
        return state if isinstance(state, CacheState) else None

    def count(self, session_id: str) -> int:
        """How many messages the conversation holds (Postgres)."""
        return self.store.count(self.session_id(session_id))

    def summaries(self, session_ids: Sequence[str]) -> dict[str, ConversationSummary]:
        """Message count and last message time of each of these conversations that has messages
        (one query), keyed by the canonical session id."""
        return self.store.summaries([self.session_id(sid) for sid in session_ids])

    def turn_reply(self, session_id: str, turn_id: str) -> TurnReply | None:
        """The last message stored for a turn whose messages have ids ``<turn_id>:<n>``."""
        found = self.store.turn_reply(self.session_id(session_id), turn_id)
        return None if found is None else TurnReply(*found)

    async def aturn_reply(self, session_id: str, turn_id: str) -> TurnReply | None:
        """Async :meth:`turn_reply`."""
        found = await self.store.aturn_reply(self.session_id(session_id), turn_id)
        return None if found is None else TurnReply(*found)

    def mark_delivered(self, session_id: str, message_id: str, provider_sid: str) -> bool:
        """Record the provider's id of a sent message (e.g. a Twilio SID); whether it exists."""
        sid = self.session_id(session_id)
        return self.store.set_provider_sid(sid, message_id, provider_sid)

    async def amark_delivered(self, session_id: str, message_id: str, provider_sid: str) -> bool:
        """Async :meth:`mark_delivered`."""
        sid = self.session_id(session_id)
        return await self.store.aset_provider_sid(sid, message_id, provider_sid)
