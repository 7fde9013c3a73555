"""Semantic recall in the app: the agent's recall tool and the offline model, the indexer command
with its progress bar, the lag in /metrics and /readyz, the console's search, the RECALL setting.

The sister question runs the real default embedder on a Postgres with pgvector (the recall
tests' server); the rest use langchain-core's deterministic fake embeddings.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.messages import AIMessage, HumanMessage
from prometheus_client import generate_latest

from app import create_app
from app.agent import ChatAgent
from app.chat_models import OfflineChatModel
from app.commands import migrate_database
from app.console import search_messages
from app.indexing import index_command
from app.observability import Metrics
from app.settings import Settings
from lc_hybrid_memory import HybridMemory, MessageTable
from tests.library.conftest import drop_recall_tables, recall_database_url  # noqa: F401
from tests.support.app_harness import fake_model, signed_app_settings


@pytest.fixture
def recall_memory(servers: Any, recall_database_url: str) -> Iterator[Any]:  # noqa: F811
    """Build a recall-enabled memory on its own table of the recall tests' Postgres."""
    import sqlalchemy as sa

    from lc_hybrid_memory import sync_url

    names: list[str] = []
    memories: list[HybridMemory] = []

    def make(embeddings: Any) -> HybridMemory:
        name = f"apprecall_{uuid.uuid4().hex[:10]}"
        names.append(name)
        memory = HybridMemory.from_urls(
            redis_url=servers.redis_url,
            database_url=recall_database_url,
            table=MessageTable(name=name),
            prefix=f"test:{name}:",
            embeddings=embeddings,
        )
        memory.create_schema()
        memories.append(memory)
        return memory

    yield make
    engine = sa.create_engine(sync_url(recall_database_url), isolation_level="AUTOCOMMIT")
    for memory in memories:
        memory.close()
    for name in names:
        drop_recall_tables(engine, name)
    engine.dispose()


def fake_embeddings() -> DeterministicFakeEmbedding:
    return DeterministicFakeEmbedding(size=8)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_offline_model_recalls_the_sisters_city_sixty_messages_later(
    recall_memory: Any, mode: str
) -> None:
    pytest.importorskip("onnxruntime")
    from lc_hybrid_memory.embeddings import default_embeddings

    memory = recall_memory(default_embeddings())
    agent = ChatAgent(memory, Settings(memory_window=50), model=OfflineChatModel())
    sid = "maria"
    agent.run_turn(sid, "My sister Margarida moved to Porto last spring.", message_id="SM0")
    for turn in range(30):  # 60 more messages: the fact is out of the agent's window
        agent.run_turn(sid, f"Remind me to buy bread on day {turn}.", message_id=f"SM{turn + 1}")
    window = [m.text for m in memory.get_messages(sid, window=50)]
    assert not any("Margarida" in text for text in window)
    memory.index_pending()
    question = "what was my sister's city?"
    if mode == "sync":
        result = agent.run_turn(sid, question, message_id="SM99")
    else:
        result = await agent.arun_turn(sid, question, message_id="SM99")
    assert "Porto" in result.reply
    assert result.reply.index("Margarida") < result.reply.index("Remind")  # best match first


def test_the_recall_tool_leaves_out_the_window_and_finds_by_exact_words(
    recall_memory: Any,
) -> None:
    memory = recall_memory(fake_embeddings())
    agent = ChatAgent(memory, Settings(memory_window=4), model=OfflineChatModel())
    agent.run_turn("c1", "my order is Q7X-1234", message_id="SM0")
    for turn in range(3):
        agent.run_turn("c1", f"hello {turn}", message_id=f"SM{turn + 1}")
    memory.index_pending()
    reply = agent.run_turn("c1", "recall Q7X-1234", message_id="SM9").reply
    assert "my order is Q7X-1234" in reply
    assert "hello 2" not in reply  # in the window the model sees


def test_index_command_backfills_reembeds_and_shows_progress(recall_memory: Any) -> None:
    memory = recall_memory(fake_embeddings())
    memory.add_messages("c1", [HumanMessage(f"message {i}") for i in range(30)])
    out = io.StringIO()
    assert index_command(memory, backfill=False, reembed=False, out=out) == 0
    assert "indexing" in out.getvalue() and "indexed 30 messages (30 rows)" in out.getvalue()
    out = io.StringIO()
    assert index_command(memory, backfill=True, reembed=False, out=out) == 0
    assert "queued 0 messages" in out.getvalue() and "nothing to index" in out.getvalue()
    out = io.StringIO()
    assert index_command(memory, backfill=False, reembed=True, out=out) == 0
    assert "queued 30 messages" in out.getvalue()
    assert "rows/s" in out.getvalue() and "indexed 30 messages" in out.getvalue()
    assert memory.stats()["recall_pending"] == 0


def test_index_command_says_when_recall_is_off(memory: HybridMemory) -> None:
    out = io.StringIO()
    assert index_command(memory, backfill=True, reembed=False, out=out) == 2
    assert "recall is off" in out.getvalue()


def test_recall_lag_is_exported_and_shown_by_readyz(
    servers: Any, fresh_database_url: str, tmp_path: Path
) -> None:
    migrate_database(fresh_database_url)
    memory = HybridMemory.from_urls(
        redis_url=servers.redis_url, database_url=fresh_database_url, embeddings=fake_embeddings()
    )
    settings = signed_app_settings(fresh_database_url, servers.redis_url, tmp_path)
    app = create_app(
        settings, memory=memory, agent=ChatAgent(memory, settings, model=fake_model("fine"))
    )
    try:
        memory.add_messages("c1", [HumanMessage("one"), AIMessage("two")])
        response = app.test_client().get("/readyz")
        body = response.get_json()
        assert response.status_code == 200, body
        assert body["recall"]["pending"] == 2 and body["recall"]["oldest_pending_seconds"] >= 0
        metrics = Metrics()
        metrics.watch_memory(memory)
        text = generate_latest(metrics.registry).decode()
        assert "hybrid_memory_recall_pending 2.0" in text
        assert 'event="recall_pending"' not in text  # a gauge, not an event counter
        memory.index_pending()
        assert app.test_client().get("/readyz").get_json()["recall"]["pending"] == 0
    finally:
        app.extensions["hybrid_memory"].redis.close()
        memory.close()


def test_console_search_uses_recall_when_on(recall_memory: Any, memory: HybridMemory) -> None:
    on = recall_memory(fake_embeddings())
    for target in (on, memory):
        target.add_messages("c1", [HumanMessage("the boiler ticket is INC-4242"), AIMessage("ok")])
    on.index_pending()
    # Recall ranks by exact words and meaning; the substring search needs the very phrase.
    assert [m.text for m in search_messages(SimpleNamespace(memory=on), "c1", "INC-4242 boiler")][
        :1
    ] == ["the boiler ticket is INC-4242"]
    assert search_messages(SimpleNamespace(memory=memory), "c1", "INC-4242 boiler") == []


def test_recall_setting() -> None:
    assert Settings.from_env({"RECALL": "off"}).recall_enabled is False
    assert Settings.from_env({"RECALL": "on"}).recall_enabled is True
    from lc_hybrid_memory import default_embeddings_installed

    assert Settings.from_env({}).recall_enabled is default_embeddings_installed()
    with pytest.raises(ValueError, match="RECALL"):
        Settings.from_env({"RECALL": "maybe"})


def test_the_offline_model_answers_from_the_window_before_recalling(recall_memory: Any) -> None:
    memory = recall_memory(fake_embeddings())
    agent = ChatAgent(memory, Settings(memory_window=50), model=OfflineChatModel())
    agent.run_turn("w1", "My sister Margarida moved to Porto last spring.", message_id="SM0")
    agent.run_turn("w1", "Remind me to buy bread.", message_id="SM1")
    reply = agent.run_turn("w1", "what was my sister's city?", message_id="SM2").reply
    assert "Margarida moved to Porto" in reply  # still in the window: no recall needed
    other = agent.run_turn("w1", "what is my favourite colour?", message_id="SM3").reply
    assert "You told me" not in other and "Here is what I found" in other  # not in view: recall
