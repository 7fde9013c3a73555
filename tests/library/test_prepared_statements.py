"""The hot statements (a turn's INSERT, a miss's SELECT) run prepared on the drivers: they are
really prepared once per connection, survive a connection that lost them, can be turned off,
and fail with the library's errors on both APIs."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from langchain_core.messages import AIMessage, HumanMessage

from lc_hybrid_memory import (
    HybridMemory,
    InvalidMessageError,
    MessageTable,
    StoreConfigurationError,
)
from lc_hybrid_memory.records import EncodedMessage
from tests.support.servers import MemoryFactory

ONE_CONNECTION = {"pool_size": 1, "max_overflow": 0}


def prepared_names(memory: HybridMemory) -> set[str]:
    """The statements prepared on the sync pool's only connection."""
    with memory.store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT name FROM pg_prepared_statements").all()
    return {name for (name,) in rows}


async def aprepared_statements(memory: HybridMemory) -> list[str]:
    """The SQL of the statements prepared on this loop's only async connection."""
    async with (await memory.store.aengine()).connect() as conn:
        raw = await conn.get_raw_connection()
        rows = await raw.driver_connection.fetch("SELECT statement FROM pg_prepared_statements")
    return [row[0] for row in rows]


def turn(memory: HybridMemory, sid: str, n: int) -> list[str]:
    memory.cache.invalidate(sid)  # every read below is a miss: the SELECT runs
    memory.add_messages(sid, [HumanMessage(f"q{n}"), AIMessage(f"a{n}")])
    memory.cache.invalidate(sid)
    return [m.content for m in memory.get_messages(sid)]


def test_the_write_and_the_miss_are_prepared_once_per_connection(
    memory_factory: MemoryFactory,
) -> None:
    memory = memory_factory(engine_kwargs=ONE_CONNECTION)
    assert prepared_names(memory) == set()
    assert turn(memory, "c", 1) == ["q1", "a1"]
    names = prepared_names(memory)
    assert len(names) == 2 and all(name.startswith("lchm_") for name in names)
    for n in range(2, 9):  # past the server's five custom plans
        assert turn(memory, "c", n)[-2:] == [f"q{n}", f"a{n}"]
    assert prepared_names(memory) == names  # executed again, not prepared again
    with memory.store.engine.connect() as conn:
        plans = conn.exec_driver_sql(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
        ).all()
    # Planned once each: the generic plan (which reads only the rows touched) is forced, as
    # the server would otherwise plan the INSERT again on every call.
    assert sorted(plans) == [(8, 0), (8, 0)]


def test_a_connection_that_lost_its_prepared_statements_prepares_them_again(
    memory_factory: MemoryFactory,
) -> None:
    memory = memory_factory(engine_kwargs=ONE_CONNECTION)
    turn(memory, "c", 1)
    with memory.store.engine.connect() as conn:  # what a pooler's DISCARD ALL does
        conn.exec_driver_sql("DEALLOCATE ALL")
    assert prepared_names(memory) == set()
    assert turn(memory, "c", 2) == ["q1", "a1", "q2", "a2"]
    assert len(prepared_names(memory)) == 2


async def test_async_statements_are_prepared_and_survive_a_deallocation(
    memory_factory: MemoryFactory,
) -> None:
    memory = memory_factory(engine_kwargs=ONE_CONNECTION)
    await memory.aadd_messages("c", [HumanMessage("q1"), AIMessage("a1")])
    await memory.cache.ainvalidate("c")
    assert [m.content for m in await memory.aget_messages("c")] == ["q1", "a1"]
    statements = await aprepared_statements(memory)
    assert any("INSERT INTO" in sql for sql in statements)
    assert any(sql.startswith("SELECT") and "LIMIT $2" in sql for sql in statements)
    async with (await memory.store.aengine()).connect() as conn:
        raw = await conn.get_raw_connection()
        await raw.driver_connection.execute("DEALLOCATE ALL")
    await memory.aadd_messages("c", [HumanMessage("q2")])
    await memory.cache.ainvalidate("c")
    assert [m.content for m in await memory.aget_messages("c")] == ["q1", "a1", "q2"]


async def test_prepared_statements_can_be_turned_off(memory_factory: MemoryFactory) -> None:
    memory = memory_factory(engine_kwargs=ONE_CONNECTION, prepared_statements=False)
    assert turn(memory, "c", 1) == ["q1", "a1"]
    assert prepared_names(memory) == set()
    await memory.aadd_messages("c", [HumanMessage("q2")])
    await memory.cache.ainvalidate("c")
    assert [m.content for m in await memory.aget_messages("c")] == ["q1", "a1", "q2"]
    assert await aprepared_statements(memory) == []  # unnamed statements only


@pytest.mark.parametrize("prepared", [True, False])
async def test_data_postgres_refuses_is_an_invalid_message_on_both_apis(
    memory_factory: MemoryFactory, prepared: bool
) -> None:
    memory = memory_factory(prepared_statements=prepared)
    broken = EncodedMessage(uid="x", role="human", content="hi", payload='{"s": "TOPSECRET')
    with pytest.raises(InvalidMessageError, match="SQLSTATE 22") as sync_error:
        memory.store.append("c", [broken])
    with pytest.raises(InvalidMessageError, match="SQLSTATE 22") as async_error:
        await memory.store.aappend("c", [broken])
    for error in (sync_error.value, async_error.value):
        assert error.__cause__ is None and "TOPSECRET" not in str(error)
    assert memory.get_messages("c") == []


async def test_a_missing_table_says_how_to_create_it_on_both_apis(
    memory_factory: MemoryFactory, unique: str
) -> None:
    memory = memory_factory(table=MessageTable(name=f"dropped_{unique}"))
    with memory.store.engine.connect() as conn:
        conn.execute(sa.text(f'DROP TABLE "dropped_{unique}"'))
    with pytest.raises(StoreConfigurationError, match="create_schema"):
        await memory.aadd_messages("c", [HumanMessage("hi")])
    with pytest.raises(StoreConfigurationError, match="does not exist"):
        await memory.aget_messages("c")
    with pytest.raises(StoreConfigurationError, match="create_schema"):
        memory.add_messages("c", [HumanMessage("hi")])


def row_ids(memory: HybridMemory, sid: str) -> list[int]:
    with memory.store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(memory.store.table.c.id)
            .where(memory.store.table.c.conversation_id == sid)
            .order_by(memory.store.table.c.id)
        ).all()
    return [row_id for (row_id,) in rows]


@pytest.mark.parametrize("api", ["sync", "async"])
async def test_every_row_reports_the_row_before_it_also_on_retries(
    memory_factory: MemoryFactory, api: str
) -> None:
    memory = memory_factory(engine_kwargs=ONE_CONNECTION)

    async def write(messages: list) -> list:
        encoded = memory._policy.encode(messages)
        if api == "sync":
            return memory.store.append("c", encoded)
        return await memory.store.aappend("c", encoded)

    sent: list[HumanMessage] = []
    for n in range(8):  # past the 5 custom plans: the prepared statement's generic plan too
        fresh = [HumanMessage(f"m{n}-{i}", id=f"m{n}-{i}") for i in range(3)]
        retried = sent[-2:]  # stored already: reported with their ids, not inserted again
        written = await write([*retried, *fresh])
        sent += fresh
        ids = row_ids(memory, "c")
        assert [w.id for w in written] == ids[-5:] if retried else ids
        assert [w.new for w in written] == [False] * len(retried) + [True] * 3
        for w in written:
            position = ids.index(w.id)
            assert w.before_id == (ids[position - 1] if position else 0)


def test_a_write_reads_the_rows_it_writes_not_the_conversation(
    memory_factory: MemoryFactory,
) -> None:
    memory = memory_factory(engine_kwargs=ONE_CONNECTION)
    memory.add_messages("long", [HumanMessage(f"m{i}", id=f"m{i}") for i in range(3000)])
    memory.add_messages("long", [HumanMessage("warm")])  # prepares the INSERT
    encoded = memory._policy.encode([HumanMessage("a", id="m5"), HumanMessage("b", id="new")])
    params, _ = memory.store.sql.insert_params("long", encoded)
    statement = memory.store._driver_statement(memory.store.sql.insert)
    params_list = statement.values(params)
    with memory.store.engine.connect() as conn:  # the pool's generic plan, as a write runs it
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement.execute_sql, params_list)
        (plan,) = cursor.fetchone()[0]

    def rows_read(node: dict) -> int:
        own = node.get("Actual Rows", 0) * node.get("Actual Loops", 1)
        return max([own, *(rows_read(child) for child in node.get("Plans", []))])

    assert rows_read(plan["Plan"]) <= 4  # two incoming rows, each looked up once
