"""The chat agent of the app and the terminal: a ``create_agent`` graph with hybrid memory.

:class:`ChatAgent` runs one turn of a conversation (``session_id`` = conversation id). The
agent is LangGraph's current constructor (``langchain.agents.create_agent``) with the tools of
:mod:`app.tools` and the model of :mod:`app.chat_models`. Two wirings of the memory, same storage:

* ``wiring="runnable_with_history"`` (default, what the issue asks for): the graph wrapped by
  :func:`lc_hybrid_memory.langgraph.agent_turn` inside ``RunnableWithMessageHistory`` whose
  session factory is ``memory.history``.
* ``wiring="middleware"``: the native :class:`lc_hybrid_memory.langgraph.HybridMemoryMiddleware`,
  no deprecated wrapper (the way forward past LangChain 2.0).

Message ids
-----------
The input is ``HumanMessage(text, id=message_id)`` (``message_id`` = Twilio ``MessageSid``, or
a fresh uuid). Every other message of the turn — AI tool-call messages, ``ToolMessage`` s and the
final answer — is stored with id ``f"{message_id}:{n}"``, ``n = 1, 2, 3...`` in order, so the
final answer has the highest ``n``. :func:`turn_message_ids` and :func:`is_turn_message`
(re-exported from :mod:`lc_hybrid_memory.langgraph`) compute and recognise them.

Guarantees of :meth:`ChatAgent.run_turn` / :meth:`ChatAgent.arun_turn`
--------------------------------------------------------------------------
* Every message is stored once. The input is made durable *before* the model runs (one
  write, skipped when the input is already stored, e.g. by the webhook); everything the agent
  produced is stored after it in one more write. A turn is only returned once Postgres has
  it: a failed write raises :class:`~lc_hybrid_memory.StoreUnavailableError`
  (``RunnableWithMessageHistory`` alone would only log it).
* A history that already holds the input shows it to the model once, at its place, and not
  the inbound messages stored after it (their turns come later).
* A turn already complete in storage returns ``replayed=True`` with the stored answer; the
  model is not called and nothing is written — even for a turn older than the window.
* If the model (or a tool) raises, the exception propagates; the input is already stored, the
  turn's other messages are not, and retrying with the same ``message_id`` runs the turn again
  (showing the input once).
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain.agents import create_agent
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import ConfigurableFieldSpec, Runnable, RunnableConfig
from langchain_core.runnables.history import RunnableWithMessageHistory

from lc_hybrid_memory import HybridMemory
from lc_hybrid_memory.langgraph import (
    HybridMemoryMiddleware,
    TurnPlan,
    abegin_turn,
    agent_turn,
    begin_turn,
    is_turn_message,
    turn_message_ids,
)

from .chat_models import build_model
from .settings import Settings
from .tools import default_tools

__all__ = [
    "ChatAgent",
    "TurnIncompleteError",
    "TurnResult",
    "Wiring",
    "is_turn_message",
    "turn_message_ids",
]

Wiring = Literal["runnable_with_history", "middleware"]


@dataclass(frozen=True)
class TurnResult:
    """The outcome of one turn."""

    reply: str
    """The final answer text."""
    new_messages: list[BaseMessage]
    """What this turn newly stored, in order (empty for a replay). The input is included only
    if this call stored it (not if the caller had stored it before)."""
    replayed: bool
    """True when the turn was already complete in storage (nothing was run or written)."""


class TurnIncompleteError(RuntimeError):
    """The agent finished but the turn's write was never attempted (a wiring bug, not I/O)."""


@dataclass
class _Turn:
    """What one ``run_turn`` shares with the history object ``RunnableWithMessageHistory`` uses.

    ``RunnableWithMessageHistory`` builds the history per call and writes it in a callback
    listener that swallows exceptions; this record carries the planned turn in and the
    outcome of the write back out.
    """

    plan: TurnPlan
    stored: list[BaseMessage] | None = None
    error: BaseException | None = None


class _TurnHistory(BaseChatMessageHistory):
    """``memory.history(session_id)`` for one turn: serves the context already read, skips the
    input already stored, and records the outcome of the write instead of letting the
    wrapper's listener swallow it."""

    def __init__(self, memory: HybridMemory, session_id: str, turn: _Turn) -> None:
        self.memory = memory
        self.session_id = session_id
        self.turn = turn

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return list(self.turn.plan.context)

    async def aget_messages(self) -> list[BaseMessage]:
        return list(self.turn.plan.context)

    def _new(self, messages: Sequence[BaseMessage]) -> list[BaseMessage]:
        durable = {m.id for m in self.turn.plan.inputs}
        return [m for m in messages if m.id not in durable]

    def _record(self, messages: list[BaseMessage], flags: list[bool]) -> None:
        produced = [m for m, new in zip(messages, flags, strict=True) if new]
        self.turn.stored = [*self.turn.plan.written, *produced]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        new = self._new(messages)
        try:
            flags = self.memory.add_messages(self.session_id, new)
        except BaseException as exc:
            self.turn.error = exc
            raise
        self._record(new, flags)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        new = self._new(messages)
        try:
            flags = await self.memory.aadd_messages(self.session_id, new)
        except BaseException as exc:
            self.turn.error = exc
            raise
        self._record(new, flags)

    def clear(self) -> None:
        self.memory.clear(self.session_id)


class ChatAgent:
    """One conversation turn at a time, stored in the hybrid memory. Thread-safe; build once.

    Args:
        memory: the process's :class:`~lc_hybrid_memory.HybridMemory`.
        settings: model provider/name, system prompt and memory window come from here.
        model: a chat model instead of the configured one (tests pass fake models).
        tools: tools instead of the default ones (current time, recall).
        wiring: ``"runnable_with_history"`` or ``"middleware"`` (see the module docstring).
    """

    def __init__(
        self,
        memory: HybridMemory,
        settings: Settings,
        *,
        model: BaseChatModel | None = None,
        tools: list[Any] | None = None,
        wiring: Wiring = "runnable_with_history",
    ) -> None:
        if wiring not in ("runnable_with_history", "middleware"):
            raise ValueError(f"unknown wiring {wiring!r}")
        self.memory = memory
        self.settings = settings
        self.window = settings.memory_window
        self.wiring = wiring
        self.model = model if model is not None else build_model(settings)
        self.tools = default_tools(memory) if tools is None else list(tools)
        middleware = [HybridMemoryMiddleware(memory, window=self.window)]
        self.graph = create_agent(
            self.model,
            self.tools,
            system_prompt=settings.system_prompt,
            middleware=middleware if wiring == "middleware" else (),
        )
        self.chain: Runnable[Any, Any] | None = None
        if wiring == "runnable_with_history":
            with warnings.catch_warnings():
                # Deliberate: the issue asks for this wiring; the middleware is the successor.
                warnings.simplefilter("ignore", DeprecationWarning)
                self.chain = RunnableWithMessageHistory(
                    agent_turn(self.graph),
                    self._session_history,
                    input_messages_key="messages",
                    history_messages_key="history",
                    history_factory_config=[
                        ConfigurableFieldSpec(id="session_id", annotation=str, is_shared=True),
                        ConfigurableFieldSpec(id="turn", annotation=Any, is_shared=True),
                    ],
                )

    def _session_history(self, session_id: str, turn: _Turn) -> BaseChatMessageHistory:
        return _TurnHistory(self.memory, session_id, turn)

    def run_turn(self, session_id: str, text: str, *, message_id: str | None = None) -> TurnResult:
        """Answer ``text`` in conversation ``session_id`` and store the turn (see module doc)."""
        human = HumanMessage(text, id=message_id or uuid.uuid4().hex)
        config: RunnableConfig = {"configurable": {"session_id": session_id}}
        if self.chain is None:
            return self._from_state(self.graph.invoke({"messages": [human]}, config))
        plan = begin_turn(self.memory, session_id, [human], self.window)
        if plan.reply is not None:
            return TurnResult(reply=plan.reply.text, new_messages=[], replayed=True)
        turn = _Turn(plan)
        config["configurable"]["turn"] = turn
        return self._checked(turn, self.chain.invoke({"messages": [human]}, config))

    async def arun_turn(
        self, session_id: str, text: str, *, message_id: str | None = None
    ) -> TurnResult:
        """Async :meth:`run_turn`."""
        human = HumanMessage(text, id=message_id or uuid.uuid4().hex)
        config: RunnableConfig = {"configurable": {"session_id": session_id}}
        if self.chain is None:
            return self._from_state(await self.graph.ainvoke({"messages": [human]}, config))
        plan = await abegin_turn(self.memory, session_id, [human], self.window)
        if plan.reply is not None:
            return TurnResult(reply=plan.reply.text, new_messages=[], replayed=True)
        turn = _Turn(plan)
        config["configurable"]["turn"] = turn
        return self._checked(turn, await self.chain.ainvoke({"messages": [human]}, config))

    @staticmethod
    def _checked(turn: _Turn, output: list[BaseMessage]) -> TurnResult:
        # RunnableWithMessageHistory logs and swallows a failed write: surface it here.
        if turn.error is not None:
            raise turn.error
        if turn.stored is None:
            raise TurnIncompleteError("the turn finished but its messages were never written")
        return TurnResult(reply=_reply_text(output), new_messages=turn.stored, replayed=False)

    @staticmethod
    def _from_state(state: dict[str, Any]) -> TurnResult:
        outcome = state.get("memory_turn") or {}
        messages: list[BaseMessage] = state["messages"]
        if outcome.get("replayed"):
            return TurnResult(reply=_reply_text(messages), new_messages=[], replayed=True)
        if "stored_ids" not in outcome:
            raise TurnIncompleteError("the turn finished but its messages were never written")
        written = set(outcome["stored_ids"])
        return TurnResult(
            reply=_reply_text(messages),
            new_messages=[m for m in messages if m.id in written],
            replayed=False,
        )


def _reply_text(messages: Sequence[BaseMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, AIMessage) and not message.tool_calls:
            return message.text
    return ""
