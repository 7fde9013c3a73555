"""The cache on a real Redis Cluster (3 masters on loopback): every script stays on one slot.

The whole history suite runs again here: its tests are collected into this module, whose
``memory`` and ``redis_client`` fixtures point at the cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage
from redis.cluster import RedisCluster

from lc_hybrid_memory import HybridMemory
from tests.library.test_history import *  # noqa: F403  (the suite re-run on the cluster)
from tests.support.memory_checks import assert_cache_is_tail
from tests.support.redis_cluster import EmbeddedRedisCluster
from tests.support.servers import MemoryFactory


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    embedded = EmbeddedRedisCluster(Path(tmp_path_factory.mktemp("cluster"))).start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture
def redis_client(cluster: EmbeddedRedisCluster) -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(cluster.url)
    yield client
    client.close()


@pytest.fixture
def memory(memory_factory: MemoryFactory, cluster: EmbeddedRedisCluster) -> HybridMemory:
    return memory_factory(redis_url=cluster.url, cluster=True)


def test_keys_of_many_sessions_spread_over_the_masters(
    memory: HybridMemory, redis_client: RedisCluster
) -> None:
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
