"""lc-hybrid-memory: LangChain chat memory, a Redis L1 cache over the Postgres messages table."""

from .breaker import CircuitBreaker
from .cache import CacheState, MessageCache
from .codec import role_of
from .errors import HybridMemoryError, InvalidSessionIdError, StoreUnavailableError
from .history import (
    DEFAULT_WINDOW,
    HybridChatMessageHistory,
    HybridMemory,
    TranscriptEntry,
    TurnReply,
    validate_session_id,
)
from .schema import MessageTable
from .store import ConversationSummary, MessageStore

__all__ = [
    "DEFAULT_WINDOW",
    "CacheState",
    "CircuitBreaker",
    "ConversationSummary",
    "HybridChatMessageHistory",
    "HybridMemory",
    "HybridMemoryError",
    "InvalidSessionIdError",
    "MessageCache",
    "MessageStore",
    "MessageTable",
    "StoreUnavailableError",
    "TranscriptEntry",
    "TurnReply",
    "role_of",
    "validate_session_id",
]

__version__ = "0.1.0"
