"""POST /twilio/messages in inline mode, on real Redis and Postgres: signatures, bad input,
memory across turns, exactly-once retries, failures and per-conversation ordering.

Every test runs twice: on a single Redis and on a real 3-master Redis Cluster (memory cache,
turn states, conversation locks and rate limits all on the cluster).
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from app.twilio_webhook import MEDIA_ONLY_REPLY
from tests.support.app_harness import (
    ON_BOTH_REDIS_TOPOLOGIES,
    WEBHOOK,
    AppHarness,
    fake_model,
    form,
    new_sid,
    post_signed,
    replies,
    signature,
)

pytestmark = ON_BOTH_REDIS_TOPOLOGIES


def test_signed_messages_get_replies_that_remember_earlier_turns(harness: AppHarness) -> None:
    client = harness.app().test_client()  # the offline model: it answers from the history

    first = replies(post_signed(client, form("Hi, my name is Ada")))
    second = replies(post_signed(client, form("What is my name?")))

    assert first == ["[offline model] Nice to meet you, Ada! I will remember that."]
    assert second == ["[offline model] Your name is Ada."]
    [conversation] = harness.rows("conversations")
    assert (conversation["channel"], conversation["contact"], conversation["service_number"]) == (
        "sms",
        "+15550001111",
        "+15550002222",
    )
    rows = harness.rows()
    assert {row["conversation_id"] for row in rows} == {conversation["id"]}
    assert [row["role"] for row in rows] == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no signature at all
        {"X-Twilio-Signature": "not-a-signature"},
        {"X-Twilio-Signature": signature(form("hi", sid="SM" + "0" * 32), token="wrong-token")},
        {
            "X-Twilio-Signature": signature(
                form("hi", sid="SM" + "0" * 32), url="https://other.example.com" + WEBHOOK
            )
        },
        {"X-Twilio-Signature": signature(form("other text", sid="SM" + "0" * 32))},  # tampered body
    ],
    ids=["missing", "garbage", "wrong-token", "wrong-url", "tampered"],
)
def test_unsigned_or_forged_requests_are_refused_and_write_nothing(
    harness: AppHarness, headers: dict
) -> None:
    model = fake_model()
    client = harness.app(model).test_client()

    response = client.post(WEBHOOK, data=form("hi", sid="SM" + "0" * 32), headers=headers)

    assert response.status_code == 403
    assert harness.rows() == [] and harness.rows("conversations") == []
    assert model.calls == []


def _without(field: str) -> dict:
    fields = form("hello")
    del fields[field]
    return fields


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        (_without("From"), 400),
        (_without("To"), 400),
        (_without("MessageSid"), 400),
        (form("hello", sid="SM-not-a-sid"), 400),
        (form("x" * 1601), 413),
        (form("hello", NumMedia="many"), 400),
        (form("hello", AccountSid="AC" + "9" * 32), 403),
    ],
    ids=[
        "no-from",
        "no-to",
        "no-sid",
        "bad-sid",
        "body-too-long",
        "bad-num-media",
        "other-account",
    ],
)
def test_bad_input_gets_a_4xx_and_writes_nothing(
    harness: AppHarness, fields: dict, status: int
) -> None:
    model = fake_model()
    client = harness.app(model).test_client()

    response = post_signed(client, fields)

    assert response.status_code == status
    assert response.mimetype == "text/plain" and len(response.get_data()) < 100
    assert harness.rows() == [] and harness.rows("conversations") == []
    assert model.calls == []


def test_wrong_content_type_and_oversized_requests_are_refused(harness: AppHarness) -> None:
    client = harness.app(fake_model(), max_request_bytes=4096).test_client()
    signed_empty = {"X-Twilio-Signature": signature({})}

    as_json = client.post(WEBHOOK, json=form("hello"), headers=signed_empty)
    huge = client.post(
        WEBHOOK, data=form("hello", Padding="x" * 5000), headers={"X-Twilio-Signature": "x"}
    )

    assert as_json.status_code == 415
    assert huge.status_code == 413
    assert harness.rows() == [] and harness.rows("conversations") == []


def test_media_only_message_gets_a_sensible_reply_and_writes_nothing(harness: AppHarness) -> None:
    model = fake_model()
    client = harness.app(model).test_client()
    fields = form(
        "",
        NumMedia="1",
        MediaUrl0="https://api.twilio.com/media/ME1",
        MediaContentType0="image/jpeg",
    )

    assert replies(post_signed(client, fields)) == [MEDIA_ONLY_REPLY]
    assert harness.rows() == [] and model.calls == []


def test_a_retried_message_sid_stores_one_row_runs_the_agent_once_and_replies_the_same(
    harness: AppHarness,
) -> None:
    model = fake_model("The answer is 42.")
    client = harness.app(model).test_client()
    fields = form("What is the answer?")

    first = replies(post_signed(client, fields))
    retry = replies(post_signed(client, fields))
    third = replies(post_signed(client, fields))

    assert first == retry == third == ["The answer is 42."]
    assert len(model.calls) == 1
    assert harness.message_uids() == [fields["MessageSid"], fields["MessageSid"] + ":1"]


def test_a_retry_after_the_redis_turn_state_is_lost_is_replayed_from_postgres(
    harness: AppHarness,
) -> None:
    model = fake_model("Stored answer.")
    app = harness.app(model)
    client = app.test_client()
    fields = form("question")
    assert replies(post_signed(client, fields)) == ["Stored answer."]
    for key in harness.redis.scan_iter(match=f"{harness.settings.redis_prefix}turn:*"):
        harness.redis.delete(key)

    assert replies(post_signed(client, fields)) == ["Stored answer."]
    assert len(model.calls) == 1  # the agent replayed the stored turn: no model call
    assert len(harness.rows()) == 2


def test_agent_failure_keeps_the_inbound_message_and_sends_the_apology(
    harness: AppHarness,
) -> None:
    model = fake_model(fail=True)
    app = harness.app(model)
    client = app.test_client()
    fields = form("hello?")

    first = replies(post_signed(client, fields))
    retry = replies(post_signed(client, fields))

    apology = harness.settings.apology_text
    assert first == retry == [apology]
    assert len(model.calls) == 1  # the retry got the apology already given, no second run
    assert harness.message_uids() == [fields["MessageSid"]]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'agent_errors_total{error="RuntimeError"} 1.0' in metrics


def test_long_replies_are_split_into_messages_of_at_most_1600_characters(
    harness: AppHarness,
) -> None:
    long_reply = " ".join(["word"] * 800)  # 3999 characters
    client = harness.app(fake_model(long_reply)).test_client()

    parts = replies(post_signed(client, form("tell me a lot")))

    assert len(parts) == 3 and all(len(part) <= 1600 for part in parts)
    assert " ".join(parts) == long_reply


def test_whatsapp_messages_resolve_their_own_conversation(harness: AppHarness) -> None:
    model = fake_model("hola")
    client = harness.app(model).test_client()
    fields = form(
        "hi",
        sender="whatsapp:+15550003333",
        To="whatsapp:+15550002222",
        ProfileName="Ada",
        WaId="15550003333",
        SomeFieldTwilioAddsTomorrow="yes",  # unknown fields are signed too, and accepted
    )

    assert replies(post_signed(client, fields)) == ["hola"]
    [conversation] = harness.rows("conversations")
    assert (conversation["channel"], conversation["contact"], conversation["profile_name"]) == (
        "whatsapp",
        "+15550003333",
        "Ada",
    )


def test_messages_of_one_conversation_run_one_turn_at_a_time_in_order(
    harness: AppHarness,
) -> None:
    model = fake_model("r0", "r1", "r2", "r3", delay=0.2)
    app = harness.app(model)
    client = app.test_client()
    turns = app.extensions["hybrid_memory"].turns
    sids = [new_sid() for _ in range(4)]
    results: dict[int, list[str]] = {}

    def send(index: int) -> None:
        results[index] = replies(post_signed(client, form(f"m{index}", sid=sids[index])))

    def queued(index: int) -> bool:
        conversations = harness.rows("conversations")
        return bool(conversations) and turns.record(conversations[0]["id"], sids[index]) is not None

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for index, thread in enumerate(threads):
        thread.start()
        # Arrival order m0, m1, m2, m3: the next message arrives once this one is queued.
        deadline = time.monotonic() + 10
        while not queued(index) and time.monotonic() < deadline:
            time.sleep(0.005)
    for thread in threads:
        thread.join(30)

    assert len(model.calls) == 4
    spans = sorted((call["started"], call["ended"]) for call in model.calls)
    assert all(prev_end <= start for (_, prev_end), (start, _) in itertools.pairwise(spans))
    # Turns ran in arrival order, and each saw the earlier turns with their answers.
    for n in range(4):
        assert model.texts_seen(n) == [t for i in range(n) for t in (f"m{i}", f"r{i}")] + [f"m{n}"]
    assert sorted(reply for parts in results.values() for reply in parts) == [
        "r0",
        "r1",
        "r2",
        "r3",
    ]


def test_different_conversations_run_in_parallel(harness: AppHarness) -> None:
    model = fake_model("ok", delay=0.5)
    client = harness.app(model).test_client()
    senders = ["+15550000001", "+15550000002", "+15550000003"]
    threads = [
        threading.Thread(target=lambda s=s: replies(post_signed(client, form("hi", sender=s))))
        for s in senders
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(model.calls) == 3
    # Not serialised: the three 0.5 s turns overlap in time.
    spans = sorted((call["started"], call["ended"]) for call in model.calls)
    assert spans[1][0] < spans[0][1] and spans[2][0] < spans[1][1]
    assert len(harness.rows("conversations")) == 3


def test_per_sender_rate_limit_counts_only_signed_requests(harness: AppHarness) -> None:
    client = harness.app(fake_model(), rate_limit="2 per minute").test_client()
    forged = form("spam")
    for _ in range(3):  # forged requests never spend the sender's budget
        assert (
            client.post(WEBHOOK, data=forged, headers={"X-Twilio-Signature": "x"}).status_code
            == 403
        )

    statuses = [post_signed(client, form(f"m{i}")).status_code for i in range(3)]
    other_sender = post_signed(client, form("hi", sender="+15550009999")).status_code

    assert statuses == [200, 200, 429]
    assert other_sender == 200
    assert len([r for r in harness.rows() if r["role"] == "user"]) == 3


def test_behind_a_trusted_proxy_the_forwarded_public_url_is_verified(harness: AppHarness) -> None:
    fields = form("hi")
    public = "https://public.example.org" + WEBHOOK
    headers = {
        "X-Twilio-Signature": signature(fields, url=public),
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "public.example.org",
    }
    public_host = {"public_base_url": None, "public_hosts": ("public.example.org",)}
    trusting = harness.app(fake_model(), trusted_proxy_hops=1, **public_host)
    not_trusting = harness.app(fake_model(), trusted_proxy_hops=0, **public_host)

    assert not_trusting.test_client().post(WEBHOOK, data=fields, headers=headers).status_code == 403
    assert trusting.test_client().post(WEBHOOK, data=fields, headers=headers).status_code == 200


def test_a_retry_while_the_reply_is_still_being_produced_is_acked(harness: AppHarness) -> None:
    model = fake_model("slow answer", delay=1.0)
    app = harness.app(model, inline_wait_seconds=0.2)
    client = app.test_client()
    turns = app.extensions["hybrid_memory"].turns
    fields = form("take your time")
    first: list[list[str]] = []
    thread = threading.Thread(target=lambda: first.append(replies(post_signed(client, fields))))
    thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the first request is inside its turn
        conversations = harness.rows("conversations")
        if conversations and turns.is_locked(conversations[0]["id"]):
            break
        time.sleep(0.005)

    retry = replies(post_signed(client, fields))
    answered_before_the_retry_returned = bool(first)
    thread.join(10)

    assert retry == []  # an empty <Response/>: acknowledged, not answered twice
    assert not answered_before_the_retry_returned  # it waited its budget, not for the model
    assert first == [["slow answer"]]
    assert len(model.calls) == 1
    assert harness.message_uids() == [fields["MessageSid"], fields["MessageSid"] + ":1"]


def test_a_trusted_proxys_path_prefix_is_part_of_the_signed_url(harness: AppHarness) -> None:
    fields = form("hi")
    public = "https://public.example.org/bot" + WEBHOOK
    headers = {
        "X-Twilio-Signature": signature(fields, url=public),
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "public.example.org",
        "X-Forwarded-Prefix": "/bot",
    }
    app = harness.app(
        fake_model(),
        public_base_url=None,
        public_hosts=("public.example.org",),
        trusted_proxy_hops=1,
    )

    assert app.test_client().post(WEBHOOK, data=fields, headers=headers).status_code == 200
