"""Recalled older messages in the model's context: the ``recall=`` option of
:class:`~lc_hybrid_memory.langgraph.HybridMemoryMiddleware` (off by default).

Before each model call, the conversation's older messages best matching the latest user
message (semantic recall, beyond the ``window`` the model is shown) are added to the system
message, marked as recalled. Only the model's request changes: the agent's state, and so the
stored conversation, never holds them.

Example:
    .. code-block:: python

        middleware = HybridMemoryMiddleware(memory, window=50, recall=3)
        agent = create_agent(model, tools, middleware=[middleware])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from . import codec

if TYPE_CHECKING:
    from .memory import HybridMemory

__all__ = ["RECALLED_HEADER", "arecalled_for", "recalled_for", "with_recalled"]

RECALLED_HEADER = "Older messages of this conversation that may help (recalled, best first):"


def _query(messages: Sequence[BaseMessage]) -> str | None:
    latest = next((m for m in reversed(messages) if isinstance(m, HumanMessage)), None)
    text = latest.text.strip() if latest is not None else ""
    return text or None


def _visible(messages: Sequence[BaseMessage]) -> set[str]:
    return {m.id for m in messages if m.id}


def recalled_for(
    memory: HybridMemory, session_id: str, messages: Sequence[BaseMessage], k: int, window: int
) -> list[BaseMessage]:
    """Up to ``k`` older messages matching the latest user message, none of ``messages``."""
    query = _query(messages)
    if query is None:
        return []
    visible = _visible(messages)
    found = memory.recall(session_id, query, k=k + len(visible), exclude_recent=window)
    return [m for m in found if m.id not in visible][:k]


async def arecalled_for(
    memory: HybridMemory, session_id: str, messages: Sequence[BaseMessage], k: int, window: int
) -> list[BaseMessage]:
    """Async :func:`recalled_for`."""
    query = _query(messages)
    if query is None:
        return []
    visible = _visible(messages)
    found = await memory.arecall(session_id, query, k=k + len(visible), exclude_recent=window)
    return [m for m in found if m.id not in visible][:k]


def with_recalled(request: Any, found: Sequence[BaseMessage]) -> Any:
    """The model request with ``found`` appended to its system message (none: unchanged)."""
    if not found:
        return request
    lines = [f"- {codec.role_of(m)}: {m.text}" for m in found]
    block = "\n".join([RECALLED_HEADER, *lines])
    system = request.system_message
    text = f"{system.text}\n\n{block}" if system is not None and system.text else block
    return request.override(system_message=SystemMessage(text))
