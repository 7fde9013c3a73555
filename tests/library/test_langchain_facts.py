"""Facts about LangChain itself that motivated the library's two wirings, measured on the
installed versions (they hold for LangChain, not for this library): a graph put straight into
RunnableWithMessageHistory re-sends the conversation, an unknown history key hides the past,
and RunnableWithMessageHistory only logs a failed write."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.runnables.history import RunnableWithMessageHistory

from lc_hybrid_memory import HybridChatMessageHistory, HybridMemory, StoreUnavailableError
from lc_hybrid_memory.langgraph import agent_turn
from tests.support.agent_models import add, adding_model, config, ids_of, stored_ids

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


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
