"""Erasing a conversation: everything about it, from every store.

Postgres: its messages (and, through ``memory.clear``, whatever else the memory keeps about
them) and its ``conversations`` row. Redis: the memory's cached window, and the app's turn
states, pending list and lock (``app.turns`` keys; a pending turn's state holds the message
text). It runs under the conversation's turn lock, so a turn in progress finishes first and no
turn of it runs meanwhile. A message arriving afterwards starts a new conversation.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from redis.exceptions import LockError, RedisClusterException, RedisError

from lc_hybrid_memory import HybridMemoryError

from .wiring import Services

logger = logging.getLogger(__name__)

ERASE_LOCK_WAIT_SECONDS = 10.0


class ErasureError(HybridMemoryError):
    """The conversation could not be erased (nothing, or not everything, was removed yet:
    erasing again is safe)."""


@dataclass(frozen=True)
class Erasure:
    """What was removed."""

    conversation_id: str
    messages: int
    turn_keys: int
    conversation_row: bool

    @property
    def found(self) -> bool:
        return bool(self.messages or self.turn_keys or self.conversation_row)


def _glob_literal(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def erase_conversation(
    services: Services, conversation_id: str, *, wait_seconds: float = ERASE_LOCK_WAIT_SECONDS
) -> Erasure:
    """Remove the conversation from Postgres and Redis; :class:`ErasureError` if a store is
    unreachable or a turn holds the conversation longer than ``wait_seconds``."""
    turns = services.turns
    client = turns.client
    try:
        lock = client.lock(
            turns.lock_key(conversation_id),
            timeout=max(turns.lock_ttl, 1),
            sleep=0.05,
            blocking_timeout=wait_seconds,
            thread_local=False,
        )
        if not lock.acquire():
            raise ErasureError("a turn of this conversation is still running: try again")
    except (RedisError, RedisClusterException) as exc:
        raise ErasureError(f"Redis unreachable ({type(exc).__name__}): nothing erased") from exc
    try:
        # The row first: from now on a new message of this contact starts a new conversation.
        row = services.conversations.delete(conversation_id)
        messages = services.memory.clear(conversation_id)  # rows, then the cached window
        keys = [turns.pending_key(conversation_id)]
        pattern = _glob_literal(turns.turn_key(conversation_id, "")) + "*"
        keys.extend(client.scan_iter(match=pattern, count=1000))
        removed = sum(client.delete(key) for key in keys)  # one slot, but one key per call
    except (RedisError, RedisClusterException) as exc:
        raise ErasureError(
            f"Redis failed while erasing ({type(exc).__name__}): erase again to finish"
        ) from exc
    finally:
        try:
            lock.release()
        except (LockError, RedisError, RedisClusterException):
            logger.warning(
                "conversation lock lost while erasing", extra={"conversation_id": conversation_id}
            )
    erasure = Erasure(conversation_id, messages, removed, row)
    logger.info(
        "conversation erased (%d messages, %d turn keys, row %s)",
        messages,
        removed,
        "deleted" if row else "absent",
        extra={"conversation_id": conversation_id},
    )
    return erasure
