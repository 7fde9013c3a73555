"""The app with its cache on a real Redis Cluster (3 masters on loopback): the cluster-only
checks. The inline webhook suite itself runs on the cluster too, as the ``[redis-cluster]``
half of ``test_webhook.py``.

Inline mode keeps everything on the cluster (turn states, locks, rate limits: each script on
one slot). The async mode needs a single Redis for its job queue (RQ): the cache stays on the
cluster and ``QUEUE_REDIS_URL`` names the queue Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from limits.storage import RedisClusterStorage
from redis.cluster import RedisCluster

from app import create_app
from app.redis_roles import rate_limit_storage
from app.settings import Settings
from app.wiring import build_services
from app.worker import run_worker
from tests.support.app_harness import (
    ACCOUNT_SID,
    ON_REDIS_CLUSTER,
    OUR_NUMBER,
    SENDER,
    AppHarness,
    app_harness,
    fake_model,
    form,
    post_signed,
    replies,
)
from tests.support.redis_cluster import EmbeddedRedisCluster
from tests.support.servers import ServerURLs


@ON_REDIS_CLUSTER
def test_the_harness_runs_the_app_on_the_cluster(harness: AppHarness) -> None:
    app = harness.app(fake_model(), rate_limit="5 per minute")
    services = app.extensions["hybrid_memory"]
    [limiter] = app.extensions["limiter"]
    assert harness.settings.redis_cluster
    assert isinstance(harness.redis, RedisCluster)
    assert isinstance(services.redis, RedisCluster)
    assert isinstance(services.memory.cache.client, RedisCluster)
    assert isinstance(limiter.storage, RedisClusterStorage)
    assert replies(post_signed(app.test_client(), form("hi"))) == ["ok"]
    # The sender's moving window, on the cluster (limits prefixes Flask-Limiter's own keys).
    window = f"LIMITS:LIMITER/{harness.settings.redis_prefix}limits/sender:*"
    assert len(list(harness.redis.scan_iter(match=window))) == 1


@ON_REDIS_CLUSTER
def test_a_conversations_turn_keys_are_on_one_slot_and_conversations_spread(
    harness: AppHarness,
) -> None:
    turns = harness.app().extensions["hybrid_memory"].turns
    client = harness.redis
    assert isinstance(client, RedisCluster)
    conversations = [f"conversation-{i}" for i in range(30)]
    for conversation in conversations:
        keys = [
            turns.turn_key(conversation, "SM1"),
            turns.turn_key(conversation, "SM2"),
            turns.pending_key(conversation),
            turns.lock_key(conversation),
        ]
        assert len({client.keyslot(key) for key in keys}) == 1, keys
    owners = {client.get_node_from_key(turns.pending_key(c)).port for c in conversations}
    assert len(owners) == 3


@ON_REDIS_CLUSTER
def test_turn_state_is_written_on_the_owning_master(harness: AppHarness) -> None:
    app = harness.app(fake_model("Hello there."))
    turns = app.extensions["hybrid_memory"].turns
    fields = form("hi")
    assert replies(post_signed(app.test_client(), fields)) == ["Hello there."]
    [conversation] = harness.rows("conversations")
    record = turns.record(conversation["id"], fields["MessageSid"])
    assert record is not None and record.finished and record.reply == "Hello there."
    assert turns.pending(conversation["id"]) == []
    assert not turns.is_locked(conversation["id"])


@ON_REDIS_CLUSTER
def test_readyz_pings_the_cluster(harness: AppHarness) -> None:
    client = harness.app().test_client()
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["checks"] == {"postgres": "ok", "migrations": "ok", "redis": "ok"}
    assert client.get("/metrics").status_code == 200


@ON_REDIS_CLUSTER
def test_async_mode_without_a_queue_redis_is_refused_on_a_cluster(harness: AppHarness) -> None:
    settings = replace(harness.settings, reply_mode="async")
    with pytest.raises(ValueError, match=r"REDIS_CLUSTER with REPLY_MODE=async needs QUEUE_REDIS"):
        build_services(settings, memory=harness.memory)
    with pytest.raises(ValueError, match=r"RQ does not support Redis Cluster"):
        create_app(settings, memory=harness.memory)


@pytest.fixture
def split_roles(
    redis_cluster: EmbeddedRedisCluster,
    servers: ServerURLs,
    fresh_database_url: str,
    unique: str,
    tmp_path: Path,
) -> Iterator[AppHarness]:
    """The memory cache on the cluster, the turn machinery and RQ on the single Redis."""
    with app_harness(
        redis_cluster.url,
        fresh_database_url,
        unique,
        tmp_path,
        cluster=True,
        queue_redis_url=servers.redis_url,
    ) as harness:
        yield harness


def test_async_mode_with_the_cache_on_the_cluster_and_the_queue_on_one_redis(
    split_roles: AppHarness,
) -> None:
    harness = split_roles
    app = harness.app(reply_mode="async")  # the offline model answers from the history
    services = app.extensions["hybrid_memory"]
    client = app.test_client()
    assert isinstance(services.memory.cache.client, RedisCluster)
    assert not isinstance(services.redis, RedisCluster)

    first, second = form("my name is Barbara"), form("what is my name?")
    assert replies(post_signed(client, first)) == []
    assert replies(post_signed(client, second)) == []
    run_worker(services, burst=True, with_scheduler=False)

    assert harness.http.sent_bodies == [
        "[offline model] Nice to meet you, Barbara! I will remember that.",
        "[offline model] Your name is Barbara.",
    ]
    assert {r["data"]["To"] for r in harness.http.requests} == {SENDER}
    assert {r["data"]["From"] for r in harness.http.requests} == {OUR_NUMBER}
    assert all(ACCOUNT_SID in r["uri"] for r in harness.http.requests)
    [conversation] = harness.rows("conversations")
    # The conversation's cache list is on the cluster; its turn states on the queue Redis.
    cached = services.memory.cache_state(conversation["id"])
    assert cached is not None and len(cached.row_ids) == 4
    cache_key = f"{harness.settings.redis_prefix}mem:{{{conversation['id']}}}"
    assert harness.cache.exists(cache_key)
    turn_keys = list(harness.redis.scan_iter(match=f"{harness.settings.redis_prefix}turn:*"))
    assert len(turn_keys) == 2
    assert not list(harness.cache.scan_iter(match=f"{harness.settings.redis_prefix}turn:*"))
    ready = client.get("/readyz").get_json()
    assert ready["checks"] == {
        "postgres": "ok",
        "migrations": "ok",
        "redis": "ok",
        "queue_redis": "ok",
    }


def test_redis_cluster_without_redis_url_is_refused(tmp_path: Path) -> None:
    settings = Settings(redis_cluster=True, data_dir=tmp_path)
    with pytest.raises(ValueError, match="REDIS_CLUSTER needs REDIS_URL"):
        build_services(settings)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"REDIS_CLUSTER": "1"}, True),
        ({"REDIS_CLUSTER": "yes"}, True),
        ({"REDIS_CLUSTER": "true"}, True),
        ({"REDIS_CLUSTER": "0"}, False),
    ],
)
def test_redis_cluster_setting(env: dict[str, str], expected: bool) -> None:
    assert Settings.from_env(env).redis_cluster is expected


def test_redis_cluster_setting_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="REDIS_CLUSTER must be true or false"):
        Settings.from_env({"REDIS_CLUSTER": "maybe"})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://10.0.0.1:7000/0", ("redis+cluster://10.0.0.1:7000", {})),
        ("redis://:secret@node:7000", ("redis+cluster://:secret@node:7000", {})),
        ("rediss://user:pw@node", ("redis+cluster://user:pw@node:6379", {"ssl": True})),
    ],
)
def test_rate_limit_storage_uri_of_a_cluster(url: str, expected: tuple[str, dict]) -> None:
    assert rate_limit_storage(url, cluster=True) == expected
    assert rate_limit_storage(url) == (url, {})
