"""L1: the Redis list of a conversation's last N messages. Redis only.

Layout of ``ai:memory:{<session_id>}`` (the braces are a Redis Cluster hash tag, so the list and
its fill lease ``ai:memory:{<session_id>}:fill`` live in one slot and every script is single-slot)::

    ["#1c", "101:{...message json...}", "102:{...}", ...]

Coherence protocol (Postgres is the truth, the cache only ever holds its tail):

* a write commits to Postgres, then appends its rows *only if the list exists and ends at the
  row just before them* (:data:`~lc_hybrid_memory.cache_scripts.APPEND`); a list that does not
  (a write that never reached Redis, a lost commit acknowledgement, commits out of order) is
  deleted, and the next read refills it from Postgres;
* a miss takes a lease (``SET NX PX`` with a random token), reads Postgres, and the fill script
  writes the list only if the lease still holds that token. Every append deletes the lease, so a
  fill that raced a write is dropped, never cached.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import cache_scripts
from .loops import PerLoop

__all__ = ["CacheEntry", "CacheRead", "CacheState", "MessageCache"]

HEADER_COMPLETE = b"#1c"
HEADER_PARTIAL = b"#1p"


@dataclass(frozen=True, slots=True)
class CacheRead:
    """A cache hit: the cached entries as ``(row id, message json)`` and whether they are all."""

    entries: list[tuple[int, bytes]]
    complete: bool
    malformed: int = 0


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A committed row to append: its id, the id of the conversation's row before it (0: none),
    and the message json."""

    row_id: int
    before_id: int
    payload: str


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


@dataclass(frozen=True, slots=True)
class _AsyncRedis:
    """An async client with its scripts (both bound to one event loop)."""

    client: Any
    append: Any
    fill: Any


class MessageCache:
    """The Redis tier. Takes a sync client, an async client, or both (``decode_responses=False``).

    ``async_client_factory`` builds an async client per event loop instead (what
    :meth:`from_url` does); an ``async_client`` given as is must be used from its own loop.

    Example::

        cache = MessageCache.from_url("redis://localhost:6379/0")
        cache.read("conversation-1")   # None: a miss
    """

    def __init__(
        self,
        client: Any = None,
        async_client: Any = None,
        *,
        async_client_factory: Any = None,
        prefix: str = "ai:memory:",
        max_entries: int = 50,
        ttl_seconds: float = 3600,
        lease_seconds: float = 5.0,
    ) -> None:
        if client is None and async_client is None and async_client_factory is None:
            raise ValueError("MessageCache needs a client, an async client, or both")
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces (they make the hash tag)")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.client = client
        self.prefix = prefix
        self.max_entries = max_entries
        self.ttl_ms = int(ttl_seconds * 1000)
        self.lease_ms = int(lease_seconds * 1000)
        self._append = client.register_script(cache_scripts.APPEND) if client else None
        self._fill = client.register_script(cache_scripts.FILL) if client else None
        self._fixed_async = self._with_scripts(async_client) if async_client else None
        self._per_loop = (
            PerLoop(
                lambda: self._with_scripts(async_client_factory()),
                release=lambda bundle: bundle.client.aclose(),
            )
            if async_client_factory is not None
            else None
        )

    @classmethod
    def from_url(
        cls, url: str, *, cluster: bool = False, timeout: float = 0.25, **options: Any
    ) -> MessageCache:
        """A cache on ``url`` with a sync client and one async client per event loop.

        ``timeout`` bounds every connect and reply; a dropped connection is retried once at
        once (a restarted Redis costs one reconnect, a stalled one one timeout, never a backoff
        series). ``options`` go to :class:`MessageCache`.
        """
        import redis
        import redis.asyncio as aredis
        from redis.backoff import NoBackoff

        socket = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        if cluster:
            from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
            from redis.cluster import RedisCluster

            return cls(
                RedisCluster.from_url(url, **socket),
                async_client_factory=lambda: AsyncRedisCluster.from_url(url, **socket),
                **options,
            )

        def retry(module: Any) -> Any:
            errors = (redis.exceptions.ConnectionError,)
            return module.retry.Retry(NoBackoff(), 1, supported_errors=errors)

        return cls(
            redis.Redis.from_url(url, retry=retry(redis), **socket),
            async_client_factory=lambda: aredis.Redis.from_url(url, retry=retry(aredis), **socket),
            **options,
        )

    @property
    def has_async(self) -> bool:
        return self._fixed_async is not None or self._per_loop is not None

    # -- keys and arguments (shared by the sync and async paths) ------------------------------

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

    @staticmethod
    def _state(raw: list[bytes], ttl_ms: int | None) -> CacheState | None:
        read = MessageCache._parse(raw)
        if read is None:
            return None
        ttl = ttl_ms / 1000 if ttl_ms is not None and ttl_ms >= 0 else None
        return CacheState([row_id for row_id, _ in read.entries], read.complete, ttl)

    def _pair(self, session_id: str) -> list[str]:
        return [self.key(session_id), self.lease_key(session_id)]

    def _fill_args(self, token: str, entries: Sequence[tuple[int, str]], complete: bool) -> list:
        kept = entries[-self.max_entries :]
        header = HEADER_COMPLETE if complete and len(kept) == len(entries) else HEADER_PARTIAL
        return [token, self.ttl_ms, header, *(self.entry(i, p) for i, p in kept)]

    def _append_args(self, entries: Sequence[CacheEntry]) -> list:
        args: list[Any] = [self.max_entries, self.ttl_ms]
        for e in entries:
            args.append(e.before_id)
            args.append(f"{e.row_id}:{e.payload}")
        return args

    def _keys(self, session_ids: Sequence[str]) -> list[str]:
        return [k for sid in session_ids for k in self._pair(sid)]

    def _with_scripts(self, client: Any) -> _AsyncRedis:
        return _AsyncRedis(
            client,
            client.register_script(cache_scripts.APPEND),
            client.register_script(cache_scripts.FILL),
        )

    async def _async(self) -> _AsyncRedis:
        if self._per_loop is not None:
            return await self._per_loop.get()
        if self._fixed_async is None:
            raise RuntimeError("this MessageCache was built without an async client")
        return self._fixed_async

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
        args = self._fill_args(token, entries, complete)
        return bool(self._fill(keys=self._pair(session_id), args=args))

    def append(self, session_id: str, entries: Sequence[CacheEntry]) -> int:
        """Append committed rows where the list continues (see :mod:`.cache_scripts`)."""
        args = self._append_args(entries)
        return int(self._append(keys=self._pair(session_id), args=args))

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

    def state(self, session_id: str) -> CacheState | None:
        """The cached row ids and the list's TTL (one pipelined round trip), ``None`` if absent."""
        pipe = self.client.pipeline(transaction=False)
        pipe.lrange(self.key(session_id), 0, -1)
        pipe.pttl(self.key(session_id))
        return self._state(*pipe.execute())

    def close(self) -> None:
        """Close the sync client's connections."""
        if self.client is not None:
            self.client.close()
        if self._per_loop is not None:
            self._per_loop.abandon_closed()

    # -- async -------------------------------------------------------------------------------

    async def aread(self, session_id: str) -> CacheRead | None:
        """Async :meth:`read`."""
        redis = await self._async()
        return self._parse(await redis.client.lrange(self.key(session_id), 0, -1))

    async def abegin_fill(self, session_id: str) -> str | None:
        """Async :meth:`begin_fill`."""
        redis = await self._async()
        token = secrets.token_hex(8)
        ok = await redis.client.set(self.lease_key(session_id), token, nx=True, px=self.lease_ms)
        return token if ok else None

    async def afill(
        self, session_id: str, token: str, entries: Sequence[tuple[int, str]], complete: bool
    ) -> bool:
        """Async :meth:`fill`."""
        redis = await self._async()
        args = self._fill_args(token, entries, complete)
        return bool(await redis.fill(keys=self._pair(session_id), args=args))

    async def aappend(self, session_id: str, entries: Sequence[CacheEntry]) -> int:
        """Async :meth:`append`."""
        redis = await self._async()
        args = self._append_args(entries)
        return int(await redis.append(keys=self._pair(session_id), args=args))

    async def ainvalidate(self, *session_ids: str) -> None:
        """Async :meth:`invalidate`."""
        redis = await self._async()
        if len(session_ids) == 1:
            await redis.client.delete(*self._keys(session_ids))
            return
        pipe = redis.client.pipeline(transaction=False)
        for key in self._keys(session_ids):
            pipe.delete(key)
        await pipe.execute()

    async def astate(self, session_id: str) -> CacheState | None:
        """Async :meth:`state`."""
        redis = await self._async()
        pipe = redis.client.pipeline(transaction=False)
        pipe.lrange(self.key(session_id), 0, -1)
        pipe.pttl(self.key(session_id))
        return self._state(*(await pipe.execute()))

    async def aclose(self) -> None:
        """Close this loop's async client (and the sync one)."""
        if self._per_loop is not None:
            await self._per_loop.aclose()
        elif self._fixed_async is not None:
            await self._fixed_async.client.aclose()
        self.close()
