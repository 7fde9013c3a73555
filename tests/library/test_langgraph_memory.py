"""The library's LangGraph integration as a library user wires it (no ``app`` code).

* ``RunnableWithMessageHistory(agent_turn(agent), memory.history, ...)``: the README wiring;
* ``create_agent(..., middleware=[HybridMemoryMiddleware(memory)])``: the native one.

The facts about LangChain's naive wirings that motivated both: ``test_langchain_facts.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_core.tools import tool

from lc_hybrid_memory import HybridMemory
from lc_hybrid_memory.langgraph import (
    HybridMemoryMiddleware,
    MissingSessionIdError,
    agent_turn,
    in_turn_order,
    plan_turn,
)
from tests.support.agent_models import (
    ScriptedModel,
    add,
    adding_model,
    config,
    ids_of,
    stored_ids,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

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
