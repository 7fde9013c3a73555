"""What operators and the app's delivery bookkeeping read: transcripts, cache state, turn replies,
conversation summaries — on real Redis and Postgres."""

from __future__ import annotations

import redis
from langchain_core.messages import AIMessage, HumanMessage

from lc_hybrid_memory import HybridMemory


def test_transcript_has_row_ids_message_ids_times_and_delivery_marks(memory: HybridMemory) -> None:
    memory.add_messages("c1", [HumanMessage("hi", id="SM1"), AIMessage("hello", id="SM1:1")])
    memory.add_messages("c1", [HumanMessage("no id")])
    assert memory.mark_delivered("c1", "SM1:1", "SMreply1") is True
    assert memory.mark_delivered("c1", "missing", "SMx") is False

    entries = memory.transcript("c1")
    assert [e.message.content for e in entries] == ["hi", "hello", "no id"]
    assert [e.message_id for e in entries][:2] == ["SM1", "SM1:1"]
    assert entries[2].message_id is not None  # generated, kept out of the message
    assert entries[2].message.id is None
    assert [e.provider_sid for e in entries] == [None, "SMreply1", None]
    assert entries[0].row_id < entries[1].row_id < entries[2].row_id
    assert all(e.created_at is not None for e in entries)

    last_two = memory.transcript("c1", limit=2)
    assert [e.row_id for e in last_two] == [e.row_id for e in entries[1:]]
    before = memory.transcript("c1", before_id=entries[2].row_id, limit=1)
    assert [e.row_id for e in before] == [entries[1].row_id]


async def test_async_transcript_and_turn_reply(memory: HybridMemory) -> None:
    await memory.aadd_messages(
        "c2",
        [HumanMessage("q", id="SM9"), AIMessage("a1", id="SM9:1"), AIMessage("a2", id="SM9:2")],
    )
    assert [e.message.content for e in await memory.atranscript("c2")] == ["q", "a1", "a2"]
    reply = await memory.aturn_reply("c2", "SM9")
    assert reply is not None and reply.message_id == "SM9:2" and not reply.delivered
    assert await memory.amark_delivered("c2", "SM9:2", "SMout")
    reply = memory.turn_reply("c2", "SM9")
    assert reply is not None and reply.delivered and reply.provider_sid == "SMout"
    assert memory.turn_reply("c2", "SM1") is None
    # A turn id is a prefix up to the colon, never a LIKE pattern.
    assert memory.turn_reply("c2", "SM%") is None


def test_cache_state_shows_the_cached_rows_and_ttl(
    memory: HybridMemory, redis_client: redis.Redis
) -> None:
    assert memory.cache_state("c3") is None
    memory.add_messages("c3", [HumanMessage(str(i)) for i in range(60)])
    assert memory.cache_state("c3") is None  # writes never create the list
    assert len(memory.history("c3").messages) == 50  # a miss fills the list
    state = memory.cache_state("c3")
    assert state is not None
    rows = [e.row_id for e in memory.transcript("c3")]
    assert state.row_ids == rows[-50:]
    assert state.complete is False
    assert state.ttl_seconds is not None and 0 < state.ttl_seconds <= 3600


def test_summaries_count_messages_per_conversation(memory: HybridMemory) -> None:
    memory.add_messages("a", [HumanMessage("1"), AIMessage("2")])
    memory.add_messages("b", [HumanMessage("1")])
    summaries = memory.summaries(["a", "b", "none"])
    assert set(summaries) == {"a", "b"}
    assert summaries["a"].messages == 2 and summaries["b"].messages == 1
    assert summaries["a"].last_message_at is not None
    assert memory.count("a") == 2
    assert memory.summaries([]) == {}
