"""LangGraph / ``create_agent`` integration: one agent turn, stored exactly once.

An optional part of the library: it needs ``langchain`` (>= 1.0) and ``langgraph``, which the
core package does not require, so nothing else in ``lc_hybrid_memory`` imports this module.

Two wirings share the turn logic below and the storage (:meth:`HybridMemory.add_messages`: one
INSERT and one cache script per write). A turn is one pass: :func:`load_turn` reads the window
and makes the input durable, :func:`plan_turn` splits that history around the input (once),
the agent runs, and its messages are stored with :func:`assign_turn_ids` in one write.
:func:`begin_turn` is the first two steps together. :func:`session_id_from` is the one rule for
finding the conversation of a run, for the middleware and for tools alike.

* :func:`agent_turn` wraps a compiled agent graph as a runnable for the (deprecated)
  ``RunnableWithMessageHistory`` with ``input_messages_key="messages"`` and
  ``history_messages_key="history"``. It returns only the new messages of the turn, so the
  wrapper stores exactly those (and not the whole conversation again).
* :class:`HybridMemoryMiddleware` is an ``AgentMiddleware`` for ``create_agent``: it loads the
  window and makes the input durable before the model runs (:func:`begin_turn`), and stores
  the turn's messages after it, with no wrapper at all.

Message ids (the idempotency scheme)
------------------------------------
The input message of a turn carries the caller's id (for SMS, the Twilio ``MessageSid``).
Every message the turn produces — AI tool-call messages, tool results, the final answer — gets
the id ``f"{input_id}:{n}"`` with ``n = 1, 2, 3...`` in order (:func:`turn_message_id`), so the
final answer is the highest ``n``. Consequences:

* a retried turn writes the same ids, and the store skips ids it already holds;
* a history that already contains the input (the caller stored it first to make it durable)
  is cut just before it, so the model never sees the input twice, nor inbound messages that
  arrived after it;
* the model sees each earlier turn's messages right after that turn's input, even where the
  table interleaves them with later inbound messages (:func:`in_turn_order`);
* a turn whose final answer is already stored is *complete*: it is answered from storage
  (replayed) without calling the model.

Messages without ids get fresh ones from LangGraph; such a turn cannot be recognised when
retried. :func:`begin_turn` recognises a retried turn whatever its age: an input missing from
the window is written at once, and only if the store already held it (a turn older than the
window) is the whole conversation read to find the turn.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any

from langchain_core.messages import AIMessage, BaseMessage, RemoveMessage, ToolMessage
from langchain_core.messages.utils import convert_to_messages
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda

from .errors import HybridMemoryError
from .history import DEFAULT_WINDOW
from .langgraph_recall import arecalled_for, recalled_for, with_recalled

try:  # the optional dependencies of this integration
    from langchain.agents.middleware import AgentMiddleware, AgentState, hook_config
    from langchain.agents.middleware.types import OmitFromInput, PrivateStateAttr
    from langgraph.config import get_config
    from langgraph.graph.message import REMOVE_ALL_MESSAGES
    from typing_extensions import NotRequired
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "lc_hybrid_memory.langgraph needs `langchain>=1.0` and `langgraph`: "
        "pip install 'lc-hybrid-memory[app]' (or langchain langgraph)"
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

# "<input id>:<n>", n >= 1: a message produced by the turn of that input.
_DERIVED_ID = re.compile(r"(.+):([1-9][0-9]*)")


class MissingSessionIdError(HybridMemoryError, ValueError):
    """The agent was run without a session id to load and store the conversation under."""


def session_id_from(context: Any, config: Mapping[str, Any] | None, key: str = "session_id") -> str:
    """The conversation a run belongs to: the run context's ``key`` (``context={"session_id":
    ...}`` or an object with that attribute), else ``config["configurable"][key]``.

    The one rule for everything inside an agent turn — :class:`HybridMemoryMiddleware` and an
    application's tools (a recall tool) — so that a run given both a context and a config
    stores its turn and searches its history in the same conversation.
    """
    found = context.get(key) if isinstance(context, Mapping) else getattr(context, key, None)
    if not found:
        found = ((config or {}).get("configurable") or {}).get(key)
    if not found:
        raise MissingSessionIdError(
            f"run the agent with context={{{key!r}: ...}} or "
            f"config={{'configurable': {{{key!r}: ...}}}}"
        )
    return str(found)


# -- ids ---------------------------------------------------------------------------------------


def turn_message_id(message_id: str, n: int) -> str:
    """The id of the ``n``-th message (1-based) produced by the turn of input ``message_id``."""
    return f"{message_id}:{n}"


def turn_message_ids(message_id: str, count: int = 1) -> list[str]:
    """The ids of the first ``count`` messages produced by the turn of ``message_id``.

    ``turn_message_ids("SM1", 3) == ["SM1:1", "SM1:2", "SM1:3"]``; the final answer of a
    complete turn is the message with the highest ``n``.
    """
    return [turn_message_id(message_id, n) for n in range(1, count + 1)]


def is_turn_message(message_id: str, message: BaseMessage) -> bool:
    """Whether ``message`` was produced by the turn of input ``message_id``."""
    return _turn_index(message_id, message) is not None


def _turn_index(message_id: str, message: BaseMessage) -> int | None:
    """``n`` if ``message`` was produced by the turn of ``message_id``, else ``None``."""
    prefix = f"{message_id}:"
    mid = message.id
    if not mid or not mid.startswith(prefix):
        return None
    suffix = mid[len(prefix) :]
    # Digits only: a provider id that merely starts with "<sid>:" is not one of ours.
    return int(suffix) if re.fullmatch(r"[1-9][0-9]*", suffix) else None


def assign_turn_ids(message_id: str, messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """Copies of the turn's new ``messages`` carrying the derived ids ``<message_id>:<n>``."""
    return [
        message.model_copy(update={"id": turn_message_id(message_id, n)})
        for n, message in enumerate(messages, start=1)
    ]


# -- planning a turn -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnPlan:
    """What a turn runs on, decided from the stored window and the turn's input messages."""

    context: list[BaseMessage]
    """Stored messages the model sees before the input (never the input itself)."""
    inputs: list[BaseMessage]
    """The turn's input messages (normally one ``HumanMessage``)."""
    anchor: str
    """The id the turn's other message ids derive from: the last input's id."""
    stored: list[BaseMessage] = field(default_factory=list)
    """Messages of this turn already in storage, in order (a retried turn)."""
    found: bool = False
    """Whether the input was found in the history (stored before)."""
    written: list[BaseMessage] = field(default_factory=list)
    """Inputs :func:`begin_turn` has just stored (they were not stored before)."""

    @property
    def reply(self) -> AIMessage | None:
        """The stored final answer when the turn is already complete, else ``None``."""
        if self.stored:
            last = self.stored[-1]
            if isinstance(last, AIMessage) and not last.tool_calls:
                return last
        return None


def in_turn_order(history: Sequence[BaseMessage]) -> list[BaseMessage]:
    """``history`` with each turn's produced messages moved right after the turn's input.

    The table keeps write order. When a caller stores inbound messages before their turns run
    (a webhook making them durable first), a turn's answer is written after later inbound
    messages: ``SM1, SM2, SM1:1, SM2:1``. Grouping by the derived ids restores the
    conversation as it happened, ``SM1, SM1:1, SM2, SM2:1``. Messages whose input is not in
    ``history`` (cut off by the window) and messages without derived ids keep their place.
    """
    ids = {m.id for m in history if m.id}
    ordered: list[BaseMessage] = []
    produced: dict[str, list[tuple[int, BaseMessage]]] = {}
    for message in history:
        match = _DERIVED_ID.fullmatch(message.id or "")
        if match and match.group(1) in ids:
            produced.setdefault(match.group(1), []).append((int(match.group(2)), message))
        else:
            ordered.append(message)
    if not produced:
        return list(history)
    result: list[BaseMessage] = []
    for message in ordered:
        result.append(message)
        if message.id in produced:
            result.extend(m for _, m in sorted(produced[message.id], key=lambda pair: pair[0]))
    return result


def plan_turn(
    history: Sequence[BaseMessage],
    inputs: Sequence[BaseMessage],
    *,
    window: int | None = None,
) -> TurnPlan:
    """Split the stored ``history`` around the turn's ``inputs``.

    The history is first put :func:`in_turn_order`. If an input is already stored (the caller
    made it durable first, or this is a retry), the context ends just before it: what follows
    it is this turn's own messages (derived ids: a retry) or later inbound messages and their
    turns, which this turn must neither see nor answer. ``window`` keeps the context to its
    last ``window`` messages (the history of a turn older than the window is the whole
    conversation, see :func:`load_turn`).
    """
    inputs = list(inputs)
    if not inputs:
        raise ValueError("a turn needs at least one input message")
    anchor = inputs[-1].id
    if not anchor:
        raise ValueError("the turn's input messages need ids (give HumanMessage an id=...)")
    input_ids = {m.id for m in inputs if m.id}
    ordered = in_turn_order(history)
    position = next((i for i, m in enumerate(ordered) if m.id in input_ids), None)
    if position is None:
        return TurnPlan(context=_tail(ordered, window), inputs=inputs, anchor=anchor)
    produced = [m for m in ordered[position:] if _turn_index(anchor, m) is not None]
    return TurnPlan(
        context=_tail(ordered[:position], window),
        inputs=inputs,
        anchor=anchor,
        stored=produced,
        found=True,
    )


def _tail(messages: list[BaseMessage], window: int | None) -> list[BaseMessage]:
    """The last ``window`` messages, not starting with tool results cut from their call."""
    if window is None:
        return messages
    tail = messages[-window:]
    while tail and isinstance(tail[0], ToolMessage):
        tail = tail[1:]
    return tail


@dataclass(frozen=True)
class LoadedTurn:
    """The stored history a turn is planned on, read with its input made durable."""

    history: list[BaseMessage]
    """The last ``window`` messages; the whole conversation if the input was stored before
    but is older than the window (a retry of an old turn)."""
    written: list[BaseMessage] = field(default_factory=list)
    """Inputs stored by this load (they were not stored before)."""


def _holds(history: Sequence[BaseMessage], inputs: Sequence[BaseMessage]) -> bool:
    ids = {m.id for m in inputs if m.id}
    return any(m.id in ids for m in history)


def _new(inputs: list[BaseMessage], flags: list[bool]) -> list[BaseMessage]:
    return [m for m, new in zip(inputs, flags, strict=True) if new]


def load_turn(
    memory: HybridMemory,
    session_id: str,
    inputs: Sequence[BaseMessage],
    window: int | None = DEFAULT_WINDOW,
) -> LoadedTurn:
    """Read the turn's history and make its input durable before any model runs.

    Reads the last ``window`` messages. If the input is among them (the caller stored it
    first, or the turn is retried) nothing is written. Otherwise the input is stored now, so
    a model that fails or a process that dies mid-turn never loses the user's message; if the
    store already held it (a turn older than the window), the whole conversation is read once
    to find that turn. Raises :class:`~lc_hybrid_memory.errors.StoreUnavailableError`.
    """
    inputs = list(inputs)
    history = memory.get_messages(session_id, window)
    if _holds(history, inputs):
        return LoadedTurn(history)
    flags = memory.add_messages(session_id, inputs)
    if not all(flags):  # stored before, beyond the window: a retry of an old turn
        history = memory.get_messages(session_id, None)
    return LoadedTurn(history, _new(inputs, flags))


async def aload_turn(
    memory: HybridMemory,
    session_id: str,
    inputs: Sequence[BaseMessage],
    window: int | None = DEFAULT_WINDOW,
) -> LoadedTurn:
    """Async :func:`load_turn`."""
    inputs = list(inputs)
    history = await memory.aget_messages(session_id, window)
    if _holds(history, inputs):
        return LoadedTurn(history)
    flags = await memory.aadd_messages(session_id, inputs)
    if not all(flags):
        history = await memory.aget_messages(session_id, None)
    return LoadedTurn(history, _new(inputs, flags))


def begin_turn(
    memory: HybridMemory,
    session_id: str,
    inputs: Sequence[BaseMessage],
    window: int | None = DEFAULT_WINDOW,
) -> TurnPlan:
    """:func:`load_turn`, then :func:`plan_turn` on what it read (the middleware's first step)."""
    loaded = load_turn(memory, session_id, inputs, window)
    plan = plan_turn(loaded.history, inputs, window=window)
    return replace(plan, written=loaded.written)


async def abegin_turn(
    memory: HybridMemory,
    session_id: str,
    inputs: Sequence[BaseMessage],
    window: int | None = DEFAULT_WINDOW,
) -> TurnPlan:
    """Async :func:`begin_turn`."""
    loaded = await aload_turn(memory, session_id, inputs, window)
    plan = plan_turn(loaded.history, inputs, window=window)
    return replace(plan, written=loaded.written)


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
