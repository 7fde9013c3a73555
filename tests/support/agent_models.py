"""Scripted chat models and helpers for the LangGraph/LangChain wiring tests (LangChain's fake
chat model underneath: only the LLM is faked)."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool
from pydantic import Field

from lc_hybrid_memory import HybridMemory, codec


class ScriptedModel(GenericFakeChatModel):
    received: list[list[BaseMessage]] = Field(default_factory=list)

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.received.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def adding_model(turns: int) -> ScriptedModel:
    answers: list[AIMessage | str] = []
    for n in range(1, turns + 1):
        call = {"name": "add", "args": {"a": n, "b": n}, "id": f"call-{n}"}
        answers += [AIMessage("", tool_calls=[call]), f"it is {2 * n}"]
    return ScriptedModel(messages=iter(answers))


def stored_ids(memory: HybridMemory, sid: str) -> list[str | None]:
    return [codec.decode(row.payload).id for row in memory.store.all(sid)]


def ids_of(messages: list[BaseMessage]) -> list[str | None]:
    return [m.id for m in messages]


def config(sid: str) -> Any:
    return {"configurable": {"session_id": sid}}
