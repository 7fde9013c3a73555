"""The async reply mode's background side: RQ jobs that run turns and send replies by REST.

The webhook acks at once and enqueues ``process_conversation(conversation_id)`` on the RQ queue
(in the queue Redis, see :mod:`app.redis_roles`). A job drains the conversation's pending turns
in order under its lock (see :mod:`app.turns`) and sends each reply with the Twilio REST client.
Jobs are idempotent: a job that finds the queue already drained does nothing, so a duplicate or
retried job is harmless.

Workers are ``SimpleWorker`` s (no fork per job): the memory's connection pools and the agent
are built once per process and reused by every job. Run several worker processes for
parallelism; conversations never block each other, a conversation's turns stay in order.

A worker that dies mid-job (SIGKILL, OOM, a lost node) leaves its turn at the head of the
conversation's queue and its lock to expire; RQ itself would only notice the abandoned job
after the job timeout. So every worker also runs :func:`recover_stalled_turns` every
``TURN_LOCK_SECONDS`` (one worker at a time): a conversation with pending turns, no lock and a
head turn queued more than ``TURN_LOCK_SECONDS`` ago gets a new job. Its turn then runs (or is
replayed from Postgres) and its reply goes out, once, within about three lock periods.

Whether a reply went out is also recorded in Postgres, on the stored answer
(:meth:`~lc_hybrid_memory.HybridMemory.mark_delivered`), so a retry after the Redis state is
lost never sends it twice. A failed job is logged and recorded like any app log: the traceback
and the exception types only (see :mod:`app.observability`), never a message's text.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

import redis
from rq import Queue, Retry, SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from twilio.base.exceptions import TwilioRestException

from . import wiring
from .conversations import Conversation
from .indexing import start_indexer
from .observability import format_exception_safely
from .replies import split_reply
from .settings import Settings
from .turns import TurnRecord, TurnStatus
from .wiring import Services, install_services

logger = logging.getLogger(__name__)


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
        memory = self.services.memory
        metrics = self.services.metrics
        log = {"conversation_id": conversation.id, "message_sid": message_sid}
        # The turn's stored answer (None: a failed turn, the apology has nothing to mark).
        answer = memory.turn_reply(conversation.id, message_sid)
        if answer is not None and answer.delivered:
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
            if index == len(parts) - 1 and answer is not None:
                sid = getattr(message, "sid", None) or "sent"
                memory.mark_delivered(conversation.id, answer.message_id, sid)
            outcome = "apology" if record.status is TurnStatus.FAILED else "sent"
            metrics.replies_sent.labels(outcome=outcome).inc()
            logger.info(
                "reply part %d/%d sent as %s",
                index + 1,
                len(parts),
                getattr(message, "sid", "?"),
                extra=log,
            )


def process_conversation(conversation_id: str) -> int:
    """RQ job: run the conversation's pending turns and send their replies. Returns how many
    turns were pending when it started."""
    svc = wiring.services()
    conversation = svc.conversations.get(conversation_id)
    if conversation is None:
        logger.error("job for an unknown conversation", extra={"conversation_id": conversation_id})
        return 0
    waiting = len(svc.turns.pending(conversation_id))
    if waiting:
        acquired = svc.turns.drain(
            conversation_id,
            # A crashed holder's lock expires within lock_ttl: then this job takes over. A live
            # holder still busy after that looks at the queue again when it releases the lock,
            # so it runs what this job was sent for.
            wait_seconds=svc.settings.lock_ttl_seconds + 1,
            deliver=ReplySender(svc, conversation),
        )
        if not acquired:
            logger.info(
                "conversation busy in another worker; it drains this turn too",
                extra={"conversation_id": conversation_id},
            )
    return waiting


def enqueue_kwargs(settings: Settings) -> dict[str, Any]:
    """Options of every turn job."""
    intervals = list(settings.job_retry_intervals)
    return {
        # A job may run several queued turns of its conversation; each is bounded by the
        # model's own timeouts, this only stops a job that hangs.
        "job_timeout": settings.job_timeout_seconds,
        # Retried when the Twilio API or a store is briefly unavailable.
        "retry": Retry(max=len(intervals), interval=intervals) if intervals else None,
        "result_ttl": settings.job_result_ttl_seconds,
        "failure_ttl": settings.job_failure_ttl_seconds,
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


class TurnWorker(SimpleWorker):
    """RQ's in-process worker, logging and recording a failed job without its exception's
    message (RQ's own puts the whole traceback text in its log line and in the job)."""

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        logger.error(
            "job %s failed",
            job.id,
            exc_info=exc_info if exc_info and exc_info[1] is not None else None,
            extra={"job_id": job.id, "queue": job.origin},
        )

    def handle_job_failure(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        # Called while the job's exception is being handled: record the redacted form.
        error = sys.exc_info()[1]
        if "exc_string" in kwargs:
            kwargs["exc_string"] = format_exception_safely(error) if error else ""
        super().handle_job_failure(job, queue, *args, **kwargs)


def run_worker(services: Services, *, burst: bool = False, with_scheduler: bool = True) -> bool:
    """Run an RQ worker on the turn queue until stopped (or, with ``burst``, until it is empty).

    ``with_scheduler`` lets this worker also enqueue RQ's delayed retries when they are due.
    Unless ``burst``, the worker also recovers turns left by dead workers (see the module doc).
    """
    install_services(services)
    # RQ's blocking dequeue raises its connection's socket timeout to minutes: give it a
    # connection of its own, so the turns' client keeps its short timeouts.
    connection = redis.Redis.from_url(
        services.urls.queue_redis_url,
        socket_connect_timeout=services.settings.queue_redis_timeout_seconds,
    )
    queue = Queue(services.queue.name, connection=connection)
    worker = TurnWorker([queue], connection=connection)
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
