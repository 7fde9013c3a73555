"""The async API from any event loop: successive asyncio.run() calls, function-scoped
pytest-asyncio loops sharing one memory, threads with their own loops, loops closed without
shutting down — and no connection left behind."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from lc_hybrid_memory import HybridMemory, MessageTable, sync_url
from tests.support.servers import MemoryFactory, PrivateServers


@pytest.fixture(scope="module")
def shared_memory(servers) -> Iterator[HybridMemory]:
    """One memory for the module's tests, each of which runs in its own event loop."""
    memory = HybridMemory.from_urls(
        redis_url=servers.redis_url,
        database_url=servers.database_url,
        table=MessageTable(name="messages_event_loops"),
        prefix="test:event-loops:",
    )
    memory.create_schema()
    yield memory
    memory.clear("loop-a")
    memory.clear("loop-b")
    memory.close()


async def test_first_function_scoped_loop(shared_memory: HybridMemory) -> None:
    await shared_memory.aclear("loop-a")
    await shared_memory.aadd_messages("loop-a", [HumanMessage("from loop 1")])
    assert [m.content for m in await shared_memory.aget_messages("loop-a")] == ["from loop 1"]


async def test_second_function_scoped_loop(shared_memory: HybridMemory) -> None:
    await shared_memory.aadd_messages("loop-a", [HumanMessage("from loop 2")])
    contents = [m.content for m in await shared_memory.aget_messages("loop-a")]
    assert contents[-1] == "from loop 2"
    assert await shared_memory.asearch("loop-a", "loop") != []


def client_backends(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        ).scalar_one()


def redis_clients(client: redis.Redis) -> int:
    return int(client.info("clients")["connected_clients"])


def test_successive_asyncio_run_calls_work_and_leak_no_connection(
    private_servers: PrivateServers, memory_factory: MemoryFactory
) -> None:
    memory = memory_factory(
        redis_url=private_servers.redis_url, database_url=private_servers.database_url
    )
    probe = sa.create_engine(sync_url(private_servers.database_url), poolclass=sa.NullPool)
    raw = redis.Redis.from_url(private_servers.redis_url)
    memory.add_messages("runs", [HumanMessage("sync first")])
    postgres_before, redis_before = client_backends(probe), redis_clients(raw)

    async def turn(i: int) -> list[str]:
        await memory.aadd_messages("runs", [HumanMessage(f"q{i}"), AIMessage(f"a{i}")])
        return [m.content for m in await memory.aget_messages("runs", window=2)]

    for i in range(100):
        assert asyncio.run(turn(i)) == [f"q{i}", f"a{i}"]

    assert client_backends(probe) <= postgres_before + 1
    assert redis_clients(raw) <= redis_before + 1
    assert len(memory.history("runs", window=None).messages) == 201  # sync still fine
    raw.close()
    probe.dispose()


def test_a_loop_closed_without_shutdown_does_not_break_the_next_one(
    memory: HybridMemory,
) -> None:
    loop = asyncio.new_event_loop()
    loop.run_until_complete(memory.aadd_messages("closed", [HumanMessage("one")]))
    loop.close()  # no shutdown_asyncgens: the pools of that loop are abandoned
    contents = asyncio.run(memory.aget_messages("closed"))
    assert [m.content for m in contents] == ["one"]


def test_threads_with_their_own_loops_at_the_same_time(memory: HybridMemory) -> None:
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        async def turns() -> None:
            barrier.wait()
            for i in range(20):
                await memory.aadd_messages(name, [HumanMessage(f"{name}-{i}")])
                await memory.aget_messages(name)

        try:
            asyncio.run(turns())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for i in range(3):
        contents = [m.content for m in memory.history(f"t{i}").messages]
        assert contents == [f"t{i}-{n}" for n in range(20)]


def test_runnable_with_message_history_ainvoke_and_astream_across_loops(
    memory: HybridMemory,
) -> None:
    model = GenericFakeChatModel(messages=iter([AIMessage(f"reply {i}") for i in range(3)]))
    prompt = ChatPromptTemplate.from_messages(
        [MessagesPlaceholder("history"), ("human", "{question}")]
    )

    def history(session_id: str) -> BaseChatMessageHistory:
        return memory.history(session_id)

    chain = RunnableWithMessageHistory(
        prompt | model,
        history,
        input_messages_key="question",
        history_messages_key="history",
    )
    config = {"configurable": {"session_id": "rwmh"}}
    asyncio.run(chain.ainvoke({"question": "one"}, config=config))
    asyncio.run(chain.ainvoke({"question": "two"}, config=config))

    async def stream() -> str:
        return "".join(
            [chunk.content async for chunk in chain.astream({"question": "three"}, config)]
        )

    assert asyncio.run(stream()) == "reply 2"
    contents = [m.content for m in memory.history("rwmh").messages]
    assert contents == ["one", "reply 0", "two", "reply 1", "three", "reply 2"]
