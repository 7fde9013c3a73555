"""The policy between the two tiers: ``HybridMemory`` and ``HybridChatMessageHistory``.

Reads go through the Redis cache (one LRANGE when warm); a miss reads the recent window from
Postgres with one indexed query and refills Redis under a lease. Writes go to Postgres first
(one INSERT), then to the cache (one script). Redis failures never fail a call: a circuit
breaker sends reads and writes straight to Postgres, and the conversations written while Redis
was unreachable are invalidated before the cache is trusted again. Postgres failures raise
:class:`~lc_hybrid_memory.errors.StoreUnavailableError`: nothing is dropped silently.
"""

from __future__ import annotations

import logging
import threading
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage, ToolMessage, trim_messages
from langchain_core.messages.utils import count_tokens_approximately
from redis.exceptions import RedisClusterException, RedisError

from . import codec
from .breaker import CircuitBreaker
from .cache import CacheRead, MessageCache
from .errors import HybridMemoryError, InvalidSessionIdError
from .schema import MessageTable
from .store import EncodedMessage, MessageStore, StoredMessage

__all__ = ["HybridChatMessageHistory", "HybridMemory", "validate_session_id"]

logger = logging.getLogger(__name__)

MAX_SESSION_ID_LENGTH = 256
DEFAULT_WINDOW = 50

# What a failing Redis (or Redis Cluster) raises; RedisClusterException is no RedisError.
_CACHE_ERRORS = (RedisError, RedisClusterException, OSError)

# Returned by a cache call that did not reach Redis (breaker open, or an error).
_SKIPPED: Any = object()

_EVENTS = (
    "hits",
    "misses",
    "fills",
    "fills_dropped",
    "store_reads",
    "writes",
    "messages_written",
    "duplicates_skipped",
    "cache_appends_dropped",
    "cache_errors",
    "cache_skipped",
    "decode_errors",
    "invalidations",
)


def validate_session_id(session_id: Any) -> str:
    """``session_id`` as a string, or :class:`InvalidSessionIdError` naming the problem."""
    if isinstance(session_id, bool) or not isinstance(session_id, (str, int, uuid.UUID)):
        raise InvalidSessionIdError(f"session id must be a string, got {type(session_id).__name__}")
    sid = str(session_id)
    if not sid:
        raise InvalidSessionIdError("session id is empty")
    if len(sid) > MAX_SESSION_ID_LENGTH:
        raise InvalidSessionIdError(
            f"session id is {len(sid)} characters long; the limit is {MAX_SESSION_ID_LENGTH}"
        )
    for position, char in enumerate(sid):
        category = unicodedata.category(char)
        if category == "Cc":
            raise InvalidSessionIdError(
                f"session id contains control character U+{ord(char):04X} at position {position}"
            )
        if category == "Cs":
            raise InvalidSessionIdError(
                f"session id contains unpaired surrogate U+{ord(char):04X} at position {position}"
            )
    return sid


def _validate_window(window: int | None) -> int | None:
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 1
    ):
        raise ValueError(f"window must be a positive integer or None, got {window!r}")
    return window


class _Stats:
    """Event counters, optionally mirrored to a Prometheus counter."""

    def __init__(self, prometheus_counter: Any = None) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_EVENTS, 0)
        self._prometheus = prometheus_counter

    def incr(self, event: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[event] += amount
        if self._prometheus is not None:
            self._prometheus.labels(event=event).inc(amount)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


_prometheus_counters: dict[int, Any] = {}


def _prometheus_counter(registry: Any) -> Any:
    """One counter per registry, however many HybridMemory objects a process creates."""
    from prometheus_client import REGISTRY, Counter

    registry = REGISTRY if registry is True else registry
    counter = _prometheus_counters.get(id(registry))
    if counter is None:
        counter = Counter(
            "lc_hybrid_memory_events",
            "Cache and store events of lc-hybrid-memory",
            ["event"],
            registry=registry,
        )
        _prometheus_counters[id(registry)] = counter
    return counter


class HybridMemory:
    """The shared state of the memory: Postgres store, Redis cache, breaker and statistics.

    Create it once per process (it owns the connection pools) and hand out cheap per-session
    histories with :meth:`history`.

    Example:
        .. code-block:: python

            from langchain_core.runnables.history import RunnableWithMessageHistory
            from lc_hybrid_memory import HybridMemory

            memory = HybridMemory.from_urls(
                redis_url="redis://localhost:6379/0",
                database_url="postgresql://localhost/app",
            )
            memory.create_schema()
            chain = RunnableWithMessageHistory(runnable, memory.history)
            chain.invoke("hi", config={"configurable": {"session_id": "conversation-1"}})
    """

    def __init__(
        self,
        store: MessageStore,
        cache: MessageCache | None = None,
        *,
        breaker: CircuitBreaker | None = None,
        prometheus: Any = None,
        owns_clients: bool = False,
        recall: Any = None,
    ) -> None:
        self.store = store
        self.recall_index = recall  # MessageRecall (semantic recall) or None
        self.cache = cache
        self.breaker = breaker or CircuitBreaker()
        self._stats = _Stats(_prometheus_counter(prometheus) if prometheus else None)
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._owns_clients = owns_clients

    @classmethod
    def from_urls(
        cls,
        *,
        redis_url: str | None,
        database_url: str,
        table: MessageTable | None = None,
        prefix: str = "ai:memory:",
        max_cached: int = 50,
        ttl_seconds: float = 3600,
        lease_seconds: float = 5.0,
        redis_timeout: float = 0.25,
        breaker_failure_threshold: int = 1,
        breaker_reset_seconds: float = 5.0,
        cluster: bool = False,
        engine_kwargs: dict[str, Any] | None = None,
        prometheus: Any = None,
        embeddings: Any = None,
        recall_options: dict[str, Any] | None = None,
    ) -> HybridMemory:
        """Build the memory and its pools from URLs (``redis_url=None``: Postgres only).

        Args:
            redis_url: ``redis://`` / ``rediss://`` URL of the cache.
            database_url: SQLAlchemy URL of Postgres (``postgresql://``); the async path uses
                the same server through asyncpg.
            table: mapping onto an existing messages table (default: the library's schema).
            prefix: Redis key prefix; keys are ``<prefix>{<session_id>}``.
            max_cached: messages kept per conversation in Redis (LTRIM cap).
            ttl_seconds: expiry of a conversation's list, renewed on every write.
            lease_seconds: lifetime of a fill lease (bounds a crashed filler).
            redis_timeout: socket and connect timeout of Redis calls, in seconds.
            breaker_failure_threshold: consecutive Redis failures that open the breaker.
            breaker_reset_seconds: pause before a half-open probe of Redis.
            cluster: use a Redis Cluster client.
            engine_kwargs: extra ``create_engine`` arguments (pool size...).
            prometheus: ``True`` or a ``CollectorRegistry`` to export event counters.
            embeddings: semantic recall: ``"default"`` (the offline MiniLM embedder of the
                ``[recall]`` extra), any LangChain ``Embeddings``, or ``None`` (off).
            recall_options: further :class:`~lc_hybrid_memory.recall.MessageRecall` arguments.
        """
        store = MessageStore.from_url(database_url, table=table, **(engine_kwargs or {}))
        cache = None
        if redis_url:
            client, aclient = _redis_clients(redis_url, redis_timeout, cluster)
            cache = MessageCache(
                client,
                aclient,
                prefix=prefix,
                max_entries=max_cached,
                ttl_seconds=ttl_seconds,
                lease_seconds=lease_seconds,
            )
        breaker = CircuitBreaker(
            failure_threshold=breaker_failure_threshold, reset_seconds=breaker_reset_seconds
        )
        recall = _build_recall(store, embeddings, recall_options)
        return cls(
            store, cache, breaker=breaker, prometheus=prometheus, owns_clients=True, recall=recall
        )

    # -- factory, lifecycle, statistics ------------------------------------------------------

    def history(
        self,
        session_id: str,
        *,
        window: int | None = DEFAULT_WINDOW,
        max_tokens: int | None = None,
        token_counter: Callable[..., int] | None = None,
    ) -> HybridChatMessageHistory:
        """A chat history for one conversation. Cheap: no I/O, no new connection."""
        return HybridChatMessageHistory(
            session_id,
            self,
            window=window,
            max_tokens=max_tokens,
            token_counter=token_counter,
        )

    def create_schema(self) -> None:
        """Create the messages table and its indexes if they do not exist (and, with recall
        on, pgvector and the recall tables)."""
        self.store.create_schema()
        if self.recall_index is not None:
            self.recall_index.create_schema()

    async def acreate_schema(self) -> None:
        """Async :meth:`create_schema`."""
        await self.store.acreate_schema()
        if self.recall_index is not None:
            await self.recall_index.acreate_schema()

    def stats(self) -> dict[str, Any]:
        """Counters since start (hits, misses, fills...), breaker state, pending invalidations."""
        counts: dict[str, Any] = self._stats.snapshot()
        counts["breaker_state"] = self.breaker.state
        counts["breaker_opened"] = self.breaker.times_opened
        with self._dirty_lock:
            counts["pending_invalidations"] = len(self._dirty)
        if self.recall_index is not None:
            counts.update(_recall_lag(self.recall_index))
        return counts

    def close(self) -> None:
        """Release the sync pools (if this object created them)."""
        if not self._owns_clients:
            return
        self.store.close()
        if self.cache is not None and self.cache.client is not None:
            self.cache.client.close()

    async def aclose(self) -> None:
        """Release every pool, sync and async (if this object created them)."""
        if not self._owns_clients:
            return
        await self.store.aclose()
        if self.cache is not None:
            if self.cache.async_client is not None:
                await self.cache.async_client.aclose()
            if self.cache.client is not None:
                self.cache.client.close()

    def __enter__(self) -> HybridMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> HybridMemory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the cache behind the breaker --------------------------------------------------------

    def _mark_dirty(self, session_id: str) -> None:
        with self._dirty_lock:
            self._dirty.add(session_id)

    def _take_dirty(self) -> list[str]:
        with self._dirty_lock:
            dirty = list(self._dirty)
            self._dirty.clear()
        return dirty

    def _restore_dirty(self, session_ids: list[str]) -> None:
        with self._dirty_lock:
            self._dirty.update(session_ids)

    def _cache_failed(self, exc: BaseException, session_id: str, write: bool) -> None:
        self.breaker.record_failure()
        self._stats.incr("cache_errors")
        if write:
            self._mark_dirty(session_id)
        logger.warning(
            "redis cache unavailable (%s: %s); using postgres for session %r",
            type(exc).__name__,
            exc,
            session_id,
        )

    def _cache_call(
        self, session_id: str, call: Callable[[MessageCache], Any], *, write: bool
    ) -> Any:
        cache = self.cache
        if cache is None:
            return _SKIPPED
        if not self.breaker.allow():
            self._stats.incr("cache_skipped")
            if write:
                self._mark_dirty(session_id)
            return _SKIPPED
        dirty: list[str] = []
        try:
            if self._dirty:
                # Conversations written while Redis was unreachable may be stale there.
                dirty = self._take_dirty()
                cache.invalidate(*dirty)
                self._stats.incr("invalidations", len(dirty))
                dirty = []
            result = call(cache)
        except _CACHE_ERRORS as exc:
            self._restore_dirty(dirty)
            self._cache_failed(exc, session_id, write)
            return _SKIPPED
        self.breaker.record_success()
        return result

    async def _acache_call(
        self, session_id: str, call: Callable[[MessageCache], Any], *, write: bool
    ) -> Any:
        cache = self.cache
        if cache is None or cache.async_client is None:
            return _SKIPPED
        if not self.breaker.allow():
            self._stats.incr("cache_skipped")
            if write:
                self._mark_dirty(session_id)
            return _SKIPPED
        dirty: list[str] = []
        try:
            if self._dirty:
                dirty = self._take_dirty()
                await cache.ainvalidate(*dirty)
                self._stats.incr("invalidations", len(dirty))
                dirty = []
            result = await call(cache)
        except _CACHE_ERRORS as exc:
            self._restore_dirty(dirty)
            self._cache_failed(exc, session_id, write)
            return _SKIPPED
        self.breaker.record_success()
        return result

    # -- shared, I/O-free steps of the read and write paths -----------------------------------

    def _decode_rows(
        self, rows: Sequence[tuple[int, str | bytes]], session_id: str
    ) -> list[BaseMessage]:
        """Decode stored rows; an undecodable one is counted, logged and skipped."""
        messages = []
        for row_id, payload in rows:
            try:
                messages.append(codec.decode(payload))
            except codec.DecodeError as exc:
                self._stats.incr("decode_errors")
                logger.error(
                    "skipping undecodable message %s of session %r: %s", row_id, session_id, exc
                )
        return messages

    def _serve_hit(self, hit: CacheRead, window: int | None, sid: str) -> list[BaseMessage] | None:
        """The window from a cache hit, or ``None`` when an entry is corrupt (then heal)."""
        entries = self._window(hit.entries, window)
        messages = self._decode_rows(entries, sid)
        if len(messages) != len(entries):
            return None
        self._stats.incr("hits")
        return self._after_read(messages, window)

    def _usable_hit(self, hit: Any, window: int | None) -> bool:
        """Whether a cache read answers this window without Postgres."""
        if not isinstance(hit, CacheRead) or hit.malformed:
            return False
        if hit.complete:
            return True
        return window is not None and window <= len(hit.entries)

    def _fetch_limit(self, window: int | None) -> int | None:
        """Rows a miss reads: the window and the cache, plus one to learn completeness."""
        if window is None:
            return None
        cap = self.cache.max_entries if self.cache is not None else 0
        return max(window, cap) + 1

    @staticmethod
    def _window(rows: list[Any], window: int | None) -> list[Any]:
        return rows if window is None else rows[-window:]

    def _encode(self, messages: Sequence[BaseMessage]) -> list[EncodedMessage]:
        encoded = []
        for message in messages:
            if not isinstance(message, BaseMessage):
                raise TypeError(
                    f"add_messages takes BaseMessage objects, got {type(message).__name__}"
                )
            encoded.append(
                EncodedMessage(
                    uid=message.id,
                    role=codec.role_of(message),
                    content=codec.plain_text(message),
                    payload=codec.encode(message),
                )
            )
        return encoded

    def _written(
        self, encoded: list[EncodedMessage], ids: list[int | None]
    ) -> tuple[list[tuple[int, str]], bool]:
        """The new rows for the cache, and whether the cache must be dropped instead."""
        new = [
            (row_id, e.payload)
            for row_id, e in zip(ids, encoded, strict=True)
            if row_id is not None
        ]
        self._stats.incr("writes")
        self._stats.incr("messages_written", len(new))
        skipped = len(encoded) - len(new)
        if skipped:
            self._stats.incr("duplicates_skipped", skipped)
        # A message without an id can only look "stored before" after a retried INSERT whose
        # first attempt committed: its row id is unknown, so the cached tail cannot be patched.
        unknown = any(
            row_id is None and e.uid is None for row_id, e in zip(ids, encoded, strict=True)
        )
        return new, unknown

    def _after_read(self, messages: list[BaseMessage], window: int | None) -> list[BaseMessage]:
        return _drop_orphan_tool_results(messages) if window is not None else messages

    # -- read path ---------------------------------------------------------------------------

    def get_messages(
        self, session_id: str, window: int | None = DEFAULT_WINDOW
    ) -> list[BaseMessage]:
        """The last ``window`` messages (all of them for ``None``), oldest first."""
        sid = validate_session_id(session_id)
        window = _validate_window(window)
        hit = self._cache_call(sid, lambda cache: cache.read(sid), write=False)
        if self._usable_hit(hit, window):
            served = self._serve_hit(hit, window, sid)
            if served is not None:
                return served
            self._heal(sid)
        elif isinstance(hit, CacheRead) and hit.malformed:
            self._stats.incr("decode_errors", hit.malformed)
            self._heal(sid)
        elif isinstance(hit, CacheRead):
            # The cache is a correct but shorter tail: read beyond it, leave it as it is.
            self._stats.incr("store_reads")
            rows = self.store.recent(sid, window) if window is not None else self.store.all(sid)
            return self._after_read(
                self._decode_rows([(r.id, r.payload) for r in rows], sid), window
            )
        return self._miss(sid, window, cache_reachable=hit is not _SKIPPED)

    def _heal(self, sid: str) -> None:
        logger.error("dropping corrupt cache list of session %r; refilling from postgres", sid)
        self._cache_call(sid, lambda cache: cache.invalidate(sid), write=True)

    def _miss(self, sid: str, window: int | None, *, cache_reachable: bool) -> list[BaseMessage]:
        self._stats.incr("misses")
        token = None
        if cache_reachable:
            token = self._cache_call(sid, lambda cache: cache.begin_fill(sid), write=False)
        limit = self._fetch_limit(window)
        rows = self.store.recent(sid, limit) if limit is not None else self.store.all(sid)
        complete = limit is None or len(rows) < limit
        if limit is not None and not complete:
            rows = rows[1:]  # the extra row only told us there is more
        if isinstance(token, str):
            entries = [(r.id, r.payload) for r in rows]
            filled = self._cache_call(
                sid, lambda cache: cache.fill(sid, token, entries, complete), write=False
            )
            self._stats.incr("fills" if filled is True else "fills_dropped")
        messages = self._decode_rows([(r.id, r.payload) for r in self._window(rows, window)], sid)
        return self._after_read(messages, window)

    async def aget_messages(
        self, session_id: str, window: int | None = DEFAULT_WINDOW
    ) -> list[BaseMessage]:
        """Async :meth:`get_messages`."""
        sid = validate_session_id(session_id)
        window = _validate_window(window)
        hit = await self._acache_call(sid, lambda cache: cache.aread(sid), write=False)
        if self._usable_hit(hit, window):
            served = self._serve_hit(hit, window, sid)
            if served is not None:
                return served
            await self._aheal(sid)
        elif isinstance(hit, CacheRead) and hit.malformed:
            self._stats.incr("decode_errors", hit.malformed)
            await self._aheal(sid)
        elif isinstance(hit, CacheRead):
            self._stats.incr("store_reads")
            rows = await (
                self.store.arecent(sid, window) if window is not None else self.store.aall(sid)
            )
            return self._after_read(
                self._decode_rows([(r.id, r.payload) for r in rows], sid), window
            )
        return await self._amiss(sid, window, cache_reachable=hit is not _SKIPPED)

    async def _aheal(self, sid: str) -> None:
        logger.error("dropping corrupt cache list of session %r; refilling from postgres", sid)
        await self._acache_call(sid, lambda cache: cache.ainvalidate(sid), write=True)

    async def _amiss(
        self, sid: str, window: int | None, *, cache_reachable: bool
    ) -> list[BaseMessage]:
        self._stats.incr("misses")
        token = None
        if cache_reachable:
            token = await self._acache_call(sid, lambda cache: cache.abegin_fill(sid), write=False)
        limit = self._fetch_limit(window)
        rows: list[StoredMessage] = await (
            self.store.arecent(sid, limit) if limit is not None else self.store.aall(sid)
        )
        complete = limit is None or len(rows) < limit
        if limit is not None and not complete:
            rows = rows[1:]
        if isinstance(token, str):
            entries = [(r.id, r.payload) for r in rows]
            filled = await self._acache_call(
                sid, lambda cache: cache.afill(sid, token, entries, complete), write=False
            )
            self._stats.incr("fills" if filled is True else "fills_dropped")
        messages = self._decode_rows([(r.id, r.payload) for r in self._window(rows, window)], sid)
        return self._after_read(messages, window)

    # -- write path --------------------------------------------------------------------------

    def add_messages(self, session_id: str, messages: Sequence[BaseMessage]) -> list[bool]:
        """Store ``messages`` (Postgres, then the cache); for each, whether it was new.

        A message whose LangChain ``id`` is already stored in this conversation is not stored
        again. Raises :class:`StoreUnavailableError` if Postgres cannot take the write.
        """
        sid = validate_session_id(session_id)
        encoded = self._encode(messages)
        if not encoded:
            return []
        ids = self.store.append(sid, encoded)
        new, unknown = self._written(encoded, ids)
        if unknown:
            self._cache_call(sid, lambda cache: cache.invalidate(sid), write=True)
        elif new:
            appended = self._cache_call(sid, lambda cache: cache.append(sid, new), write=True)
            if appended == -2:
                self._stats.incr("cache_appends_dropped")
        return [row_id is not None for row_id in ids]

    async def aadd_messages(self, session_id: str, messages: Sequence[BaseMessage]) -> list[bool]:
        """Async :meth:`add_messages`."""
        sid = validate_session_id(session_id)
        encoded = self._encode(messages)
        if not encoded:
            return []
        ids = await self.store.aappend(sid, encoded)
        new, unknown = self._written(encoded, ids)
        if unknown:
            await self._acache_call(sid, lambda cache: cache.ainvalidate(sid), write=True)
        elif new:
            appended = await self._acache_call(
                sid, lambda cache: cache.aappend(sid, new), write=True
            )
            if appended == -2:
                self._stats.incr("cache_appends_dropped")
        return [row_id is not None for row_id in ids]

    def clear(self, session_id: str) -> int:
        """Delete the conversation in Postgres, then its cache; how many messages were deleted."""
        sid = validate_session_id(session_id)
        deleted = self.store.clear(sid)
        if self.recall_index is not None:
            self.recall_index.forget(sid)
        self._cache_call(sid, lambda cache: cache.invalidate(sid), write=True)
        return deleted

    async def aclear(self, session_id: str) -> int:
        """Async :meth:`clear`."""
        sid = validate_session_id(session_id)
        deleted = await self.store.aclear(sid)
        if self.recall_index is not None:
            await self.recall_index.aforget(sid)
        await self._acache_call(sid, lambda cache: cache.ainvalidate(sid), write=True)
        return deleted

    def search(self, session_id: str, query: str, *, limit: int = 10) -> list[BaseMessage]:
        """Older messages whose text contains ``query``, newest first (Postgres)."""
        sid = validate_session_id(session_id)
        rows = self.store.search(sid, query, limit=limit)
        return self._decode_rows([(r.id, r.payload) for r in rows], sid)

    async def asearch(self, session_id: str, query: str, *, limit: int = 10) -> list[BaseMessage]:
        """Async :meth:`search`."""
        sid = validate_session_id(session_id)
        rows = await self.store.asearch(sid, query, limit=limit)
        return self._decode_rows([(r.id, r.payload) for r in rows], sid)

    # -- semantic recall (L3): thin delegation to MessageRecall -------------------------------

    def _recall(self) -> Any:
        if self.recall_index is None:
            raise HybridMemoryError(
                'recall is off: build the memory with embeddings="default" (or an Embeddings)'
            )
        return self.recall_index

    def recall(
        self, session_id: str, query: str, *, k: int = 5, exclude_recent: int = 0
    ) -> list[BaseMessage]:
        """The ``k`` older messages of the conversation best matching ``query`` (hybrid
        full-text + semantic), best first; ``exclude_recent`` leaves out the newest ones."""
        sid = validate_session_id(session_id)
        hits = self._recall().recall(sid, query, k=k, exclude_recent=exclude_recent)
        return [hit.message for hit in hits]

    async def arecall(
        self, session_id: str, query: str, *, k: int = 5, exclude_recent: int = 0
    ) -> list[BaseMessage]:
        """Async :meth:`recall`."""
        sid = validate_session_id(session_id)
        hits = await self._recall().arecall(sid, query, k=k, exclude_recent=exclude_recent)
        return [hit.message for hit in hits]

    def index_pending(self, *, limit: int | None = None) -> int:
        """Embed and index the messages not yet indexed; how many were indexed."""
        return self._recall().index_pending(limit=limit)

    async def aindex_pending(self, *, limit: int | None = None) -> int:
        """Async :meth:`index_pending`."""
        return await self._recall().aindex_pending(limit=limit)

    def start_indexer(self, **options: Any) -> Any:
        """Start a background :class:`~lc_hybrid_memory.recall.RecallIndexer` (stop it with
        ``.stop()``)."""
        from .recall import RecallIndexer

        return RecallIndexer(self._recall(), **options).start()

    def retriever(self, session_id: str, **kwargs: Any) -> Any:
        """A LangChain retriever over the conversation's messages (``k``, ``exclude_recent``)."""
        from .retriever import ConversationRetriever

        sid = validate_session_id(session_id)
        return ConversationRetriever(recall=self._recall(), session_id=sid, **kwargs)


def _build_recall(store: MessageStore, embeddings: Any, options: dict[str, Any] | None) -> Any:
    if embeddings is None:
        if options:
            raise ValueError("recall_options need embeddings")
        return None
    from .recall import MessageRecall, resolve_embeddings

    return MessageRecall(store, resolve_embeddings(embeddings), **(options or {}))


def _recall_lag(recall: Any) -> dict[str, Any]:
    from .errors import StoreUnavailableError

    try:
        lag = recall.lag()
    except (StoreUnavailableError, HybridMemoryError):
        return {"recall_pending": None, "recall_oldest_pending_seconds": None}
    return {
        "recall_pending": lag["pending"],
        "recall_oldest_pending_seconds": lag["oldest_pending_seconds"],
    }


def _drop_orphan_tool_results(messages: list[BaseMessage]) -> list[BaseMessage]:
    """Drop tool results at the head of a window whose tool-call message was cut off.

    Providers reject a conversation that starts with a tool result.
    """
    start = 0
    while start < len(messages) and isinstance(messages[start], ToolMessage):
        start += 1
    return messages[start:] if start else messages


def _redis_clients(url: str, timeout: float, cluster: bool) -> tuple[Any, Any]:
    import redis
    import redis.asyncio as aredis
    from redis.backoff import NoBackoff

    def retry() -> Any:
        # One immediate retry, on a dropped connection only: a restarted Redis costs one
        # reconnect, a stalled one costs one timeout, never a backoff series.
        return redis.retry.Retry(
            NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)
        )

    def aretry() -> Any:
        return aredis.retry.Retry(
            NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)
        )

    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if cluster:
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
        from redis.cluster import RedisCluster

        return (
            RedisCluster.from_url(url, **options),
            AsyncRedisCluster.from_url(url, **options),
        )
    return (
        redis.Redis.from_url(url, retry=retry(), **options),
        aredis.Redis.from_url(url, retry=aretry(), **options),
    )


class HybridChatMessageHistory(BaseChatMessageHistory):
    """Chat history of one conversation: Redis L1 in front of the Postgres messages table.

    ``messages`` returns the last ``window`` messages (default 50, the cache's size) through the
    cache; ``window=None`` returns the whole conversation exactly. With ``max_tokens`` the window
    is further trimmed with langchain-core's ``trim_messages`` (newest kept, starting on a human
    message, system messages kept).

    Example:
        .. code-block:: python

            from lc_hybrid_memory import HybridMemory
            from langchain_core.messages import AIMessage, HumanMessage

            with HybridMemory.from_urls(
                redis_url="redis://localhost:6379/0",
                database_url="postgresql://localhost/app",
            ) as memory:
                memory.create_schema()
                history = memory.history("conversation-1")
                history.add_messages([HumanMessage("hi"), AIMessage("hello!")])
                print(history.messages)
    """

    def __init__(
        self,
        session_id: str,
        memory: HybridMemory,
        *,
        window: int | None = DEFAULT_WINDOW,
        max_tokens: int | None = None,
        token_counter: Callable[..., int] | None = None,
    ) -> None:
        super().__init__()
        self.session_id = validate_session_id(session_id)
        self.memory = memory
        self.window = _validate_window(window)
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {max_tokens!r}")
        self.max_tokens = max_tokens
        self.token_counter = token_counter or count_tokens_approximately

    def _budget(self, messages: list[BaseMessage]) -> list[BaseMessage]:
        if self.max_tokens is None:
            return messages
        return trim_messages(
            messages,
            max_tokens=self.max_tokens,
            token_counter=self.token_counter,
            strategy="last",
            start_on="human",
            include_system=True,
            allow_partial=False,
        )

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The conversation's recent messages, oldest first."""
        return self._budget(self.memory.get_messages(self.session_id, self.window))

    async def aget_messages(self) -> list[BaseMessage]:
        """Async :attr:`messages`."""
        return self._budget(await self.memory.aget_messages(self.session_id, self.window))

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Store messages: Postgres first, then the cache."""
        self.memory.add_messages(self.session_id, messages)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Async :meth:`add_messages`."""
        await self.memory.aadd_messages(self.session_id, messages)

    def clear(self) -> None:
        """Delete the conversation from Postgres and the cache."""
        self.memory.clear(self.session_id)

    async def aclear(self) -> None:
        """Async :meth:`clear`."""
        await self.memory.aclear(self.session_id)
