"""Failures on real servers: Redis killed, stalled or restarted empty; Postgres stopped.

Each test runs on servers of its own (``private_servers``), so it can break them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis
from langchain_core.messages import HumanMessage

from lc_hybrid_memory import HybridMemory, StoreUnavailableError
from tests.support.memory_checks import Api, assert_cache_is_tail, table_rows
from tests.support.servers import PrivateServers

MemoryFactory = Callable[..., HybridMemory]

# Generous: these prove calls are bounded by the socket timeout and the breaker, not a speed.
STALL_BOUND_SECONDS = 3.0


@pytest.fixture
def fault_memory(private_servers: PrivateServers, memory_factory: MemoryFactory) -> HybridMemory:
    return memory_factory(
        redis_url=private_servers.redis_url,
        database_url=private_servers.database_url,
        redis_timeout=0.2,
        breaker_reset_seconds=0.3,
    )


@pytest.fixture
def raw_redis(private_servers: PrivateServers) -> redis.Redis:
    return redis.Redis.from_url(private_servers.redis_url, socket_timeout=2)


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


def contents(messages: list) -> list[str]:
    return [m.content for m in messages]


async def test_redis_killed_degrades_to_postgres_then_recovers(
    fault_memory: HybridMemory, private_servers: PrivateServers, mode: str
) -> None:
    api = Api(fault_memory, mode)
    await api.add("k", [HumanMessage("before")])
    assert contents(await api.get("k")) == ["before"]

    private_servers.redis.kill()
    started = time.monotonic()
    await api.add("k", [HumanMessage("during")])  # Postgres takes it; no exception
    assert contents(await api.get("k")) == ["before", "during"]  # served from Postgres
    assert contents(await api.get("k")) == ["before", "during"]
    assert time.monotonic() - started < STALL_BOUND_SECONDS
    stats = fault_memory.stats()
    assert stats["cache_errors"] >= 1 and stats["breaker_opened"] >= 1
    assert stats["pending_invalidations"] == 1

    private_servers.redis.start()  # same port, empty
    time.sleep(0.35)  # past the breaker's pause
    assert contents(await api.get("k")) == ["before", "during"]
    await api.add("k", [HumanMessage("after")])
    assert contents(await api.get("k")) == ["before", "during", "after"]
    assert fault_memory.stats()["breaker_state"] == "closed"
    assert fault_memory.stats()["pending_invalidations"] == 0
    client = redis.Redis.from_url(private_servers.redis_url)
    assert_cache_is_tail(fault_memory, client, "k")


async def test_redis_stall_is_bounded_and_stale_list_is_invalidated(
    fault_memory: HybridMemory,
    private_servers: PrivateServers,
    raw_redis: redis.Redis,
    mode: str,
) -> None:
    api = Api(fault_memory, mode)
    await api.add("s", [HumanMessage("one")])
    assert contents(await api.get("s")) == ["one"]  # cached: [one]

    private_servers.redis.pause()  # SIGSTOP: alive, silent, keeps its list
    try:
        started = time.monotonic()
        # Times out (the script stays queued in the stopped server) and opens the breaker.
        await api.add("s", [HumanMessage("two")])
        # Breaker open: Redis is skipped, so its list will miss this one.
        await api.add("s", [HumanMessage("three")])
        assert contents(await api.get("s")) == ["one", "two", "three"]
        assert time.monotonic() - started < STALL_BOUND_SECONDS
    finally:
        private_servers.redis.resume()
    # Redis now holds a stale list (the queued append ran, the skipped one never did).
    assert len(raw_redis.lrange(fault_memory.cache.key("s"), 0, -1)) == 3
    time.sleep(0.35)
    # The first call after recovery drops the lists of sessions written meanwhile.
    assert contents(await api.get("s")) == ["one", "two", "three"]
    assert fault_memory.stats()["invalidations"] >= 1
    assert_cache_is_tail(fault_memory, raw_redis, "s")
    assert len(raw_redis.lrange(fault_memory.cache.key("s"), 0, -1)) == 4


async def test_redis_restarted_empty_is_refilled(
    fault_memory: HybridMemory, private_servers: PrivateServers, raw_redis: redis.Redis, mode: str
) -> None:
    api = Api(fault_memory, mode)
    await api.add("r", [HumanMessage(f"m{i}") for i in range(3)])
    await api.get("r")
    private_servers.redis.restart()  # clean shutdown, no persistence: comes back empty
    assert contents(await api.get("r")) == ["m0", "m1", "m2"]
    time.sleep(0.35)
    assert contents(await api.get("r")) == ["m0", "m1", "m2"]
    assert_cache_is_tail(fault_memory, raw_redis, "r")


async def test_postgres_down_is_a_clear_error_and_nothing_is_cached(
    fault_memory: HybridMemory, private_servers: PrivateServers, raw_redis: redis.Redis, mode: str
) -> None:
    api = Api(fault_memory, mode)
    await api.add("p", [HumanMessage("kept")])
    await api.add("q", [HumanMessage("other")])
    assert contents(await api.get("p")) == ["kept"]
    assert contents(await api.get("q")) == ["other"]

    private_servers.postgres.stop()
    try:
        with pytest.raises(StoreUnavailableError, match="could not store 1 message"):
            await api.add("p", [HumanMessage("lost?")])
        # Other conversations' hits need no Postgres.
        assert contents(await api.get("q")) == ["other"]
        # The failed write's outcome is unknown (a commit may have happened before the
        # connection died): the cache no longer vouches for that conversation.
        assert raw_redis.exists(fault_memory.cache.key("p")) == 0
        with pytest.raises(StoreUnavailableError, match="could not read"):
            await api.get("p")
        with pytest.raises(StoreUnavailableError, match="could not read"):
            await api.get("never-cached")  # a miss needs Postgres
    finally:
        private_servers.postgres.start()

    # Back: the pool's dead connections are replaced, writes and reads work.
    await api.add("p", [HumanMessage("after")])
    assert contents(await api.get("p")) == ["kept", "after"]
    assert len(table_rows(fault_memory, "p")) == 2
    assert_cache_is_tail(fault_memory, raw_redis, "p")


async def test_postgres_restart_between_calls_is_transparent(
    fault_memory: HybridMemory, private_servers: PrivateServers, mode: str
) -> None:
    api = Api(fault_memory, mode)
    await api.add("t", [HumanMessage("a")])
    private_servers.postgres.restart()
    # Pooled connections are dead now; the idempotent write is retried once on a new one.
    assert await api.add("t", [HumanMessage("b")]) == [True]
    fault_memory.cache.invalidate("t")
    assert contents(await api.get("t")) == ["a", "b"]
    assert len(table_rows(fault_memory, "t")) == 2


async def test_a_write_that_never_reached_postgres_keeps_the_cache(
    private_servers: PrivateServers,
    memory_factory: MemoryFactory,
    raw_redis: redis.Redis,
    mode: str,
) -> None:
    from sqlalchemy.pool import NullPool

    memory = memory_factory(
        redis_url=private_servers.redis_url,
        database_url=private_servers.database_url,
        engine_kwargs={"poolclass": NullPool},  # every call connects: a refusal is certain
    )
    api = Api(memory, mode)
    await api.add("n", [HumanMessage("kept")])
    assert contents(await api.get("n")) == ["kept"]
    private_servers.postgres.stop()
    try:
        with pytest.raises(StoreUnavailableError) as failed:
            await api.add("n", [HumanMessage("refused")])
        assert failed.value.maybe_stored is False
        assert contents(await api.get("n")) == ["kept"]  # still served: nothing can be missing
    finally:
        private_servers.postgres.start()
    assert_cache_is_tail(memory, raw_redis, "n")


async def test_a_writer_that_dies_during_an_outage_is_invalidated_by_the_survivors(
    private_servers: PrivateServers,
    memory_factory: MemoryFactory,
    raw_redis: redis.Redis,
    mode: str,
) -> None:
    def process() -> HybridMemory:
        return memory_factory(
            redis_url=private_servers.redis_url,
            database_url=private_servers.database_url,
            redis_timeout=0.2,
            breaker_reset_seconds=0.0,  # half-open at once: the next call probes Redis
        )

    survivor, doomed = process(), process()
    api = Api(survivor, mode)
    await api.add("d", [HumanMessage("before")])
    assert contents(await api.get("d")) == ["before"]  # cached

    private_servers.redis.pause()  # an outage that keeps Redis's data (a stall, a partition)
    try:
        await api.get("other")  # the survivor notices the outage (its breaker opens)
        await Api(doomed, mode).add("d", [HumanMessage("written during the outage")])
        del doomed  # dies with its in-process pending invalidation: only Postgres remembers
    finally:
        private_servers.redis.resume()
    stale = raw_redis.lrange(survivor.cache.key("d"), 0, -1)
    assert len(stale) == 2  # the header and "before": Redis still holds the stale list

    # The survivor's first call after the outage invalidates what Postgres marked stale,
    # before the cache is trusted again: its very next read is the table's tail.
    assert contents(await api.get("d")) == ["before", "written during the outage"]
    assert_cache_is_tail(survivor, raw_redis, "d")
