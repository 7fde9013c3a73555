"""The library's LangGraph integration as a library user wires it (no ``app`` code).

* ``RunnableWithMessageHistory(agent_turn(agent), memory.history, ...)``: the README wiring;
* ``create_agent(..., middleware=[HybridMemoryMiddleware(memory)])``: the native one;
* and the measured facts about the naive wirings that motivated both.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_core.tools import tool
from pydantic import Field

from lc_hybrid_memory import HybridChatMessageHistory, HybridMemory, StoreUnavailableError, codec
from lc_hybrid_memory.langgraph import (
    HybridMemoryMiddleware,
    MissingSessionIdError,
    agent_turn,
    in_turn_order,
    plan_turn,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


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


@pytest.fixture
def sid() -> str:
    return f"lg-{uuid.uuid4().hex[:8]}"


TURN_1 = ["T1", "T1:1", "T1:2", "T1:3"]
TURN_2 = ["T2", "T2:1", "T2:2", "T2:3"]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_readme_runnable_with_message_history_wiring(
    memory: HybridMemory, mode: str, sid: str
) -> None:
    model = adding_model(2)
    chain = RunnableWithMessageHistory(
        agent_turn(create_agent(model, [add])),
        memory.history,
        input_messages_key="messages",
        history_messages_key="history",
    )
    outputs = []
    for mid in ("T1", "T2"):
        value = {"messages": [HumanMessage(f"sum {mid}", id=mid)]}
        if mode == "sync":
            outputs.append(chain.invoke(value, config(sid)))
        else:
            outputs.append(await chain.ainvoke(value, config(sid)))

    assert ids_of(outputs[0]) == TURN_1[1:]  # only the new messages come back
    assert outputs[1][-1].text == "it is 4"
    assert stored_ids(memory, sid) == TURN_1 + TURN_2
    assert ids_of(model.received[2]) == [*TURN_1, "T2"]
    assert memory.stats()["duplicates_skipped"] == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_native_middleware_wiring(memory: HybridMemory, mode: str, sid: str) -> None:
    model = adding_model(2)
    agent = create_agent(model, [add], middleware=[HybridMemoryMiddleware(memory)])
    states = []
    for mid in ("T1", "T2"):
        value = {"messages": [HumanMessage(f"sum {mid}", id=mid)]}
        if mode == "sync":  # the session id from the run context...
            states.append(agent.invoke(value, context={"session_id": sid}))
        else:  # ...or from the config
            states.append(await agent.ainvoke(value, config(sid)))

    assert ids_of(states[1]["messages"]) == TURN_1 + TURN_2
    assert states[1]["memory_turn"] == {"replayed": False, "stored_ids": TURN_2}
    assert stored_ids(memory, sid) == TURN_1 + TURN_2
    assert ids_of(model.received[2]) == [*TURN_1, "T2"]

    # A retried inbound message is answered from storage, without the model.
    calls = len(model.received)
    again = agent.invoke({"messages": [HumanMessage("sum T2", id="T2")]}, config(sid))
    assert again["memory_turn"] == {"replayed": True, "stored_ids": []}
    assert again["messages"][-1].text == "it is 4"
    assert len(model.received) == calls
    assert stored_ids(memory, sid) == TURN_1 + TURN_2


class FailingModel(ScriptedModel):
    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("provider down")


@tool
def broken() -> str:
    """A tool that fails."""
    raise RuntimeError("tool down")


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("failing", ["model", "tool"])
async def test_native_middleware_keeps_the_input_when_the_turn_fails(
    memory: HybridMemory, mode: str, failing: str, sid: str
) -> None:
    if failing == "model":
        model: ScriptedModel = FailingModel(messages=iter([]))
    else:
        call = {"name": "broken", "args": {}, "id": "call-1"}
        model = ScriptedModel(messages=iter([AIMessage("", tool_calls=[call])]))
    agent = create_agent(model, [broken], middleware=[HybridMemoryMiddleware(memory)])
    value = {"messages": [HumanMessage("hi", id="T1")]}
    with pytest.raises(RuntimeError, match="down"):
        if mode == "sync":
            agent.invoke(value, config(sid))
        else:
            await agent.ainvoke(value, config(sid))
    assert stored_ids(memory, sid) == ["T1"]  # the user's message, and nothing else


def test_middleware_without_session_id_fails_loudly(memory: HybridMemory) -> None:
    agent = create_agent(
        ScriptedModel(messages=iter(["x"])), [], middleware=[HybridMemoryMiddleware(memory)]
    )
    with pytest.raises(MissingSessionIdError):
        agent.invoke({"messages": [HumanMessage("hi", id="T1")]})


def test_plan_turn_cuts_the_history_before_a_stored_input() -> None:
    history = [
        HumanMessage("a", id="A"),
        AIMessage("b", id="A:1"),
        HumanMessage("c", id="C"),  # stored by the app first
        HumanMessage("d", id="D"),  # a later inbound message, not this turn's business
        AIMessage("partial", id="C:1", tool_calls=[{"name": "add", "args": {}, "id": "x"}]),
    ]
    plan = plan_turn(history, [HumanMessage("c", id="C")])
    assert ids_of(plan.context) == ["A", "A:1"]
    assert ids_of(plan.stored) == ["C:1"]
    assert plan.reply is None  # a tool call is not a final answer: the turn is not complete
    assert plan_turn(history, [HumanMessage("a", id="A")]).reply == history[1]


def test_in_turn_order_puts_each_turn_after_its_input() -> None:
    table = [
        AIMessage("cut off by the window", id="S0:2"),
        HumanMessage("1", id="S1"),
        HumanMessage("2", id="S2"),
        AIMessage("call", id="S1:1", tool_calls=[{"name": "add", "args": {}, "id": "x"}]),
        AIMessage("2nd answer", id="S2:1"),
    ]
    assert ids_of(in_turn_order(table)) == ["S0:2", "S1", "S1:1", "S2", "S2:1"]
    plan = plan_turn(table, [HumanMessage("2", id="S2")])
    assert ids_of(plan.context) == ["S0:2", "S1", "S1:1"]
    assert plan.reply is table[-1]


# -- the facts about the naive wirings (issue 3), measured on the installed versions --------------


def test_fact_graph_straight_into_rwmh_sends_the_whole_conversation_again(
    memory: HybridMemory, sid: str
) -> None:
    chain = RunnableWithMessageHistory(
        create_agent(adding_model(2), [add]), memory.history, input_messages_key="messages"
    )
    for mid in ("T1", "T2"):
        chain.invoke({"messages": [HumanMessage(f"sum {mid}", id=mid)]}, config(sid))
    # The graph's output is the whole conversation: each turn wrote its input twice, and turn 2
    # wrote all of turn 1 again (1 + 5 duplicates). Ids make the store skip those rows here; a
    # store without ids would hold them twice.
    assert memory.stats()["duplicates_skipped"] == 6
    assert len(stored_ids(memory, sid)) == 8


def test_fact_unknown_history_key_hides_the_past_from_the_model(
    memory: HybridMemory, sid: str
) -> None:
    model = adding_model(2)
    chain = RunnableWithMessageHistory(
        create_agent(model, [add]),
        memory.history,
        input_messages_key="messages",
        history_messages_key="history",
    )
    for mid in ("T1", "T2"):
        chain.invoke({"messages": [HumanMessage(f"sum {mid}", id=mid)]}, config(sid))
    assert ids_of(model.received[2]) == ["T2"]  # the graph ignored "history"


class FailingWrites(HybridChatMessageHistory):
    """A history whose write fails the way a Postgres outage makes it fail."""

    def add_messages(self, messages: Any) -> None:
        raise StoreUnavailableError("Postgres unavailable (simulated)")


def test_fact_rwmh_only_logs_a_failed_write(
    memory: HybridMemory, sid: str, caplog: pytest.LogCaptureFixture
) -> None:
    chain = RunnableWithMessageHistory(
        agent_turn(create_agent(adding_model(1), [add])),
        lambda session_id: FailingWrites(session_id, memory),
        input_messages_key="messages",
        history_messages_key="history",
    )
    with caplog.at_level(logging.WARNING):
        out = chain.invoke({"messages": [HumanMessage("sum", id="T1")]}, config(sid))
    assert out[-1].text == "it is 2"  # reported as a success...
    assert stored_ids(memory, sid) == []  # ...but nothing was stored
    assert "StoreUnavailableError" in caplog.text
