"""HybridChatMessageHistory on real Redis and Postgres: read-through, write-through, windows.

Every behaviour is checked through the sync and the async API alike (``api`` fixture), on a
single Redis and again on a real 3-master Redis Cluster (``cache_server`` fixture), where every
script must stay on one slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from redis.cluster import RedisCluster

from lc_hybrid_memory import HybridMemory, InvalidSessionIdError
from lc_hybrid_memory.testing import ServerURLs
from tests.support.memory_checks import Api, assert_cache_is_tail, cached, table_rows
from tests.support.servers import MemoryFactory


@pytest.fixture(params=["redis", "redis-cluster"])
def cache_server(request: pytest.FixtureRequest) -> str:
    """The cache's server: the session's Redis, or the session's embedded Redis Cluster."""
    if request.param == "redis":
        return request.getfixturevalue("servers").redis_url
    return request.getfixturevalue("redis_cluster").url


@pytest.fixture
def redis_client(cache_server: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    single = cache_server == request.getfixturevalue("servers").redis_url
    client = redis.Redis.from_url(cache_server) if single else RedisCluster.from_url(cache_server)
    yield client
    client.close()


@pytest.fixture
def memory(memory_factory: MemoryFactory, cache_server: str, servers: ServerURLs) -> HybridMemory:
    return memory_factory(redis_url=cache_server, cluster=cache_server != servers.redis_url)


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, memory: HybridMemory) -> Api:
    return Api(memory, request.param)


def every_kind_of_message() -> list[BaseMessage]:
    return [
        SystemMessage("You are terse."),
        HumanMessage("héllo wörld — 你好 🌍", id="h-1", name="maria"),
        AIMessage(
            "",
            id="ai-1",
            tool_calls=[{"name": "clock", "args": {"tz": "UTC", "n": [1, 2]}, "id": "call-1"}],
            additional_kwargs={"refusal": None, "nested": {"a": [1, {"b": True}]}},
            response_metadata={"model_name": "x-1", "finish_reason": "tool_calls"},
            usage_metadata={"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
        ),
        ToolMessage("12:00", tool_call_id="call-1", name="clock", artifact={"raw": 43200}),
        ChatMessage("custom role speaking", role="moderator"),
        HumanMessage(
            [
                {"type": "text", "text": "what is in this picture?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ]
        ),
        AIMessageChunk("partial str", id="chunk-1"),
        HumanMessage("NUL \x00 inside and \\u0000 literal"),
        HumanMessage(""),
        AIMessage("x" * 100_000),
        HumanMessage("same"),
        HumanMessage("same"),  # equal messages without ids are both kept
    ]


async def test_empty_conversation_is_a_cached_empty_list(
    api: Api, memory: HybridMemory, redis_client: redis.Redis
) -> None:
    assert await api.get("empty") == []
    assert await api.get("empty") == []
    stats = memory.stats()
    assert (stats["misses"], stats["hits"], stats["fills"]) == (1, 1, 1)
    assert cached(memory, redis_client, "empty") == [b"#1c"]


async def test_write_goes_to_postgres_then_cache_and_reads_hit(
    api: Api, memory: HybridMemory, redis_client: redis.Redis
) -> None:
    await api.get("c1")  # warm the (empty) cache
    await api.add("c1", [HumanMessage("hi"), AIMessage("hello")])
    assert [m.content for m in await api.get("c1")] == ["hi", "hello"]
    assert [m.content for m in await api.get("c1")] == ["hi", "hello"]
    stats = memory.stats()
    assert stats["misses"] == 1 and stats["hits"] == 2
    assert len(table_rows(memory, "c1")) == 2
    assert_cache_is_tail(memory, redis_client, "c1")


async def test_write_never_creates_a_partial_cache_list(
    api: Api, memory: HybridMemory, redis_client: redis.Redis
) -> None:
    await api.add("c1", [HumanMessage("one")])
    assert cached(memory, redis_client, "c1") == []  # no list existed, none was created
    assert [m.content for m in await api.get("c1")] == ["one"]  # miss → fill
    assert len(cached(memory, redis_client, "c1")) == 2


async def test_miss_reads_postgres_and_refills(
    api: Api, memory: HybridMemory, redis_client: redis.Redis
) -> None:
    await api.add("c1", [HumanMessage(f"m{i}") for i in range(5)])
    assert [m.content for m in await api.get("c1")] == [f"m{i}" for i in range(5)]
    redis_client.delete(memory.cache.key("c1"))  # eviction / expiry
    assert [m.content for m in await api.get("c1")] == [f"m{i}" for i in range(5)]
    assert memory.stats()["fills"] == 2
    assert_cache_is_tail(memory, redis_client, "c1")


async def test_round_trip_is_field_for_field_exact(
    api: Api, memory: HybridMemory, redis_client: redis.Redis
) -> None:
    sent = every_kind_of_message()
    assert await api.add("fidelity", sent) == [True] * len(sent)
    from_postgres = await api.get("fidelity", window=None)  # miss: from the table
    from_redis = await api.get("fidelity", window=None)  # hit: from the list
    assert memory.stats()["hits"] == 1
    for got in (from_postgres, from_redis):
        assert got == sent
        assert [type(m) for m in got] == [type(m) for m in sent]
        assert [m.id for m in got] == [m.id for m in sent]  # no id invented
    assert isinstance(from_redis[6], AIMessageChunk)
    assert from_redis[7].content == "NUL \x00 inside and \\u0000 literal"
    # The human-readable copy in Postgres is plain text (NUL replaced), the payload exact.
    t = memory.store.table
    with memory.store.engine.connect() as conn:
        roles = conn.execute(
            sa.select(t.c.role, t.c.content)
            .where(t.c.conversation_id == "fidelity")
            .order_by(t.c.id)
        ).all()
    assert roles[1] == ("user", "héllo wörld — 你好 🌍")
    assert roles[4][0] == "moderator"
    assert roles[5] == ("user", "what is in this picture?")
    assert roles[7][1] == "NUL \ufffd inside and \\u0000 literal"


async def test_same_message_id_is_stored_once_and_reported(
    api: Api, memory: HybridMemory, redis_client: redis.Redis
) -> None:
    await api.get("ids")
    first = await api.add("ids", [HumanMessage("a", id="m1"), AIMessage("b", id="m2")])
    again = await api.add(
        "ids", [HumanMessage("a", id="m1"), AIMessage("c", id="m3"), AIMessage("c", id="m3")]
    )
    assert first == [True, True]
    assert again == [False, True, False]
    assert [m.id for m in await api.get("ids")] == ["m1", "m2", "m3"]
    assert len(table_rows(memory, "ids")) == 3
    assert_cache_is_tail(memory, redis_client, "ids")
    # The same id in another conversation is another message.
    assert await api.add("ids-2", [HumanMessage("a", id="m1")]) == [True]


async def test_cache_keeps_last_n_with_ttl_renewed(
    api: Api, memory: HybridMemory, redis_client: redis.Redis
) -> None:
    await api.get("long")
    for start in range(0, 60, 6):
        await api.add("long", [HumanMessage(f"m{i}") for i in range(start, start + 6)])
    raw = cached(memory, redis_client, "long")
    assert len(raw) == 51 and raw[0] == b"#1p"
    assert_cache_is_tail(memory, redis_client, "long")
    redis_client.pexpire(memory.cache.key("long"), 5000)
    await api.add("long", [HumanMessage("renew")])
    assert redis_client.ttl(memory.cache.key("long")) > 3500


async def test_window_and_full_history(api: Api, memory: HybridMemory) -> None:
    await api.add("w", [HumanMessage(f"m{i}") for i in range(80)])
    assert [m.content for m in await api.get("w", window=10)] == [f"m{i}" for i in range(70, 80)]
    assert len(await api.get("w")) == 50
    full = await api.get("w", window=None)  # beyond the cache, exactly
    assert [m.content for m in full] == [f"m{i}" for i in range(80)]
    assert [m.content for m in await api.get("w", window=70)] == [f"m{i}" for i in range(10, 80)]
    assert memory.stats()["store_reads"] >= 2


async def test_window_never_starts_with_an_orphan_tool_result(api: Api) -> None:
    turn = [
        HumanMessage("time?"),
        AIMessage(
            "",
            tool_calls=[
                {"name": "clock", "args": {}, "id": "a"},
                {"name": "clock", "args": {}, "id": "b"},
            ],
        ),
        ToolMessage("1", tool_call_id="a"),
        ToolMessage("2", tool_call_id="b"),
        AIMessage("it is 1 or 2"),
    ]
    await api.add("tools", turn)
    window = await api.get("tools", window=3)  # would start at ToolMessage "2"
    assert [type(m) for m in window] == [AIMessage]
    window = await api.get("tools", window=4)  # starts with the AI tool call: kept whole
    assert [type(m) for m in window] == [AIMessage, ToolMessage, ToolMessage, AIMessage]


async def test_token_budget_trims_with_trim_messages(api: Api) -> None:
    await api.add("tokens", [SystemMessage("sys")])
    for i in range(10):
        await api.add("tokens", [HumanMessage(f"question {i}"), AIMessage(f"answer {i}")])
    trimmed = await api.get("tokens", max_tokens=40, token_counter=lambda ms: 10 * len(ms))
    # 4 messages fit; the system message is kept and the window starts on a human message.
    assert [m.content for m in trimmed] == ["sys", "question 9", "answer 9"]


async def test_clear_removes_both_tiers(
    api: Api, memory: HybridMemory, redis_client: redis.Redis
) -> None:
    await api.add("gone", [HumanMessage("x")])
    await api.get("gone")
    await api.clear("gone")
    assert table_rows(memory, "gone") == []
    assert cached(memory, redis_client, "gone") == []
    assert await api.get("gone") == []


async def test_sessions_never_see_each_other(api: Api) -> None:
    await api.add("alice", [HumanMessage("I am alice")])
    await api.add("bob", [HumanMessage("I am bob")])
    assert [m.content for m in await api.get("alice")] == ["I am alice"]
    assert [m.content for m in await api.get("bob")] == ["I am bob"]


async def test_corrupt_entry_heals_from_postgres(
    api: Api, memory: HybridMemory, redis_client: redis.Redis
) -> None:
    await api.add("bad", [HumanMessage("a"), HumanMessage("b")])
    await api.get("bad")
    key = memory.cache.key("bad")
    redis_client.lset(key, 1, b"999:{not json")
    assert [m.content for m in await api.get("bad")] == ["a", "b"]  # healed, not skipped
    assert memory.stats()["decode_errors"] == 1
    assert_cache_is_tail(memory, redis_client, "bad")
    redis_client.delete(key)
    redis_client.rpush(key, b"garbage-without-header")
    assert [m.content for m in await api.get("bad")] == ["a", "b"]
    assert_cache_is_tail(memory, redis_client, "bad")


@pytest.mark.parametrize(
    ("session_id", "problem"),
    [
        ("", "empty"),
        ("x" * 257, "257 characters"),
        ("a\nb", r"U\+000A"),
        ("a\x00b", r"U\+0000"),
        ("tab\there", r"U\+0009"),
        (None, "must be a string"),
        (1.5, "must be a string"),
    ],
)
async def test_invalid_session_ids_are_rejected_before_any_write(
    api: Api, memory: HybridMemory, session_id: Any, problem: str
) -> None:
    with pytest.raises(InvalidSessionIdError, match=problem):
        await api.add(session_id, [HumanMessage("x")])
    with pytest.raises(ValueError, match=problem):
        await api.get(session_id)
    t = memory.store.table
    with memory.store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() == 0


async def test_hostile_but_valid_session_ids_are_stored_correctly(
    api: Api, memory: HybridMemory, redis_client: redis.Redis
) -> None:
    hostile = ["}{", "{a}", "a}b{c", "%7B", "x" * 256, "ünï 𝄞", "*\r".strip(), "DEL *"]
    for sid in hostile:
        await api.add(sid, [HumanMessage(sid)])
        assert [m.content for m in await api.get(sid)] == [sid]
    # Distinct ids never share a key, and a session's keys share one hash tag.
    keys = {memory.cache.key(sid) for sid in hostile}
    assert len(keys) == len(hostile)
    for sid in hostile:
        key, lease = memory.cache.key(sid), memory.cache.lease_key(sid)
        tag = key[key.index("{") + 1 : key.index("}")]
        assert tag and lease[lease.index("{") + 1 : lease.index("}")] == tag


async def test_bad_messages_raise_and_write_nothing(api: Api, memory: HybridMemory) -> None:
    with pytest.raises(TypeError, match="BaseMessage"):
        await api.add("typed", [HumanMessage("ok"), "not a message"])  # type: ignore[list-item]
    assert table_rows(memory, "typed") == []
    assert await api.add("typed", []) == []


async def test_integer_and_uuid_session_ids_are_accepted(api: Api) -> None:
    import uuid

    conversation = uuid.uuid4()
    await api.add(conversation, [HumanMessage("u")])  # type: ignore[arg-type]
    assert [m.content for m in await api.get(str(conversation))] == ["u"]
    await api.add(42, [HumanMessage("i")])  # type: ignore[arg-type]
    assert [m.content for m in await api.get("42")] == ["i"]


async def test_concurrent_async_writers_keep_the_cache_coherent(
    memory: HybridMemory, redis_client: redis.Redis
) -> None:
    await memory.aget_messages("race")

    async def writer(n: int) -> None:
        for i in range(10):
            await memory.aadd_messages("race", [HumanMessage(f"{n}-{i}")])
            if i % 3 == 0:
                redis_client.delete(memory.cache.key("race"))
            await memory.aget_messages("race")

    await asyncio.gather(*(writer(n) for n in range(5)))
    assert len(table_rows(memory, "race")) == 50
    await memory.aget_messages("race")
    assert_cache_is_tail(memory, redis_client, "race")


def test_keys_of_many_sessions_spread_over_the_cluster_masters(
    memory: HybridMemory, redis_client: RedisCluster, cache_server: str, servers: ServerURLs
) -> None:
    if cache_server == servers.redis_url:
        pytest.skip("a single Redis has one master")
    sessions = [f"conversation-{i}" for i in range(30)]
    for sid in sessions:
        memory.get_messages(sid)
        memory.add_messages(sid, [HumanMessage(sid)])
        assert [m.content for m in memory.get_messages(sid)] == [sid]
        assert_cache_is_tail(memory, redis_client, sid)
    slots = {redis_client.keyslot(memory.cache.key(sid)) for sid in sessions}
    owners = {redis_client.get_node_from_key(memory.cache.key(sid)).port for sid in sessions}
    assert len(slots) == 30 and len(owners) == 3
    for sid in sessions:  # list and lease of one session: one slot
        key, lease = memory.cache.key(sid), memory.cache.lease_key(sid)
        assert redis_client.keyslot(key) == redis_client.keyslot(lease)
    memory.cache.invalidate(*sessions)  # one call across all masters
    assert all(redis_client.exists(memory.cache.key(sid)) == 0 for sid in sessions)
