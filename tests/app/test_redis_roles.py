"""The two Redis roles on real servers: the cache may evict, the turn machinery may not.

A redis-server started with ``maxmemory`` and an evicting ``maxmemory-policy`` (a common
shared setup) is refused as the queue Redis at start, with the reason and the way out; it is
fine as the cache. With the cache on such a server and ``QUEUE_REDIS_URL`` on a ``noeviction``
one, cache traffic that evicts everything it can never costs a pending turn its reply.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from app import create_app
from app.redis_roles import QueueRedisError
from app.settings import Settings
from app.worker import run_worker
from lc_hybrid_memory.embedded import EmbeddedRedis
from tests.support.app_harness import AppHarness, app_harness, form, post_signed, replies
from tests.support.servers import ServerURLs


def evicting_server(data_dir: Path, policy: str) -> EmbeddedRedis:
    server = EmbeddedRedis(
        data_dir, extra_args=["--maxmemory", "4mb", "--maxmemory-policy", policy]
    )
    server.start()
    return server


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A real redis-server with 4 MB of memory and allkeys-lru: it evicts under pressure."""
    server = evicting_server(tmp_path / "evicting-redis", "allkeys-lru")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_an_evicting_queue_redis_is_refused_at_start(
    harness: AppHarness, tmp_path: Path, policy: str
) -> None:
    # volatile-* policies evict keys with a TTL: every turn key has one.
    server = evicting_server(tmp_path / "queue-redis", policy)
    try:
        settings = replace(harness.settings, queue_redis_url=server.url)
        with pytest.raises(QueueRedisError) as refused:
            create_app(settings, memory=harness.memory)
    finally:
        server.stop()

    message = str(refused.value)
    assert f"QUEUE_REDIS_URL) has maxmemory-policy {policy}" in message
    assert "noeviction" in message and "QUEUE_REDIS_ALLOW_EVICTION" in message


def test_an_eviction_policy_without_a_memory_limit_evicts_nothing_and_is_accepted(
    harness: AppHarness, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "no-limit", extra_args=["--maxmemory-policy", "allkeys-lru"])
    server.start()
    try:
        settings = replace(harness.settings, queue_redis_url=server.url)
        app = create_app(settings, memory=harness.memory)
        app.extensions["hybrid_memory"].close()
    finally:
        server.stop()


def test_an_evicting_redis_url_without_a_queue_redis_is_refused(
    harness: AppHarness, evicting_redis: EmbeddedRedis
) -> None:
    settings = replace(harness.settings, redis_url=evicting_redis.url)
    with pytest.raises(QueueRedisError, match=r"\(REDIS_URL, no QUEUE_REDIS_URL set\) has"):
        create_app(settings, memory=harness.memory)


def test_an_evicting_queue_redis_explicitly_allowed_starts_with_a_warning(
    evicting_redis: EmbeddedRedis, harness: AppHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app.redis_roles")
    app = harness.app(queue_redis_url=evicting_redis.url, queue_redis_allow_eviction=True)

    [warning] = [r for r in caplog.records if "maxmemory-policy allkeys-lru" in r.getMessage()]
    assert "allowed by QUEUE_REDIS_ALLOW_EVICTION" in warning.getMessage()
    assert app.extensions["hybrid_memory"].urls.queue_redis_url == evicting_redis.url


@pytest.fixture
def cache_may_evict(
    evicting_redis: EmbeddedRedis,
    servers: ServerURLs,
    fresh_database_url: str,
    unique: str,
    tmp_path: Path,
) -> Iterator[AppHarness]:
    """The memory cache on the evicting Redis, the turn machinery on the session's Redis."""
    with app_harness(
        evicting_redis.url,
        fresh_database_url,
        unique,
        tmp_path,
        queue_redis_url=servers.redis_url,
    ) as harness:
        yield harness


def test_cache_evictions_never_cost_a_pending_turn_its_reply(
    cache_may_evict: AppHarness, evicting_redis: EmbeddedRedis
) -> None:
    harness = cache_may_evict
    app = harness.app(reply_mode="async")  # the offline model: answers from the history
    client = app.test_client()
    texts = ["my name is Ada", "one", "two", "three", "what is my name?"]
    for text in texts:
        assert replies(post_signed(client, form(text))) == []  # acknowledged
    cache = redis.Redis.from_url(evicting_redis.url)
    try:
        for n in range(40):  # 8 MB into a 4 MB server: it evicts what it can
            cache.set(f"junk:{n}", b"x" * 200_000)
        evicted = int(cache.info("stats")["evicted_keys"])
    finally:
        cache.close()

    run_worker(app.extensions["hybrid_memory"], burst=True, with_scheduler=False)

    assert evicted > 0
    sent = harness.http.sent_bodies
    assert len(sent) == len(texts)  # every acknowledged message got its reply
    assert sent[0] == "[offline model] Nice to meet you, Ada! I will remember that."
    assert sent[-1] == "[offline model] Your name is Ada."


def test_queue_redis_url_setting() -> None:
    settings = Settings.from_env(
        {"REDIS_URL": "redis://cache:6379/0", "QUEUE_REDIS_URL": "redis://queue:6379/0"}
    )
    assert (settings.redis_url, settings.queue_url) == (
        "redis://cache:6379/0",
        "redis://queue:6379/0",
    )
    assert Settings.from_env({"REDIS_URL": "redis://one:6379/0"}).queue_url == "redis://one:6379/0"
    with pytest.raises(ValueError, match="QUEUE_REDIS_ALLOW_EVICTION must be true or false"):
        Settings.from_env({"QUEUE_REDIS_ALLOW_EVICTION": "perhaps"})
