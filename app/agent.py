"""The chat agent of the app and the terminal: a ``create_agent`` graph with hybrid memory.

:class:`ChatAgent` runs one turn of a conversation (``session_id`` = conversation id). The
agent is LangGraph's current constructor (``langchain.agents.create_agent``) with the tools of
:mod:`app.tools` and the model of :mod:`app.chat_models`. Two wirings of the memory, same storage:

* ``wiring="runnable_with_history"`` (default; the product is built around it): the graph
  wrapped by :func:`lc_hybrid_memory.langgraph.agent_turn` inside ``RunnableWithMessageHistory``,
  whose history is the turn's own :class:`TurnHistory`.
* ``wiring="middleware"``: the native :class:`lc_hybrid_memory.langgraph.HybridMemoryMiddleware`,
  no deprecated wrapper (the way forward past LangChain 2.0).

Both make one pass over the same steps, in one direction: read the window and make the input
durable (``load_turn``), split the history around the input (``plan_turn``, once), run the
model and tools, store the turn's new messages (one write), return the answer.

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
from typing import Any, Literal, TypedDict

from langchain.agents import create_agent
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import ConfigurableFieldSpec, Runnable, RunnableConfig
from langchain_core.runnables.history import RunnableWithMessageHistory

from lc_hybrid_memory import HybridMemory
from lc_hybrid_memory.langgraph import (
    HybridMemoryMiddleware,
    LoadedTurn,
    agent_turn,
    aload_turn,
    is_turn_message,
    load_turn,
    turn_message_ids,
)

from .chat_models import build_model
from .settings import Settings
from .tools import default_tools

__all__ = [
    "ChatAgent",
    "TurnHistory",
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


class TurnContext(TypedDict, total=False):
    """The run context the graph accepts (``graph.invoke(..., context={...})``): the
    conversation, which wins over ``config["configurable"]["session_id"]`` for the memory and
    the tools alike (:func:`lc_hybrid_memory.langgraph.session_id_from`)."""

    session_id: str


class TurnIncompleteError(RuntimeError):
    """The agent finished but the turn's write was never attempted (a wiring bug, not I/O)."""


class TurnHistory(BaseChatMessageHistory):
    """The storage of one turn, as ``RunnableWithMessageHistory`` uses a history: read once,
    written once.

    :meth:`ChatAgent.run_turn` builds it for its input and hands it to the wrapper (the
    ``turn_history`` field of the session factory), so nothing about the turn travels any other
    way. The wrapper reads it before the agent runs: :func:`~lc_hybrid_memory.langgraph.load_turn`
    (the window, the input made durable first). It writes it after the agent: only what the
    read did not already hold goes to the memory, in one call, and the outcome is kept here for
    :meth:`result` — the wrapper's listener would only log a failed write.
    """

    def __init__(
        self,
        memory: HybridMemory,
        session_id: str,
        inputs: Sequence[BaseMessage],
        window: int | None,
    ) -> None:
        self.memory = memory
        self.session_id = session_id
        self.inputs = list(inputs)
        self.window = window
        self.loaded: LoadedTurn | None = None
        self.stored: list[BaseMessage] | None = None
        self.error: Exception | None = None

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        if self.loaded is None:
            self.loaded = load_turn(self.memory, self.session_id, self.inputs, self.window)
        return list(self.loaded.history)

    async def aget_messages(self) -> list[BaseMessage]:
        if self.loaded is None:
            self.loaded = await aload_turn(self.memory, self.session_id, self.inputs, self.window)
        return list(self.loaded.history)

    def _held(self) -> set[str | None]:
        """Ids already in storage: what the read returned, and the input it made durable."""
        history = self.loaded.history if self.loaded is not None else []
        return {m.id for m in history} | {m.id for m in self.inputs}

    def _unsaved(self, messages: Sequence[BaseMessage]) -> list[BaseMessage]:
        held = self._held()
        return [m for m in messages if m.id not in held]

    def _record(self, new: list[BaseMessage], flags: list[bool]) -> None:
        produced = [m for m, was_new in zip(new, flags, strict=True) if was_new]
        written = self.loaded.written if self.loaded is not None else []
        self.stored = [*written, *produced]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        new = self._unsaved(messages)
        try:
            flags = self.memory.add_messages(self.session_id, new) if new else []
        except Exception as exc:  # raised by result(), not logged and dropped by the wrapper
            self.error = exc
            return
        self._record(new, flags)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        new = self._unsaved(messages)
        try:
            flags = await self.memory.aadd_messages(self.session_id, new) if new else []
        except Exception as exc:
            self.error = exc
            return
        self._record(new, flags)

    def clear(self) -> None:
        self.memory.clear(self.session_id)

    def result(self, output: Sequence[BaseMessage]) -> TurnResult:
        """The turn's outcome from the agent's ``output``; raises what the write raised."""
        if self.error is not None:
            raise self.error
        if self.loaded is None or self.stored is None:
            raise TurnIncompleteError("the turn finished but its messages were never written")
        # A complete turn is answered from storage: everything the agent returned was held.
        history = {m.id for m in self.loaded.history}
        replayed = bool(output) and all(m.id in history for m in output)
        return TurnResult(reply=_reply_text(output), new_messages=self.stored, replayed=replayed)


def _turn_history(session_id: str, turn_history: TurnHistory) -> TurnHistory:
    """The wrapper's session factory: a turn brings its own history."""
    if turn_history.session_id != session_id:
        raise ValueError("the turn's history belongs to another session")
    return turn_history


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
        self.tools = (
            default_tools(memory, window=settings.memory_window) if tools is None else list(tools)
        )
        middleware = [HybridMemoryMiddleware(memory, window=self.window)]
        self.graph = create_agent(
            self.model,
            self.tools,
            system_prompt=settings.system_prompt,
            middleware=middleware if wiring == "middleware" else (),
            context_schema=TurnContext,
        )
        self.chain: Runnable[Any, Any] | None = None
        if wiring == "runnable_with_history":
            with warnings.catch_warnings():
                # Deliberate: the issue asks for this wiring; the middleware is the successor.
                warnings.simplefilter("ignore", DeprecationWarning)
                self.chain = RunnableWithMessageHistory(
                    agent_turn(self.graph, window=self.window),
                    _turn_history,
                    input_messages_key="messages",
                    history_messages_key="history",
                    history_factory_config=[
                        ConfigurableFieldSpec(id="session_id", annotation=str, is_shared=True),
                        ConfigurableFieldSpec(
                            id="turn_history", annotation=TurnHistory, is_shared=True
                        ),
                    ],
                )

    def _start(
        self, session_id: str, text: str, message_id: str | None
    ) -> tuple[HumanMessage, RunnableConfig, TurnHistory | None]:
        """The turn's input, the run's config and (wrapper wiring) the turn's history."""
        human = HumanMessage(text, id=message_id or uuid.uuid4().hex)
        configurable: dict[str, Any] = {"session_id": session_id}
        history = None
        if self.chain is not None:
            history = TurnHistory(self.memory, session_id, [human], self.window)
            configurable["turn_history"] = history
        return human, {"configurable": configurable}, history

    def run_turn(self, session_id: str, text: str, *, message_id: str | None = None) -> TurnResult:
        """Answer ``text`` in conversation ``session_id`` and store the turn (see module doc)."""
        human, config, history = self._start(session_id, text, message_id)
        if self.chain is None or history is None:
            return self._from_state(self.graph.invoke({"messages": [human]}, config))
        return history.result(self.chain.invoke({"messages": [human]}, config))

    async def arun_turn(
        self, session_id: str, text: str, *, message_id: str | None = None
    ) -> TurnResult:
        """Async :meth:`run_turn`."""
        human, config, history = self._start(session_id, text, message_id)
        if self.chain is None or history is None:
            return self._from_state(await self.graph.ainvoke({"messages": [human]}, config))
        return history.result(await self.chain.ainvoke({"messages": [human]}, config))

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
