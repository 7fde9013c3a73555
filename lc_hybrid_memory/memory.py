"""``HybridMemory``: the shared state of the memory and its operations, sync and async.

Reads go through the Redis cache (one LRANGE when warm); a miss reads the recent window from
Postgres with one indexed query and refills Redis under a lease. Writes go to Postgres first
(one INSERT), then to the cache (one script). Redis failures never fail a call: a circuit
breaker sends reads and writes straight to Postgres. Postgres failures raise
:class:`~lc_hybrid_memory.errors.StoreUnavailableError`: nothing is dropped silently. The
decisions live in :mod:`.policy`; this class only drives them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import BaseMessage

from .breaker import CircuitBreaker
from .cache import MessageCache
from .guarded_cache import GuardedCache
from .history import DEFAULT_WINDOW, HybridChatMessageHistory, validate_window
from .memory_recall import RecallMethods, build_recall, recall_lag
from .memory_views import OperatorViews
from .policy import Call, MemoryPolicy, Steps
from .schema import MessageTable
from .session_ids import canonical_session_id
from .stats import MemoryStats
from .store import MessageStore

__all__ = ["HybridMemory"]

MAX_SEARCH_QUERY_LENGTH = 1000
MAX_SEARCH_LIMIT = 1000


class HybridMemory(OperatorViews, RecallMethods):
    """The Postgres store, the Redis cache, the breaker and the statistics of one process.

    Create it once per process (it owns the connection pools; async pools are made per event
    loop) and hand out cheap per-session histories with :meth:`history`.

    Example:
        .. code-block:: python

            from langchain_core.messages import AIMessage, HumanMessage
            from lc_hybrid_memory import HybridMemory

            memory = HybridMemory.from_urls(
                redis_url="redis://localhost:6379/0",
                database_url="postgresql://localhost/app",
            )
            memory.create_schema()
            memory.add_messages("conversation-1", [HumanMessage("hi"), AIMessage("hello!")])
            print(memory.history("conversation-1").messages)
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
        self.recall_index = recall  # MessageRecall (semantic recall), or None when off
        self.cache = cache
        self.breaker = breaker or CircuitBreaker()
        self._stats = MemoryStats(prometheus)
        self._guard = GuardedCache(cache, self.breaker, self._stats)
        self._policy = MemoryPolicy(self._stats, cache.max_entries if cache else 0)
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
        statement_timeout_seconds: float = 30.0,
        prepared_statements: bool = True,
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
            statement_timeout_seconds: bound of every SQL statement.
            prepared_statements: prepare the hot statements once per connection (``False``
                behind a pooler that drops them: PgBouncer in transaction mode).
            engine_kwargs: extra ``create_engine`` arguments (pool size...).
            prometheus: ``True`` or a ``CollectorRegistry`` to export event counters.
            embeddings: semantic recall: ``"default"`` (the offline MiniLM embedder of the
                ``[recall]`` extra), any LangChain ``Embeddings``, or ``None`` (off).
            recall_options: further :class:`~lc_hybrid_memory.recall.MessageRecall` arguments.
        """
        store = MessageStore.from_url(
            database_url,
            table=table,
            statement_timeout_seconds=statement_timeout_seconds,
            prepared_statements=prepared_statements,
            **(engine_kwargs or {}),
        )
        cache = None
        if redis_url:
            cache = MessageCache.from_url(
                redis_url,
                cluster=cluster,
                timeout=redis_timeout,
                prefix=prefix,
                max_entries=max_cached,
                ttl_seconds=ttl_seconds,
                lease_seconds=lease_seconds,
            )
        breaker = CircuitBreaker(
            failure_threshold=breaker_failure_threshold, reset_seconds=breaker_reset_seconds
        )
        recall = build_recall(store, embeddings, recall_options)
        return cls(
            store, cache, breaker=breaker, prometheus=prometheus, owns_clients=True, recall=recall
        )

    # -- driving the policy ------------------------------------------------------------------

    def _drive(self, sid: str, steps: Steps) -> Any:
        if self._guard.needs_drain():
            self._guard.drain_due = not self._run_steps("", self._policy.drain())
        return self._run_steps(sid, steps)

    async def _adrive(self, sid: str, steps: Steps) -> Any:
        if self._guard.needs_drain():
            self._guard.drain_due = not await self._arun_steps("", self._policy.drain())
        return await self._arun_steps(sid, steps)

    def _run_steps(self, sid: str, steps: Steps) -> Any:
        advance, value = steps.send, None
        while True:
            try:
                call: Call = advance(value)
            except StopIteration as done:
                return done.value
            advance = steps.send
            try:
                if call.tier == "store":
                    value = getattr(self.store, call.name)(*call.args)
                else:
                    value = self._guard.call(sid, call.name, call.args, write=call.write)
            except Exception as exc:  # the policy decides what a failed step means
                advance, value = steps.throw, exc

    async def _arun_steps(self, sid: str, steps: Steps) -> Any:
        advance, value = steps.send, None
        while True:
            try:
                call: Call = advance(value)
            except StopIteration as done:
                return done.value
            advance = steps.send
            try:
                if call.tier == "store":
                    value = await getattr(self.store, "a" + call.name)(*call.args)
                else:
                    value = await self._guard.acall(sid, call.name, call.args, write=call.write)
            except Exception as exc:
                advance, value = steps.throw, exc

    def session_id(self, session_id: Any) -> str:
        """``session_id`` validated and in the canonical form of the conversation id column
        (one conversation, one cache key, however the id is spelled)."""
        return canonical_session_id(session_id, self.store.mapping.conversation_id_type)

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
            self.session_id(session_id),
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
        counts["pending_invalidations"] = self._guard.pending_invalidations
        if self.recall_index is not None:
            counts.update(recall_lag(self.recall_index))
        return counts

    def close(self) -> None:
        """Release the sync pools (if this object created them)."""
        if self._owns_clients:
            self.store.close()
            if self.cache is not None:
                self.cache.close()

    async def aclose(self) -> None:
        """Release this event loop's async pools and the sync pools (if this object made them).

        Pools of other loops are released when their loop shuts down (``asyncio.run``)."""
        if self._owns_clients:
            await self.store.aclose()
            if self.cache is not None:
                await self.cache.aclose()

    def __enter__(self) -> HybridMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> HybridMemory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- messages ----------------------------------------------------------------------------

    def get_messages(
        self, session_id: str, window: int | None = DEFAULT_WINDOW
    ) -> list[BaseMessage]:
        """The last ``window`` messages (all of them for ``None``), oldest first."""
        return self._read(self.session_id(session_id), validate_window(window))

    async def aget_messages(
        self, session_id: str, window: int | None = DEFAULT_WINDOW
    ) -> list[BaseMessage]:
        """Async :meth:`get_messages`."""
        return await self._aread(self.session_id(session_id), validate_window(window))

    def add_messages(self, session_id: str, messages: Sequence[BaseMessage]) -> list[bool]:
        """Store ``messages`` (Postgres, in one transaction, then the cache); for each, whether
        it was new.

        A message whose LangChain ``id`` is already stored in this conversation is not stored
        again. Raises :class:`StoreUnavailableError` if Postgres cannot take the write, and
        :class:`InvalidMessageError` (nothing stored) for a message that can never be stored.
        """
        return self._write(self.session_id(session_id), messages)

    async def aadd_messages(self, session_id: str, messages: Sequence[BaseMessage]) -> list[bool]:
        """Async :meth:`add_messages`."""
        return await self._awrite(self.session_id(session_id), messages)

    # A history validated its session id and window once, at construction: it calls these.

    def _read(self, sid: str, window: int | None) -> list[BaseMessage]:
        return self._drive(sid, self._policy.read(sid, window))

    async def _aread(self, sid: str, window: int | None) -> list[BaseMessage]:
        return await self._adrive(sid, self._policy.read(sid, window))

    def _write(self, sid: str, messages: Sequence[BaseMessage]) -> list[bool]:
        encoded = self._policy.encode(messages)
        return self._drive(sid, self._policy.write(sid, encoded)) if encoded else []

    async def _awrite(self, sid: str, messages: Sequence[BaseMessage]) -> list[bool]:
        encoded = self._policy.encode(messages)
        return await self._adrive(sid, self._policy.write(sid, encoded)) if encoded else []

    def clear(self, session_id: str) -> int:
        """Delete the conversation in Postgres, then its cache and its recall index; how many
        messages were deleted."""
        sid = self.session_id(session_id)
        deleted = self._drive(sid, self._policy.clear(sid))
        if self.recall_index is not None:
            self.recall_index.forget(sid)
        return deleted

    async def aclear(self, session_id: str) -> int:
        """Async :meth:`clear`."""
        sid = self.session_id(session_id)
        deleted = await self._adrive(sid, self._policy.clear(sid))
        if self.recall_index is not None:
            await self.recall_index.aforget(sid)
        return deleted

    def _search_args(self, session_id: str, query: str, limit: int) -> tuple[str, str, int]:
        if not isinstance(query, str) or not query or len(query) > MAX_SEARCH_QUERY_LENGTH:
            raise ValueError(
                f"query must be a non-empty string of at most {MAX_SEARCH_QUERY_LENGTH} characters"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValueError(f"limit must be an integer from 1 to {MAX_SEARCH_LIMIT}")
        return self.session_id(session_id), query, limit

    def search(self, session_id: str, query: str, *, limit: int = 10) -> list[BaseMessage]:
        """Messages whose text contains ``query`` (case-insensitive), newest first (Postgres)."""
        sid, query, limit = self._search_args(session_id, query, limit)
        rows = self.store.search(sid, query, limit=limit)
        return self._policy.decode([(r.id, r.payload) for r in rows], sid)

    async def asearch(self, session_id: str, query: str, *, limit: int = 10) -> list[BaseMessage]:
        """Async :meth:`search`."""
        sid, query, limit = self._search_args(session_id, query, limit)
        rows = await self.store.asearch(sid, query, limit=limit)
        return self._policy.decode([(r.id, r.payload) for r in rows], sid)
