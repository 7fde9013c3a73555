"""lc-hybrid-memory: LangChain chat memory, a Redis L1 cache over the Postgres messages table."""

from .breaker import CircuitBreaker
from .cache import MessageCache
from .errors import HybridMemoryError, InvalidSessionIdError, StoreUnavailableError
from .history import HybridChatMessageHistory, HybridMemory, validate_session_id
from .recall import MessageRecall, RecalledMessage, RecallIndexer, VectorsUnavailableError
from .retriever import ConversationRetriever
from .schema import MessageTable
from .store import MessageStore

__all__ = [
    "CircuitBreaker",
    "ConversationRetriever",
    "HybridChatMessageHistory",
    "HybridMemory",
    "HybridMemoryError",
    "InvalidSessionIdError",
    "MessageCache",
    "MessageRecall",
    "MessageStore",
    "MessageTable",
    "RecallIndexer",
    "RecalledMessage",
    "StoreUnavailableError",
    "VectorsUnavailableError",
    "validate_session_id",
]

__version__ = "0.1.0"
