"""Scale-out on real engines (issue 6): two `hybrid-memory serve --production` instances (gunicorn,
2 workers each) and two `hybrid-memory worker` processes on one Redis and one Postgres, in the
async reply mode, with the offline model and a loopback stand-in for the Twilio REST API
(``TWILIO_API_BASE_URL``).

Concurrent conversations post signed webhooks to either instance; a fifth of the MessageSids are
delivered again to the *other* instance (some at the same moment as the original, some after its
ack), as Twilio retries do. Then, from the tables and the recorded REST calls:

* every MessageSid has exactly one inbound row, and every webhook got a 2xx (no 5xx);
* per conversation the turns ran one at a time in arrival order: the answers are stored in the
  order of their inputs, each after its input, and each answer saw exactly the earlier turns
  with their answers (the offline model says how many messages it was shown);
* every reply went out exactly once, to the right number, from our number.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from app.commands import migrate_database
from lc_hybrid_memory import sync_url
from tests.support.app_harness import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    OUR_NUMBER,
    PUBLIC_BASE_URL,
    WEBHOOK,
    form,
    new_sid,
    signature,
)
from tests.support.processes import (
    AppProcess,
    ProcessGroup,
    TwilioCapture,
    app_env,
    cleanup_redis,
    free_port,
    percentile,
    wait_healthy,
    wait_until,
)


@dataclass
class Cluster:
    urls: list[str]  # the two instances
    capture: TwilioCapture
    engine: sa.Engine
    group: ProcessGroup
    instances: list[AppProcess]
    ports: list[int]


@pytest.fixture(scope="module")
def cluster(servers: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """2 gunicorn instances × 2 workers + 2 RQ workers on a database of their own."""
    unique = uuid.uuid4().hex[:10]
    admin = sa.create_engine(sync_url(servers.database_url), isolation_level="AUTOCOMMIT")
    name = f"test_scale_{unique}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    database_url = (
        sa.engine.make_url(servers.database_url)
        .set(database=name)
        .render_as_string(hide_password=False)
    )
    migrate_database(database_url)
    engine = sa.create_engine(sync_url(database_url))
    prefix, queue = f"scale:{unique}:", f"scale-turns-{unique}"
    tmp = tmp_path_factory.mktemp("scale")
    with TwilioCapture() as capture:
        env = app_env(
            database_url=database_url,
            redis_url=servers.redis_url,
            prefix=prefix,
            queue=queue,
            twilio_api=capture.url,
            data_dir=tmp,
            auth_token=AUTH_TOKEN,
            account_sid=ACCOUNT_SID,
            public_base_url=PUBLIC_BASE_URL,
            OFFLINE_MODEL_DELAY_SECONDS="0.05",  # a little think time: turns overlap
            TURN_LOCK_SECONDS="10",
        )
        group = ProcessGroup(env, tmp)
        try:
            ports = [free_port(), free_port()]
            instances = [group.serve(f"app{i}", port) for i, port in enumerate(ports)]
            group.worker("worker0")
            group.worker("worker1")
            urls = [f"http://127.0.0.1:{port}" for port in ports]
            for url, proc in zip(urls, instances, strict=True):
                wait_healthy(url, proc)
            yield Cluster(urls, capture, engine, group, instances, ports)
        finally:
            group.stop()
            engine.dispose()
            cleanup_redis(servers.redis_url, prefix, queue)
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


@dataclass
class Load:
    """What the senders did, for the checks."""

    sent: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # sender → [(sid, text)]
    statuses: Counter[int] = field(default_factory=Counter)
    ack_seconds: list[float] = field(default_factory=list)
    duplicates: int = 0
    fallbacks: int = 0  # deliveries retried on the other instance after a connection error
    acked: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, status: int, seconds: float) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status == 200:
                self.acked += 1
                self.ack_seconds.append(seconds)


CONNECTION_FAILED = 0  # the instance is gone: no HTTP status at all


def post(session: requests.Session, url: str, fields: dict[str, str], load: Load) -> int:
    started = time.monotonic()
    try:
        response = session.post(
            url + WEBHOOK,
            data=fields,
            headers={"X-Twilio-Signature": signature(fields)},
            timeout=30,
        )
    except requests.RequestException:
        load.record(CONNECTION_FAILED, time.monotonic() - started)
        return CONNECTION_FAILED
    load.record(response.status_code, time.monotonic() - started)
    return response.status_code


def run_load(
    cluster: Cluster,
    conversations: int,
    messages: int,
    *,
    seed: int,
    tag: str,
    kill_first_instance_after: int | None = None,
) -> tuple[Load, float]:
    """Each conversation posts its messages in order (each after the previous ack), to a random
    instance; ~20 % are delivered again to the other one, concurrently or after the ack.

    ``kill_first_instance_after``: SIGKILL the first instance (gunicorn master and workers)
    after that many acks; a delivery that finds it gone goes to the other one, as Twilio's
    fallback URL would."""
    load = Load()
    rng = random.Random(seed)
    plans = []
    for c in range(conversations):
        sender = f"+1555{seed % 1000:03d}{c:04d}"
        texts = [(new_sid(), f"{tag} c{c} m{m}") for m in range(messages)]
        load.sent[sender] = texts
        plan = [(sid, text, rng.randrange(2), rng.random()) for sid, text in texts]
        plans.append((sender, plan))

    def converse(sender: str, plan: list[tuple[str, str, int, float]]) -> None:
        with requests.Session() as session, requests.Session() as other_session:
            for sid, text, instance, dice in plan:
                fields = form(text, sid=sid, sender=sender)
                other = cluster.urls[1 - instance]
                racing = None
                if dice < 0.1:  # the duplicate races the original
                    racing = threading.Thread(
                        target=post, args=(other_session, other, fields, load)
                    )
                    racing.start()
                status = post(session, cluster.urls[instance], fields, load)
                for _ in range(3):  # the instance died under us: the fallback URL
                    if status != CONNECTION_FAILED:
                        break
                    with load.lock:
                        load.fallbacks += 1
                    status = post(other_session, other, fields, load)
                if racing is not None:
                    racing.join(60)
                elif dice < 0.2:  # the duplicate comes after the ack
                    post(other_session, other, fields, load)
                if dice < 0.2:
                    with load.lock:
                        load.duplicates += 1

    def killer() -> None:
        assert kill_first_instance_after is not None
        wait_until(lambda: load.acked >= kill_first_instance_after, 120, interval=0.01)
        cluster.instances[0].kill()

    started = time.monotonic()
    threads = [threading.Thread(target=converse, args=plan) for plan in plans]
    if kill_first_instance_after is not None:
        threads.append(threading.Thread(target=killer))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "senders did not finish"
    return load, started


def expected_answer(text: str, index: int) -> str:
    # The offline model repeats the input and counts what it was shown before it: exactly the
    # earlier turns with their answers when the turns ran one at a time, in order.
    return f"[offline model] You said: “{text}”. I remember {2 * index} earlier messages."


def check_and_report(cluster: Cluster, load: Load, started: float, *, timeout: float) -> None:
    total = sum(len(texts) for texts in load.sent.values())
    engine = cluster.engine
    senders = set(load.sent)

    def answers_stored() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM messages m JOIN conversations c"
                        " ON c.id = m.conversation_id"
                        " WHERE m.role = 'assistant' AND c.contact = ANY(:senders)"
                    ),
                    {"senders": list(senders)},
                ).scalar()
                or 0
            )

    def replies() -> list[dict[str, Any]]:
        with cluster.capture.lock:
            return [c for c in cluster.capture.calls if c["form"].get("To") in senders]

    done = wait_until(
        lambda: answers_stored() >= total and len(replies()) >= total, timeout, interval=0.25
    )
    all_replied = time.monotonic() - started
    time.sleep(1.5)  # anything sent twice would arrive now
    assert done, (answers_stored(), len(replies()), total, cluster.group.logs())

    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT m.id, m.role, m.content, m.message_uid, c.contact"
                " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
                " WHERE c.contact = ANY(:senders) ORDER BY m.id"
            ),
            {"senders": list(senders)},
        ).all()
        conversations = conn.execute(
            sa.text("SELECT count(*) FROM conversations WHERE contact = ANY(:senders)"),
            {"senders": list(senders)},
        ).scalar()

    assert conversations == len(senders)
    uid_counts = Counter(row.message_uid for row in rows)
    assert max(uid_counts.values()) == 1, [u for u, n in uid_counts.items() if n > 1]
    for sender, texts in load.sent.items():
        mine = [row for row in rows if row.contact == sender]
        inbound = [row for row in mine if row.role == "user"]
        answers = [row for row in mine if row.role == "assistant"]
        # Exactly one inbound row per MessageSid, stored in arrival order.
        assert [row.message_uid for row in inbound] == [sid for sid, _ in texts]
        # The answers in the order of their inputs, each after its input, each having seen
        # exactly the earlier turns: one turn at a time, in arrival order.
        assert [row.message_uid for row in answers] == [f"{sid}:1" for sid, _ in texts]
        position = {row.message_uid: row.id for row in mine}
        assert all(position[f"{sid}:1"] > position[sid] for sid, _ in texts)
        assert [row.content for row in answers] == [
            expected_answer(text, i) for i, (_, text) in enumerate(texts)
        ]
    sent = replies()
    per_reply = Counter((call["form"]["To"], call["form"]["Body"]) for call in sent)
    expected = Counter(
        (sender, expected_answer(text, i))
        for sender, texts in load.sent.items()
        for i, (_, text) in enumerate(texts)
    )
    assert per_reply == expected  # every reply exactly once, to its sender
    assert {call["form"].get("From") for call in sent} == {OUR_NUMBER}
    assert all(call["path"].endswith(f"/Accounts/{ACCOUNT_SID}/Messages.json") for call in sent)
    # Replies of one conversation went out in order.
    for sender, texts in load.sent.items():
        bodies = [call["form"]["Body"] for call in sent if call["form"]["To"] == sender]
        assert bodies == [expected_answer(text, i) for i, (_, text) in enumerate(texts)]
    assert set(load.statuses) - {CONNECTION_FAILED} == {200}, load.statuses  # no 5xx, no 4xx

    print(
        f"\nscale-out: 2 instances × 2 gunicorn workers + 2 RQ workers; "
        f"{len(senders)} conversations, turns={total}, webhooks={sum(load.statuses.values())} "
        f"(duplicates sent={load.duplicates}, failed over={load.fallbacks}), "
        f"inbound rows={len(uid_counts) - total}, "
        f"answer rows={total}, replies sent={len(sent)}, lost=0, duplicated=0, 5xx=0; "
        f"ack latency p50={percentile(load.ack_seconds, 0.5) * 1000:.0f} ms "
        f"p99={percentile(load.ack_seconds, 0.99) * 1000:.0f} ms "
        f"max={max(load.ack_seconds) * 1000:.0f} ms; all replied after {all_replied:.1f} s"
    )


_seeds = itertools.count(1)


def test_two_instances_and_two_workers_keep_exactly_once_and_order(cluster: Cluster) -> None:
    load, started = run_load(cluster, conversations=8, messages=4, seed=next(_seeds), tag="short")
    check_and_report(cluster, load, started, timeout=90)


@pytest.mark.slow
def test_two_instances_and_two_workers_under_longer_load(cluster: Cluster) -> None:
    load, started = run_load(cluster, conversations=20, messages=5, seed=next(_seeds), tag="long")
    check_and_report(cluster, load, started, timeout=300)


@pytest.mark.slow
def test_an_instance_sigkilled_under_load_loses_and_duplicates_nothing(cluster: Cluster) -> None:
    """Gunicorn's master and workers SIGKILLed mid-load, requests in flight: a message stored
    without its ack is delivered again to the other instance (Twilio's fallback URL)."""
    load, started = run_load(
        cluster,
        conversations=20,
        messages=5,
        seed=next(_seeds),
        tag="kill",
        kill_first_instance_after=40,
    )
    try:
        check_and_report(cluster, load, started, timeout=300)
    finally:
        # Back to two instances for whatever runs next on this cluster.
        restarted = cluster.group.serve("app0-restarted", cluster.ports[0])
        cluster.instances[0] = restarted
        wait_healthy(cluster.urls[0], restarted)
