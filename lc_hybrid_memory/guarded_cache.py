"""The cache behind its circuit breaker: a Redis failure never fails a memory call.

A failed or skipped cache call answers :data:`~lc_hybrid_memory.policy.SKIPPED` and the memory
goes to Postgres. Conversations whose writes could not reach Redis are remembered and invalidated
before this process trusts the cache again (the append script's continuity check catches what
another process would otherwise append to such a stale list).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from .breaker import CircuitBreaker
from .cache import MessageCache
from .policy import SKIPPED
from .stats import MemoryStats

__all__ = ["CACHE_ERRORS", "GuardedCache"]

logger = logging.getLogger(__name__)

# What a failing Redis (or Redis Cluster) raises; RedisClusterException is no RedisError.
CACHE_ERRORS = (RedisError, RedisClusterException, OSError)


class GuardedCache:
    """Runs cache calls through the breaker and keeps the pending invalidations."""

    def __init__(
        self, cache: MessageCache | None, breaker: CircuitBreaker, stats: MemoryStats
    ) -> None:
        self.cache = cache
        self.breaker = breaker
        self.stats = stats
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._outage = False  # a call failed or was skipped since the last success
        # Stale marks in Postgres (other processes' writes during an outage) are invalidated
        # once at start and once after every outage, before the cache is trusted again.
        self.drain_due = cache is not None

    @property
    def pending_invalidations(self) -> int:
        with self._lock:
            return len(self._pending)

    def needs_drain(self) -> bool:
        """Whether Postgres's stale marks must be invalidated before the next cache call."""
        return self.drain_due or (self._outage and self.breaker.state == CircuitBreaker.HALF_OPEN)

    def _admit(self, sid: str, write: bool) -> list[str] | None:
        """The pending invalidations to run first, or ``None`` when Redis is not to be called."""
        if not self.breaker.allow():
            self._outage = True
            self.stats.incr("cache_skipped")
            if write:
                with self._lock:
                    self._pending.add(sid)
            return None
        if not self._pending:  # nothing to invalidate (the common case): no lock
            return []
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        return pending

    def _failed(self, exc: BaseException, sid: str, write: bool, pending: list[str]) -> Any:
        with self._lock:
            self._pending.update(pending)
            if write:
                self._pending.add(sid)
        self._outage = True
        self.breaker.record_failure()
        self.stats.incr("cache_errors")
        logger.warning(
            "redis cache unavailable (%s); using postgres for session %r", type(exc).__name__, sid
        )
        return SKIPPED

    def _succeeded(self, invalidated: int) -> None:
        if invalidated:
            self.stats.incr("invalidations", invalidated)
        self._outage = False
        self.breaker.record_success()

    def call(self, sid: str, name: str, args: tuple[Any, ...], *, write: bool) -> Any:
        """``cache.<name>(*args)``, or :data:`SKIPPED`."""
        cache = self.cache
        if cache is None:
            return SKIPPED
        pending = self._admit(sid, write)
        if pending is None:
            return SKIPPED
        try:
            if pending:
                cache.invalidate(*pending)
            result = getattr(cache, name)(*args)
        except CACHE_ERRORS as exc:
            return self._failed(exc, sid, write, pending)
        self._succeeded(len(pending))
        return result

    async def acall(self, sid: str, name: str, args: tuple[Any, ...], *, write: bool) -> Any:
        """Async :meth:`call`: ``await cache.a<name>(*args)``, or :data:`SKIPPED`."""
        cache = self.cache
        if cache is None or not cache.has_async:
            return SKIPPED
        pending = self._admit(sid, write)
        if pending is None:
            return SKIPPED
        try:
            if pending:
                await cache.ainvalidate(*pending)
            result = await getattr(cache, "a" + name)(*args)
        except CACHE_ERRORS as exc:
            return self._failed(exc, sid, write, pending)
        self._succeeded(len(pending))
        return result
