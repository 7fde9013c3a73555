"""The agent's tools: the current time, and ``recall`` over the conversation's older messages."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from langchain.tools import ToolRuntime
from langchain_core.messages import BaseMessage
from langchain_core.tools import BaseTool, StructuredTool

from lc_hybrid_memory import HybridMemory, role_of
from lc_hybrid_memory.langgraph import session_id_from

CURRENT_TIME = "get_current_time"
RECALL = "recall"
RECALL_DESCRIPTION = (
    "Search the older messages of this conversation (beyond the recent ones you see) for a "
    "word or phrase; returns the matching messages, oldest first."
)
SEMANTIC_RECALL_DESCRIPTION = (
    "Search the older messages of this conversation (beyond the recent ones you see) by "
    "meaning or by exact words (names, order numbers): ask a question or give keywords; "
    "returns the best matching messages."
)


def _now(tz_name: str) -> str:
    try:
        tz: Any = ZoneInfo(tz_name) if tz_name.upper() != "UTC" else timezone.utc
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown timezone {tz_name!r}; use an IANA name such as Europe/Lisbon or UTC"
    return datetime.now(tz).isoformat(timespec="seconds")


def current_time_tool() -> BaseTool:
    """A tool returning the current date and time (ISO 8601) in an IANA timezone."""

    def get_current_time(timezone: str = "UTC") -> str:
        """The current date and time in ISO 8601, in an IANA timezone (default UTC)."""
        return _now(timezone)

    return StructuredTool.from_function(get_current_time, name=CURRENT_TIME)


def _session_id(runtime: ToolRuntime[Any, Any]) -> str:
    # The middleware's rule (context first, then the run config), so a turn is never stored
    # in one conversation and recalled from another.
    return session_id_from(runtime.context, runtime.config)


def _format(found: list[BaseMessage]) -> str:
    if not found:
        return "Nothing older in this conversation matches."
    # Newest first from the store; the model reads a chronology more easily.
    lines = [f"- {role_of(m)}: {m.text}" for m in reversed(found)]
    return "Older messages of this conversation that match:\n" + "\n".join(lines)


def _format_best(found: list[BaseMessage]) -> str:
    if not found:
        return "Nothing older in this conversation matches."
    lines = [f"- {role_of(m)}: {m.text}" for m in found]
    return "Older messages of this conversation, best match first:\n" + "\n".join(lines)


def recall_tool(memory: HybridMemory, *, limit: int = 5, window: int = 0) -> BaseTool:
    """A tool searching the conversation's messages in Postgres beyond what the model sees.

    With semantic recall on (the memory was built with ``embeddings``), ``memory.recall``
    leaves out the ``window`` newest messages (those the model is shown) and ranks the rest by
    meaning and exact words; otherwise the substring search. Either way, matches already in the
    agent's context (the loaded window and this turn) are left out; the search asks for that
    many more rows so that ``limit`` older matches can still come back.
    """
    semantic = memory.recall_index is not None

    def select(runtime: ToolRuntime[Any, Any], found: list[BaseMessage]) -> list[BaseMessage]:
        visible = {m.id for m in runtime.state["messages"] if getattr(m, "id", None)}
        return [m for m in found if m.id is None or m.id not in visible][:limit]

    def span(runtime: ToolRuntime[Any, Any]) -> int:
        return limit + len(runtime.state["messages"])

    def recall(query: str, runtime: ToolRuntime[Any, Any]) -> str:
        """Search older messages of this conversation for ``query``."""
        sid, wanted = _session_id(runtime), span(runtime)
        if semantic:
            best = memory.recall(sid, query, k=wanted, exclude_recent=window)
            return _format_best(select(runtime, best))
        return _format(select(runtime, memory.search(sid, query, limit=wanted)))

    async def arecall(query: str, runtime: ToolRuntime[Any, Any]) -> str:
        """Search older messages of this conversation for ``query``."""
        sid, wanted = _session_id(runtime), span(runtime)
        if semantic:
            best = await memory.arecall(sid, query, k=wanted, exclude_recent=window)
            return _format_best(select(runtime, best))
        return _format(select(runtime, await memory.asearch(sid, query, limit=wanted)))

    description = SEMANTIC_RECALL_DESCRIPTION if semantic else RECALL_DESCRIPTION
    return StructuredTool.from_function(
        recall, coroutine=arecall, name=RECALL, description=description
    )


def default_tools(memory: HybridMemory, *, window: int = 0) -> list[BaseTool]:
    """The tools the app's agent gets: current time and recall (``window``: the messages the
    model is shown, which recall leaves out)."""
    return [current_time_tool(), recall_tool(memory, window=window)]
