"""Metrics (Prometheus) and structured logs of the app and the worker.

Every app (and every worker) gets its own ``CollectorRegistry``: two apps in one process (the
tests) never clash, and ``/metrics`` shows exactly this app's numbers.

Logs carry ids (conversation, MessageSid), sizes and outcomes, never message text. The app's
own log calls never pass a body; exceptions are where text hides — a database driver quotes the
row it rejected (``Failing row contains (...)``), SQLAlchemy the statement's parameters, a model
provider or an HTTP API may quote its input — so both formatters render a logged exception as
its traceback (code locations only) and the *types* of its chain, with the message only for
exceptions whose words are known not to carry data (:data:`SAFE_MESSAGE_TYPES`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import redis.exceptions
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lc_hybrid_memory import HybridMemory, HybridMemoryError

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
                if name in ("pending_invalidations", "breaker_opened") or name.startswith(
                    "recall_"
                ):
                    continue
                events.add_metric([name], value)
        yield events
        if "recall_pending" in stats:  # semantic recall on: how far its indexer lags
            for name, help_text in (
                ("recall_pending", "Messages waiting to be indexed for semantic recall"),
                ("recall_oldest_pending_seconds", "Age of the oldest message waiting for it"),
            ):
                gauge = GaugeMetricFamily(f"hybrid_memory_{name}", help_text)
                value = stats[name]
                gauge.add_metric([], float("nan") if value is None else float(value))
                yield gauge
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


# Exceptions whose messages are the library's own words or a connection's: shown in logs. Any
# other exception is logged by its type alone.
SAFE_MESSAGE_TYPES: tuple[type[BaseException], ...] = (
    HybridMemoryError,
    OSError,  # sockets, files: errno and address
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.RedisClusterException,
)
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _describe(exc: BaseException) -> str:
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    if isinstance(exc, SAFE_MESSAGE_TYPES):
        return f"{name}: {exc}" if str(exc) else name
    return f"{name} (message not logged: it may quote message text)"


def format_exception_safely(exc: BaseException) -> str:
    """``exc`` and its chain like a traceback, without the messages that may carry data."""
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    parts: list[str] = []
    for position, (item, _) in enumerate(reversed(chain)):
        if position:  # the link from this exception to the one printed before it
            parts.append(chain[len(chain) - position][1])
        if item.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(item.__traceback__))
        parts.append(_describe(item) + "\n")
    return "".join(parts).rstrip("\n")


def _exception_text(record: logging.LogRecord) -> str | None:
    # Never record.exc_text: another handler may have cached the full traceback there.
    if record.exc_info and record.exc_info[1] is not None:
        return format_exception_safely(record.exc_info[1])
    return None


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
        exception = _exception_text(record)
        if exception is not None:
            entry["exc"] = exception
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class KeyValueLogFormatter(logging.Formatter):
    """The classic text line, followed by the known ``extra`` fields as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        fields = [
            f"{name}={getattr(record, name)}"
            for name in LOG_FIELDS
            if getattr(record, name, None) is not None
        ]
        if fields:
            line = f"{line} {' '.join(fields)}"
        exception = _exception_text(record)
        if exception is not None:
            line = f"{line}\n{exception}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


def configure_logging(level: str, log_format: str) -> None:
    """Route the root logger to stderr in ``text`` or ``json`` format (replaces handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONLogFormatter() if log_format == "json" else KeyValueLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
