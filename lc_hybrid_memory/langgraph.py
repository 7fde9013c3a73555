"""LangGraph / ``create_agent`` integration: one agent turn, stored exactly once.

An optional part of the library: it needs ``langchain`` (>= 1.0) and ``langgraph``, which the
core package does not require, so nothing else in ``lc_hybrid_memory`` imports this module.

Two wirings share the turn logic of :mod:`lc_hybrid_memory.turns` (re-exported here: ids,
:func:`load_turn`, :func:`plan_turn`, :func:`begin_turn`, :func:`session_id_from`) and the
storage (:meth:`HybridMemory.add_messages`: one INSERT and one cache script per write):

* :func:`agent_turn` wraps a compiled agent graph as a runnable for the (deprecated)
  ``RunnableWithMessageHistory`` with ``input_messages_key="messages"`` and
  ``history_messages_key="history"``. It plans the turn on the history the wrapper read and
  returns only the new messages of the turn, so the wrapper stores exactly those (and not the
  whole conversation again).
* :class:`HybridMemoryMiddleware` is an ``AgentMiddleware`` for ``create_agent``: it loads the
  window and makes the input durable before the model runs (:func:`begin_turn`), and stores
  the turn's messages after it, with no wrapper at all.

Message ids: the input carries the caller's id (for SMS, the Twilio ``MessageSid``); every
message the turn produces gets ``f"{input_id}:{n}"``, ``n = 1, 2, 3...`` (see
:mod:`lc_hybrid_memory.turns`), so retries are recognised and stored once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

from langchain_core.messages import BaseMessage, RemoveMessage
from langchain_core.messages.utils import convert_to_messages
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda

from .history import DEFAULT_WINDOW
from .langgraph_recall import arecalled_for, recalled_for, with_recalled
from .turns import (
    LoadedTurn,
    MissingSessionIdError,
    TurnPlan,
    abegin_turn,
    aload_turn,
    assign_turn_ids,
    begin_turn,
    in_turn_order,
    is_turn_message,
    load_turn,
    plan_turn,
    session_id_from,
    turn_message_id,
    turn_message_ids,
)

try:  # the optional dependencies of this integration
    from langchain.agents.middleware import AgentMiddleware, AgentState, hook_config
    from langchain.agents.middleware.types import OmitFromInput, PrivateStateAttr
    from langgraph.config import get_config
    from langgraph.graph.message import REMOVE_ALL_MESSAGES
    from typing_extensions import NotRequired
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "lc_hybrid_memory.langgraph needs `langchain>=1.0` and `langgraph`: "
        "pip install 'lc-hybrid-memory[langgraph]' (or langchain langgraph)"
    ) from exc

if TYPE_CHECKING:
    from langgraph.runtime import Runtime

    from .memory import HybridMemory

__all__ = [
    "HybridMemoryMiddleware",
    "LoadedTurn",
    "MissingSessionIdError",
    "TurnPlan",
    "abegin_turn",
    "agent_turn",
    "aload_turn",
    "assign_turn_ids",
    "begin_turn",
    "in_turn_order",
    "is_turn_message",
    "load_turn",
    "plan_turn",
    "session_id_from",
    "turn_message_id",
    "turn_message_ids",
]


def _with_ids(inputs: Sequence[BaseMessage]) -> list[BaseMessage]:
    """The input messages, each with an id (a fresh one where the caller gave none)."""
    return [m if m.id else m.model_copy(update={"id": uuid.uuid4().hex}) for m in inputs]


# -- wiring 1: a runnable for RunnableWithMessageHistory ------------------------------------------


def agent_turn(
    agent: Runnable[Any, Any], *, window: int | None = None
) -> Runnable[dict[str, Any], list[BaseMessage]]:
    """Wrap a LangGraph agent (state ``{"messages": [...]}``) for ``RunnableWithMessageHistory``.

    The returned runnable takes ``{"messages": <new input messages>, "history": <stored
    history>}``, plans the turn on that history (:func:`plan_turn`, once; ``window`` bounds the
    context), runs ``agent`` on the context followed by the inputs, and returns only the
    messages the agent produced, with the derived ids — so the wrapper stores the input and
    exactly those. A turn already complete in the history is not run again: its stored
    messages are returned (and the wrapper's write of them is a no-op, same ids).

    Example:
        .. code-block:: python

            chain = RunnableWithMessageHistory(
                agent_turn(create_agent(model, tools)),
                memory.history,
                input_messages_key="messages",
                history_messages_key="history",
            )
            new = chain.invoke(
                {"messages": [HumanMessage("hi", id="SM123")]},
                config={"configurable": {"session_id": "conversation-1"}},
            )
            print(new[-1].text)

    ``RunnableWithMessageHistory`` stores in a callback listener that only logs a failed
    write; a caller that must know the turn is durable should use the middleware or check.
    """

    def prepare(value: dict[str, Any]) -> tuple[TurnPlan, dict[str, Any]]:
        inputs = _with_ids(convert_to_messages(value["messages"]))
        history = convert_to_messages(value.get("history") or [])
        plan = plan_turn(history, inputs, window=window)
        return plan, {"messages": [*plan.context, *plan.inputs]}

    def produced(plan: TurnPlan, state: dict[str, Any]) -> list[BaseMessage]:
        start = len(plan.context) + len(plan.inputs)
        return assign_turn_ids(plan.anchor, state["messages"][start:])

    def run(value: dict[str, Any], config: RunnableConfig) -> list[BaseMessage]:
        plan, state = prepare(value)
        if plan.reply is not None:
            return list(plan.stored)
        return produced(plan, agent.invoke(state, config))

    async def arun(value: dict[str, Any], config: RunnableConfig) -> list[BaseMessage]:
        plan, state = prepare(value)
        if plan.reply is not None:
            return list(plan.stored)
        return produced(plan, await agent.ainvoke(state, config))

    return RunnableLambda(run, afunc=arun, name="agent_turn")


# -- wiring 2: native create_agent middleware ------------------------------------------------------


class HybridMemoryState(AgentState):  # type: ignore[type-arg]
    """Agent state plus the middleware's bookkeeping.

    ``memory_turn`` is part of the agent's output: ``{"replayed": bool, "stored_ids": [...]}``
    (the ids this run newly stored). ``hybrid_memory_plan`` is private to the run.
    """

    memory_turn: NotRequired[Annotated[dict[str, Any], OmitFromInput]]
    hybrid_memory_plan: NotRequired[Annotated[dict[str, Any], PrivateStateAttr]]


class HybridMemoryMiddleware(AgentMiddleware[HybridMemoryState, Any]):
    """Hybrid memory as a native ``create_agent`` middleware (no ``RunnableWithMessageHistory``).

    Before the agent runs, :func:`begin_turn` loads the conversation's last ``window`` messages
    (Redis, else Postgres) in front of the input and stores the input unless it is already
    stored — so a failing model or tool, or a crash mid-turn, never loses the user's message.
    After the agent, every message of the turn is stored with the derived ids in one write. A
    failed write raises :class:`~lc_hybrid_memory.errors.StoreUnavailableError` out of
    ``invoke``/``ainvoke``: no turn is reported successful unless it is in Postgres. A turn
    already complete in storage ends at once with the stored messages
    (``memory_turn["replayed"]`` is true); the model is not called.

    The session id is read by :func:`session_id_from`: from the run context
    (``context={"session_id": ...}`` or an object with a ``session_id`` attribute), else from
    ``config["configurable"]["session_id"]`` — the same rule an application's tools use.
    Do not add a checkpointer: the memory already persists the conversation, and the window
    loaded here replaces the state's messages on every run.

    ``recall=N`` (off by default; the memory needs ``embeddings``) adds to each model call the
    ``N`` older messages best matching the latest user message, beyond the window, to the
    system message, marked as recalled (:mod:`.langgraph_recall`): the model sees them, the
    state and the stored conversation do not.

    Example:
        .. code-block:: python

            agent = create_agent(model, tools, middleware=[HybridMemoryMiddleware(memory)])
            state = agent.invoke(
                {"messages": [HumanMessage("hi", id="SM123")]},
                config={"configurable": {"session_id": "conversation-1"}},
            )
            print(state["messages"][-1].text)
    """

    state_schema = HybridMemoryState

    def __init__(
        self,
        memory: HybridMemory,
        *,
        window: int | None = DEFAULT_WINDOW,
        session_key: str = "session_id",
        recall: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(recall, bool) or not isinstance(recall, int) or recall < 0:
            raise ValueError(f"recall must be a non-negative integer, got {recall!r}")
        if recall and memory.recall_index is None:
            raise ValueError('recall=N needs a memory built with embeddings="default" (or any)')
        self.memory = memory
        self.window = window
        self.session_key = session_key
        self.recall = recall

    def _session_id(self, runtime: Runtime[Any] | None) -> str:
        try:
            config: RunnableConfig | None = get_config()
        except RuntimeError:  # not inside a runnable context
            config = None
        return session_id_from(getattr(runtime, "context", None), config, self.session_key)

    @staticmethod
    def _load(plan: TurnPlan) -> dict[str, Any]:
        """The state update that puts the stored context in front of the input."""
        written = [m.id for m in plan.written]
        if plan.reply is not None:
            return {
                "messages": [
                    RemoveMessage(id=REMOVE_ALL_MESSAGES),
                    *plan.context,
                    *plan.inputs,
                    *plan.stored,
                ],
                "memory_turn": {"replayed": True, "stored_ids": written},
                "hybrid_memory_plan": {"replayed": True},
                "jump_to": "end",
            }
        return {
            "messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES), *plan.context, *plan.inputs],
            "hybrid_memory_plan": {
                "replayed": False,
                "end_of_inputs": len(plan.context) + len(plan.inputs),
                "anchor": plan.anchor,
                "written": written,
            },
        }

    @staticmethod
    def _produced(state: HybridMemoryState) -> list[BaseMessage] | None:
        """The turn's new messages with their derived ids (``None``: nothing to store)."""
        plan = state.get("hybrid_memory_plan")
        if not plan or plan.get("replayed"):
            return None
        return assign_turn_ids(plan["anchor"], state["messages"][plan["end_of_inputs"] :])

    @staticmethod
    def _stored(
        state: HybridMemoryState, produced: list[BaseMessage], flags: list[bool]
    ) -> dict[str, Any]:
        plan = state["hybrid_memory_plan"]
        new = [m.id for m, was_new in zip(produced, flags, strict=True) if was_new]
        return {
            "messages": [
                RemoveMessage(id=REMOVE_ALL_MESSAGES),
                *state["messages"][: plan["end_of_inputs"]],
                *produced,
            ],
            "memory_turn": {"replayed": False, "stored_ids": [*plan["written"], *new]},
        }

    @staticmethod
    def _inputs(state: HybridMemoryState) -> list[BaseMessage]:
        return list(state["messages"])  # LangGraph has given each an id by now

    @hook_config(can_jump_to=["end"])
    def before_agent(self, state: HybridMemoryState, runtime: Runtime[Any]) -> dict[str, Any]:
        """Load the context, make the input durable (or end a complete turn at once)."""
        sid = self._session_id(runtime)
        return self._load(begin_turn(self.memory, sid, self._inputs(state), self.window))

    @hook_config(can_jump_to=["end"])
    async def abefore_agent(
        self, state: HybridMemoryState, runtime: Runtime[Any]
    ) -> dict[str, Any]:
        """Async :meth:`before_agent`."""
        sid = self._session_id(runtime)
        return self._load(await abegin_turn(self.memory, sid, self._inputs(state), self.window))

    def wrap_model_call(self, request: Any, handler: Any) -> Any:
        """With ``recall``: the older messages recalled for the latest user message, added to
        the model's system message."""
        if not self.recall:
            return handler(request)
        sid = self._session_id(request.runtime)
        found = recalled_for(self.memory, sid, request.messages, self.recall, self.window or 0)
        return handler(with_recalled(request, found))

    async def awrap_model_call(self, request: Any, handler: Any) -> Any:
        """Async :meth:`wrap_model_call`."""
        if not self.recall:
            return await handler(request)
        sid = self._session_id(request.runtime)
        found = await arecalled_for(
            self.memory, sid, request.messages, self.recall, self.window or 0
        )
        return await handler(with_recalled(request, found))

    def after_agent(self, state: HybridMemoryState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Store the turn's messages (derived ids) in one write; raise if it fails."""
        produced = self._produced(state)
        if produced is None:
            return None
        flags = self.memory.add_messages(self._session_id(runtime), produced)
        return self._stored(state, produced, flags)

    async def aafter_agent(
        self, state: HybridMemoryState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async :meth:`after_agent`."""
        produced = self._produced(state)
        if produced is None:
            return None
        flags = await self.memory.aadd_messages(self._session_id(runtime), produced)
        return self._stored(state, produced, flags)
