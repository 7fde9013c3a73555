"""lc-hybrid-memory: LangChain chat memory, a Redis L1 cache over the Postgres messages table."""

from .breaker import CircuitBreaker
from .cache import CacheState, MessageCache
from .codec import role_of
from .embeddings import default_embeddings_installed
from .errors import (
    HybridMemoryError,
    InvalidMessageError,
    InvalidSessionIdError,
    StoreConfigurationError,
    StoreUnavailableError,
    VectorsUnavailableError,
)
from .history import DEFAULT_WINDOW, HybridChatMessageHistory
from .memory import HybridMemory
from .memory_views import TranscriptEntry, TurnReply
from .postgres import async_url, sync_url
from .recall import MessageRecall, RecalledMessage, RecallIndexer
from .records import ConversationSummary
from .retriever import ConversationRetriever
from .schema import MessageTable
from .session_ids import canonical_session_id, validate_session_id
from .store import MessageStore

__all__ = [
    "DEFAULT_WINDOW",
    "CacheState",
    "CircuitBreaker",
    "ConversationRetriever",
    "ConversationSummary",
    "HybridChatMessageHistory",
    "HybridMemory",
    "HybridMemoryError",
    "InvalidMessageError",
    "InvalidSessionIdError",
    "MessageCache",
    "MessageRecall",
    "MessageStore",
    "MessageTable",
    "RecallIndexer",
    "RecalledMessage",
    "StoreConfigurationError",
    "StoreUnavailableError",
    "TranscriptEntry",
    "TurnReply",
    "VectorsUnavailableError",
    "async_url",
    "canonical_session_id",
    "default_embeddings_installed",
    "role_of",
    "sync_url",
    "validate_session_id",
]

__version__ = "0.1.0"
