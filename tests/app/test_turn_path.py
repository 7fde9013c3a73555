"""A turn is one pass, in one direction — webhook → turns → agent → history → store/cache →
reply — counted on the real servers: the turn's Redis hash is read once per request (for a
retry of an answered turn, inside the enqueue script that finds it), the conversation's
history once, and the memory written twice (the inbound message, then the turn's answer), in
both memory wirings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.agent import Wiring
from lc_hybrid_memory.embedded import EmbeddedRedis
from tests.support.app_harness import AppHarness, fake_model, form, post_signed, replies


@pytest.fixture
def queue_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    """A Redis of this test alone for the turn machinery, so its command counts are ours."""
    server = EmbeddedRedis(tmp_path / "queue-redis")
    server.start()
    client = redis.Redis(port=server.port)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def memory_events(stats: dict[str, int]) -> tuple[int, int]:
    """(history reads, writes) from the memory's counters."""
    return stats["hits"] + stats["misses"], stats["writes"]


@pytest.mark.parametrize("wiring", ["runnable_with_history", "middleware"])
def test_one_read_of_the_turn_state_and_of_the_history_per_request(
    queue_redis: redis.Redis, harness: AppHarness, wiring: Wiring
) -> None:
    port = queue_redis.connection_pool.connection_kwargs["port"]
    app = harness.app(
        fake_model("first", "second"),
        wiring=wiring,
        queue_redis_url=f"redis://127.0.0.1:{port}/0",
    )
    client = app.test_client()
    memory = app.extensions["hybrid_memory"].memory
    assert replies(post_signed(client, form("warm up"))) == ["first"]  # the cache is filled

    fields = form("the question")
    hgetall, (reads, writes) = calls(queue_redis, "hgetall"), memory_events(memory.stats())
    assert replies(post_signed(client, fields)) == ["second"]
    assert calls(queue_redis, "hgetall") - hgetall == 1
    after = memory_events(memory.stats())
    assert (after[0] - reads, after[1] - writes) == (1, 2)  # one read; inbound, then answer

    hgetall, (reads, writes) = calls(queue_redis, "hgetall"), after
    assert replies(post_signed(client, fields)) == ["second"]  # a Twilio retry
    assert calls(queue_redis, "hgetall") - hgetall == 1  # in the enqueue script, which said it all
    after = memory_events(memory.stats())
    assert (after[0] - reads, after[1] - writes) == (0, 1)  # the inbound again: a no-op
