"""The Postgres tier: query plans at scale, application-owned tables, connection costs."""

from __future__ import annotations

import json
import threading

import pytest
import redis
import sqlalchemy as sa
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from lc_hybrid_memory import HybridMemory, InvalidSessionIdError, MessageTable
from tests.support.servers import MemoryFactory

BACKGROUND_ROWS = 1_000_000


def plan_of(conn: sa.Connection, sql: str, params: dict) -> dict:
    return conn.execute(sa.text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"), params).scalar()[
        0
    ]["Plan"]


def nodes(plan: dict) -> list[dict]:
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(nodes(child))
    return found


def load(conn: sa.Connection, table: str, conversation: str, count: int) -> None:
    conn.execute(
        sa.text(
            f"INSERT INTO {table} (conversation_id, role, content, payload) "
            f"SELECT {conversation}, 'user', 'm' || i, '{PAYLOAD}' "
            f"FROM generate_series(1, {count}) i"
        )
    )


PAYLOAD = '{"type": "human", "data": {"content": "x"}}'


@pytest.mark.slow
async def test_recent_reads_only_the_window_on_a_million_rows(
    memory: HybridMemory, sql_engine: sa.Engine
) -> None:
    """O(limit) for old, new, and long conversations, whatever the planner's statistics say.

    The background is 1 M rows of 50 000 short conversations (20 messages on average), and
    the long conversations are written after ANALYZE: the planner then believes they hold ~20
    rows — the case where it would read a whole conversation through a bitmap scan.
    """
    table = memory.store.mapping.name
    with sql_engine.connect() as conn:
        load(conn, table, "'old'", 200)
        load(conn, table, "'old-long'", 50_000)  # a large share of the table, all old rows
        load(conn, table, "'bg-' || (i % 50000)", BACKGROUND_ROWS)
        load(conn, table, "'new'", 200)
        conn.execute(sa.text(f"ANALYZE {table}"))
        load(conn, table, "'long-new'", 20_000)
        load(conn, table, "'bg-7'", 20_000)  # an old conversation that grew a lot since

    compiled = memory.store.sql.recent.params(conversation_key="old", limit=51).compile(
        dialect=sql_engine.dialect, compile_kwargs={"literal_binds": True}
    )
    sql = str(compiled).replace("'old'", ":sid")
    index = f"{table}_pkey"  # (conversation_id, id)
    # The store's own pool, with its session settings, is what production uses.
    with memory.store.engine.connect() as conn:
        for sid in ("old", "old-long", "new", "long-new", "bg-7"):
            plan = plan_of(conn, sql, {"sid": sid})
            scans = [n for n in nodes(plan) if "Scan" in n["Node Type"]]
            assert [s["Node Type"] for s in scans] == ["Index Scan"], json.dumps(plan)
            scan = scans[0]
            assert scan["Index Name"] == index and scan["Scan Direction"] == "Backward"
            assert scan.get("Rows Removed by Filter", 0) == 0
            assert scan["Actual Rows"] == 51  # it stops after the window
            assert scan["Shared Hit Blocks"] + scan.get("Shared Read Blocks", 0) < 100
        # The generic plan of a prepared statement (asyncpg prepares) keeps the index too.
        conn.execute(sa.text("SET plan_cache_mode = force_generic_plan"))
        conn.execute(sa.text(f"PREPARE recent_q(text) AS {sql.replace(':sid', '$1')}"))
        for sid in ("old", "old-long", "long-new"):
            raw = conn.execute(
                sa.text(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE recent_q('{sid}')")
            ).scalar()
            scan = next(n for n in nodes(raw[0]["Plan"]) if "Scan" in n["Node Type"])
            assert (scan["Index Name"], scan["Actual Rows"]) == (index, 51)
        conn.execute(sa.text("DEALLOCATE recent_q"))
        conn.execute(sa.text("RESET plan_cache_mode"))
    # The async pool carries the same setting.
    async with (await memory.store.aengine()).connect() as aconn:
        setting = await aconn.execute(sa.text("SHOW enable_bitmapscan"))
        assert setting.scalar() == "off"

    assert [m.content for m in memory.get_messages("old", 3)] == ["x", "x", "x"]
    assert len(memory.get_messages("long-new")) == 50


def test_works_on_an_application_owned_table(
    memory_factory: MemoryFactory, sql_engine: sa.Engine, unique: str
) -> None:
    name = f"chat_messages_{unique}"
    with sql_engine.connect() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE {name} (pk bigserial PRIMARY KEY, thread_id bigint NOT NULL, "
                "sender text NOT NULL, body text NOT NULL)"
            )
        )
        conn.execute(sa.text(f"CREATE INDEX ON {name} (thread_id, pk)"))
        conn.execute(
            sa.text(
                f"INSERT INTO {name} (thread_id, sender, body) VALUES "
                "(7, 'user', 'my name is Ana'), (7, 'assistant', 'hi Ana'), (8, 'user', 'other')"
            )
        )
    mapping = MessageTable(
        name=name,
        id="pk",
        conversation_id="thread_id",
        conversation_id_type="bigint",
        role="sender",
        content="body",
        payload=None,
        message_uid=None,
        provider_sid=None,
        created_at=None,
    )
    memory = memory_factory(table=mapping)
    try:
        history = memory.history("7")
        assert history.messages == [HumanMessage("my name is Ana"), AIMessage("hi Ana")]
        history.add_messages([HumanMessage("again"), AIMessage("yes")])
        assert [m.content for m in memory.history("7").messages][-2:] == ["again", "yes"]
        memory.cache.invalidate("7")
        assert [m.content for m in memory.history("7").messages] == [
            "my name is Ana",
            "hi Ana",
            "again",
            "yes",
        ]
        with sql_engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT sender, body FROM {name} WHERE thread_id = 7"))
            assert [tuple(r) for r in rows][-2:] == [("user", "again"), ("assistant", "yes")]
        with pytest.raises(InvalidSessionIdError, match="not a valid bigint"):
            memory.history("seven").messages  # noqa: B018
    finally:
        with sql_engine.connect() as conn:
            conn.execute(sa.text(f"DROP TABLE {name}"))


def test_histories_cost_no_connection_and_no_round_trip(
    memory: HybridMemory, redis_client: redis.Redis
) -> None:
    connects = []
    sa.event.listen(memory.store.engine, "connect", lambda *a: connects.append(1))
    memory.add_messages("cheap", [SystemMessage("s"), HumanMessage("h")])
    memory.history("cheap").messages  # noqa: B018  (warm: pool and list exist)

    before = redis_client.info("stats")
    for _ in range(500):
        memory.history("cheap")  # what RunnableWithMessageHistory does per call
    after = redis_client.info("stats")
    # The only command between the two snapshots is the second INFO itself.
    assert after["total_commands_processed"] - before["total_commands_processed"] == 1

    before = redis_client.info("stats")
    for _ in range(200):
        assert len(memory.history("cheap").messages) == 2
    after = redis_client.info("stats")
    assert after["total_connections_received"] == before["total_connections_received"]
    assert after["total_commands_processed"] - before["total_commands_processed"] == 201
    assert connects == [] or len(connects) == 1  # at most the first pooled connection


def test_create_schema_is_idempotent_and_safe_concurrently(memory: HybridMemory) -> None:
    errors: list[BaseException] = []

    def create() -> None:
        try:
            memory.create_schema()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    memory.add_messages("after-schema", [HumanMessage("ok")])
    assert memory.store.count("after-schema") == 1


def test_works_on_a_hash_partitioned_table(
    memory_factory: MemoryFactory, sql_engine: sa.Engine, unique: str
) -> None:
    """Every query filters on conversation_id, so partitioning by it (or distributing it with
    Citus) routes each call to one partition; the keys include the partition column."""
    name = f"pmessages_{unique}"
    with sql_engine.connect() as conn:
        conn.execute(sa.text(f"CREATE SEQUENCE {name}_id_seq"))
        conn.execute(
            sa.text(
                f"CREATE TABLE {name} (id bigint NOT NULL DEFAULT nextval('{name}_id_seq'), "
                "conversation_id text NOT NULL, role text NOT NULL, content text NOT NULL, "
                "payload jsonb NOT NULL, message_uid text, provider_sid text, "
                "created_at timestamptz NOT NULL DEFAULT now(), "
                "PRIMARY KEY (conversation_id, id), UNIQUE (conversation_id, message_uid)) "
                "PARTITION BY HASH (conversation_id)"
            )
        )
        for i in range(4):
            conn.execute(
                sa.text(
                    f"CREATE TABLE {name}_p{i} PARTITION OF {name} "
                    f"FOR VALUES WITH (MODULUS 4, REMAINDER {i})"
                )
            )
    memory = memory_factory(table=MessageTable(name=name))  # create_schema: nothing to create
    try:
        for n in range(8):
            sid = f"p-{n}"
            assert memory.add_messages(sid, [HumanMessage(sid, id="x"), AIMessage("ok")]) == [
                True,
                True,
            ]
            assert memory.add_messages(sid, [HumanMessage(sid, id="x")]) == [False]
            memory.cache.invalidate(sid)
            assert [m.content for m in memory.get_messages(sid)] == [sid, "ok"]
        with sql_engine.connect() as conn:
            counts = [
                conn.execute(sa.text(f"SELECT count(*) FROM {name}_p{i}")).scalar_one()
                for i in range(4)
            ]
            plan = conn.execute(
                sa.text(
                    f"EXPLAIN (FORMAT JSON) SELECT id FROM {name} WHERE conversation_id = 'p-1' "
                    "ORDER BY conversation_id DESC, id DESC LIMIT 51"
                )
            ).scalar()
        assert sum(counts) == 16 and sum(1 for c in counts if c) >= 2  # spread over partitions
        scanned = {n["Relation Name"] for n in nodes(plan[0]["Plan"]) if "Relation Name" in n}
        assert len(scanned) == 1  # pruned to the conversation's partition
        memory.clear("p-1")
        assert memory.get_messages("p-1") == []
    finally:
        with sql_engine.connect() as conn:
            conn.execute(sa.text(f"DROP TABLE {name}"))
            conn.execute(sa.text(f"DROP SEQUENCE {name}_id_seq"))


async def test_provider_sid_is_recorded_on_a_stored_message(memory: HybridMemory) -> None:
    memory.add_messages("sids", [HumanMessage("in", id="SM1"), AIMessage("out", id="SM1:1")])
    assert memory.store.set_provider_sid("sids", "SM1:1", "SMreply") is True
    assert await memory.store.aset_provider_sid("sids", "missing", "x") is False
    t = memory.store.table
    with memory.store.engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.message_uid, t.c.provider_sid).order_by(t.c.id)).all()
    assert [tuple(r) for r in rows] == [("SM1", None), ("SM1:1", "SMreply")]


def test_window_on_an_app_table_with_a_primary_key_on_id_reads_only_the_window(
    memory_factory: MemoryFactory, sql_engine: sa.Engine, unique: str
) -> None:
    """An application's own table often has PRIMARY KEY (id): the planner must still not walk
    it backwards for an old conversation holding a large share of the rows."""
    name = f"app_messages_{unique}"
    with sql_engine.connect() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE {name} (id bigserial PRIMARY KEY, conversation_id text NOT NULL, "
                "role text NOT NULL, content text NOT NULL, payload jsonb NOT NULL, "
                "message_uid text, provider_sid text, created_at timestamptz NOT NULL "
                "DEFAULT now(), UNIQUE (conversation_id, message_uid))"
            )
        )
        conn.execute(sa.text(f"CREATE INDEX {name}_cid_id ON {name} (conversation_id, id)"))
        load(conn, name, "'old-long'", 20_000)  # the oldest rows
        load(conn, name, "'bg-' || (i % 10000)", 200_000)  # then everybody else's
        conn.execute(sa.text(f"ANALYZE {name}"))
    memory = memory_factory(table=MessageTable(name=name))
    try:
        compiled = memory.store.sql.recent.params(conversation_key="old-long", limit=51).compile(
            dialect=sql_engine.dialect, compile_kwargs={"literal_binds": True}
        )
        with memory.store.engine.connect() as conn:
            plan = plan_of(conn, str(compiled), {})
        scans = [n for n in nodes(plan) if "Scan" in n["Node Type"]]
        assert [(s["Index Name"], s["Actual Rows"]) for s in scans] == [(f"{name}_cid_id", 51)], (
            json.dumps(plan)
        )
        assert scans[0].get("Rows Removed by Filter", 0) == 0
        assert len(memory.get_messages("old-long")) == 50
        assert len(memory.get_messages("old-long", None)) == 20_000
    finally:
        with sql_engine.connect() as conn:
            conn.execute(sa.text(f"DROP TABLE {name}"))
