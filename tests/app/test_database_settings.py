"""DATABASE_PREPARED_STATEMENTS reaches the app's memory (off behind PgBouncer)."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from app.settings import Settings
from app.wiring import StorageURLs, open_memory
from tests.support.servers import ServerURLs


@pytest.mark.parametrize(("raw", "prepared"), [(None, True), ("false", False)])
def test_the_memory_prepares_its_statements_unless_told_not_to(
    servers: ServerURLs, fresh_database_url: str, unique: str, raw: str | None, prepared: bool
) -> None:
    env = {"RECALL": "false"} | ({"DATABASE_PREPARED_STATEMENTS": raw} if raw else {})
    settings = Settings.from_env(env)
    assert settings.database_prepared_statements is prepared
    urls = StorageURLs(servers.redis_url, servers.redis_url, fresh_database_url, embedded=False)
    memory = open_memory(settings, urls)
    sid = f"prepared-{unique}"
    try:
        memory.create_schema()
        memory.add_messages(sid, [HumanMessage("hi"), AIMessage("hello")])
        memory.cache.invalidate(sid)
        assert [m.content for m in memory.get_messages(sid)] == ["hi", "hello"]
        with memory.store.engine.connect() as conn:  # the pool's one connection, single thread
            names = conn.exec_driver_sql("SELECT name FROM pg_prepared_statements").scalars()
            assert bool(list(names)) is prepared
    finally:
        memory.cache.invalidate(sid)
        memory.close()
