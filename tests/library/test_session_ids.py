"""One conversation, one cache key: session ids canonicalised to the id column's form."""

from __future__ import annotations

import uuid

import pytest
import redis
import sqlalchemy as sa
from langchain_core.messages import HumanMessage

from lc_hybrid_memory import InvalidSessionIdError, MessageTable, canonical_session_id
from tests.support.servers import MemoryFactory

UUID = "a8098c1a-f86e-11da-bd1a-00112444be1e"


@pytest.mark.parametrize(
    ("column_type", "spellings", "canonical"),
    [
        ("bigint", ["1", "01", " 1", "+1", "1 "], "1"),
        ("bigint", ["-5", "-05"], "-5"),
        (
            "uuid",
            [UUID, UUID.upper(), "{" + UUID + "}", UUID.replace("-", ""), "urn:uuid:" + UUID],
            UUID,
        ),
        ("citext", ["Maria", "MARIA", "maria"], "maria"),
        ("text", ["Maria"], "Maria"),
    ],
)
def test_spellings_share_one_canonical_id(
    column_type: str, spellings: list[str], canonical: str
) -> None:
    assert {canonical_session_id(s, column_type) for s in spellings} == {canonical}


@pytest.mark.parametrize(
    ("column_type", "bad"),
    [("bigint", "１"), ("bigint", "1.0"), ("bigint", str(2**63)), ("uuid", "not-a-uuid")],
)
def test_ids_the_column_cannot_hold_are_refused(column_type: str, bad: str) -> None:
    with pytest.raises(InvalidSessionIdError, match=r"not a valid|out of the bigint range"):
        canonical_session_id(bad, column_type)


@pytest.mark.parametrize(
    ("column_type", "spellings"),
    [
        ("bigint", ["1", "01", " 1", "+1"]),
        ("uuid", [UUID, UUID.upper(), "{" + UUID + "}", UUID.replace("-", "")]),
        ("citext", ["Maria", "MARIA", "maria"]),
    ],
)
def test_every_spelling_reads_writes_and_clears_one_conversation(
    memory_factory: MemoryFactory,
    redis_client: redis.Redis,
    sql_engine: sa.Engine,
    unique: str,
    column_type: str,
    spellings: list[str],
) -> None:
    if column_type == "citext":
        try:
            with sql_engine.connect() as conn:
                conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS citext"))
        except sa.exc.DBAPIError:
            pytest.skip("this Postgres has no citext extension (pgserver ships none)")
    table = MessageTable(name=f"typed_{unique}", conversation_id_type=column_type)
    memory = memory_factory(table=table)
    for i, spelling in enumerate(spellings):
        memory.add_messages(spelling, [HumanMessage(f"m{i}")])
    for spelling in spellings:  # each spelling fills or hits the same list
        assert [m.content for m in memory.history(spelling).messages] == [
            f"m{i}" for i in range(len(spellings))
        ]
    keys = set(redis_client.scan_iter(match=f"{memory.cache.prefix}*"))
    assert len(keys) == 1
    assert memory.clear(spellings[-1]) == len(spellings)
    for spelling in spellings:  # never served from a stale list under another spelling
        assert memory.history(spelling).messages == []
    assert memory.history(spellings[0]).session_id == canonical_session_id(
        spellings[0], column_type
    )


def test_a_uuid_object_is_accepted(memory_factory: MemoryFactory, unique: str) -> None:
    memory = memory_factory(table=MessageTable(name=f"u_{unique}", conversation_id_type="uuid"))
    memory.add_messages(uuid.UUID(UUID), [HumanMessage("x")])
    assert [m.content for m in memory.history(UUID.upper()).messages] == ["x"]
