"""Alembic migrations: the schema they make is the library's messages table, its recall tables
and conversations, exactly; they are idempotent, concurrent-safe, and adopt an existing table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.messages import HumanMessage

from app.commands import migrate_database
from app.conversations import metadata as app_metadata
from lc_hybrid_memory import HybridMemory, MessageStore, MessageTable, sync_url
from lc_hybrid_memory.recall_schema import RecallTables


def _target(engine: sa.Engine, *, vectors: bool) -> sa.MetaData:
    target = sa.MetaData()
    for table in app_metadata.tables.values():
        table.to_metadata(target)
    MessageTable().build(target)
    recall = RecallTables(MessageStore(engine, table=MessageTable()))
    recall.ddl_tables(target, vectors=vectors, references=["conversation_id", "id"])
    return target


# Without pgvector's SQLAlchemy package the reflected ``vector`` column is untyped: every other
# part of the vectors table (columns, keys, cascade) is still compared.
@pytest.mark.filterwarnings("ignore:Did not recognize type 'vector'")
def test_migrated_schema_is_exactly_the_library_schema_plus_conversations(
    fresh_database_url: str,
) -> None:
    migrate_database(fresh_database_url)
    engine = sa.create_engine(sync_url(fresh_database_url))
    with engine.connect() as conn:
        vectors = RecallTables.has_extension(conn)  # pgvector where the server has it
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, _target(engine, vectors=vectors))
        index_columns = [ix["column_names"] for ix in sa.inspect(conn).get_indexes("messages")]
        primary_key = sa.inspect(conn).get_pk_constraint("messages")
        uniques = {uq["name"] for uq in sa.inspect(conn).get_unique_constraints("messages")}
    engine.dispose()
    assert differences == []
    assert primary_key["constrained_columns"] == ["conversation_id", "id"]
    assert ["id"] not in index_columns  # nothing on id alone for the planner to walk
    assert "uq_messages_conversation_id_message_uid" in uniques


_FUNCTIONS = (
    "SELECT p.proname, pg_get_function_arguments(p.oid), p.proconfig, "
    "regexp_replace(p.prosrc, '\\s+', ' ', 'g') FROM pg_proc p "
    "WHERE p.proname IN ('messages_recall_enqueue', 'messages_recall_lexical') ORDER BY 1"
)


def test_migrated_recall_functions_are_the_library_functions(fresh_database_url: str) -> None:
    """The trigger's and the lexical search's functions, as migrated and as the library's
    create_schema() makes them (in another database)."""
    migrate_database(fresh_database_url)
    engine = sa.create_engine(sync_url(fresh_database_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        migrated = conn.execute(sa.text(_FUNCTIONS)).all()
        conn.execute(sa.text("DROP TRIGGER messages_recall_enqueue ON messages"))
        for name in ("messages_recall_enqueue()", "messages_recall_lexical"):
            conn.execute(sa.text(f"DROP FUNCTION {name}"))
        tables = RecallTables(MessageStore(engine, table=MessageTable()))
        tables.create_schema(conn, vectors=False)
        made = conn.execute(sa.text(_FUNCTIONS)).all()
    engine.dispose()
    assert [row[0] for row in migrated] == ["messages_recall_enqueue", "messages_recall_lexical"]
    assert migrated == made


def test_hybrid_memory_migrate_runs_concurrently(fresh_database_url: str, servers) -> None:
    # Separate processes, as compose's migrate service, serve and worker would be.
    env = dict(os.environ, DATABASE_URL=fresh_database_url, REDIS_URL=servers.redis_url)
    command = [sys.executable, "-m", "app.cli", "migrate"]
    runs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outcomes = [run.communicate(timeout=60) for run in runs]
    # Both succeed: one migrates, the other waits for the lock and finds the schema at head.
    assert [run.returncode for run in runs] == [0, 0], outcomes
    assert all("latest revision" in out for out, _ in outcomes)
    engine = sa.create_engine(sync_url(fresh_database_url))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0004"
    engine.dispose()


@pytest.mark.filterwarnings("ignore:Did not recognize type 'vector'")
def test_recall_tables_made_by_the_library_are_adopted(
    fresh_database_url: str, servers, unique: str
) -> None:
    memory = HybridMemory.from_urls(
        redis_url=servers.redis_url,
        database_url=fresh_database_url,
        prefix=f"test:{unique}:",
        embeddings=DeterministicFakeEmbedding(size=8),
    )
    memory.create_schema()  # `hybrid-memory chat` with recall on, before the first migration
    memory.add_messages("terminal", [HumanMessage("kept", id="m1")])

    migrate_database(fresh_database_url)

    engine = sa.create_engine(sync_url(fresh_database_url))
    with engine.connect() as conn:
        vectors = RecallTables.has_extension(conn)
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, _target(engine, vectors=vectors)) == []
        queued = conn.execute(sa.text("SELECT count(*) FROM messages_recall_queue")).scalar()
    engine.dispose()
    assert queued == 1  # by the trigger, not a second time by the migration
    assert memory.index_pending() == 1
    memory.close()


def test_a_messages_table_made_by_the_library_is_adopted_with_its_rows(
    fresh_database_url: str, servers, unique: str
) -> None:
    memory = HybridMemory.from_urls(
        redis_url=servers.redis_url, database_url=fresh_database_url, prefix=f"test:{unique}:"
    )
    memory.create_schema()  # e.g. `hybrid-memory chat` ran before the first migration
    memory.add_messages("terminal", [HumanMessage("kept", id="m1")])

    migrate_database(fresh_database_url)

    assert [m.text for m in memory.get_messages("terminal")] == ["kept"]
    memory.clear("terminal")
    memory.close()
