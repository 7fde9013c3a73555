"""Exceptions of the library: precise, and never a silent drop."""

from __future__ import annotations


class HybridMemoryError(Exception):
    """Base class of this library's errors."""


class InvalidSessionIdError(HybridMemoryError, ValueError):
    """The session id cannot name a conversation (empty, too long, control characters)."""


class StoreUnavailableError(HybridMemoryError, RuntimeError):
    """Postgres, the source of truth, could not be reached or refused the operation.

    Raised on writes (nothing was stored, or the outcome is unknown and the caller must
    retry with the same message ids) and on reads that the cache could not serve.
    """
