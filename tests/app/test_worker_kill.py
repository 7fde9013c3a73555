"""The app worker killed mid-turn (issue 6): a `hybrid-memory worker` process, its offline model
"thinking" for seconds (``OFFLINE_MODEL_DELAY_SECONDS``), is SIGKILLed while it runs a turn; a
new worker process starts. Nothing else is sent to the conversation, so nothing but the
workers' stalled-turn recovery can pick the turn up again (RQ only notices an abandoned job
after its timeout). Then:

* the conversation's lock, held by the dead worker, frees itself within ``TURN_LOCK_SECONDS``;
* the turn completes exactly once: one inbound row, one answer, one REST reply;
* the conversation is not blocked: a next message is answered, in order, once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from flask import Flask

from app import create_app
from app.commands import migrate_database
from app.settings import Settings
from app.worker import recover_stalled_turns, run_worker
from lc_hybrid_memory import sync_url
from tests.support.app_harness import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    PUBLIC_BASE_URL,
    SENDER,
    AppHarness,
    fake_model,
    form,
    post_signed,
    replies,
)
from tests.support.processes import ProcessGroup, TwilioCapture, app_env, cleanup_redis, wait_until

LOCK_SECONDS = 2
THINK_SECONDS = 3.0


@dataclass
class Crash:
    app: Flask  # the webhook, in process (it only stores and enqueues in async mode)
    group: ProcessGroup
    capture: TwilioCapture
    engine: sa.Engine
    redis: redis.Redis
    prefix: str


@pytest.fixture
def crash(servers: Any, fresh_database_url: str, unique: str, tmp_path: Path) -> Iterator[Crash]:
    migrate_database(fresh_database_url)
    prefix, queue = f"kill:{unique}:", f"kill-turns-{unique}"
    client = redis.Redis.from_url(servers.redis_url)
    engine = sa.create_engine(sync_url(fresh_database_url))
    with TwilioCapture() as capture:
        settings = Settings(
            database_url=fresh_database_url,
            redis_url=servers.redis_url,
            data_dir=tmp_path,
            twilio_auth_token=AUTH_TOKEN,
            twilio_account_sid=ACCOUNT_SID,
            twilio_api_base_url=capture.url,
            public_base_url=PUBLIC_BASE_URL,
            reply_mode="async",
            rate_limit="",
            redis_prefix=prefix,
            queue_name=queue,
            lock_ttl_seconds=LOCK_SECONDS,
        )
        env = app_env(
            database_url=fresh_database_url,
            redis_url=servers.redis_url,
            prefix=prefix,
            queue=queue,
            twilio_api=capture.url,
            data_dir=tmp_path,
            auth_token=AUTH_TOKEN,
            account_sid=ACCOUNT_SID,
            public_base_url=PUBLIC_BASE_URL,
            TURN_LOCK_SECONDS=str(LOCK_SECONDS),
            OFFLINE_MODEL_DELAY_SECONDS=str(THINK_SECONDS),
        )
        group = ProcessGroup(env, tmp_path)
        app = create_app(settings)
        try:
            yield Crash(app, group, capture, engine, client, prefix)
        finally:
            group.stop()
            app.extensions["hybrid_memory"].close()
            engine.dispose()
            cleanup_redis(servers.redis_url, prefix, queue)
            client.close()


def _rows(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT id, role, content, message_uid FROM messages ORDER BY id")
        ).all()


def test_a_worker_killed_mid_turn_is_recovered_and_the_turn_runs_exactly_once(
    crash: Crash,
) -> None:
    client = crash.app.test_client()
    first = form("hello before the crash")
    doomed = crash.group.worker("worker-doomed")

    assert replies(post_signed(client, first)) == []  # acked, stored, enqueued
    conversation_id = _conversation(crash.engine)
    lock_key = f"{crash.prefix}lock:{{{conversation_id}}}"
    # The doomed worker starts, takes the job and the lock, and "thinks" for 3 s.
    assert wait_until(lambda: crash.redis.exists(lock_key), 90, interval=0.05), crash.group.logs()
    time.sleep(0.5)  # well inside the model call
    assert [row.message_uid for row in _rows(crash.engine)] == [first["MessageSid"]]
    doomed.kill()  # SIGKILL, mid-turn
    killed_at = time.monotonic()
    doomed.proc.wait(10)

    # Its lock was renewed by a heartbeat that died with it: it frees itself within the ttl.
    assert wait_until(lambda: not crash.redis.exists(lock_key), LOCK_SECONDS + 3, interval=0.05)
    lock_freed = time.monotonic() - killed_at
    assert crash.capture.calls == []  # the dead worker sent nothing

    crash.group.worker("worker-new", OFFLINE_MODEL_DELAY_SECONDS="0.2")
    assert wait_until(lambda: len(crash.capture.calls) >= 1, 90, interval=0.05), crash.group.logs()
    recovered = time.monotonic() - killed_at

    second = form("and after it")
    assert replies(post_signed(client, second)) == []
    assert wait_until(lambda: len(crash.capture.calls) >= 2, 60, interval=0.05), crash.group.logs()
    time.sleep(LOCK_SECONDS + 1)  # a second recovery, a duplicate send, would show by now

    one, two = first["MessageSid"], second["MessageSid"]
    assert [row.message_uid for row in _rows(crash.engine)] == [one, f"{one}:1", two, f"{two}:1"]
    assert [call["form"]["Body"] for call in crash.capture.calls] == [
        "[offline model] You said: “hello before the crash”. I remember 0 earlier messages.",
        "[offline model] You said: “and after it”. I remember 2 earlier messages.",
    ]
    assert {call["form"]["To"] for call in crash.capture.calls} == {SENDER}
    print(
        f"\nworker killed mid-turn: lock freed {lock_freed:.1f} s after the SIGKILL "
        f"(TURN_LOCK_SECONDS={LOCK_SECONDS}); turn recovered and replied "
        f"{recovered:.1f} s after it (new worker's start included); turns=2, inbound rows=2, "
        f"answers=2, REST replies=2, lost=0, duplicated=0"
    )


def _conversation(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT id FROM conversations")).scalar_one())


def test_recovery_picks_only_stalled_conversations_and_enqueues_once(
    harness: AppHarness,
) -> None:
    app = harness.app(fake_model("recovered"), reply_mode="async", lock_ttl_seconds=30)
    services = app.extensions["hybrid_memory"]
    client = app.test_client()
    stalled, busy = form("a", sender="+15550000001"), form("b", sender="+15550000002")
    young = form("c", sender="+15550000003")
    for fields in (stalled, busy, young):
        post_signed(client, fields)
    services.queue.empty()  # their jobs died with a worker
    ids = {row["contact"]: row["id"] for row in harness.rows("conversations")}
    for contact, fields in (("+15550000001", stalled), ("+15550000002", busy)):
        # Queued a minute ago (longer than the lock ttl): stalled unless someone holds the lock.
        key = services.turns.turn_key(ids[contact], fields["MessageSid"])
        services.redis.hset(key, "queued_at", repr(time.time() - 60))
    services.redis.set(services.turns.lock_key(ids["+15550000002"]), "live-holder", px=30_000)

    # The young one (queued just now) still has its own job coming: not touched.
    assert recover_stalled_turns(services) == [ids["+15550000001"]]
    assert recover_stalled_turns(services) == []  # its recovery job is still queued
    run_worker(services, burst=True, with_scheduler=False)

    assert harness.http.sent_bodies == ["recovered"]
    assert services.turns.pending(ids["+15550000001"]) == []
    assert len(services.turns.pending(ids["+15550000002"])) == 1  # its holder is alive
