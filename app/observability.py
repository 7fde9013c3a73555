"""Metrics (Prometheus) and structured logs of the app and the worker.

Every app (and every worker) gets its own ``CollectorRegistry``: two apps in one process (the
tests) never clash, and ``/metrics`` shows exactly this app's numbers. Logs carry ids
(conversation, MessageSid), sizes and outcomes, never message bodies.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lc_hybrid_memory import HybridMemory

# Fields a log call may pass through ``extra=`` that the JSON formatter keeps.
LOG_FIELDS = (
    "conversation_id",
    "message_sid",
    "channel",
    "outcome",
    "status",
    "chars",
    "chunks",
    "duration_ms",
    "queue",
    "job_id",
    "error",
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60)


class Metrics:
    """The app's Prometheus metrics, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.webhook_requests = Counter(
            "twilio_webhook_requests",
            "Webhook requests by outcome (replied, acked, duplicate, forbidden, invalid...)",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_latency = Histogram(
            "twilio_webhook_latency_seconds",
            "Time to answer a Twilio webhook",
            ["mode"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.turns = Counter(
            "agent_turns",
            "Agent turns by outcome (answered, replayed, failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.agent_errors = Counter(
            "agent_errors",
            "Turns that failed (model, tool or storage error); the user got the apology",
            ["error"],
            registry=self.registry,
        )
        self.turn_latency = Histogram(
            "agent_turn_seconds",
            "Duration of one agent turn (model and tools included)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.replies_sent = Counter(
            "twilio_replies_sent",
            "Replies sent through the Twilio REST API (async mode), by outcome",
            ["outcome"],
            registry=self.registry,
        )

    def watch_memory(self, memory: HybridMemory) -> None:
        """Export the memory's cache counters (hits, misses, fills...) at scrape time."""
        self.registry.register(_MemoryCollector(memory))

    def watch_queue_depth(self, depth: Callable[[], float]) -> None:
        """Export the async queue's depth, read at scrape time (NaN when Redis is down)."""
        gauge = Gauge("turn_queue_depth", "Turns waiting in the RQ queue", registry=self.registry)

        def read() -> float:
            try:
                return float(depth())
            except Exception:  # a scrape must not fail because Redis is down
                return float("nan")

        gauge.set_function(read)


class _MemoryCollector(Collector):
    """``HybridMemory.stats()`` as Prometheus families (counters and the breaker state)."""

    def __init__(self, memory: HybridMemory) -> None:
        self.memory = memory

    def collect(self) -> Iterator[Any]:
        stats = self.memory.stats()
        events = CounterMetricFamily(
            "hybrid_memory_events", "Cache and store events of the memory", labels=["event"]
        )
        for name, value in stats.items():
            if isinstance(value, int) and not isinstance(value, bool):
                if name in ("pending_invalidations", "breaker_opened"):
                    continue
                events.add_metric([name], value)
        yield events
        breaker = GaugeMetricFamily(
            "hybrid_memory_breaker_open", "1 while the Redis circuit breaker is not closed"
        )
        breaker.add_metric([], 0.0 if stats.get("breaker_state") == "closed" else 1.0)
        yield breaker


class Stopwatch:
    """Milliseconds since creation, for log fields and histograms."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @property
    def ms(self) -> int:
        return int(self.seconds * 1000)


class JSONLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the known ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in LOG_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class KeyValueLogFormatter(logging.Formatter):
    """The classic text line, followed by the known ``extra`` fields as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{name}={getattr(record, name)}"
            for name in LOG_FIELDS
            if getattr(record, name, None) is not None
        ]
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback after the fields
        return f"{head} {' '.join(fields)}{sep}{tail}"


def configure_logging(level: str, log_format: str) -> None:
    """Route the root logger to stderr in ``text`` or ``json`` format (replaces handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONLogFormatter() if log_format == "json" else KeyValueLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
