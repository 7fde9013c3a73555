"""Checks of the memory's invariants on the real servers, shared by the library and app tests."""

from __future__ import annotations

from typing import Any

import orjson
import redis
from langchain_core.messages import BaseMessage

from lc_hybrid_memory import HybridMemory


class Api:
    """The memory's sync or async methods behind one awaitable interface."""

    def __init__(self, memory: HybridMemory, mode: str) -> None:
        self.memory = memory
        self.mode = mode

    async def get(self, sid: str, window: int | None = 50, **kw: Any) -> list[BaseMessage]:
        history = self.memory.history(sid, window=window, **kw)
        if self.mode == "sync":
            return history.messages
        return await history.aget_messages()

    async def add(self, sid: str, messages: list[BaseMessage]) -> list[bool]:
        if self.mode == "sync":
            return self.memory.add_messages(sid, messages)
        return await self.memory.aadd_messages(sid, messages)

    async def clear(self, sid: str) -> None:
        history = self.memory.history(sid)
        if self.mode == "sync":
            history.clear()
        else:
            await history.aclear()


def cached(memory: HybridMemory, client: redis.Redis, sid: str) -> list[bytes]:
    return client.lrange(memory.cache.key(sid), 0, -1)


def table_rows(memory: HybridMemory, sid: str) -> list[tuple[int, str]]:
    """The conversation's rows in Postgres, oldest first: (id, payload json)."""
    return [(row.id, row.payload) for row in memory.store.all(sid)]


def assert_cache_is_tail(memory: HybridMemory, client: redis.Redis, sid: str) -> None:
    """The invariant: the cached list, if any, equals the last rows of the table."""
    raw = cached(memory, client, sid)
    if not raw:
        return
    # Compare parsed JSON: jsonb::text normalises spacing and key order.
    entries = [(int(e.split(b":", 1)[0]), orjson.loads(e.split(b":", 1)[1])) for e in raw[1:]]
    rows = [(row_id, orjson.loads(payload)) for row_id, payload in table_rows(memory, sid)]
    if entries:
        assert entries == rows[-len(entries) :]
    assert len(entries) == min(len(rows), memory.cache.max_entries)
    assert raw[0] == (b"#1c" if len(entries) == len(rows) else b"#1p")
