"""Fixtures of the app tests: an app harness per test, on a single Redis or on a real Redis
Cluster (the session's ``redis_cluster`` of ``tests/conftest.py``, started when a test asks).

A module runs its tests on both with ``pytestmark = ON_BOTH_REDIS_TOPOLOGIES`` (from
``tests.support.app_harness``): the ``harness`` fixture is then parametrised, and each test
appears twice, ``[redis]`` and ``[redis-cluster]``; ``ON_REDIS_CLUSTER`` marks a test that
runs on the cluster only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.app_harness import REDIS_TOPOLOGIES, AppHarness, app_harness
from tests.support.redis_cluster import EmbeddedRedisCluster
from tests.support.servers import ServerURLs


@pytest.fixture
def harness(
    request: pytest.FixtureRequest,
    servers: ServerURLs,
    fresh_database_url: str,
    unique: str,
    tmp_path: Path,
) -> Iterator[AppHarness]:
    """Apps on a fresh migrated database and the session's Redis — or, parametrised with
    ``"redis-cluster"``, the cache and the turn machinery both on :func:`redis_cluster`."""
    topology = getattr(request, "param", "redis")
    if topology == "redis-cluster":
        cluster: EmbeddedRedisCluster = request.getfixturevalue("redis_cluster")
        redis_url, on_cluster = cluster.url, True
    elif topology == "redis":
        redis_url, on_cluster = servers.redis_url, False
    else:
        raise ValueError(f"unknown Redis topology {topology!r}; use one of {REDIS_TOPOLOGIES}")
    with app_harness(redis_url, fresh_database_url, unique, tmp_path, cluster=on_cluster) as built:
        yield built
