"""Reliability under load with faults injected into real servers.

Worker threads run turns (a human message and an AI answer, both with ids) over many
conversations while a fault schedule SIGKILLs and restarts Redis, SIGSTOPs it (a stall),
restarts it empty, and restarts Postgres. A turn is *acknowledged* when ``add_messages``
returns; a failed turn is retried with the same ids until it is acknowledged, as a client
would. Afterwards:

* every acknowledged turn is in Postgres exactly once (lost = 0, duplicated = 0);
* no call waited longer than the timeouts allow while Redis stalled;
* every conversation's cached list equals the tail of its rows.

``make test`` runs a short version; ``make reliability`` the long one (marked slow).
"""

from __future__ import annotations

import json
import random
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

import pytest
import redis
from langchain_core.messages import AIMessage, HumanMessage

from lc_hybrid_memory import HybridMemory, StoreUnavailableError
from tests.support.memory_checks import assert_cache_is_tail
from tests.support.servers import MemoryFactory, PrivateServers

REDIS_TIMEOUT = 0.2


@dataclass
class Figures:
    turns_acknowledged: int = 0
    attempts_failed: int = 0
    faults: list[str] = field(default_factory=list)
    max_call_seconds: float = 0.0
    max_call_seconds_redis_faults: float = 0.0
    lost: int = -1
    duplicated: int = -1
    unexpected_errors: list[str] = field(default_factory=list)


def run_load(
    memory: HybridMemory,
    servers: PrivateServers,
    *,
    seconds: float,
    workers: int,
    conversations: int,
    rounds: int,
) -> tuple[Figures, dict[str, list[str]]]:
    figures = Figures()
    lock = threading.Lock()
    acknowledged: dict[str, list[str]] = {f"conv-{i}": [] for i in range(conversations)}
    stop = threading.Event()
    redis_fault = threading.Event()

    def worker(n: int) -> None:
        try:
            turns(n)
        except BaseException:  # a dead worker must fail the test, not vanish
            figures.unexpected_errors.append(traceback.format_exc())

    def turns(n: int) -> None:
        rng = random.Random(n)
        turn = 0
        while not stop.is_set():
            sid = f"conv-{rng.randrange(conversations)}"
            turn_id = f"w{n}-t{turn}"
            messages = [
                HumanMessage(f"question {turn_id}", id=f"{turn_id}-in"),
                AIMessage(f"answer {turn_id}", id=f"{turn_id}-out"),
            ]
            while True:  # retry the same turn (same ids) until it is acknowledged
                started = time.monotonic()
                try:
                    memory.add_messages(sid, messages)
                    memory.get_messages(sid, 10)
                    ok = True
                except StoreUnavailableError:
                    ok = False
                elapsed = time.monotonic() - started
                with lock:
                    figures.max_call_seconds = max(figures.max_call_seconds, elapsed)
                    if redis_fault.is_set():
                        figures.max_call_seconds_redis_faults = max(
                            figures.max_call_seconds_redis_faults, elapsed
                        )
                    if ok:
                        figures.turns_acknowledged += 1
                        acknowledged[sid].append(turn_id)
                    else:
                        figures.attempts_failed += 1
                if ok:
                    break
                time.sleep(0.05)
            turn += 1

    def faults() -> None:
        pause = seconds / (4 * rounds + 1)
        for _ in range(rounds):
            for name, action in (
                ("redis SIGKILL + restart", lambda: (servers.redis.kill(), servers.redis.start())),
                ("redis SIGSTOP 1s", lambda: (servers.redis.pause(), time.sleep(1.0))),
                ("redis restart empty", lambda: servers.redis.restart()),
                ("postgres restart", lambda: servers.postgres.restart()),
            ):
                if stop.wait(pause):
                    return
                if name.startswith("redis"):
                    redis_fault.set()
                try:
                    action()
                finally:
                    servers.redis.resume()
                    time.sleep(0.3)
                    redis_fault.clear()
                figures.faults.append(name)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    injector = threading.Thread(target=faults)
    for thread in [*threads, injector]:
        thread.start()
    injector.join(seconds + 60)
    stop.set()
    for thread in threads:
        thread.join(60)
    return figures, acknowledged


def check(
    memory: HybridMemory,
    figures: Figures,
    acknowledged: dict[str, list[str]],
    client: redis.Redis,
) -> None:
    lost = duplicated = 0
    for sid, turns in acknowledged.items():
        ids = Counter(
            json.loads(p)["data"]["id"] for p in (r.payload for r in memory.store.all(sid))
        )
        for turn_id in turns:
            for suffix in ("in", "out"):
                count = ids.get(f"{turn_id}-{suffix}", 0)
                lost += count == 0
                duplicated += max(count - 1, 0)
        # Nothing is stored that was never attempted, and nothing twice.
        assert all(n == 1 for n in ids.values())
    figures.lost, figures.duplicated = lost, duplicated
    time.sleep(0.4)  # past the breaker's pause: the next call flushes pending invalidations
    for sid in acknowledged:
        memory.get_messages(sid, 10)
    for sid in acknowledged:
        assert_cache_is_tail(memory, client, sid)
        tail = [json.loads(r.payload)["data"]["id"] for r in memory.store.all(sid)][-10:]
        assert [m.id for m in memory.get_messages(sid, 10)] == tail
    print("\nreliability figures:", json.dumps(figures.__dict__))


@pytest.mark.parametrize(
    ("seconds", "workers", "rounds"),
    [
        pytest.param(8, 4, 1, id="short"),
        pytest.param(90, 8, 4, id="long", marks=pytest.mark.slow),
    ],
)
def test_nothing_lost_or_duplicated_under_faults(
    private_servers: PrivateServers,
    memory_factory: MemoryFactory,
    seconds: float,
    workers: int,
    rounds: int,
) -> None:
    memory = memory_factory(
        redis_url=private_servers.redis_url,
        database_url=private_servers.database_url,
        redis_timeout=REDIS_TIMEOUT,
        breaker_reset_seconds=0.3,
        max_cached=10,
    )
    figures, acknowledged = run_load(
        memory, private_servers, seconds=seconds, workers=workers, conversations=25, rounds=rounds
    )
    client = redis.Redis.from_url(private_servers.redis_url)
    check(memory, figures, acknowledged, client)
    assert len(figures.faults) == 4 * rounds
    assert figures.turns_acknowledged > 50
    assert figures.lost == 0 and figures.duplicated == 0
    assert figures.unexpected_errors == []
    # Redis faults cost at most a timeout or two per call, never a hang.
    assert figures.max_call_seconds_redis_faults < 10 * REDIS_TIMEOUT + 1.0
