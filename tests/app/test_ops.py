"""Operations: /healthz, /readyz with Redis or Postgres stopped, /metrics, logs without
message bodies, and the webhook's behaviour while a server is down."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from app import create_app
from app.agent import ChatAgent
from app.commands import migrate_database
from app.observability import JSONLogFormatter
from lc_hybrid_memory import HybridMemory
from tests.support.app_harness import (
    AppHarness,
    fake_model,
    form,
    post_signed,
    replies,
    signed_app_settings,
)
from tests.support.servers import PrivateServers


@pytest.fixture
def private_app(private_servers: PrivateServers, tmp_path: Path) -> Iterator[Flask]:
    """An app on servers of its own, which the test may stop and start."""
    migrate_database(private_servers.database_url)
    settings = signed_app_settings(
        private_servers.database_url,
        private_servers.redis_url,
        tmp_path,
        redis_prefix="ops:",
    )
    memory = HybridMemory.from_urls(
        redis_url=private_servers.redis_url, database_url=private_servers.database_url
    )
    app = create_app(
        settings, memory=memory, agent=ChatAgent(memory, settings, model=fake_model("fine"))
    )
    yield app
    app.extensions["hybrid_memory"].close()
    memory.close()


def _ready(app: Flask) -> tuple[int, dict[str, Any]]:
    response = app.test_client().get("/readyz")
    return response.status_code, response.get_json()


def test_readiness_follows_redis_and_postgres(
    private_app: Flask, private_servers: PrivateServers
) -> None:
    client = private_app.test_client()
    assert client.get("/healthz").status_code == 200
    assert _ready(private_app)[0] == 200

    private_servers.redis.kill()
    status, body = _ready(private_app)
    assert status == 503 and body["checks"]["redis"].startswith("error")
    assert body["checks"]["postgres"] == "ok"
    assert client.get("/healthz").status_code == 200  # the process itself is fine

    private_servers.redis.start()
    assert _ready(private_app)[0] == 200

    private_servers.postgres.stop()
    status, body = _ready(private_app)
    assert status == 503 and body["checks"]["postgres"].startswith("error")
    assert body["checks"]["redis"] == "ok"

    private_servers.postgres.start()
    assert _ready(private_app)[0] == 200

    private_servers.redis.pause()  # a stall: connections open, no answers
    status, body = _ready(private_app)  # answered while Redis still stalls: its own timeout
    private_servers.redis.resume()
    assert status == 503 and body["checks"]["redis"].startswith("error")


def test_webhook_with_postgres_down_is_a_503_and_with_redis_down_keeps_the_message(
    private_app: Flask, private_servers: PrivateServers
) -> None:
    client = private_app.test_client()
    memory = private_app.extensions["hybrid_memory"].memory

    private_servers.postgres.stop()
    nothing_stored = post_signed(client, form("while postgres is down"))
    private_servers.postgres.start()
    assert nothing_stored.status_code == 503  # not durable: Twilio fails over to its fallback

    private_servers.redis.kill()
    fields = form("while redis is down")
    kept = post_signed(client, fields)
    private_servers.redis.start()

    assert replies(kept) == [private_app.extensions["hybrid_memory"].settings.apology_text]
    with memory.store.engine.connect() as conn:
        uids = conn.exec_driver_sql("SELECT message_uid FROM messages").scalars().all()
    assert uids == [fields["MessageSid"]]


def test_metrics_count_requests_turns_cache_and_queue(harness: AppHarness) -> None:
    client = harness.app(fake_model("hello")).test_client()
    post_signed(client, form("hi"))
    client.post("/twilio/messages", data=form("forged"))

    text = client.get("/metrics").get_data(as_text=True)

    assert 'twilio_webhook_requests_total{outcome="replied"} 1.0' in text
    assert 'twilio_webhook_requests_total{outcome="forbidden"} 1.0' in text
    assert 'agent_turns_total{outcome="answered"} 1.0' in text
    assert "twilio_webhook_latency_seconds_bucket" in text
    assert 'hybrid_memory_events_total{event="misses"}' in text
    assert "turn_queue_depth 0.0" in text


def test_logs_carry_the_conversation_id_and_never_the_body(
    harness: AppHarness, caplog: pytest.LogCaptureFixture
) -> None:
    client = harness.app(fake_model("a secret answer")).test_client()
    caplog.set_level(logging.INFO)

    post_signed(client, form("my secret message"))

    [conversation] = harness.rows("conversations")
    lines = [JSONLogFormatter().format(record) for record in caplog.records]
    ours = [json.loads(line) for line in lines if '"logger": "app.' in line]
    assert any(entry.get("conversation_id") == conversation["id"] for entry in ours)
    assert not any("secret" in line for line in lines)
