"""The policy between the two tiers, written once and free of I/O.

Each operation (read, write, clear) is a generator that *yields* the I/O it needs — a
:class:`Call` of the store or of the cache — and receives the result back; it returns the
operation's result. :class:`~lc_hybrid_memory.memory.HybridMemory` drives the same generator
synchronously or with ``await``, so the sync and async paths cannot drift.

A cache call that did not reach Redis (breaker open, or an error) answers :data:`SKIPPED`; a
store call that failed raises its error at the ``yield``.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage, ToolMessage

from . import cache_scripts, codec
from .cache import CacheEntry, CacheRead
from .errors import (
    HybridMemoryError,
    InvalidMessageError,
    StoreConfigurationError,
    StoreUnavailableError,
)
from .records import EncodedMessage, StoredMessage, WrittenRow
from .stats import MemoryStats

__all__ = ["SKIPPED", "Call", "MemoryPolicy", "Steps"]

logger = logging.getLogger(__name__)

SKIPPED: Any = type("Skipped", (), {"__repr__": lambda self: "SKIPPED"})()

MAX_MESSAGE_ID_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Call:
    """One I/O step: ``<tier>.<name>(*args)``, or ``<tier>.a<name>(*args)`` when async.

    ``write``: a cache call that changes what is cached (if it cannot reach Redis, the
    conversation must be invalidated once Redis is back).
    """

    tier: str  # "store" or "cache"
    name: str
    args: tuple[Any, ...]
    write: bool = False

    @classmethod
    def store(cls, name: str, *args: Any) -> Call:
        return cls("store", name, args)

    @classmethod
    def cache(cls, name: str, *args: Any, write: bool = False) -> Call:
        return cls("cache", name, args, write)


Steps = Generator[Call, Any, Any]


class MemoryPolicy:
    """Read-through, write-behind-Postgres, lease-guarded fills, as step generators."""

    def __init__(self, stats: MemoryStats, cache_size: int) -> None:
        self.stats = stats
        self.cache_size = cache_size  # 0: no cache configured
        self._marks_missing = False

    # -- stale marks: writes that could not reach Redis ------------------------------------

    def _cache_write(self, sid: str, name: str, *args: Any) -> Steps:
        """A cache call that changes what is cached; if it does not reach Redis, the
        conversation is marked stale in Postgres for whichever process reaches Redis next."""
        result = yield Call.cache(name, sid, *args, write=True)
        if result is SKIPPED and self.cache_size and not self._marks_missing:
            try:
                yield Call.store("mark_stale", sid)
            except StoreConfigurationError:
                self._marks_missing = True
                logger.warning("no stale-marks table: run create_schema() (or the migrations)")
            except HybridMemoryError as exc:
                logger.warning("could not mark a stale cached list (%s)", type(exc).__name__)
        return result

    def drain(self) -> Steps:
        """Invalidate the cached lists marked stale in Postgres; whether that is done."""
        if self._marks_missing:
            return True
        try:
            stale: list[str] = yield Call.store("take_stale", 1000)
        except StoreConfigurationError:
            self._marks_missing = True
            logger.warning("no stale-marks table: run create_schema() (or the migrations)")
            return True
        except HybridMemoryError:
            return False
        if not stale:
            return True
        done = yield Call.cache("invalidate", *stale)
        if done is SKIPPED:
            for sid in stale:
                yield Call.store("mark_stale", sid)
            return False
        self.stats.incr("invalidations", len(stale))
        return len(stale) < 1000

    # -- reads -------------------------------------------------------------------------------

    def read(self, sid: str, window: int | None) -> Steps:
        """The last ``window`` messages (all for ``None``), oldest first."""
        hit = yield Call.cache("read", sid)
        if isinstance(hit, CacheRead):
            if not hit.malformed and (
                hit.complete or (window is not None and window <= len(hit.entries))
            ):
                served = self._serve_hit(hit, window, sid)
                if served is not None:
                    return served
            elif not hit.malformed:
                # A correct but shorter tail: read beyond it, leave it as it is.
                self.stats.incr("store_reads")
                rows = yield self._store_read(sid, window)
                return self.messages(rows, window, sid)
            else:
                self.stats.incr("decode_errors", hit.malformed)
            logger.error("dropping a corrupt cache list (session %r); refilling from postgres", sid)
            yield from self._cache_write(sid, "invalidate")
        return (yield from self._miss(sid, window, cache_reachable=hit is not SKIPPED))

    def _miss(self, sid: str, window: int | None, *, cache_reachable: bool) -> Steps:
        self.stats.incr("misses")
        token = (yield Call.cache("begin_fill", sid)) if cache_reachable else None
        # The window and the cache's size, plus one row to learn whether that is all.
        limit = None if window is None else max(window, self.cache_size) + 1
        rows: list[StoredMessage] = yield self._store_read(sid, limit)
        complete = limit is None or len(rows) < limit
        if not complete:
            rows = rows[1:]
        if isinstance(token, str):
            entries = [(r.id, r.payload) for r in rows]
            filled = yield Call.cache("fill", sid, token, entries, complete)
            self.stats.incr("fills" if filled is True else "fills_dropped")
        return self.messages(rows, window, sid)

    @staticmethod
    def _store_read(sid: str, limit: int | None) -> Call:
        return Call.store("recent", sid, limit) if limit is not None else Call.store("all", sid)

    def _serve_hit(self, hit: CacheRead, window: int | None, sid: str) -> list[BaseMessage] | None:
        """The window from a cache hit, or ``None`` when an entry is corrupt (then heal)."""
        entries = hit.entries if window is None else hit.entries[-window:]
        messages = self.decode(entries, sid)
        if len(messages) != len(entries):
            return None
        self.stats.incr("hits")
        return messages if window is None else drop_orphan_tool_results(messages)

    def messages(
        self, rows: Sequence[StoredMessage], window: int | None, sid: str
    ) -> list[BaseMessage]:
        """The window of stored rows, decoded."""
        kept = rows if window is None else rows[-window:]
        messages = self.decode([(r.id, r.payload) for r in kept], sid)
        return messages if window is None else drop_orphan_tool_results(messages)

    def decode(self, rows: Sequence[tuple[int, str | bytes]], sid: str) -> list[BaseMessage]:
        """Decode stored rows; an undecodable one is counted, logged (id only) and skipped."""
        messages = []
        for row_id, payload in rows:
            try:
                messages.append(codec.decode(payload))
            except codec.DecodeError as exc:
                self.stats.incr("decode_errors")
                logger.error(
                    "skipping undecodable message %s of session %r (%s)",
                    row_id,
                    sid,
                    type(exc).__name__,
                )
        return messages

    # -- writes ------------------------------------------------------------------------------

    @staticmethod
    def encode(messages: Sequence[BaseMessage]) -> list[EncodedMessage]:
        """Messages ready to store; :class:`InvalidMessageError` (nothing stored) otherwise."""
        if isinstance(messages, BaseMessage) or not isinstance(messages, Sequence):
            raise TypeError("add_messages takes a sequence of BaseMessage objects")
        encoded = []
        for index, message in enumerate(messages):
            if not isinstance(message, BaseMessage):
                raise TypeError(
                    f"add_messages takes BaseMessage objects, got {type(message).__name__} "
                    f"at position {index}"
                )
            uid = message.id
            if uid is not None and (not isinstance(uid, str) or len(uid) > MAX_MESSAGE_ID_LENGTH):
                raise InvalidMessageError(
                    f"message {index}: id must be a string of at most {MAX_MESSAGE_ID_LENGTH} "
                    f"characters"
                )
            encoded.append(
                EncodedMessage(
                    uid=uid,
                    role=codec.role_of(message),
                    content=codec.plain_text(message),
                    payload=codec.encode(message),
                )
            )
        return encoded

    def write(self, sid: str, encoded: list[EncodedMessage]) -> Steps:
        """Store in Postgres, then bring the cache up to date; for each message, whether new."""
        try:
            written: list[WrittenRow] = yield Call.store("append", sid, encoded)
        except StoreUnavailableError as exc:
            if exc.maybe_stored:
                # The outcome is unknown (the commit may have happened, its acknowledgement
                # lost): the cached tail cannot be trusted. Dropping it drops a racing fill too.
                yield from self._cache_write(sid, "invalidate")
            raise
        new = sum(row.new for row in written)
        self.stats.incr("writes")
        self.stats.incr("messages_written", new)
        if len(written) > new:
            self.stats.incr("duplicates_skipped", len(written) - new)
        if any(row.id is None for row in written):
            # Stored a moment ago by a concurrent call: the row id is unknown, so the cached
            # tail cannot be verified. Drop it; the next read refills.
            yield from self._cache_write(sid, "invalidate")
        else:
            # Rows already stored are sent too: after a lost commit acknowledgement they are
            # missing from the cache, and the script adds only what the list lacks.
            entries, seen = [], set()
            for row, message in zip(written, encoded, strict=True):
                if row.id not in seen:
                    seen.add(row.id)
                    entries.append(CacheEntry(row.id, row.before_id, message.payload))
            entries.sort(key=lambda entry: entry.row_id)
            appended = yield from self._cache_write(sid, "append", entries)
            if appended == cache_scripts.APPEND_DROPPED:
                self.stats.incr("cache_appends_dropped")
        return [row.new for row in written]

    def clear(self, sid: str) -> Steps:
        """Delete the conversation in Postgres, then its cache; how many messages were deleted."""
        deleted = yield Call.store("clear", sid)
        yield from self._cache_write(sid, "invalidate")
        return deleted


def drop_orphan_tool_results(messages: list[BaseMessage]) -> list[BaseMessage]:
    """Drop tool results at the head of a window whose tool-call message was cut off.

    Providers reject a conversation that starts with a tool result.
    """
    start = 0
    while start < len(messages) and isinstance(messages[start], ToolMessage):
        start += 1
    return messages[start:] if start else messages
