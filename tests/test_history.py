"""HybridChatMessageHistory on real Redis and Postgres: read-through, write-through, windows."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage

from lc_hybrid_memory import HybridMemory


def test_empty_conversation_reads_empty_and_is_cached(memory: HybridMemory, redis_client) -> None:
    history = memory.history("empty")
    assert history.messages == []
    assert history.messages == []
    stats = memory.stats()
    assert (stats["misses"], stats["hits"], stats["fills"]) == (1, 1, 1)
    assert redis_client.lrange(memory.cache.key("empty"), 0, -1) == [b"#1c"]


def test_write_then_read_hits_the_cache(memory: HybridMemory) -> None:
    history = memory.history("c1")
    history.add_messages([HumanMessage("hi"), AIMessage("hello")])
    assert [m.content for m in history.messages] == ["hi", "hello"]
