"""Finding conversations from the command line: ``show ID|CONTACT``, ``chat --contact``,
``conversations`` (the listing).

A conversation is named by its id (the memory's ``session_id``: a Twilio conversation's uuid hex,
or a terminal session such as ``terminal``) or by a Twilio contact (``+15550001111``,
``whatsapp:+15550001111``), which names the conversation(s) that contact had with the app.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TextIO

from sqlalchemy.exc import ProgrammingError

from lc_hybrid_memory import HybridMemory

from .conversations import ConversationRow, ConversationStore
from .schema_status import MIGRATE_FIX

# What a contact looks like: a phone number, or a channel-prefixed address.
_CONTACT = re.compile(r"^(\+?\d[\d\s().-]{3,}|[a-z]+:.+)$")


class LookupFailed(LookupError):
    """The argument names no conversation (or several): the message says what to do."""


def looks_like_contact(text: str) -> bool:
    return bool(_CONTACT.match(text.strip()))


def _missing_table(exc: ProgrammingError) -> bool:
    return "does not exist" in str(exc.orig) and "conversations" in str(exc.orig)


def conversations_of(store: ConversationStore, contact: str) -> list[ConversationRow]:
    """The contact's conversations, most recent first (LookupFailed if the app's tables are
    missing)."""
    try:
        return store.find_contact(contact)
    except ProgrammingError as exc:
        if _missing_table(exc):
            raise LookupFailed(
                f"the database has no conversations table (not migrated): {MIGRATE_FIX}"
            ) from exc
        raise


def resolve_conversation(memory: HybridMemory, store: ConversationStore, name: str) -> str:
    """The conversation id that ``name`` (an id or a contact) stands for."""
    if memory.count(name) or _has_row(store, name):
        return name
    if not looks_like_contact(name):
        raise LookupFailed(
            f"no conversation {name!r}: list them with `hybrid-memory conversations`"
        )
    return only_conversation(conversations_of(store, name), name)


def only_conversation(rows: Sequence[ConversationRow], contact: str) -> str:
    if not rows:
        raise LookupFailed(
            f"no conversation with {contact}: it has not written to the app yet "
            f"(try `hybrid-memory send --from {contact} 'hello'`)"
        )
    if len(rows) > 1:
        choices = "\n".join(
            f"  {row.id}  {row.channel} {row.contact} → {row.service_number}" for row in rows
        )
        raise LookupFailed(
            f"{contact} has {len(rows)} conversations (one per channel and number); "
            f"name one by its id:\n{choices}"
        )
    return rows[0].id


def _has_row(store: ConversationStore, conversation_id: str) -> bool:
    try:
        return store.row(conversation_id) is not None
    except ProgrammingError as exc:
        if _missing_table(exc):
            return False  # a database only the library's create_schema() made
        raise


def print_listing(
    memory: HybridMemory,
    store: ConversationStore,
    out: TextIO,
    *,
    search: str | None = None,
    limit: int = 20,
) -> int:
    """The conversations table as text (``hybrid-memory conversations``); how many were shown."""
    try:
        rows = store.page(search=search, limit=limit + 1)
    except ProgrammingError as exc:
        if _missing_table(exc):
            raise LookupFailed(
                f"the database has no conversations table (not migrated): {MIGRATE_FIX}"
            ) from exc
        raise
    more = len(rows) > limit
    rows = rows[:limit]
    if not rows:
        print("no conversations" + (f" matching {search!r}" if search else ""), file=out)
        return 0
    summaries = memory.summaries([row.id for row in rows])
    header = ("ID", "CHANNEL", "CONTACT", "MESSAGES", "LAST ACTIVITY (UTC)", "CACHED")
    lines = [header]
    for row in rows:
        summary = summaries.get(row.id)
        last = summary.last_message_at if summary and summary.last_message_at else None
        state = memory.cache_state(row.id)
        cached = (
            f"yes: {len(state.row_ids)} messages, ttl {int(state.ttl_seconds or 0)} s"
            if state
            else "no"
        )
        contact = row.contact + (f" ({row.profile_name})" if row.profile_name else "")
        lines.append(
            (
                row.id,
                row.channel,
                contact,
                str(summary.messages if summary else 0),
                (last or row.last_message_at).strftime("%Y-%m-%d %H:%M:%S"),
                cached,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        cells = [
            cell.rjust(width) if i == 3 else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip(), file=out)
    if more:
        print(f"(more: --limit {limit * 2}, or narrow with --search)", file=out)
    return len(rows)
