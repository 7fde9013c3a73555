"""Fixtures of the recall tests: a Postgres with pgvector in every run, and one without.

The session's Postgres serves when it has pgvector (the embedded PostgreSQL 16 does); otherwise
(the machine's PostgreSQL 15 service) an embedded server is started for the recall tests, so
recall is tested in both CI runs. The "no pgvector" path runs on the session's server when it
lacks pgvector, else on a fresh database reached by a role that may not create extensions.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from lc_hybrid_memory import HybridMemory, MessageTable, sync_url
from lc_hybrid_memory.embedded import EmbeddedPostgres
from lc_hybrid_memory.testing import ServerURLs
from tests.support.servers import MemoryFactory


def _has_pgvector(database_url: str) -> bool:
    engine = sa.create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
            ).first()
            return row is not None
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def recall_database_url(
    servers: ServerURLs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A Postgres with pgvector: the session's, or an embedded one started for recall."""
    if _has_pgvector(servers.database_url):
        yield servers.database_url
        return
    postgres = EmbeddedPostgres(tmp_path_factory.mktemp("recall-postgres"))
    postgres.start()
    try:
        yield postgres.url
    finally:
        postgres.stop()


@pytest.fixture
def no_pgvector_database_url(servers: ServerURLs) -> Iterator[str]:
    """A Postgres database where pgvector cannot be used.

    The session's server when it lacks pgvector; otherwise a fresh database reached by a
    role that is no superuser (pgvector is not a trusted extension: it may not create it).
    """
    if not _has_pgvector(servers.database_url):
        yield servers.database_url
        return
    suffix = uuid.uuid4().hex[:10]
    database, role = f"novec_{suffix}", f"novec_{suffix}"
    admin = sa.create_engine(sync_url(servers.database_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(sa.text(f'CREATE DATABASE "{database}" OWNER "{role}"'))
    url = sa.engine.make_url(servers.database_url).set(database=database, username=role)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def drop_recall_tables(engine: sa.Engine, table: str) -> None:
    with engine.connect() as conn:
        for name in ("recall_vectors", "recall_text", "recall_queue"):
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}_{name}"'))
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}" CASCADE'))
        conn.execute(sa.text(f'DROP FUNCTION IF EXISTS "{table}_recall_enqueue"()'))


@pytest.fixture
async def recall_memory_factory(
    servers: ServerURLs, recall_database_url: str, unique: str
) -> AsyncIterator[MemoryFactory]:
    """Build recall-enabled memories on an isolated table (dropped with its recall tables).

    Keyword arguments go to ``HybridMemory.from_urls`` (``embeddings`` is required).
    """
    created: list[HybridMemory] = []
    table = MessageTable(name=f"recall_{unique}")
    engine = sa.create_engine(sync_url(recall_database_url), isolation_level="AUTOCOMMIT")

    def make(**options: Any) -> HybridMemory:
        options.setdefault("redis_url", servers.redis_url)
        options.setdefault("database_url", recall_database_url)
        options.setdefault("table", table)
        options.setdefault("prefix", f"test:{unique}:")
        memory = HybridMemory.from_urls(**options)
        memory.create_schema()
        created.append(memory)
        return memory

    yield make
    for memory in created:
        await memory.aclose()
    drop_recall_tables(engine, table.name)
    engine.dispose()


@pytest.fixture
def sid() -> str:
    """A fresh conversation id."""
    return f"lg-{uuid.uuid4().hex[:8]}"
