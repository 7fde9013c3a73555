"""The app on a real Redis Cluster (3 masters on loopback), inline mode: memory cache, turn
states, conversation locks and rate limits all on the cluster, each script on one slot.

The whole inline webhook suite runs again here: its tests are collected into this module,
whose ``harness`` fixture builds the apps with ``REDIS_CLUSTER``. The async mode is refused on
a cluster (RQ needs a single Redis), so its suite is not re-run; a test below checks the
refusal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from limits.storage import RedisClusterStorage
from redis.cluster import RedisCluster

from app import create_app, rate_limit_storage
from app.settings import Settings
from app.wiring import build_services
from tests.app.test_webhook import *  # noqa: F403  (the inline suite re-run on the cluster)
from tests.support.app_harness import (
    AppHarness,
    app_harness,
    fake_model,
    form,
    post_signed,
    replies,
)
from tests.support.redis_cluster import EmbeddedRedisCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    embedded = EmbeddedRedisCluster(Path(tmp_path_factory.mktemp("app-cluster"))).start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture
def harness(  # replaces the single-Redis harness of the imported suite
    cluster: EmbeddedRedisCluster, fresh_database_url: str, unique: str, tmp_path: Path
) -> Iterator[AppHarness]:
    with app_harness(cluster.url, fresh_database_url, unique, tmp_path, cluster=True) as harness:
        yield harness


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


def test_readyz_pings_the_cluster(harness: AppHarness) -> None:
    client = harness.app().test_client()
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["checks"] == {"postgres": "ok", "migrations": "ok", "redis": "ok"}
    assert client.get("/metrics").status_code == 200


def test_async_mode_is_refused_on_a_cluster_with_a_clear_error(harness: AppHarness) -> None:
    settings = replace(harness.settings, reply_mode="async")
    with pytest.raises(ValueError, match=r"REDIS_CLUSTER .*REPLY_MODE=async.*RQ"):
        build_services(settings, memory=harness.memory)
    with pytest.raises(ValueError, match=r"REDIS_CLUSTER .*REPLY_MODE=async.*RQ"):
        create_app(settings, memory=harness.memory)


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
