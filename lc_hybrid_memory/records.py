"""Plain records passed between the store and the memory (no I/O, no driver types)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["ConversationSummary", "EncodedMessage", "StoredMessage", "StoredRow", "WrittenRow"]


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A stored row as the cache needs it: the row id and the encoded message."""

    id: int
    payload: str


@dataclass(frozen=True, slots=True)
class StoredRow:
    """A stored row with what an operator wants to see besides the message."""

    id: int
    payload: str
    message_uid: str | None
    provider_sid: str | None
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """How many messages a conversation holds and when the last one was stored."""

    messages: int
    last_message_at: datetime | None


@dataclass(frozen=True, slots=True)
class EncodedMessage:
    """A message ready to insert. ``uid`` is its LangChain id, or ``None``."""

    uid: str | None
    role: str
    content: str
    payload: str


@dataclass(frozen=True, slots=True)
class WrittenRow:
    """What a write did with one input message: its row id (``None``: stored a moment ago by a
    concurrent call, id unknown), whether this call inserted it, and the id of the
    conversation's row just before it (0: none)."""

    id: int | None
    new: bool
    before_id: int
