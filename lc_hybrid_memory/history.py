"""``HybridChatMessageHistory``: one conversation's history, the LangChain face of the memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage, trim_messages
from langchain_core.messages.utils import count_tokens_approximately

if TYPE_CHECKING:
    from .memory import HybridMemory

__all__ = ["DEFAULT_WINDOW", "MAX_WINDOW", "HybridChatMessageHistory", "validate_window"]

DEFAULT_WINDOW = 50
MAX_WINDOW = 1_000_000_000


def validate_window(window: Any) -> int | None:
    """``window`` if it is ``None`` or an integer from 1 to :data:`MAX_WINDOW`, else ValueError."""
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW
    ):
        raise ValueError(
            f"window must be None or an integer from 1 to {MAX_WINDOW}, got {window!r}"
        )
    return window


class HybridChatMessageHistory(BaseChatMessageHistory):
    """Chat history of one conversation: Redis L1 in front of the Postgres messages table.

    ``messages`` returns the last ``window`` messages (default 50, the cache's size) through the
    cache; ``window=None`` returns the whole conversation exactly. With ``max_tokens`` the window
    is further trimmed with langchain-core's ``trim_messages`` (newest kept, starting on a human
    message, system messages kept). Get one from :meth:`HybridMemory.history`.

    Example:
        .. code-block:: python

            from langchain_core.messages import AIMessage, HumanMessage
            from lc_hybrid_memory import HybridMemory

            with HybridMemory.from_urls(
                redis_url="redis://localhost:6379/0",
                database_url="postgresql://localhost/app",
            ) as memory:
                memory.create_schema()
                history = memory.history("conversation-1")
                history.add_messages([HumanMessage("hi"), AIMessage("hello!")])
                print(history.messages)
    """

    def __init__(
        self,
        session_id: str,
        memory: HybridMemory,
        *,
        window: int | None = DEFAULT_WINDOW,
        max_tokens: int | None = None,
        token_counter: Callable[..., int] | None = None,
    ) -> None:
        super().__init__()
        self.memory = memory
        self.session_id = session_id
        self.window = validate_window(window)
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        self.max_tokens = max_tokens
        self.token_counter = token_counter or count_tokens_approximately

    @property
    def session_id(self) -> str:
        """The conversation's id, canonical (validated once, when set)."""
        return self._session_id

    @session_id.setter
    def session_id(self, session_id: str) -> None:
        self._session_id = self.memory.session_id(session_id)

    def _budget(self, messages: list[BaseMessage]) -> list[BaseMessage]:
        if self.max_tokens is None:
            return messages
        return trim_messages(
            messages,
            max_tokens=self.max_tokens,
            token_counter=self.token_counter,
            strategy="last",
            start_on="human",
            include_system=True,
            allow_partial=False,
        )

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The conversation's recent messages, oldest first."""
        return self._budget(self.memory._read(self.session_id, self.window))

    async def aget_messages(self) -> list[BaseMessage]:
        """Async :attr:`messages`."""
        return self._budget(await self.memory._aread(self.session_id, self.window))

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Store messages: Postgres first, then the cache."""
        self.memory._write(self.session_id, messages)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Async :meth:`add_messages`."""
        await self.memory._awrite(self.session_id, messages)

    def clear(self) -> None:
        """Delete the conversation from Postgres and the cache."""
        self.memory.clear(self.session_id)

    async def aclear(self) -> None:
        """Async :meth:`clear`."""
        await self.memory.aclear(self.session_id)
