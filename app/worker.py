"""The async reply mode's background side: RQ jobs that run turns and send replies by REST.

The webhook acks at once and enqueues ``process_conversation(conversation_id)`` on the RQ queue
(same Redis). A job drains the conversation's pending turns in order under its lock (see
:mod:`app.turns`) and sends each reply with the Twilio REST client. Jobs are idempotent: a job
that finds the queue already drained does nothing, so a duplicate or retried job is harmless.

Workers are ``SimpleWorker`` s (no fork per job): the memory's connection pools and the agent
are built once per process and reused by every job. Run several worker processes for
parallelism; conversations never block each other, a conversation's turns stay in order.

A worker that dies mid-job (SIGKILL, OOM, a lost node) leaves its turn at the head of the
conversation's queue and its lock to expire; RQ itself would only notice the abandoned job
after the job timeout. So every worker also runs :func:`recover_stalled_turns` every
``TURN_LOCK_SECONDS`` (one worker at a time): a conversation with pending turns, no lock and a
head turn queued more than ``TURN_LOCK_SECONDS`` ago gets a new job. Its turn then runs (or is
replayed from Postgres) and its reply goes out, once, within about three lock periods.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import redis
import sqlalchemy as sa
from rq import Queue, Retry, SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from twilio.base.exceptions import TwilioRestException

from .conversations import Conversation
from .indexing import start_indexer
from .settings import Settings
from .turns import TurnRecord, TurnStatus, split_reply
from .wiring import Services, build_services

logger = logging.getLogger(__name__)

# Jobs retried by RQ when the Twilio API or a store is briefly unavailable.
JOB_RETRY = Retry(max=3, interval=[2, 10, 30])

_process_services: dict[int, Services] = {}


def install_services(services: Services) -> None:
    """Use ``services`` for the jobs this process runs (the worker command and tests call it)."""
    _process_services[os.getpid()] = services


def current_services() -> Services:
    """This process's services; built from the environment on first use (after a fork too)."""
    services = _process_services.get(os.getpid())
    if services is None:
        services = build_services(Settings.from_env())
        install_services(services)
    return services


class ReplySender:
    """Sends a turn's reply through the Twilio REST API, each part at most once."""

    def __init__(self, services: Services, conversation: Conversation) -> None:
        if services.twilio_client is None:
            raise RuntimeError(
                "REPLY_MODE=async needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN for the REST API"
            )
        self.services = services
        self.conversation = conversation

    def __call__(self, message_sid: str, record: TurnRecord) -> None:
        conversation = self.conversation
        metrics = self.services.metrics
        log = {"conversation_id": conversation.id, "message_sid": message_sid}
        answer_uid = self._delivered_answer(message_sid)
        if answer_uid is True:
            # Postgres says this reply went out (its turn state in Redis was lost or expired).
            logger.info("reply already delivered; not sending it again", extra=log)
            return
        parts = split_reply(record.reply)
        # Sender: the Messaging Service when the inbound came through one, else our number.
        origin: dict[str, str] = (
            {"messaging_service_sid": conversation.messaging_service_sid}
            if conversation.messaging_service_sid
            else {"from_": conversation.service_address}
        )
        for index in range(record.sent, len(parts)):
            try:
                message = self.services.twilio_client.messages.create(
                    to=conversation.contact_address, body=parts[index], **origin
                )
            except TwilioRestException as exc:
                if 400 <= exc.status < 500 and exc.status != 429:
                    # Permanent (unreachable number, opted out...): give up on this reply, so
                    # it does not block the conversation's later turns.
                    metrics.replies_sent.labels(outcome="rejected").inc()
                    logger.error(
                        "Twilio rejected the reply (HTTP %s, code %s); not retrying",
                        exc.status,
                        exc.code,
                        extra=log,
                    )
                    return
                metrics.replies_sent.labels(outcome="error").inc()
                raise  # transient: the job fails, RQ retries it, the turn stays queued
            # Recorded after each part: a retried job resends nothing that went out.
            self.services.turns.mark_sent(conversation.id, message_sid, index + 1)
            if index == len(parts) - 1 and isinstance(answer_uid, str):
                self._record_delivery(answer_uid, getattr(message, "sid", None) or "sent")
            outcome = "apology" if record.status is TurnStatus.FAILED else "sent"
            metrics.replies_sent.labels(outcome=outcome).inc()
            logger.info(
                "reply part %d/%d sent as %s",
                index + 1,
                len(parts),
                getattr(message, "sid", "?"),
                extra=log,
            )

    # -- the durable delivery mark: provider_sid of the stored answer -------------------------

    def _delivered_answer(self, message_sid: str) -> bool | str | None:
        """``True`` if the turn's stored answer carries a Twilio sid (it was sent), else the
        answer's message uid to mark after sending (``None``: nothing stored to mark)."""
        table = self.services.memory.store.table
        if "provider_sid" not in table.c or "message_uid" not in table.c:
            return None
        c = table.c
        # The turn's messages have ids "<MessageSid>:<n>"; the answer is the last one stored.
        stmt = (
            sa.select(c.message_uid, c.provider_sid)
            .where(c.conversation_id == self.conversation.id)
            .where(c.message_uid.startswith(f"{message_sid}:", autoescape=True))
            .order_by(c.id.desc())
            .limit(1)
        )
        with self.services.memory.store.engine.connect() as conn:
            row = conn.execute(stmt).one_or_none()
        if row is None:
            return None  # a failed turn (apology): nothing stored to mark
        return True if row.provider_sid else row.message_uid

    def _record_delivery(self, answer_uid: str, twilio_sid: str) -> None:
        c = self.services.memory.store.table.c
        stmt = (
            sa.update(self.services.memory.store.table)
            .where(c.conversation_id == self.conversation.id)
            .where(c.message_uid == answer_uid)
            .values(provider_sid=twilio_sid)
        )
        with self.services.memory.store.engine.begin() as conn:
            conn.execute(stmt)


def process_conversation(conversation_id: str) -> int:
    """RQ job: run the conversation's pending turns and send their replies. Returns how many
    turns were pending when it started."""
    services = current_services()
    conversation = services.conversations.get(conversation_id)
    if conversation is None:
        logger.error("job for an unknown conversation", extra={"conversation_id": conversation_id})
        return 0
    waiting = len(services.turns.pending(conversation_id))
    if waiting:
        acquired = services.turns.drain(
            conversation_id,
            # A crashed holder's lock expires within lock_ttl: then this job takes over. A live
            # holder still busy after that looks at the queue again when it releases the lock,
            # so it runs what this job was sent for.
            wait_seconds=services.settings.lock_ttl_seconds + 1,
            deliver=ReplySender(services, conversation),
        )
        if not acquired:
            logger.info(
                "conversation busy in another worker; it drains this turn too",
                extra={"conversation_id": conversation_id},
            )
    return waiting


def enqueue_kwargs(settings: Settings) -> dict[str, Any]:
    """Options of every turn job."""
    return {
        # A job may run several queued turns of its conversation; each is bounded by the
        # model's own timeouts, this only stops a job that hangs.
        "job_timeout": 600,
        "retry": JOB_RETRY,
        "result_ttl": 3600,
        "failure_ttl": 7 * 24 * 3600,
    }


def recover_stalled_turns(services: Services, *, older_than: float | None = None) -> list[str]:
    """Enqueue a job for each conversation whose pending turns nobody is running.

    Stalled = turns waiting, the conversation's lock free (a dead holder's has expired) and the
    head turn queued more than ``older_than`` seconds ago (default ``TURN_LOCK_SECONDS``; a
    younger one still has its own job coming). Jobs are idempotent, so a job enqueued for a
    conversation that a live worker drains meanwhile does nothing. Returns the conversation ids.
    """
    turns = services.turns
    older_than = services.settings.lock_ttl_seconds if older_than is None else older_than
    recovered = []
    for conversation_id in turns.conversations_with_pending_turns():
        if turns.is_locked(conversation_id):
            continue
        pending = turns.pending(conversation_id)
        if not pending:
            continue
        head = turns.record(conversation_id, pending[0])
        if head is not None and head.queued_at and time.time() - head.queued_at < older_than:
            continue
        job_id = f"recover-{conversation_id}"
        try:
            job = Job.fetch(job_id, connection=services.redis)
            if job.get_status() in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
                continue  # the previous recovery job has not run yet
        except NoSuchJobError:
            pass
        services.queue.enqueue(
            process_conversation,
            conversation_id,
            job_id=job_id,
            description=f"recover the stalled turns of conversation {conversation_id}",
            **enqueue_kwargs(services.settings),
        )
        logger.warning(
            "re-enqueued stalled turns (their worker died?)",
            extra={"conversation_id": conversation_id, "message_sid": pending[0]},
        )
        recovered.append(conversation_id)
    return recovered


class _Recoverer:
    """Runs :func:`recover_stalled_turns` every ``interval`` seconds in a daemon thread; a
    short Redis lease lets one worker of the fleet do it per period."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.interval = max(1.0, float(services.settings.lock_ttl_seconds))
        self.key = f"{services.settings.redis_prefix}recovery-sweep"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="turn-recovery", daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                # Expires a little before the next period: one sweep per period, fleet-wide.
                lease_ms = int(self.interval * 900)
                if self.services.redis.set(self.key, os.getpid(), nx=True, px=lease_ms):
                    recover_stalled_turns(self.services)
            except Exception:  # Redis down, a bad key...: try again next period
                logger.warning("stalled-turn recovery failed; retrying later", exc_info=True)

    def __enter__(self) -> _Recoverer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(5)


def run_worker(services: Services, *, burst: bool = False, with_scheduler: bool = True) -> bool:
    """Run an RQ worker on the turn queue until stopped (or, with ``burst``, until it is empty).

    ``with_scheduler`` lets this worker also enqueue RQ's delayed retries when they are due.
    Unless ``burst``, the worker also recovers turns left by dead workers (see the module doc).
    """
    install_services(services)
    # RQ's blocking dequeue raises its connection's socket timeout to minutes: give it a
    # connection of its own, so the turns' client keeps its short timeouts.
    connection = redis.Redis.from_url(services.urls.redis_url, socket_connect_timeout=5)
    queue = Queue(services.queue.name, connection=connection)
    worker = SimpleWorker([queue], connection=connection)
    logger.info("worker listening on queue %s", services.queue.name)
    indexer = None if burst else start_indexer(services.memory)
    try:
        if burst:
            return worker.work(burst=True, with_scheduler=with_scheduler, logging_level="WARNING")
        with _Recoverer(services):
            return worker.work(burst=False, with_scheduler=with_scheduler, logging_level="WARNING")
    finally:
        if indexer is not None:
            indexer.stop()
        connection.close()
