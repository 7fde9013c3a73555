"""The SQL beside the chat history: transcripts with their metadata, a turn's reply and its
delivery mark, conversation summaries, and the stale marks of cached lists. SQL only.

:class:`OperatorQueries` is a part of :class:`~lc_hybrid_memory.store.MessageStore`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .records import ConversationSummary, StoredRow

if TYPE_CHECKING:
    from .statements import MessageStatements

__all__ = ["OperatorQueries"]

T = TypeVar("T")


def _keys(result: Any) -> list[str]:
    """Conversation ids as canonical session ids (``str`` of the column's Python value)."""
    return [str(key) for (key,) in result]


class OperatorQueries:
    """Reads for operators and the app's delivery bookkeeping, on the store's connections."""

    sql: MessageStatements

    if TYPE_CHECKING:

        def conversation_key(self, session_id: str) -> Any: ...

        def _params(self, session_id: str, **extra: Any) -> dict[str, Any]: ...

        def _fetch(
            self, what: str, stmt: Any, params: dict[str, Any], shape: Callable[[Any], T]
        ) -> T: ...

        def _afetch(
            self, what: str, stmt: Any, params: dict[str, Any], shape: Callable[[Any], T]
        ) -> Awaitable[T]: ...

    def _transcript_args(
        self, session_id: str, limit: int | None, before_id: int | None
    ) -> tuple[Any, dict[str, Any]]:
        params = self._params(session_id, limit=limit, before_id=before_id)
        return self.sql.transcript(before_id, limit), params

    def transcript(
        self, session_id: str, *, limit: int | None = None, before_id: int | None = None
    ) -> list[StoredRow]:
        """The conversation's rows with their ids and metadata, oldest first (the last ``limit``
        before row ``before_id``, or all)."""
        stmt, params = self._transcript_args(session_id, limit, before_id)
        return self._fetch("read a transcript", stmt, params, self.sql.transcript_rows)

    async def atranscript(
        self, session_id: str, *, limit: int | None = None, before_id: int | None = None
    ) -> list[StoredRow]:
        """Async :meth:`transcript`."""
        stmt, params = self._transcript_args(session_id, limit, before_id)
        return await self._afetch("read a transcript", stmt, params, self.sql.transcript_rows)

    @staticmethod
    def _reply(result: Any) -> tuple[str, str | None] | None:
        row = result.one_or_none()
        return None if row is None else (row[0], row[1])

    def _turn_params(self, session_id: str, turn_id: str) -> dict[str, Any]:
        escaped = turn_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return self._params(session_id, turn_prefix=f"{escaped}:")

    def turn_reply(self, session_id: str, turn_id: str) -> tuple[str, str | None] | None:
        """``(message uid, provider sid)`` of the last message stored with id ``<turn_id>:<n>``."""
        params = self._turn_params(session_id, turn_id)
        return self._fetch("read a turn's reply", self.sql.turn_reply(), params, self._reply)

    async def aturn_reply(self, session_id: str, turn_id: str) -> tuple[str, str | None] | None:
        """Async :meth:`turn_reply`."""
        params = self._turn_params(session_id, turn_id)
        return await self._afetch("read a turn's reply", self.sql.turn_reply(), params, self._reply)

    def summaries(self, session_ids: Sequence[str]) -> dict[str, ConversationSummary]:
        """Message count and last message time of each conversation that has messages."""
        if not session_ids:
            return {}
        by_key = {self.conversation_key(sid): sid for sid in session_ids}

        def shape(result: Any) -> dict[str, ConversationSummary]:
            return {by_key[key]: ConversationSummary(int(n), last) for key, n, last in result}

        params = {"conversation_ids": list(by_key)}
        return self._fetch("summarise conversations", self.sql.summaries(), params, shape)

    def set_provider_sid(self, session_id: str, message_uid: str, provider_sid: str) -> bool:
        """Record the provider's id of a stored message (e.g. the Twilio SID of a sent reply);
        whether the message exists."""
        params = self._params(session_id, uid=message_uid, new_provider_sid=provider_sid)
        return self._fetch(
            "record a provider sid", self.sql.provider_sid(), params, lambda r: r.rowcount == 1
        )

    async def aset_provider_sid(self, session_id: str, message_uid: str, provider_sid: str) -> bool:
        """Async :meth:`set_provider_sid`."""
        params = self._params(session_id, uid=message_uid, new_provider_sid=provider_sid)
        return await self._afetch(
            "record a provider sid", self.sql.provider_sid(), params, lambda r: r.rowcount == 1
        )

    # -- stale cache marks (written while Redis was unreachable) -----------------------------

    def mark_stale(self, session_id: str) -> None:
        """Remember in Postgres that the conversation's cached list may be stale."""
        params = {"mark_key": self.conversation_key(session_id)}
        self._fetch("mark a cached list stale", self.sql.mark_stale, params, lambda r: None)

    async def amark_stale(self, session_id: str) -> None:
        """Async :meth:`mark_stale`."""
        params = {"mark_key": self.conversation_key(session_id)}
        await self._afetch("mark a cached list stale", self.sql.mark_stale, params, lambda r: None)

    def take_stale(self, limit: int = 1000) -> list[str]:
        """Remove and return up to ``limit`` marked conversations, oldest marks first."""
        return self._fetch(
            "read stale marks",
            self.sql.take_stale,
            {"limit": limit},
            lambda r: [str(k) for (k,) in r],
        )

    async def atake_stale(self, limit: int = 1000) -> list[str]:
        """Async :meth:`take_stale`."""
        return await self._afetch(
            "read stale marks",
            self.sql.take_stale,
            {"limit": limit},
            lambda r: [str(k) for (k,) in r],
        )
