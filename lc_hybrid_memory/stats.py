"""Event counters of a memory, optionally mirrored to Prometheus."""

from __future__ import annotations

import threading
import weakref
from typing import Any

__all__ = ["EVENTS", "MemoryStats"]

EVENTS = (
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

# One counter per registry, however many memories a process creates; weak, so a registry that is
# garbage-collected takes its counter along (an id() key could be reused by a new registry).
_counters: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_counters_lock = threading.Lock()


def prometheus_counter(registry: Any) -> Any:
    """The ``lc_hybrid_memory_events`` counter of ``registry`` (``True``: the default one)."""
    from prometheus_client import REGISTRY, Counter

    registry = REGISTRY if registry is True else registry
    with _counters_lock:
        counter = _counters.get(registry)
        if counter is None:
            counter = Counter(
                "lc_hybrid_memory_events",
                "Cache and store events of lc-hybrid-memory",
                ["event"],
                registry=registry,
            )
            _counters[registry] = counter
    return counter


class MemoryStats:
    """Thread-safe event counts since start (see :data:`EVENTS`)."""

    def __init__(self, prometheus: Any = None) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(EVENTS, 0)
        self._prometheus = prometheus_counter(prometheus) if prometheus else None

    def incr(self, event: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[event] += amount
        if self._prometheus is not None:
            self._prometheus.labels(event=event).inc(amount)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
