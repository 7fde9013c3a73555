"""The chat agent on real Redis and Postgres, through both memory wirings.

The LLM is langchain-core's ``GenericFakeChatModel`` (scripted answers) with ``bind_tools`` and
a record of every model input; tools are the app's real ones (current time, recall). Every
behaviour is checked for ``RunnableWithMessageHistory`` and the native middleware alike, and
through ``run_turn`` and ``arun_turn`` alike.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from pydantic import Field

from app.agent import ChatAgent, TurnResult, is_turn_message, turn_message_ids
from app.chat_models import (
    OFFLINE_LABEL,
    ModelConfigurationError,
    OfflineChatModel,
    build_model,
)
from app.settings import Settings
from lc_hybrid_memory import HybridMemory, StoreUnavailableError, codec

WIRINGS = ["runnable_with_history", "middleware"]
SETTINGS = Settings(system_prompt="You are a test agent.", memory_window=50)


class ScriptedModel(GenericFakeChatModel):
    """GenericFakeChatModel usable by agents (``bind_tools``) that records what it received."""

    received: list[list[BaseMessage]] = Field(default_factory=list)
    before_answer: Any = None  # called before each answer (fault injection)

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.received.append(list(messages))
        if self.before_answer is not None:
            self.before_answer()
        return super()._generate(messages, *args, **kwargs)


def time_call(call_id: str) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": "get_current_time", "args": {}, "id": call_id}])


def scripted(*answers: AIMessage | str) -> ScriptedModel:
    return ScriptedModel(messages=iter(answers))


def tool_turns(turns: int) -> ScriptedModel:
    """Per turn: a call of the current-time tool, then an answer."""
    answers: list[AIMessage | str] = []
    for n in range(1, turns + 1):
        answers += [time_call(f"call-{n}"), f"answer {n}"]
    return scripted(*answers)


class Runner:
    """``run_turn`` or ``arun_turn`` behind one awaitable call."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def __call__(self, agent: ChatAgent, sid: str, text: str, mid: str) -> TurnResult:
        if self.mode == "sync":
            return agent.run_turn(sid, text, message_id=mid)
        return await agent.arun_turn(sid, text, message_id=mid)


@pytest.fixture(params=WIRINGS)
def wiring(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["sync", "async"])
def run(request: pytest.FixtureRequest) -> Runner:
    return Runner(request.param)


@pytest.fixture
def sid() -> str:
    return f"conversation-{uuid.uuid4().hex[:8]}"


def stored(memory: HybridMemory, sid: str) -> list[BaseMessage]:
    """The conversation as the Postgres table holds it, oldest first."""
    return [codec.decode(row.payload) for row in memory.store.all(sid)]


def cached(memory: HybridMemory, sid: str) -> list[BaseMessage]:
    """The conversation's Redis list (empty on a miss)."""
    assert memory.cache is not None
    hit = memory.cache.read(sid)
    return [codec.decode(payload) for _, payload in hit.entries] if hit else []


def shape(messages: list[BaseMessage]) -> list[tuple[str, str | None]]:
    return [(type(m).__name__, m.id) for m in messages]


def turn_shape(mid: str) -> list[tuple[str, str | None]]:
    """Input, AI tool call, tool result, answer — with the derived ids."""
    ids = turn_message_ids(mid, 3)
    return [
        ("HumanMessage", mid),
        ("AIMessage", ids[0]),
        ("ToolMessage", ids[1]),
        ("AIMessage", ids[2]),
    ]


def forget_cache(client: redis.Redis, memory: HybridMemory) -> None:
    """What an expired TTL or a restarted Redis leaves: no key of the conversation."""
    assert memory.cache is not None
    keys = list(client.scan_iter(match=f"{memory.cache.prefix}*"))
    if keys:
        client.delete(*keys)


async def test_two_turns_store_exactly_each_turn_in_table_and_cache(
    memory: HybridMemory, wiring: str, run: Runner, sid: str
) -> None:
    agent = ChatAgent(memory, SETTINGS, model=tool_turns(2), wiring=wiring)  # type: ignore[arg-type]

    first = await run(agent, sid, "what time is it?", "SM1")
    second = await run(agent, sid, "and now?", "SM2")

    assert (first.reply, second.reply) == ("answer 1", "answer 2")
    assert not first.replayed and not second.replayed
    table = stored(memory, sid)
    assert shape(table) == turn_shape("SM1") + turn_shape("SM2")
    assert [m.text for m in table if isinstance(m, HumanMessage)] == [
        "what time is it?",
        "and now?",
    ]
    tool_results = [m for m in table if isinstance(m, ToolMessage)]
    assert [t.tool_call_id for t in tool_results] == ["call-1", "call-2"]
    assert all(t.name == "get_current_time" and "T" in t.text for t in tool_results)
    # The cache holds the same tail (the list was filled on the first read, then appended to).
    assert shape(cached(memory, sid)) == shape(table)
    # What each turn reports as newly stored is exactly its four messages.
    assert shape(first.new_messages) == turn_shape("SM1")
    assert shape(second.new_messages) == turn_shape("SM2")


async def test_second_turn_model_input_is_history_plus_input_once(
    memory: HybridMemory, wiring: str, run: Runner, sid: str
) -> None:
    model = tool_turns(2)
    agent = ChatAgent(memory, SETTINGS, model=model, wiring=wiring)  # type: ignore[arg-type]
    await run(agent, sid, "what time is it?", "SM1")
    await run(agent, sid, "and now?", "SM2")

    # Two model calls per turn; the second turn's first call sees turn 1 and the new input.
    first_call_of_turn_2 = model.received[2]
    assert first_call_of_turn_2[0].type == "system"
    assert shape(first_call_of_turn_2[1:]) == [*turn_shape("SM1"), ("HumanMessage", "SM2")]


async def test_restart_next_turn_sees_earlier_turns_from_postgres(
    memory_factory: Any, redis_client: redis.Redis, wiring: str, run: Runner, sid: str
) -> None:
    before = memory_factory()
    agent = ChatAgent(before, SETTINGS, model=tool_turns(2), wiring=wiring)
    await run(agent, sid, "my name is Ada", "SM1")
    await run(agent, sid, "what time is it?", "SM2")

    # Restart: new process objects, and Redis has forgotten everything.
    forget_cache(redis_client, before)
    after = memory_factory()
    model = scripted("hello again")
    agent = ChatAgent(after, SETTINGS, model=model, wiring=wiring)
    result = await run(agent, sid, "do you remember me?", "SM3")

    assert result.reply == "hello again"
    seen = model.received[0][1:]  # after the system prompt
    assert shape(seen) == [*turn_shape("SM1"), *turn_shape("SM2"), ("HumanMessage", "SM3")]
    assert seen[0].text == "my name is Ada"
    assert after.stats()["misses"] == 1  # read from Postgres once, then refilled
    assert shape(stored(after, sid))[-2:] == [("HumanMessage", "SM3"), ("AIMessage", "SM3:1")]


async def test_replaying_a_turn_stores_nothing_and_does_not_call_the_model(
    memory: HybridMemory, wiring: str, run: Runner, sid: str
) -> None:
    model = tool_turns(1)
    agent = ChatAgent(memory, SETTINGS, model=model, wiring=wiring)  # type: ignore[arg-type]
    first = await run(agent, sid, "what time is it?", "SM1")
    calls, rows = len(model.received), stored(memory, sid)

    again = await run(agent, sid, "what time is it?", "SM1")

    assert again == TurnResult(reply=first.reply, new_messages=[], replayed=True)
    assert len(model.received) == calls
    assert stored(memory, sid) == rows
    assert memory.stats()["duplicates_skipped"] == 0  # not even a write was attempted


async def test_replaying_a_turn_older_than_the_window(
    memory: HybridMemory, wiring: str, run: Runner, sid: str
) -> None:
    model = scripted("answer 1", "answer 2", "answer 3")
    narrow = Settings(memory_window=2)
    agent = ChatAgent(memory, narrow, model=model, wiring=wiring)  # type: ignore[arg-type]
    for n in (1, 2, 3):
        await run(agent, sid, f"message {n}", f"SM{n}")
    rows = stored(memory, sid)

    again = await run(agent, sid, "message 1", "SM1")  # SM1 is far outside the window

    assert again == TurnResult(reply="answer 1", new_messages=[], replayed=True)
    assert len(model.received) == 3
    assert stored(memory, sid) == rows


async def test_input_stored_by_the_app_first_is_seen_and_stored_once(
    memory: HybridMemory, wiring: str, run: Runner, sid: str
) -> None:
    model = scripted("earlier answer", "reply")
    agent = ChatAgent(memory, SETTINGS, model=model, wiring=wiring)  # type: ignore[arg-type]
    await run(agent, sid, "earlier", "SM0")
    memory.add_messages(sid, [HumanMessage("hello", id="SM1")])  # the webhook made it durable

    result = await run(agent, sid, "hello", "SM1")

    assert result.reply == "reply"
    assert shape(model.received[-1][1:]) == [
        ("HumanMessage", "SM0"),
        ("AIMessage", "SM0:1"),
        ("HumanMessage", "SM1"),
    ]
    assert shape(stored(memory, sid))[2:] == [("HumanMessage", "SM1"), ("AIMessage", "SM1:1")]
    # The input was already there: this turn newly stored only the answer.
    assert shape(result.new_messages) == [("AIMessage", "SM1:1")]


async def test_inbound_stored_ahead_of_their_turns_are_answered_in_order(
    memory: HybridMemory, wiring: str, run: Runner, sid: str
) -> None:
    """The webhook stores SM1 and SM2 before SM1's turn runs (the table then interleaves)."""
    model = scripted("answer 1", "answer 2")
    agent = ChatAgent(memory, SETTINGS, model=model, wiring=wiring)  # type: ignore[arg-type]
    memory.add_messages(sid, [HumanMessage("first", id="SM1"), HumanMessage("second", id="SM2")])

    await run(agent, sid, "first", "SM1")
    await run(agent, sid, "second", "SM2")

    assert [m.id for m in model.received[0][1:]] == ["SM1"]  # not yet the later SM2
    assert [m.id for m in model.received[1][1:]] == ["SM1", "SM1:1", "SM2"]
    assert [m.id for m in stored(memory, sid)] == ["SM1", "SM2", "SM1:1", "SM2:1"]


async def test_sessions_never_see_each_other(
    memory: HybridMemory, wiring: str, run: Runner
) -> None:
    model = scripted("to a", "to b", "to a again")
    agent = ChatAgent(memory, SETTINGS, model=model, wiring=wiring)  # type: ignore[arg-type]
    await run(agent, "session-a", "I am A", "A1")
    await run(agent, "session-b", "I am B", "B1")
    await run(agent, "session-a", "again", "A2")

    assert shape(model.received[1][1:]) == [("HumanMessage", "B1")]
    assert [m.id for m in model.received[2][1:]] == ["A1", "A1:1", "A2"]
    assert [m.id for m in stored(memory, "session-b")] == ["B1", "B1:1"]


async def test_model_failure_propagates_and_keeps_only_the_input(
    memory: HybridMemory, wiring: str, run: Runner, sid: str
) -> None:
    def boom() -> None:
        raise RuntimeError("provider down")

    model = scripted("never")
    model.before_answer = boom
    agent = ChatAgent(memory, SETTINGS, model=model, wiring=wiring)  # type: ignore[arg-type]

    with pytest.raises(RuntimeError, match="provider down"):
        await run(agent, sid, "hello?", "SM1")
    assert shape(stored(memory, sid)) == [("HumanMessage", "SM1")]

    # The retry of the same inbound message runs the turn and shows the input once.
    retry_model = scripted("sorry for the wait")
    agent = ChatAgent(memory, SETTINGS, model=retry_model, wiring=wiring)  # type: ignore[arg-type]
    result = await run(agent, sid, "hello?", "SM1")
    assert result.reply == "sorry for the wait"
    assert shape(retry_model.received[0][1:]) == [("HumanMessage", "SM1")]
    assert shape(stored(memory, sid)) == [("HumanMessage", "SM1"), ("AIMessage", "SM1:1")]


@pytest.fixture
def down_memory(private_servers: Any, memory_factory: Any) -> Iterator[HybridMemory]:
    yield memory_factory(
        redis_url=private_servers.redis_url, database_url=private_servers.database_url
    )


async def test_postgres_down_during_the_write_reaches_the_caller(
    private_servers: Any, down_memory: HybridMemory
) -> None:
    """For both wirings, sync and async: Postgres stops while the model thinks."""
    postgres = private_servers.postgres
    for wiring in WIRINGS:
        for mode in ("sync", "async"):
            sid = f"down-{wiring}-{mode}"
            model = scripted("an answer that must not be reported")
            model.before_answer = postgres.stop
            agent = ChatAgent(down_memory, SETTINGS, model=model, wiring=wiring)  # type: ignore[arg-type]
            try:
                with pytest.raises(StoreUnavailableError):
                    await Runner(mode)(agent, sid, "hello", "SM1")
            finally:
                postgres.start()
            # Only the input (made durable before the model ran) is in Postgres.
            assert shape(stored(down_memory, sid)) == [("HumanMessage", "SM1")]
            agent = ChatAgent(down_memory, SETTINGS, model=scripted("ok"), wiring=wiring)  # type: ignore[arg-type]
            result = await Runner(mode)(agent, sid, "hello", "SM1")
            assert result.reply == "ok"
            assert shape(stored(down_memory, sid)) == [
                ("HumanMessage", "SM1"),
                ("AIMessage", "SM1:1"),
            ]


def test_turn_ids_helpers() -> None:
    assert turn_message_ids("SM1", 3) == ["SM1:1", "SM1:2", "SM1:3"]
    assert is_turn_message("SM1", AIMessage("x", id="SM1:12"))
    assert not is_turn_message("SM1", AIMessage("x", id="SM12:1"))
    assert not is_turn_message("SM1", AIMessage("x", id="SM1:abc"))


async def test_offline_model_answers_from_memory_across_a_restart(
    memory_factory: Any, redis_client: redis.Redis, wiring: str, run: Runner, sid: str
) -> None:
    before = memory_factory()
    agent = ChatAgent(before, SETTINGS, wiring=wiring)  # the offline model, real tools
    hello = await run(agent, sid, "Hi! My name is Ada Lovelace.", "SM1")
    assert hello.reply.startswith(OFFLINE_LABEL)

    forget_cache(redis_client, before)
    after = memory_factory()
    agent = ChatAgent(after, SETTINGS, wiring=wiring)
    answer = await run(agent, sid, "What is my name?", "SM2")

    assert answer.reply == f"{OFFLINE_LABEL} Your name is Ada Lovelace."


async def test_offline_model_uses_the_time_and_recall_tools(
    memory_factory: Any, wiring: str, run: Runner, sid: str
) -> None:
    memory = memory_factory()
    narrow = Settings(memory_window=4)  # recall must reach beyond these 4 messages
    agent = ChatAgent(memory, narrow, wiring=wiring)  # type: ignore[arg-type]
    await run(agent, sid, "my favourite colour is teal", "SM1")
    for n in range(2, 5):
        await run(agent, sid, f"filler {n}", f"SM{n}")

    timed = await run(agent, sid, "what time is it?", "SM5")
    assert timed.reply.startswith(f"{OFFLINE_LABEL} The current time is ")
    assert [type(m).__name__ for m in timed.new_messages] == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
    ]

    recalled = await run(agent, sid, "recall colour", "SM6")
    assert "my favourite colour is teal" in recalled.reply
    # Messages the model already sees (the recall request itself) are not "older" ones.
    assert "recall colour" not in recalled.reply


def test_model_from_configuration() -> None:
    assert isinstance(build_model(Settings()), OfflineChatModel)
    assert isinstance(build_model(Settings(model_provider="offline")), OfflineChatModel)
    with pytest.raises(ModelConfigurationError, match="unknown MODEL_PROVIDER 'gemini'"):
        build_model(Settings(model_provider="gemini", model_name="x"))
    with pytest.raises(ModelConfigurationError, match="needs MODEL_NAME"):
        build_model(Settings(model_provider="anthropic"))
    if importlib.util.find_spec("langchain_ollama") is None:
        with pytest.raises(ModelConfigurationError, match=r"app\[ollama\]"):
            build_model(Settings(model_provider="ollama", model_name="llama3.2"))


def test_offline_model_is_deterministic_and_only_calls_bound_tools() -> None:
    model = OfflineChatModel()
    asked = [HumanMessage("my name is Ada"), AIMessage("hi"), HumanMessage("what's my name?")]
    assert (
        model.invoke(asked).text
        == model.invoke(asked).text
        == (f"{OFFLINE_LABEL} Your name is Ada.")
    )
    assert model.invoke("what time is it?").tool_calls == []  # no tools bound: no call
    with_tools = model.bind_tools(default_tools_for_names())
    call = with_tools.invoke("what time is it?").tool_calls
    assert [c["name"] for c in call] == ["get_current_time"]
    assert with_tools.invoke("recall about the trip").tool_calls[0]["args"] == {"query": "the trip"}


def default_tools_for_names() -> list[Any]:
    from app.tools import current_time_tool

    def recall(query: str) -> str:
        """Search older messages."""
        return query

    return [current_time_tool(), recall]


async def test_given_a_context_and_a_config_the_turn_is_stored_and_recalled_in_one_conversation(
    memory: HybridMemory, run: Runner
) -> None:
    """The middleware and ``recall`` read the session id by one rule (``session_id_from``)."""
    narrow = Settings(memory_window=2)  # recall must search beyond the window
    agent = ChatAgent(memory, narrow, wiring="middleware")  # the offline model, real tools
    ours, other = f"ours-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    await run(agent, ours, "my favourite colour is teal", "SM1")
    await run(agent, other, "my favourite colour is mauve", "SM2")
    for n in range(3, 5):
        await run(agent, ours, f"filler {n}", f"SM{n}")

    question = HumanMessage("recall colour", id="SM9")
    both = {
        "config": {"configurable": {"session_id": other}},
        "context": {"session_id": ours},
    }
    if run.mode == "sync":
        state = agent.graph.invoke({"messages": [question]}, **both)
    else:
        state = await agent.graph.ainvoke({"messages": [question]}, **both)

    answer = state["messages"][-1].text
    assert "teal" in answer and "mauve" not in answer  # recalled from the conversation...
    stored_in = {sid: [m.id for m in memory.get_messages(sid, None)] for sid in (ours, other)}
    assert "SM9" in stored_in[ours] and "SM9" not in stored_in[other]  # ...it was stored in
