"""The webhook app under faults (issue 6): Redis SIGKILLed mid-load and restarted empty,
Postgres restarted mid-load, and (long version) Redis SIGSTOPped for seconds, while several
conversations keep posting signed webhooks to an in-process app (inline replies, the offline
model) on servers of the test's own.

Twilio's side is played honestly: a request that got no 2xx is retried later, as Twilio does.
Checked from the table at the end:

* every MessageSid acknowledged with a 2xx is in Postgres exactly once (none reported stored
  that is not), and after the retries every MessageSid sent is (lost = 0, duplicated = 0);
* no turn is answered twice (at most one answer row per MessageSid);
* refusals are 503s, and only while Postgres is down; ``/readyz`` is 503 during each outage
  and 200 after it;
* the request latency during a Redis stall stays under Twilio's 15 s (the turn client's socket
  timeout and the memory's breaker bound it);
* afterwards, for every conversation, the Redis list (if any) equals the tail of the table.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from flask import Flask

from app import create_app
from app.agent import ChatAgent
from app.commands import migrate_database
from lc_hybrid_memory import HybridMemory, sync_url
from tests.support.app_harness import (
    form,
    new_sid,
    post_signed,
    signed_app_settings,
)
from tests.support.memory_checks import assert_cache_is_tail
from tests.support.processes import percentile, wait_until
from tests.support.servers import PrivateServers

TWILIO_TIMEOUT = 15.0


@dataclass
class FaultyWorld:
    app: Flask
    memory: HybridMemory
    servers: PrivateServers
    engine: sa.Engine
    redis_url: str


@pytest.fixture
def world(private_servers: PrivateServers, tmp_path: Path) -> Iterator[FaultyWorld]:
    migrate_database(private_servers.database_url)
    settings = signed_app_settings(
        private_servers.database_url,
        private_servers.redis_url,
        tmp_path,
        rate_limit="10000 per minute",  # on: the limiter's Redis calls are part of the path
        redis_prefix="faults:",
        lock_ttl_seconds=5,
        inline_wait_seconds=5,
    )
    memory = HybridMemory.from_urls(
        redis_url=private_servers.redis_url, database_url=private_servers.database_url
    )
    app = create_app(settings, memory=memory, agent=ChatAgent(memory, settings))
    engine = sa.create_engine(sync_url(private_servers.database_url))
    try:
        yield FaultyWorld(app, memory, private_servers, engine, private_servers.redis_url)
    finally:
        private_servers.redis.resume()
        app.extensions["hybrid_memory"].close()
        memory.close()
        engine.dispose()


@dataclass
class Attempt:
    sid: str
    sender: str
    text: str
    status: int
    started: float
    seconds: float


@dataclass
class Load:
    """Conversations posting one message after another until stopped."""

    world: FaultyWorld
    conversations: int
    attempts: list[Attempt] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for c in range(self.conversations):
            thread = threading.Thread(target=self._converse, args=(f"+1555900{c:04d}",))
            thread.start()
            self.threads.append(thread)

    def _converse(self, sender: str) -> None:
        client = self.world.app.test_client()
        for n in range(10_000):  # bounded; stopped long before
            if self.stop.is_set():
                return
            self.send(client, new_sid(), sender, f"{sender} message {n}")
            time.sleep(0.02)

    def send(self, client: Any, sid: str, sender: str, text: str) -> int:
        started = time.monotonic()
        status = post_signed(client, form(text, sid=sid, sender=sender)).status_code
        attempt = Attempt(sid, sender, text, status, started, time.monotonic() - started)
        with self.lock:
            self.attempts.append(attempt)
        return status

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in self.threads)

    def retry_refused(self, rounds: int = 5) -> int:
        """Twilio's retries: every MessageSid without a 2xx is posted again until it gets one."""
        client = self.world.app.test_client()
        retried = 0
        for _ in range(rounds):
            acked = {a.sid for a in self.attempts if a.status < 300}
            todo = {a.sid: a for a in self.attempts if a.sid not in acked}
            if not todo:
                break
            for attempt in todo.values():
                self.send(client, attempt.sid, attempt.sender, attempt.text)
                retried += 1
            time.sleep(0.5)
        return retried


class Timeline:
    """The faults, with the time span each lasted (for the latency figures)."""

    def __init__(self, world: FaultyWorld) -> None:
        self.world = world
        self.spans: list[tuple[str, float, float]] = []
        self.readiness: list[tuple[str, int]] = []

    def ready(self) -> int:
        return self.world.app.test_client().get("/readyz").status_code

    def fault(self, name: str, begin: Callable[[], None], end: Callable[[], None], hold: float):
        started = time.monotonic()
        begin()
        time.sleep(hold / 2)
        self.readiness.append((name, self.ready()))
        time.sleep(hold / 2)
        end()
        self.spans.append((name, started, time.monotonic()))
        assert wait_until(lambda: self.ready() == 200, 30, interval=0.1), f"not ready after {name}"


def run_faults(world: FaultyWorld, *, conversations: int, long: bool) -> None:
    servers = world.servers
    load = Load(world, conversations)
    timeline = Timeline(world)
    assert timeline.ready() == 200
    load.start()
    cycles = 3 if long else 1
    pause = 0.8 if long else 0.4
    try:
        for _ in range(cycles):
            time.sleep(pause)
            timeline.fault(
                "redis SIGKILL, restarted empty", servers.redis.kill, servers.redis.start, 1.5
            )
            time.sleep(pause)
            timeline.fault("postgres restarted", servers.postgres.stop, servers.postgres.start, 1.0)
            if long:
                time.sleep(pause)
                timeline.fault(
                    "redis SIGSTOP (stall)", servers.redis.pause, servers.redis.resume, 12.0
                )
        time.sleep(pause)
    finally:
        servers.redis.resume()
        load.finish()
    retried = load.retry_refused()
    check(world, load, timeline, retried)


def check(world: FaultyWorld, load: Load, timeline: Timeline, retried: int) -> None:
    with world.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT conversation_id, role, message_uid FROM messages ORDER BY id")
        ).all()
        conversation_ids = conn.execute(sa.text("SELECT id FROM conversations")).scalars().all()
    stored = Counter(row.message_uid for row in rows if row.role == "user")
    answered = Counter(row.message_uid.split(":")[0] for row in rows if row.role == "assistant")
    sent = {a.sid for a in load.attempts}
    acked = {a.sid for a in load.attempts if a.status < 300}
    statuses = Counter(a.status for a in load.attempts)

    # Every 2xx was durable first; after Twilio's retries every message is stored, once.
    assert acked <= set(stored), sorted(acked - set(stored))[:5]
    assert set(stored) == sent, (len(sent - set(stored)), len(set(stored) - sent))
    lost = len(sent - set(stored))
    duplicated = sum(n - 1 for n in stored.values()) + sum(n - 1 for n in answered.values())
    assert duplicated == 0
    assert set(statuses) <= {200, 503}, statuses
    # 503s only while Postgres was down (or its connections were being replaced).
    outages = [(s, e) for name, s, e in timeline.spans if "postgres" in name]
    refused = [a for a in load.attempts if a.status == 503]
    t0 = min(a.started for a in load.attempts)
    assert all(any(s - 1 <= a.started <= e + 5 for s, e in outages) for a in refused), (
        [(round(a.started - t0, 2), round(a.seconds, 2)) for a in refused],
        [(name, round(s - t0, 2), round(e - t0, 2)) for name, s, e in timeline.spans],
    )
    # /readyz said so during each outage.
    assert all(status == 503 for _, status in timeline.readiness), timeline.readiness
    # Bounded latency everywhere, including the stall.
    worst = max(a.seconds for a in load.attempts)
    assert worst < TWILIO_TIMEOUT, worst

    # The cache is the tail of the table for every conversation: as left by the faults, and
    # after a read (a refill where Redis lost it).
    client = redis.Redis.from_url(world.redis_url)
    try:
        for conversation_id in conversation_ids:
            assert_cache_is_tail(world.memory, client, conversation_id)
            world.memory.get_messages(conversation_id)
            assert_cache_is_tail(world.memory, client, conversation_id)
        filled = sum(1 for cid in conversation_ids if client.exists(world.memory.cache.key(cid)))
    finally:
        client.close()
    assert filled == len(conversation_ids)  # the breaker closed again: the cache is in use

    during: dict[str, float] = {}
    for name, start, end in timeline.spans:
        worst_here = max(
            (a.seconds for a in load.attempts if start <= a.started <= end), default=0.0
        )
        during[name] = max(during.get(name, 0.0), worst_here)
    print(
        f"\napp under faults: {len(timeline.spans)} faults, {len(conversation_ids)} "
        f"conversations, turns sent={len(sent)}, webhooks={len(load.attempts)} "
        f"(Twilio retries={retried}), acked 2xx={len(acked)}, 503={statuses.get(503, 0)}, "
        f"stored={len(stored)}, answers={sum(answered.values())}, lost={lost}, "
        f"duplicated={duplicated}; latency p50="
        f"{percentile([a.seconds for a in load.attempts], 0.5) * 1000:.0f} ms, max={worst:.2f} s; "
        "max during each fault: "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in during.items())
    )


def test_webhooks_through_redis_kill_and_postgres_restart(world: FaultyWorld) -> None:
    run_faults(world, conversations=4, long=False)


@pytest.mark.slow
def test_webhooks_through_repeated_faults_and_a_redis_stall(world: FaultyWorld) -> None:
    run_faults(world, conversations=8, long=True)


def test_a_webhook_during_a_redis_stall_is_answered_within_the_timeouts(
    world: FaultyWorld,
) -> None:
    """SIGSTOP: connections stay open, nothing answers. The rate limiter (1 s), the memory (its
    250 ms timeout, then the breaker) and the turn client (2 s) each give up on their own, so
    the request ends in seconds with the message stored, whatever the stall's length."""
    client = world.app.test_client()
    assert post_signed(client, form("before")).status_code == 200
    fields = form("during the stall")
    world.servers.redis.pause()
    resumed_by_timer = threading.Event()

    def resume_after_all() -> None:  # a bound, if no timeout works
        resumed_by_timer.set()
        world.servers.redis.resume()

    resume = threading.Timer(30, resume_after_all)
    resume.start()
    try:
        started = time.monotonic()
        response = post_signed(client, fields)
        seconds = time.monotonic() - started
        answered_during_the_stall = not resumed_by_timer.is_set()
        ready = client.get("/readyz").status_code
    finally:
        world.servers.redis.resume()
        resume.cancel()

    assert response.status_code == 200  # the apology: Redis is needed for the turn itself
    assert answered_during_the_stall  # the timeouts ended it, not the end of the stall
    assert ready == 503
    with world.engine.connect() as conn:
        uids = conn.execute(sa.text("SELECT message_uid FROM messages")).scalars().all()
    assert fields["MessageSid"] in uids
    print(f"\nwebhook during a Redis stall: answered (apology) in {seconds:.2f} s, stored")
