"""Writes under Postgres faults on the wire: a commit whose acknowledgement is lost, a batch cut
mid-statement. Postgres is reached through a loopback proxy that injects the fault."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa
from langchain_core.messages import AIMessage, HumanMessage

from lc_hybrid_memory import HybridMemory, StoreUnavailableError
from lc_hybrid_memory.testing import ServerURLs
from tests.support.fault_proxy import WRITE_ON_THE_WIRE, FaultProxy
from tests.support.memory_checks import assert_cache_is_tail, table_rows
from tests.support.servers import MemoryFactory


@pytest.fixture
def proxy(servers: ServerURLs) -> Iterator[FaultProxy]:
    url = sa.engine.make_url(servers.database_url)
    fault_proxy = FaultProxy(url.host or "127.0.0.1", url.port or 5432)
    yield fault_proxy
    fault_proxy.close()


@pytest.fixture
def proxied_memory(
    memory_factory: MemoryFactory, servers: ServerURLs, proxy: FaultProxy
) -> HybridMemory:
    url = sa.engine.make_url(servers.database_url).set(host="127.0.0.1", port=proxy.port)
    return memory_factory(database_url=url.render_as_string(hide_password=False))


def warm(memory: HybridMemory, sid: str) -> None:
    memory.add_messages(sid, [HumanMessage("first", id="m0")])
    assert [m.content for m in memory.history(sid).messages] == ["first"]  # cached now
    assert memory.cache_state(sid) is not None


def test_lost_commit_acknowledgement_retried_by_the_library_leaves_no_hole(
    proxied_memory: HybridMemory, proxy: FaultProxy, redis_client: redis.Redis
) -> None:
    warm(proxied_memory, "zed")
    proxy.lose_reply_after(WRITE_ON_THE_WIRE)
    new = proxied_memory.add_messages(
        "zed",
        [HumanMessage("my name is Zed", id="m1"), AIMessage("Nice to meet you, Zed!", id="m1:1")],
    )
    assert proxy.fired() == 1
    assert new == [False, False]  # the first attempt committed them; the retry found them
    assert [m.content for m in proxied_memory.history("zed").messages] == [
        "first",
        "my name is Zed",
        "Nice to meet you, Zed!",
    ]
    assert proxied_memory.stats()["hits"] >= 1
    assert_cache_is_tail(proxied_memory, redis_client, "zed")


def test_lost_acknowledgement_then_the_callers_retry_with_the_same_ids(
    proxied_memory: HybridMemory, proxy: FaultProxy, redis_client: redis.Redis
) -> None:
    warm(proxied_memory, "zed")
    batch = [HumanMessage("my name is Zed", id="SM1"), AIMessage("Hi Zed", id="SM1:1")]
    proxy.lose_reply_after(WRITE_ON_THE_WIRE, times=2)  # the library's own retry is lost too
    with pytest.raises(StoreUnavailableError):
        proxied_memory.add_messages("zed", batch)
    assert len(table_rows(proxied_memory, "zed")) == 3  # committed all the same
    # Later writes renew the list; the hole must not survive them.
    assert proxied_memory.add_messages("zed", batch) == [False, False]  # as a Twilio retry
    proxied_memory.add_messages("zed", [HumanMessage("what is my name?", id="SM2")])
    contents = [m.content for m in proxied_memory.history("zed").messages]
    assert contents == ["first", "my name is Zed", "Hi Zed", "what is my name?"]
    assert_cache_is_tail(proxied_memory, redis_client, "zed")


def test_a_lost_acknowledgement_followed_by_other_writes_drops_the_stale_list(
    proxied_memory: HybridMemory, proxy: FaultProxy, redis_client: redis.Redis
) -> None:
    warm(proxied_memory, "z")
    proxy.lose_reply_after(WRITE_ON_THE_WIRE, times=2)
    with pytest.raises(StoreUnavailableError):
        proxied_memory.add_messages("z", [HumanMessage("lost ack", id="a")])
    # A write that does not repeat the lost one: the list ends before "lost ack", so it goes.
    proxied_memory.add_messages("z", [HumanMessage("next", id="b")])
    assert [m.content for m in proxied_memory.history("z").messages] == [
        "first",
        "lost ack",
        "next",
    ]
    assert_cache_is_tail(proxied_memory, redis_client, "z")


@pytest.mark.parametrize("cut_at", [200, 20_000, 60_000])
def test_a_large_batch_is_all_or_nothing(
    proxied_memory: HybridMemory, proxy: FaultProxy, redis_client: redis.Redis, cut_at: int
) -> None:
    batch = [HumanMessage(f"message {i:05d} " + "x" * 40, id=f"b{i}") for i in range(5000)]
    # The rows travel first, in the unnest( arrays: the cut lands inside the statement.
    proxy.cut_after(WRITE_ON_THE_WIRE, cut_at, times=2)  # the retry is cut as well
    with pytest.raises(StoreUnavailableError):
        proxied_memory.add_messages("big", batch)
    assert table_rows(proxied_memory, "big") == []  # nothing half-stored
    assert proxied_memory.add_messages("big", batch) == [True] * 5000
    assert len(table_rows(proxied_memory, "big")) == 5000
    assert proxied_memory.add_messages("big", batch) == [False] * 5000  # exactly once
    assert len(proxied_memory.history("big", window=None).messages) == 5000
    assert_cache_is_tail(proxied_memory, redis_client, "big")


async def test_a_failed_write_whose_commit_happened_is_read_at_once(
    proxied_memory: HybridMemory, proxy: FaultProxy, redis_client: redis.Redis
) -> None:
    warm(proxied_memory, "u")
    proxy.lose_reply_after(WRITE_ON_THE_WIRE, times=2)
    with pytest.raises(StoreUnavailableError):
        proxied_memory.add_messages("u", [HumanMessage("committed, unacknowledged", id="x")])
    # No retry, no later write: the very next read already has it (the list was dropped).
    contents = [m.content for m in await proxied_memory.aget_messages("u")]
    assert contents == ["first", "committed, unacknowledged"]
    assert_cache_is_tail(proxied_memory, redis_client, "u")
