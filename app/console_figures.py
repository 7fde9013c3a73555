"""The console's live figures: this process's cache counters, breaker state, webhook latency and
the turn queue's depth, read from the memory's statistics and the app's Prometheus metrics.

Counters are cumulative since the process started; the page's chart plots their change between
two polls. Under gunicorn each worker process answers with its own figures (``pid`` says which).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from .wiring import Services

MEMORY_COUNTERS = ("hits", "misses", "fills", "store_reads", "writes", "cache_errors")


def _histogram(metric: Any) -> tuple[int, float, list[tuple[float, float]]]:
    """Count, sum and cumulative buckets ``(upper bound, count)`` of a histogram, all labels
    added up."""
    count, total = 0.0, 0.0
    buckets: dict[float, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return int(count), total, sorted(buckets.items())


def _quantile(buckets: list[tuple[float, float]], count: int, q: float) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile (None without observations)."""
    if not count:
        return None
    rank = q * count
    for bound, cumulative in buckets:
        if cumulative >= rank:
            return bound
    return None


def _ms(seconds: float | None) -> float | None:
    if seconds is None or math.isinf(seconds):
        return None
    return round(seconds * 1000, 1)


def live_figures(services: Services) -> dict[str, Any]:
    """One sample of the figures, as the console's ``/console/api/live`` returns it."""
    stats = services.memory.stats()
    count, total, buckets = _histogram(services.metrics.webhook_latency)
    try:
        queue_depth: int | None = int(services.queue.count)
    except Exception:  # Redis down: the figure is unknown, the page still answers
        queue_depth = None
    return {
        "at": time.time(),
        "pid": os.getpid(),
        "memory": {name: int(stats.get(name, 0)) for name in MEMORY_COUNTERS},
        "breaker": {
            "state": stats.get("breaker_state"),
            "opened": stats.get("breaker_opened", 0),
            "pending_invalidations": stats.get("pending_invalidations", 0),
        },
        "webhook": {
            "requests": count,
            "latency_seconds_sum": total,
            "p50_ms": _ms(_quantile(buckets, count, 0.5)),
            "p95_ms": _ms(_quantile(buckets, count, 0.95)),
        },
        "queue_depth": queue_depth,
        "reply_mode": services.settings.reply_mode,
    }
