"""Exceptions of the library: precise, and never a silent drop."""

from __future__ import annotations


class HybridMemoryError(Exception):
    """Base class of this library's errors."""


class InvalidSessionIdError(HybridMemoryError, ValueError):
    """The session id cannot name a conversation (empty, too long, control characters, or not
    of the conversation id column's type)."""


class InvalidMessageError(HybridMemoryError, ValueError):
    """A message (or an argument) that can never be stored or served, whatever the retries;
    the message names the field. Nothing was written."""


class StoreUnavailableError(HybridMemoryError, RuntimeError):
    """Postgres, the source of truth, could not be reached or did not answer in time.

    Raised on writes (nothing was stored, or the outcome is unknown and the caller must
    retry with the same message ids) and on reads that the cache could not serve.
    ``maybe_stored`` is ``False`` when the statement never reached Postgres (no connection).
    """

    def __init__(self, message: str, *, maybe_stored: bool = True) -> None:
        super().__init__(message)
        self.maybe_stored = maybe_stored


class StoreConfigurationError(HybridMemoryError, RuntimeError):
    """Postgres answered, but the database or the messages table is not what the memory needs
    (missing database, table not created, column missing); the message says what to do."""


class VectorsUnavailableError(HybridMemoryError, RuntimeError):
    """Semantic recall was required but the server has no pgvector (or no vectors table)."""
