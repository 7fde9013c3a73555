"""Recall (L3) mechanics on real Postgres with pgvector: the queue, indexing, erasing, fallback.

Indexing mechanics use langchain-core's deterministic fake embeddings; recall quality is tested
with the real default model in ``test_recall_quality.py``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import sqlalchemy as sa
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from pydantic import Field

from lc_hybrid_memory import (
    HybridMemory,
    HybridMemoryError,
    MessageTable,
    VectorsUnavailableError,
    sync_url,
)
from lc_hybrid_memory.embedded import free_port
from tests.library.conftest import drop_recall_tables
from tests.support.servers import MemoryFactory


class CountingEmbeddings(DeterministicFakeEmbedding):
    """Fake embeddings that record every text embedded and can fail on a given batch."""

    embedded: list[str] = Field(default_factory=list)
    fail_on_batch: int | None = None
    batches: int = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.batches += 1
        if self.fail_on_batch is not None and self.batches == self.fail_on_batch:
            raise RuntimeError("embedder crashed")
        self.embedded.extend(texts)
        return super().embed_documents(texts)


def counting(size: int = 8, **kw: Any) -> CountingEmbeddings:
    return CountingEmbeddings(size=size, embedded=[], **kw)


def scalar(memory: HybridMemory, sql: str, **params: Any) -> Any:
    assert memory.store.engine is not None
    with memory.store.engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar_one()


def table(memory: HybridMemory, part: str) -> str:
    return f'"{memory.store.mapping.name}_recall_{part}"'


def turns(n: int, start: int = 0) -> list[Any]:
    return [
        (HumanMessage if i % 2 == 0 else AIMessage)(f"message {i} about topic {i % 7}")
        for i in range(start, start + n)
    ]


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


async def index(memory: HybridMemory, mode: str, **kw: Any) -> int:
    if mode == "sync":
        return memory.index_pending(**kw)
    return await memory.aindex_pending(**kw)


async def recall(memory: HybridMemory, mode: str, sid: str, query: str, **kw: Any) -> list[Any]:
    if mode == "sync":
        return memory.recall(sid, query, **kw)
    return await memory.arecall(sid, query, **kw)


async def test_writes_only_enqueue_and_indexing_drains_the_queue(
    recall_memory_factory: MemoryFactory, mode: str
) -> None:
    memory = recall_memory_factory(embeddings=counting())
    memory.add_messages("c1", turns(10))
    # The INSERT enqueued its rows (same statement); nothing was embedded on the write path.
    assert memory.stats()["recall_pending"] == 10
    assert scalar(memory, f"SELECT count(*) FROM {table(memory, 'vectors')}") == 0
    assert memory.recall_index.embeddings.embedded == []
    assert await index(memory, mode) == 10
    assert memory.stats()["recall_pending"] == 0
    assert scalar(memory, f"SELECT count(*) FROM {table(memory, 'vectors')}") == 10
    assert await index(memory, mode) == 0  # nothing is embedded twice


async def test_tool_results_and_empty_messages_are_queued_but_not_embedded(
    recall_memory_factory: MemoryFactory, mode: str
) -> None:
    memory = recall_memory_factory(embeddings=counting())
    memory.add_messages(
        "c1",
        [
            HumanMessage("what time is it"),
            AIMessage("", tool_calls=[{"name": "clock", "args": {}, "id": "t1"}]),
            ToolMessage("12:00", tool_call_id="t1"),
            AIMessage("it is noon"),
        ],
    )
    assert await index(memory, mode) == 2
    assert sorted(memory.recall_index.embeddings.embedded) == ["it is noon", "what time is it"]
    # Every row is marked indexed, so a backfill finds nothing to do.
    assert memory.recall_index.backfill() == 0
    found = await recall(memory, mode, "c1", "12:00 noon", k=5)
    assert sorted(m.content for m in found) == ["it is noon", "what time is it"]


async def test_indexer_crash_mid_batch_loses_nothing_and_reembeds_only_that_batch(
    recall_memory_factory: MemoryFactory, mode: str
) -> None:
    embeddings = counting(fail_on_batch=2)
    memory = recall_memory_factory(embeddings=embeddings, recall_options={"batch_size": 4})
    memory.add_messages("c1", turns(10))
    with pytest.raises(RuntimeError, match="embedder crashed"):
        await index(memory, mode)
    # The first batch committed; the crashed one rolled back and is still queued.
    assert scalar(memory, f"SELECT count(*) FROM {table(memory, 'vectors')}") == 4
    assert memory.stats()["recall_pending"] == 6
    assert await index(memory, mode) == 6
    texts = embeddings.embedded
    assert len(texts) == 10 and len(set(texts)) == 10  # each message embedded exactly once
    assert scalar(memory, f"SELECT count(*) FROM {table(memory, 'vectors')}") == 10


async def test_a_message_queued_twice_is_indexed_once(
    recall_memory_factory: MemoryFactory, mode: str
) -> None:
    memory = recall_memory_factory(embeddings=counting())
    memory.add_messages("c1", turns(3))
    queue = table(memory, "queue")
    with memory.store.engine.connect() as conn:  # type: ignore[union-attr]
        conn.execute(sa.text(f"INSERT INTO {queue} SELECT * FROM {queue}"))  # every row twice
    assert memory.recall_index.backfill() == 0  # already queued: not a third time
    assert scalar(memory, f"SELECT count(*) FROM {queue}") == 6
    assert await index(memory, mode) == 3
    assert sorted(memory.recall_index.embeddings.embedded) == [t.content for t in turns(3)]
    assert scalar(memory, f"SELECT count(*) FROM {queue}") == 0


def test_concurrent_indexers_split_the_queue(recall_memory_factory: MemoryFactory) -> None:
    barrier = threading.Barrier(2, timeout=30)

    class Meeting(CountingEmbeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            if self.batches == 0:
                barrier.wait()  # both indexers hold a claimed batch at the same time
            return super().embed_documents(texts)

    embeddings = Meeting(size=8, embedded=[])
    memory = recall_memory_factory(embeddings=embeddings, recall_options={"batch_size": 5})
    memory.add_messages("c1", turns(10))
    results: list[int] = []
    workers = [
        threading.Thread(target=lambda: results.append(memory.index_pending(limit=5)))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(results) == [5, 5]
    assert len(embeddings.embedded) == 10 and len(set(embeddings.embedded)) == 10


async def test_rows_written_by_other_code_are_enqueued_and_backfill_finds_the_rest(
    recall_memory_factory: MemoryFactory, mode: str
) -> None:
    memory = recall_memory_factory(embeddings=counting())
    name = memory.store.mapping.name
    assert memory.store.engine is not None
    with memory.store.engine.connect() as conn:
        # Another program's INSERT: the trigger enqueues it all the same.
        conn.execute(
            sa.text(
                f'INSERT INTO "{name}" (conversation_id, role, content, payload) VALUES '
                "('c1', 'user', 'written elsewhere', "
                """'{"type": "human", "data": {"content": "written elsewhere"}}')"""
            )
        )
        # Rows older than the trigger (an existing table): only a backfill finds them.
        conn.execute(sa.text(f'ALTER TABLE "{name}" DISABLE TRIGGER "{name}_recall_enqueue"'))
        conn.execute(
            sa.text(
                f'INSERT INTO "{name}" (conversation_id, role, content, payload) VALUES '
                "('c1', 'user', 'before the trigger', "
                """'{"type": "human", "data": {"content": "before the trigger"}}')"""
            )
        )
        conn.execute(sa.text(f'ALTER TABLE "{name}" ENABLE TRIGGER "{name}_recall_enqueue"'))
    assert await index(memory, mode) == 1
    assert memory.recall_index.backfill() == 1
    assert await index(memory, mode) == 1
    assert memory.recall_index.backfill() == 0
    assert sorted(memory.recall_index.embeddings.embedded) == [
        "before the trigger",
        "written elsewhere",
    ]


async def test_reembed_with_another_embedder_replaces_vectors(
    recall_memory_factory: MemoryFactory, mode: str
) -> None:
    old = recall_memory_factory(embeddings=counting(size=8))
    old.add_messages("c1", turns(6))
    await index(old, mode)
    new = recall_memory_factory(embeddings=counting(size=12))
    assert new.recall_index.model_name != old.recall_index.model_name
    assert new.recall_index.backfill() == 6
    # Until re-embedded, the old vectors stay and recall still answers (lexically for now).
    assert [m.content for m in await recall(new, mode, "c1", "message 4", k=1)] == [
        "message 4 about topic 4"
    ]
    assert await index(new, mode) == 6
    models = scalar(
        new, f"SELECT array_agg(DISTINCT model || ':' || dimensions) FROM {table(new, 'vectors')}"
    )
    assert models == [f"{new.recall_index.model_name}:12"]
    assert scalar(new, f"SELECT count(*) FROM {table(new, 'vectors')}") == 6


async def test_clear_removes_vectors_lexemes_and_pending_work(
    recall_memory_factory: MemoryFactory, mode: str
) -> None:
    memory = recall_memory_factory(embeddings=counting())
    memory.add_messages("gone", turns(4))
    memory.add_messages("kept", turns(3))
    await index(memory, mode)
    memory.add_messages("gone", turns(2, start=4))  # still pending when erased
    if mode == "sync":
        memory.clear("gone")
    else:
        await memory.aclear("gone")
    for part in ("vectors", "text", "queue"):
        count = scalar(
            memory, f"SELECT count(*) FROM {table(memory, part)} WHERE conversation_id = 'gone'"
        )
        assert count == 0, part
    assert scalar(memory, f"SELECT count(*) FROM {table(memory, 'vectors')}") == 3
    assert await recall(memory, mode, "gone", "message") == []


def test_a_row_deleted_by_other_code_leaves_no_vector(
    recall_memory_factory: MemoryFactory,
) -> None:
    memory = recall_memory_factory(embeddings=counting())
    memory.add_messages("c1", turns(4))
    memory.index_pending()
    assert memory.store.engine is not None
    with memory.store.engine.connect() as conn:
        conn.execute(
            sa.text(
                f'DELETE FROM "{memory.store.mapping.name}" '
                "WHERE content = 'message 1 about topic 1'"
            )
        )
    # ON DELETE CASCADE: no sweep needed.
    assert scalar(memory, f"SELECT count(*) FROM {table(memory, 'vectors')}") == 3
    assert scalar(memory, f"SELECT count(*) FROM {table(memory, 'text')}") == 3
    assert memory.recall_index.sweep() == 0


@pytest.fixture
def app_table(recall_database_url: str, unique: str) -> Any:
    """An application-owned table: other names, bigint ids, PRIMARY KEY (pk) — or no key."""
    engine = sa.create_engine(sync_url(recall_database_url), isolation_level="AUTOCOMMIT")
    name = f"app_messages_{unique}"

    def create(*, key: bool) -> MessageTable:
        with engine.connect() as conn:
            conn.execute(
                sa.text(
                    f'CREATE TABLE "{name}" (pk bigint GENERATED BY DEFAULT AS IDENTITY'
                    f"{' PRIMARY KEY' if key else ''}, thread_id bigint NOT NULL, "
                    "sender text NOT NULL, body text NOT NULL)"
                )
            )
            conn.execute(sa.text(f'CREATE INDEX ON "{name}" (thread_id, pk)'))
        return MessageTable(
            name=name,
            id="pk",
            conversation_id="thread_id",
            conversation_id_type="bigint",
            role="sender",
            content="body",
            payload=None,
            message_uid=None,
            provider_sid=None,
            created_at=None,
        )

    yield create
    drop_recall_tables(engine, name)
    engine.dispose()


@pytest.mark.parametrize("key", [True, False], ids=["primary-key", "no-key"])
async def test_recall_on_an_app_owned_table(
    recall_memory_factory: MemoryFactory, app_table: Any, key: bool, mode: str
) -> None:
    mapping = app_table(key=key)
    memory = recall_memory_factory(embeddings=counting(), table=mapping)
    memory.add_messages("7", turns(5))
    memory.add_messages("8", turns(5))
    assert await index(memory, mode) == 10
    found = await recall(memory, mode, "7", "message 3 about topic 3", k=2)
    assert found[0].content == "message 3 about topic 3"
    with memory.store.engine.connect() as conn:  # type: ignore[union-attr]
        conn.execute(sa.text(f"DELETE FROM \"{mapping.name}\" WHERE body LIKE 'message 3 %'"))
    # With a key the vectors cascade; without one the sweep removes them.
    assert memory.recall_index.sweep() == (0 if key else 4)
    assert scalar(memory, f"SELECT count(*) FROM {table(memory, 'vectors')}") == 8
    if mode == "sync":
        memory.clear("7")
    else:
        await memory.aclear("7")
    assert scalar(memory, f"SELECT count(*) FROM {table(memory, 'vectors')}") == 4


async def test_recall_works_while_redis_is_down(
    recall_memory_factory: MemoryFactory, mode: str
) -> None:
    memory = recall_memory_factory(
        embeddings=counting(), redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    memory.add_messages("c1", turns(6))  # Redis unreachable: Postgres takes the write
    assert await index(memory, mode) == 6
    found = await recall(memory, mode, "c1", "message 2 about topic 2", k=1)
    assert [m.content for m in found] == ["message 2 about topic 2"]
    assert memory.stats()["cache_errors"] >= 1


async def test_exclude_recent_leaves_out_the_newest_messages(
    recall_memory_factory: MemoryFactory, mode: str
) -> None:
    memory = recall_memory_factory(embeddings=counting())
    memory.add_messages("c1", turns(10))
    await index(memory, mode)
    found = await recall(memory, mode, "c1", "message", k=10, exclude_recent=4)
    assert sorted(m.content for m in found) == [
        f"message {i} about topic {i % 7}" for i in range(6)
    ]
    assert await recall(memory, mode, "c1", "message", k=10, exclude_recent=10) == []
    assert await recall(memory, mode, "c1", "message", k=10, exclude_recent=50) == []


async def test_identical_texts_collapse_to_the_most_recent(
    recall_memory_factory: MemoryFactory, mode: str
) -> None:
    memory = recall_memory_factory(embeddings=counting())
    memory.add_messages("c1", [HumanMessage("the code is 1234", id="first")])
    memory.add_messages("c1", turns(3))
    memory.add_messages("c1", [HumanMessage("the code is 1234", id="second")])
    await index(memory, mode)
    found = await recall(memory, mode, "c1", "code 1234", k=3)
    assert [m.id for m in found if m.content == "the code is 1234"] == ["second"]


async def test_the_lexical_side_searches_only_specific_words(
    recall_memory_factory: MemoryFactory, mode: str
) -> None:
    memory = recall_memory_factory(embeddings=counting())
    memory.add_messages("c1", [HumanMessage("is it from here? my order Z9Q-1234 is late")])
    memory.add_messages("c1", turns(30))
    await index(memory, mode)  # a new table: indexing gathers its statistics at once
    recall_index = memory.recall_index
    assert recall_index is not None

    async def hits(query: str) -> list[Any]:
        if mode == "sync":
            return recall_index.recall("c1", query, k=40)
        return await recall_index.arecall("c1", query, k=40)

    # "topic" is in every message (common), "is", "it", "from" are stop words: no lexical side.
    for query in ("topic", "is it from here"):
        assert [h.lexical_rank for h in await hits(query)] == [None] * 31, query
    # A specific word: found lexically, and first.
    found = await hits("what about Z9Q-1234 and its topic?")
    assert found[0].message.content.endswith("Z9Q-1234 is late")
    assert found[0].lexical_rank == 1
    assert [h.lexical_rank for h in found[1:]] == [None] * 30
    with pytest.raises(ValueError, match="dictionary name"):
        recall_memory_factory(embeddings=counting(), recall_options={"stopwords": ["x;"]})


async def test_the_lexical_side_reads_the_conversation_when_a_word_is_not_rare(
    recall_memory_factory: MemoryFactory, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GIN lookup of the whole table stops at a bound, and the conversation's own
    lexemes are read instead: the same answer either way."""
    from lc_hybrid_memory import recall_search_sql

    lexical = recall_memory_factory(embeddings=counting(), recall_options={"common_share": 1.0})
    for conversation in ("c1", "c2"):
        lexical.add_messages(
            conversation, [HumanMessage(f"zebra number {i} of {conversation}") for i in range(6)]
        )
    await index(lexical, mode)
    recall_index = lexical.recall_index
    assert recall_index is not None

    async def ranks() -> list[tuple[str, int | None]]:
        if mode == "sync":
            hits = recall_index.recall("c1", "zebra 3", k=10)
        else:
            hits = await recall_index.arecall("c1", "zebra 3", k=10)
        return sorted((h.message.content, h.lexical_rank) for h in hits)

    through_the_index = await ranks()
    monkeypatch.setattr(recall_search_sql, "LEXICAL_MAX_MATCHES", 3)  # 12 rows match "zebra"
    assert await ranks() == through_the_index
    assert len(through_the_index) == 6 and all(rank for _, rank in through_the_index)
    assert through_the_index[3] == ("zebra number 3 of c1", 1)


async def test_neighbours_bring_the_turn_around_each_hit(
    recall_memory_factory: MemoryFactory, mode: str
) -> None:
    memory = recall_memory_factory(embeddings=counting())
    texts = [f"chat {i}" for i in range(12)]
    texts[3], texts[6], texts[9] = "the ticket is INC-7", "ticket INC-7 again", "INC-7 closed"
    memory.add_messages("c1", [HumanMessage(t) for t in texts])
    memory.add_messages("c2", [HumanMessage("INC-7 elsewhere")])
    await index(memory, mode)

    async def found(**kw: Any) -> list[str]:
        return [m.content for m in await recall(memory, mode, "c1", "INC-7", k=3, **kw)]

    hits = await found()
    assert sorted(hits) == sorted([texts[3], texts[6], texts[9]])
    # Each hit, best first, with the message before and after it, in the conversation's order.
    expected = []
    for hit in hits:
        at = texts.index(hit)
        expected += texts[at - 1 : at + 2]
    assert await found(neighbours=1) == expected
    # A neighbour shared by two hits is shown once; none comes from the recent messages left
    # out (here the last two: "chat 10" and "chat 11").
    wide = await found(neighbours=2, exclude_recent=2)
    assert len(wide) == len(set(wide)) == 9 and "chat 10" not in wide
    assert set(wide) == set(texts[1:10])
    with pytest.raises(ValueError, match="neighbours"):
        await recall(memory, mode, "c1", "INC-7", neighbours=-1)


async def test_the_middleware_can_add_recalled_messages_to_the_models_context(
    recall_memory_factory: MemoryFactory, mode: str
) -> None:
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    from lc_hybrid_memory.langgraph import HybridMemoryMiddleware
    from lc_hybrid_memory.langgraph_recall import RECALLED_HEADER

    class Recording(GenericFakeChatModel):
        received: list[list[Any]] = Field(default_factory=list)

        def bind_tools(self, tools: Any, **kwargs: Any) -> Recording:
            return self

        def _generate(self, messages: list[Any], *args: Any, **kwargs: Any) -> Any:
            self.received.append(list(messages))
            return super()._generate(messages, *args, **kwargs)

    memory = recall_memory_factory(embeddings=counting())
    memory.add_messages("c1", [HumanMessage("my locker code is Z-4471"), *turns(8)])
    memory.index_pending()

    async def ask(recall: int, mid: str) -> list[Any]:
        model = Recording(messages=iter(["fine"]))
        middleware = HybridMemoryMiddleware(memory, window=4, recall=recall)
        agent = create_agent(model, [], system_prompt="Be brief.", middleware=[middleware])
        state = {"messages": [HumanMessage("what is Z-4471 for?", id=mid)]}
        config = {"configurable": {"session_id": "c1"}}
        if mode == "sync":
            agent.invoke(state, config=config)
        else:
            await agent.ainvoke(state, config=config)
        return model.received[0]

    seen = await ask(2, "SM1")
    assert seen[0].type == "system" and seen[0].text.startswith("Be brief.")
    assert RECALLED_HEADER in seen[0].text and "- user: my locker code is Z-4471" in seen[0].text
    assert len(seen) == 1 + 4 + 1  # the system message, the window, the input
    stored = [m.text for m in memory.get_messages("c1", window=None)]
    assert not any(RECALLED_HEADER in text for text in stored)  # the model saw it; not stored
    assert RECALLED_HEADER not in (await ask(0, "SM2"))[0].text  # off by default
    with pytest.raises(ValueError, match="embeddings"):
        HybridMemoryMiddleware(recall_memory_factory(embeddings=None), recall=1)


def test_bad_arguments_are_refused(recall_memory_factory: MemoryFactory) -> None:
    memory = recall_memory_factory(embeddings=counting())
    with pytest.raises(ValueError, match="k must be"):
        memory.recall("c1", "x", k=0)
    with pytest.raises(ValueError, match="exclude_recent"):
        memory.recall("c1", "x", exclude_recent=-1)
    with pytest.raises(TypeError, match="query must be a string"):
        memory.recall("c1", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="embeddings must be"):
        recall_memory_factory(embeddings="openai")
    assert memory.recall("c1", "   ") == []


def test_recall_off_says_how_to_turn_it_on(recall_memory_factory: MemoryFactory) -> None:
    memory = recall_memory_factory(embeddings=None)
    assert "recall_pending" not in memory.stats()
    with pytest.raises(HybridMemoryError, match='embeddings="default"'):
        memory.recall("c1", "anything")


def test_background_indexer_indexes_new_messages(recall_memory_factory: MemoryFactory) -> None:
    done = threading.Event()

    class Signalling(CountingEmbeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            vectors = super().embed_documents(texts)
            if len(self.embedded) >= 6:
                done.set()
            return vectors

    memory = recall_memory_factory(embeddings=Signalling(size=8, embedded=[]))
    indexer = memory.start_indexer(interval=0.05)
    try:
        memory.add_messages("c1", turns(6))
        assert done.wait(30)
    finally:
        indexer.stop()
    assert memory.stats()["recall_pending"] == 0


async def test_without_pgvector_recall_is_lexical_with_a_warning(
    servers: Any,
    no_pgvector_database_url: str,
    unique: str,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    name = f"novec_{unique}"
    memory = HybridMemory.from_urls(
        redis_url=servers.redis_url,
        database_url=no_pgvector_database_url,
        table=MessageTable(name=name),
        prefix=f"test:{unique}:",
        embeddings=counting(),
    )
    engine = sa.create_engine(sync_url(no_pgvector_database_url), isolation_level="AUTOCOMMIT")
    try:
        with caplog.at_level(logging.WARNING, logger="lc_hybrid_memory.recall"):
            if mode == "sync":
                memory.create_schema()
            else:
                await memory.acreate_schema()
        assert "no pgvector" in caplog.text
        memory.add_messages("c1", [HumanMessage("order A7X-4431 is late"), *turns(4)])
        assert await index(memory, mode) == 5
        assert memory.recall_index.embeddings.embedded == []  # nothing to store vectors in
        found = await recall(memory, mode, "c1", "where is A7X-4431?", k=1)
        assert [m.content for m in found] == ["order A7X-4431 is late"]
        strict = HybridMemory.from_urls(
            redis_url=None,
            database_url=no_pgvector_database_url,
            table=MessageTable(name=name),
            embeddings=counting(),
            recall_options={"require_vectors": True},
        )
        with pytest.raises(VectorsUnavailableError, match="pgvector"):
            strict.recall("c1", "A7X-4431")
        strict.close()
    finally:
        await memory.aclose()
        drop_recall_tables(engine, name)
        engine.dispose()
