"""The circuit breaker's state machine (pure logic, a controllable clock) and the stats export."""

from __future__ import annotations

import threading

from langchain_core.messages import HumanMessage
from prometheus_client import CollectorRegistry

from lc_hybrid_memory import CircuitBreaker, HybridMemory
from tests.support.servers import MemoryFactory


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_at_threshold_and_half_opens_after_the_pause() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, reset_seconds=5, clock=clock)
    assert breaker.allow() and breaker.state == "closed"
    breaker.record_failure()
    assert breaker.allow()  # one failure is below the threshold
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.state == "half_open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one probe at a time
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()
    assert breaker.times_opened == 1


def test_failed_probe_reopens_for_a_full_pause() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=5, clock=clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 4
    assert not breaker.allow()
    assert breaker.times_opened == 2


def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_seconds=5, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"


def test_one_probe_among_many_threads() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=1, clock=clock)
    breaker.record_failure()
    clock.now += 2
    allowed = []
    barrier = threading.Barrier(8)

    def probe() -> None:
        barrier.wait()
        allowed.append(breaker.allow())

    threads = [threading.Thread(target=probe) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(allowed) == [False] * 7 + [True]


def test_stats_are_exported_to_prometheus(memory_factory: MemoryFactory) -> None:
    registry = CollectorRegistry()
    memory: HybridMemory = memory_factory(prometheus=registry)
    memory.add_messages("p", [HumanMessage("x")])
    memory.get_messages("p")
    memory.get_messages("p")
    value = registry.get_sample_value
    assert value("lc_hybrid_memory_events_total", {"event": "misses"}) == 1
    assert value("lc_hybrid_memory_events_total", {"event": "hits"}) == 1
    assert value("lc_hybrid_memory_events_total", {"event": "messages_written"}) == 1
    # A second memory on the same registry shares the counter instead of failing.
    memory_factory(prometheus=registry).get_messages("p")
    assert value("lc_hybrid_memory_events_total", {"event": "hits"}) == 2


def test_a_collected_registry_takes_its_counter_along() -> None:
    import gc

    from lc_hybrid_memory import stats

    registry = CollectorRegistry()
    first = stats.prometheus_counter(registry)
    assert stats.prometheus_counter(registry) is first
    del first
    del registry
    gc.collect()
    # A new registry (which may reuse the old one's id()) gets a counter of its own.
    fresh = CollectorRegistry()
    counter = stats.prometheus_counter(fresh)
    counter.labels(event="hits").inc()
    assert fresh.get_sample_value("lc_hybrid_memory_events_total", {"event": "hits"}) == 1
    assert all(key is not None for key in stats._counters)
    assert len([r for r in stats._counters if r is fresh]) == 1
