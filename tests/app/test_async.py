"""Async reply mode end to end: the webhook acks at once, a real RQ worker (in-process
``SimpleWorker``, burst mode, on the test Redis) runs the turn, and the reply goes out through
the Twilio REST client, captured by twilio's own HTTP client hook (never the network)."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask

from app.worker import run_worker
from tests.support.app_harness import (
    ACCOUNT_SID,
    OUR_NUMBER,
    SENDER,
    AppHarness,
    fake_model,
    form,
    post_signed,
    replies,
)


def model_started(app: Flask) -> float:
    """When the app's fake model was first called (``time.monotonic()``)."""
    return app.extensions["hybrid_memory"].agent.model.calls[0]["started"]


def work(app: Flask) -> None:
    """Run a real RQ worker until the app's queue is empty."""
    run_worker(app.extensions["hybrid_memory"], burst=True, with_scheduler=False)


def async_app(harness: AppHarness, model: Any = None, **changes: Any) -> Flask:
    return harness.app(model, reply_mode="async", **changes)


def test_async_mode_acks_at_once_and_the_worker_sends_the_reply_by_rest(
    harness: AppHarness,
) -> None:
    model = fake_model("Hello from the worker.", delay=0.3)
    app = async_app(harness, model)
    client = app.test_client()
    fields = form("hello")

    response = post_signed(client, fields)

    assert replies(response) == []  # an empty <Response/>
    assert model.calls == [] and harness.http.requests == []  # the turn did not run in it
    assert harness.message_uids() == [fields["MessageSid"]]  # durable before the ack

    work(app)

    assert len(model.calls) == 1
    [sent] = harness.http.requests
    assert sent["method"] == "POST"
    assert sent["uri"].endswith(f"/Accounts/{ACCOUNT_SID}/Messages.json")
    assert sent["data"] == {"To": SENDER, "From": OUR_NUMBER, "Body": "Hello from the worker."}
    assert harness.message_uids() == [fields["MessageSid"], fields["MessageSid"] + ":1"]


def test_async_retry_never_runs_the_turn_or_sends_the_reply_twice(harness: AppHarness) -> None:
    model = fake_model("only once")
    app = async_app(harness, model)
    client = app.test_client()
    fields = form("hello")

    assert replies(post_signed(client, fields)) == []
    assert replies(post_signed(client, fields)) == []  # retry while queued: ack
    work(app)
    assert replies(post_signed(client, fields)) == []  # retry after the reply went out: ack
    work(app)

    assert len(model.calls) == 1
    assert harness.http.sent_bodies == ["only once"]
    assert len(harness.rows()) == 2


def test_async_turns_remember_earlier_turns(harness: AppHarness) -> None:
    app = async_app(harness)  # the offline model answers from the history
    client = app.test_client()

    post_signed(client, form("my name is Grace"))
    post_signed(client, form("what is my name?"))
    work(app)

    assert harness.http.sent_bodies == [
        "[offline model] Nice to meet you, Grace! I will remember that.",
        "[offline model] Your name is Grace.",
    ]


def test_async_agent_failure_sends_the_apology_and_keeps_the_message(
    harness: AppHarness,
) -> None:
    app = async_app(harness, fake_model(fail=True))
    fields = form("hello?")

    post_signed(app.test_client(), fields)
    work(app)

    assert harness.http.sent_bodies == [harness.settings.apology_text]
    assert harness.message_uids() == [fields["MessageSid"]]


def test_a_reply_that_failed_to_send_is_resent_without_running_the_turn_again(
    harness: AppHarness,
) -> None:
    model = fake_model("first answer", "second answer")
    app = async_app(harness, model)
    client = app.test_client()
    harness.http.status = 503  # the Twilio API is down: the job fails, the turn stays queued
    post_signed(client, form("one"))
    work(app)
    assert len(model.calls) == 1 and len(harness.http.requests) == 1

    harness.http.status = 201
    post_signed(client, form("two"))  # the next job drains the stuck reply first, in order
    work(app)

    assert len(model.calls) == 2
    assert harness.http.sent_bodies[1:] == ["first answer", "second answer"]


def test_a_rejected_reply_does_not_block_the_conversation(harness: AppHarness) -> None:
    app = async_app(harness, fake_model("a", "b"))
    client = app.test_client()
    harness.http.status = 400  # e.g. the number cannot receive messages: permanent

    post_signed(client, form("one"))
    work(app)
    harness.http.status = 201
    post_signed(client, form("two"))
    work(app)

    assert harness.http.sent_bodies == ["a", "b"]  # "a" was refused once, never retried


def test_replies_go_out_through_the_messaging_service_and_whatsapp_addresses(
    harness: AppHarness,
) -> None:
    app = async_app(harness, fake_model("hi there"))
    service_sid = "MG" + "2" * 32
    fields = form(
        "hi",
        sender="whatsapp:+15550003333",
        To="whatsapp:+15550002222",
        MessagingServiceSid=service_sid,
    )

    post_signed(app.test_client(), fields)
    work(app)

    [sent] = harness.http.requests
    assert sent["data"] == {
        "To": "whatsapp:+15550003333",
        "MessagingServiceSid": service_sid,
        "Body": "hi there",
    }


def test_a_crashed_workers_lock_expires_and_the_next_job_takes_over(harness: AppHarness) -> None:
    app = async_app(harness, fake_model("recovered"), lock_ttl_seconds=1)
    client = app.test_client()
    fields = form("hello")
    post_signed(client, fields)
    [conversation] = harness.rows("conversations")
    # A worker died holding the conversation's lock: its key stays until it expires.
    lock_key = f"{harness.settings.redis_prefix}lock:{{{conversation['id']}}}"
    harness.redis.set(lock_key, "dead-worker-token", px=1500)
    locked_at = time.monotonic()

    work(app)

    assert harness.http.sent_bodies == ["recovered"]
    # The job waited for the dead lock to expire (it cannot start sooner, however loaded the
    # machine is), rather than running beside it.
    assert model_started(app) - locked_at > 1.0


def test_a_retry_after_the_redis_state_is_lost_is_not_sent_twice(harness: AppHarness) -> None:
    model = fake_model("delivered once")
    app = async_app(harness, model)
    client = app.test_client()
    fields = form("hello")
    post_signed(client, fields)
    work(app)
    # Redis lost the turn states (restart without persistence, or they expired).
    for key in harness.redis.scan_iter(match=f"{harness.settings.redis_prefix}turn:*"):
        harness.redis.delete(key)

    assert replies(post_signed(client, fields)) == []
    work(app)

    assert len(model.calls) == 1  # replayed from Postgres
    assert harness.http.sent_bodies == ["delivered once"]  # Postgres knew it was delivered
    answer = next(r for r in harness.rows() if r["message_uid"] == fields["MessageSid"] + ":1")
    assert answer["provider_sid"].startswith("SM")
