"""lc-hybrid-memory: LangChain chat memory, a Redis L1 cache over the Postgres messages table."""

from .breaker import CircuitBreaker
from .cache import MessageCache
from .errors import HybridMemoryError, InvalidSessionIdError, StoreUnavailableError
from .history import HybridChatMessageHistory, HybridMemory, validate_session_id
from .schema import MessageTable
from .store import MessageStore

__all__ = [
    "CircuitBreaker",
    "HybridChatMessageHistory",
    "HybridMemory",
    "HybridMemoryError",
    "InvalidSessionIdError",
    "MessageCache",
    "MessageStore",
    "MessageTable",
    "StoreUnavailableError",
    "validate_session_id",
]

__version__ = "0.1.0"
