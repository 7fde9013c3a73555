"""L1: the Redis list of a conversation's last N messages. Redis only.

Layout of ``ai:memory:{<session_id>}`` (the braces are a Redis Cluster hash tag, so the list and
its fill lease ``ai:memory:{<session_id>}:fill`` live in one slot and every script is single-slot)::

    ["#1c", "101:{...message json...}", "102:{...}", ...]

The head is a header: format version and whether the list starts at the conversation's first
message (``c``, complete) or is a trimmed tail (``p``, partial). It also makes an empty
conversation cacheable. Each entry is ``<postgres row id>:<message json>``; the ids let the
append script drop a message the cache already holds.

Coherence protocol (Postgres is the truth, the cache only ever holds its tail):

* a write commits to Postgres, then appends to the list *only if it exists* and deletes any
  fill lease, in one script (append + trim + expire + lease reset);
* a miss takes a lease (``SET NX PX`` with a random token), reads Postgres, and the fill
  script writes the list only if the lease still holds that token. A write that raced the
  fill deleted the lease, so a possibly stale fill is dropped, never cached;
* an entry out of id order (two writers that committed out of order) makes the script drop
  the list; the next read refills it from Postgres.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CacheRead", "CacheState", "MessageCache"]

HEADER_COMPLETE = b"#1c"
HEADER_PARTIAL = b"#1p"

# KEYS[1] list, KEYS[2] lease. ARGV[1] cap, ARGV[2] ttl ms, ARGV[3..] entries in id order.
# Returns the number appended, -1 when the list does not exist, -2 when it was dropped.
_APPEND = """
redis.call('DEL', KEYS[2])
local last = redis.call('LINDEX', KEYS[1], -1)
if not last then return -1 end
local last_id = tonumber(string.match(last, '^(%d+):')) or 0
local pushed = 0
for i = 3, #ARGV do
  local id = tonumber(string.match(ARGV[i], '^(%d+):'))
  if id == nil or id < last_id then
    redis.call('DEL', KEYS[1])
    return -2
  end
  if id > last_id then
    redis.call('RPUSH', KEYS[1], ARGV[i])
    last_id = id
    pushed = pushed + 1
  end
end
local extra = redis.call('LLEN', KEYS[1]) - 1 - tonumber(ARGV[1])
if extra > 0 then
  redis.call('LSET', KEYS[1], extra, '#1p')
  redis.call('LTRIM', KEYS[1], extra, -1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return pushed
"""

# KEYS[1] list, KEYS[2] lease. ARGV[1] token, ARGV[2] ttl ms, ARGV[3] header, ARGV[4..] entries.
_FILL = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2], KEYS[1])
local n = #ARGV
local i = 3
while i <= n do
  local j = math.min(i + 999, n)
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class CacheRead:
    """A cache hit: the cached entries as ``(row id, message json)`` and whether they are all."""

    entries: list[tuple[int, bytes]]
    complete: bool
    malformed: int = 0


@dataclass(frozen=True, slots=True)
class CacheState:
    """What the cache holds of a conversation: the row ids, oldest first, and the key's TTL."""

    row_ids: list[int]
    complete: bool
    ttl_seconds: float | None


def encode_key_part(session_id: str) -> str:
    """``session_id`` made safe inside a hash tag: braces and ``%`` percent-encoded."""
    if "{" in session_id or "}" in session_id or "%" in session_id:
        return session_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return session_id


class MessageCache:
    """The Redis tier. Takes a sync client, an async client, or both (``decode_responses=False``).

    Example::

        import redis
        cache = MessageCache(redis.Redis.from_url("redis://localhost:6379/0"))
        cache.read("conversation-1")   # None: a miss
    """

    def __init__(
        self,
        client: Any = None,
        async_client: Any = None,
        *,
        prefix: str = "ai:memory:",
        max_entries: int = 50,
        ttl_seconds: float = 3600,
        lease_seconds: float = 5.0,
    ) -> None:
        if client is None and async_client is None:
            raise ValueError("MessageCache needs a client, an async_client, or both")
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces (they make the hash tag)")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.client = client
        self.async_client = async_client
        self.prefix = prefix
        self.max_entries = max_entries
        self.ttl_ms = int(ttl_seconds * 1000)
        self.lease_ms = int(lease_seconds * 1000)
        self._append = client.register_script(_APPEND) if client is not None else None
        self._fill = client.register_script(_FILL) if client is not None else None
        self._aappend = async_client.register_script(_APPEND) if async_client else None
        self._afill = async_client.register_script(_FILL) if async_client else None

    # -- keys and entries --------------------------------------------------------------------

    def key(self, session_id: str) -> str:
        """The list's key: ``<prefix>{<session_id>}``."""
        return f"{self.prefix}{{{encode_key_part(session_id)}}}"

    def lease_key(self, session_id: str) -> str:
        """The fill lease's key, in the same hash slot as the list."""
        return f"{self.prefix}{{{encode_key_part(session_id)}}}:fill"

    @staticmethod
    def entry(row_id: int, payload: str) -> str:
        """The list entry for one stored message."""
        return f"{row_id}:{payload}"

    @staticmethod
    def _parse(raw: list[bytes]) -> CacheRead | None:
        if not raw:
            return None
        head = raw[0]
        if head not in (HEADER_COMPLETE, HEADER_PARTIAL):
            return CacheRead([], False, malformed=len(raw))
        entries: list[tuple[int, bytes]] = []
        malformed = 0
        for item in raw[1:]:
            row_id, sep, payload = item.partition(b":")
            if not sep or not row_id.isdigit():
                malformed += 1
                continue
            entries.append((int(row_id), payload))
        return CacheRead(entries, head == HEADER_COMPLETE, malformed)

    def _fill_args(self, token: str, entries: Sequence[tuple[int, str]], complete: bool) -> list:
        kept = entries[-self.max_entries :]
        header = HEADER_COMPLETE if complete and len(kept) == len(entries) else HEADER_PARTIAL
        return [token, self.ttl_ms, header, *(self.entry(i, p) for i, p in kept)]

    def _append_args(self, entries: Sequence[tuple[int, str]]) -> list:
        return [self.max_entries, self.ttl_ms, *(self.entry(i, p) for i, p in entries)]

    # -- sync --------------------------------------------------------------------------------

    def read(self, session_id: str) -> CacheRead | None:
        """The cached list (one LRANGE), or ``None`` on a miss."""
        return self._parse(self.client.lrange(self.key(session_id), 0, -1))

    def begin_fill(self, session_id: str) -> str | None:
        """Take the fill lease; its token, or ``None`` if another filler holds it."""
        token = secrets.token_hex(8)
        ok = self.client.set(self.lease_key(session_id), token, nx=True, px=self.lease_ms)
        return token if ok else None

    def fill(
        self, session_id: str, token: str, entries: Sequence[tuple[int, str]], complete: bool
    ) -> bool:
        """Write the list from Postgres rows if the lease still holds; whether it was written."""
        keys = [self.key(session_id), self.lease_key(session_id)]
        return bool(self._fill(keys=keys, args=self._fill_args(token, entries, complete)))

    def append(self, session_id: str, entries: Sequence[tuple[int, str]]) -> int:
        """Append committed rows if the list exists (see the module doc for the result)."""
        keys = [self.key(session_id), self.lease_key(session_id)]
        return int(self._append(keys=keys, args=self._append_args(entries)))

    def state(self, session_id: str) -> CacheState | None:
        """The cached row ids and the list's TTL (one pipelined round trip), ``None`` if absent."""
        pipe = self.client.pipeline(transaction=False)
        pipe.lrange(self.key(session_id), 0, -1)
        pipe.pttl(self.key(session_id))
        raw, ttl_ms = pipe.execute()
        read = self._parse(raw)
        if read is None:
            return None
        ttl = ttl_ms / 1000 if ttl_ms is not None and ttl_ms >= 0 else None
        return CacheState([row_id for row_id, _ in read.entries], read.complete, ttl)

    def _keys(self, session_ids: Sequence[str]) -> list[str]:
        return [k for sid in session_ids for k in (self.key(sid), self.lease_key(sid))]

    def invalidate(self, *session_ids: str) -> None:
        """Drop the lists and leases of these conversations (one round trip)."""
        if len(session_ids) == 1:  # both keys share a slot: one DEL, also on a cluster
            self.client.delete(*self._keys(session_ids))
            return
        # A cluster pipeline takes single-key DELs only; it groups them by node.
        pipe = self.client.pipeline(transaction=False)
        for key in self._keys(session_ids):
            pipe.delete(key)
        pipe.execute()

    # -- async -------------------------------------------------------------------------------

    async def aread(self, session_id: str) -> CacheRead | None:
        """Async :meth:`read`."""
        return self._parse(await self.async_client.lrange(self.key(session_id), 0, -1))

    async def abegin_fill(self, session_id: str) -> str | None:
        """Async :meth:`begin_fill`."""
        token = secrets.token_hex(8)
        ok = await self.async_client.set(
            self.lease_key(session_id), token, nx=True, px=self.lease_ms
        )
        return token if ok else None

    async def afill(
        self, session_id: str, token: str, entries: Sequence[tuple[int, str]], complete: bool
    ) -> bool:
        """Async :meth:`fill`."""
        keys = [self.key(session_id), self.lease_key(session_id)]
        return bool(await self._afill(keys=keys, args=self._fill_args(token, entries, complete)))

    async def aappend(self, session_id: str, entries: Sequence[tuple[int, str]]) -> int:
        """Async :meth:`append`."""
        keys = [self.key(session_id), self.lease_key(session_id)]
        return int(await self._aappend(keys=keys, args=self._append_args(entries)))

    async def ainvalidate(self, *session_ids: str) -> None:
        """Async :meth:`invalidate`."""
        if len(session_ids) == 1:
            await self.async_client.delete(*self._keys(session_ids))
            return
        pipe = self.async_client.pipeline(transaction=False)
        for key in self._keys(session_ids):
            pipe.delete(key)
        await pipe.execute()
