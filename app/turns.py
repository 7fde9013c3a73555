"""Exactly-once turns: one at a time per conversation, in arrival order, each run once.

Both reply modes share this. The webhook stores the inbound message in Postgres (the durable
part) and then *enqueues* its MessageSid here; whoever holds the conversation's lock *drains*
the conversation's queue, oldest first, one turn at a time. In Redis, per conversation (every
key carries the conversation id as ``{hash tag}``, so each script stays in one Cluster slot):

``<prefix>turn:{conversation}:<MessageSid>``  hash: status (pending | done | failed), the body
    while pending, the reply once produced, how many reply parts were sent. Written once by
    :meth:`TurnCoordinator.enqueue`: a retried MessageSid finds it and is never queued twice.
``<prefix>pending:{conversation}``  list of MessageSids waiting for their turn, oldest first.
``<prefix>lock:{conversation}``  a redis-py ``Lock`` with an expiry that a heartbeat renews
    while its holder lives: a crashed worker's lock frees itself within ``lock_ttl_seconds``.

A turn is removed from the pending list only after it finished (and, in async mode, after its
reply was sent), so a crash at any point leaves it at the head for the next drain. Re-running
a turn whose answer is already stored does not call the model: ``ChatAgent.run_turn`` replays
the stored answer (Postgres is the truth; this Redis state only makes the common case cheap).

One request reads its turn's hash once: :meth:`TurnCoordinator.enqueue` answers with the state
of a MessageSid it already knew (a retry), and :meth:`TurnCoordinator.run_until` returns the
state the turn ended in, so the webhook never reads it back. These keys live in the queue Redis
(see :mod:`app.redis_roles`): they must never be evicted.
"""

from __future__ import annotations

import enum
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from redis.cluster import RedisCluster
from redis.exceptions import LockError, RedisClusterException

from .observability import Metrics, Stopwatch
from .settings import Settings

logger = logging.getLogger(__name__)

# KEYS: turn hash, pending list. ARGV: MessageSid, body, ttl, time queued (epoch seconds).
# 1 = queued now; a MessageSid known before: its hash (HGETALL's field, value, ... list).
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGETALL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'status', 'pending', 'body', ARGV[2], 'sent', 0, 'queued_at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: pending list. ARGV: MessageSid. Pops it only if it is still the head.
_POP_HEAD = """
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then return redis.call('LPOP', KEYS[1]) end
return false
"""


class TurnStatus(str, enum.Enum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"  # the user gets (or got) the apology


@dataclass(frozen=True)
class TurnRecord:
    status: TurnStatus
    reply: str = ""
    body: str = ""
    sent: int = 0  # reply parts already sent through the REST API
    queued_at: float | None = None  # epoch seconds (None: queued by an older version)

    @property
    def finished(self) -> bool:
        return self.status is not TurnStatus.PENDING

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> TurnRecord:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            status=TurnStatus(fields.get("status", "pending")),
            reply=fields.get("reply", ""),
            body=fields.get("body", ""),
            sent=int(fields.get("sent", "0")),
            queued_at=float(fields["queued_at"]) if fields.get("queued_at") else None,
        )


class TurnAgent(Protocol):
    """What the coordinator needs of ``app.agent.ChatAgent``."""

    def run_turn(self, session_id: str, text: str, *, message_id: str | None = None) -> Any: ...


Deliver = Callable[[str, TurnRecord], None]


class _Heartbeat:
    """Renews a lock's expiry every third of its ttl until stopped (or the lock is lost)."""

    def __init__(self, lock: redis.lock.Lock, ttl: float, conversation_id: str) -> None:
        self.lock = lock
        self.interval = max(ttl / 3, 0.05)
        self.conversation_id = conversation_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="turn-lock-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.lock.reacquire()
            except (LockError, redis.RedisError, RedisClusterException) as exc:
                logger.warning(
                    "lost the conversation lock (%s); another worker may take over",
                    exc,
                    extra={"conversation_id": self.conversation_id},
                )
                return

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


class TurnCoordinator:
    """Queues MessageSids per conversation and runs their turns in order under a lock."""

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        agent: TurnAgent,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.client = client
        self.agent = agent
        self.metrics = metrics
        self.prefix = settings.redis_prefix
        self.lock_ttl = settings.lock_ttl_seconds
        self.state_ttl = settings.turn_state_ttl_seconds
        self.apology = settings.apology_text
        self._enqueue = client.register_script(_ENQUEUE)
        self._pop_head = client.register_script(_POP_HEAD)

    # -- keys --------------------------------------------------------------------------------

    def turn_key(self, conversation_id: str, message_sid: str) -> str:
        return f"{self.prefix}turn:{{{conversation_id}}}:{message_sid}"

    def pending_key(self, conversation_id: str) -> str:
        return f"{self.prefix}pending:{{{conversation_id}}}"

    def lock_key(self, conversation_id: str) -> str:
        return f"{self.prefix}lock:{{{conversation_id}}}"

    def conversations_with_pending_turns(self) -> Iterator[str]:
        """Ids of the conversations that have turns waiting (an empty list has no key)."""
        prefix = re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix)  # literal in the glob
        for key in self.client.scan_iter(match=f"{prefix}pending:{{*}}", count=1000):
            raw = key.decode()
            yield raw[raw.index("{") + 1 : raw.rindex("}")]

    def is_locked(self, conversation_id: str) -> bool:
        """Whether someone holds (or a dead holder's lock still blocks) the conversation."""
        return bool(self.client.exists(self.lock_key(conversation_id)))

    # -- state -------------------------------------------------------------------------------

    def enqueue(self, conversation_id: str, message_sid: str, body: str) -> TurnRecord | None:
        """Queue the turn of ``message_sid`` unless it is known (one script).

        Returns ``None`` when it was queued now, else the state it already had (a retry).
        """
        keys = [self.turn_key(conversation_id, message_sid), self.pending_key(conversation_id)]
        args = [message_sid, body, self.state_ttl, repr(time.time())]
        known = self._enqueue(keys=keys, args=args)
        if not isinstance(known, list):
            return None
        return TurnRecord.from_hash(dict(zip(known[::2], known[1::2], strict=True)))

    def record(self, conversation_id: str, message_sid: str) -> TurnRecord | None:
        """The turn's state, or ``None`` if it was never queued (or has expired)."""
        raw = self.client.hgetall(self.turn_key(conversation_id, message_sid))
        return TurnRecord.from_hash(raw) if raw else None

    def pending(self, conversation_id: str) -> list[str]:
        """MessageSids waiting for their turn, oldest first."""
        return [
            sid.decode() for sid in self.client.lrange(self.pending_key(conversation_id), 0, -1)
        ]

    def mark_sent(self, conversation_id: str, message_sid: str, parts: int) -> None:
        """Record that the first ``parts`` parts of the reply went out."""
        self.client.hset(self.turn_key(conversation_id, message_sid), "sent", parts)

    def _finish(
        self, conversation_id: str, message_sid: str, status: TurnStatus, reply: str
    ) -> None:
        key = self.turn_key(conversation_id, message_sid)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"status": status.value, "reply": reply})
            pipe.hdel(key, "body")  # Postgres has it; Redis only needed it until the turn ran
            pipe.expire(key, self.state_ttl)
            pipe.execute()

    # -- running turns -----------------------------------------------------------------------

    def run_until(
        self, conversation_id: str, message_sid: str, *, wait_seconds: float
    ) -> TurnRecord | None:
        """Run the conversation's turns in order, under its lock, up to ``message_sid``'s (the
        inline mode); the state that turn ended in.

        ``None`` if the lock stayed busy for ``wait_seconds`` (or the turn is unknown).
        """
        acquired, record = self._drain(conversation_id, wait_seconds, message_sid, None)
        return record if acquired else None

    def drain(self, conversation_id: str, *, wait_seconds: float, deliver: Deliver) -> bool:
        """Run all the conversation's pending turns in order, under its lock (the async mode).

        ``deliver`` sends each reply before its turn leaves the queue; if it raises, the turn
        stays at the head and the next drain sends it. ``False`` if the lock stayed busy for
        ``wait_seconds``.
        """
        acquired, _ = self._drain(conversation_id, wait_seconds, None, deliver)
        return acquired

    def _drain(
        self,
        conversation_id: str,
        wait_seconds: float,
        until: str | None,
        deliver: Deliver | None,
    ) -> tuple[bool, TurnRecord | None]:
        wait: float | None = wait_seconds
        while True:
            lock = self.client.lock(
                self.lock_key(conversation_id),
                timeout=self.lock_ttl,
                sleep=0.02,
                blocking=bool(wait),
                blocking_timeout=wait or None,
                thread_local=False,
            )
            if not lock.acquire():
                return False, None
            try:
                with _Heartbeat(lock, self.lock_ttl, conversation_id):
                    record = self._drain_locked(conversation_id, until, deliver)
            finally:
                try:
                    lock.release()
                except LockError:
                    logger.warning(
                        "conversation lock expired before release",
                        extra={"conversation_id": conversation_id},
                    )
            # A turn queued while we were releasing may have seen the lock busy and left it to
            # us: look again, without waiting (if someone else holds the lock now, it's theirs).
            if until is not None or not self.client.llen(self.pending_key(conversation_id)):
                return True, record
            wait = 0

    def _drain_locked(
        self, conversation_id: str, until: str | None, deliver: Deliver | None
    ) -> TurnRecord | None:
        """Run turns from the head; the state of ``until``'s turn once it is reached."""
        pending = self.pending_key(conversation_id)
        while True:
            head = self.client.lindex(pending, 0)
            if head is None:  # drained; ``until``'s turn, if any, was run by another request
                return self.record(conversation_id, until) if until is not None else None
            sid = head.decode()
            if until is not None and sid != until:
                own = self.record(conversation_id, until)
                if own is None or own.finished:
                    return own  # ours is done (another request ran it): the rest is theirs
            record = self.record(conversation_id, sid)
            if record is not None and not record.finished:
                record = self._run(conversation_id, sid, record.body)
            if record is not None and deliver is not None:
                deliver(sid, record)
            self._pop_head(keys=[pending], args=[sid])
            if sid == until:
                return record

    def _run(self, conversation_id: str, message_sid: str, body: str) -> TurnRecord:
        """Run one turn; any failure becomes the apology (logged and counted, never silent)."""
        watch = Stopwatch()
        log = {"conversation_id": conversation_id, "message_sid": message_sid}
        try:
            result = self.agent.run_turn(conversation_id, body, message_id=message_sid)
        except Exception as exc:
            self.metrics.agent_errors.labels(error=type(exc).__name__).inc()
            self.metrics.turns.labels(outcome="failed").inc()
            logger.exception(
                "turn failed; replying with the apology",
                extra={**log, "error": type(exc).__name__, "duration_ms": watch.ms},
            )
            status, reply = TurnStatus.FAILED, self.apology
        else:
            outcome = "replayed" if result.replayed else "answered"
            self.metrics.turns.labels(outcome=outcome).inc()
            if not result.replayed:
                self.metrics.turn_latency.observe(watch.seconds)
            logger.info(
                "turn %s",
                outcome,
                extra={
                    **log,
                    "outcome": outcome,
                    "chars": len(result.reply),
                    "duration_ms": watch.ms,
                },
            )
            status, reply = TurnStatus.DONE, result.reply
        self._finish(conversation_id, message_sid, status, reply)
        return TurnRecord(status=status, reply=reply)
