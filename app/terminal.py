"""``hybrid-memory chat``, ``show`` and ``conversations``: the agent and its memory in a terminal.

``chat --session ID`` reads one message per line and answers through the same
:class:`~app.agent.ChatAgent` and memory as the webhook app; ``chat --contact +1555…`` joins
that Twilio contact's conversation instead (replies stay in the terminal). Commands:
``/history`` (the stored window), ``/stats`` (cache hits and misses), ``/clear`` (delete the
conversation), ``/quit``; the end of input leaves too, so a chat can be scripted
(``printf 'hi\\n/stats\\n' | hybrid-memory chat``). ``show ID|CONTACT`` prints a stored
conversation; ``conversations`` lists the Twilio ones.
Storage: ``DATABASE_URL``/``REDIS_URL`` when set, the embedded servers otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, TextIO

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from lc_hybrid_memory import HybridMemory, HybridMemoryError, role_of

from .conversation_lookup import (
    LookupFailed,
    conversations_of,
    only_conversation,
    print_listing,
    resolve_conversation,
)
from .conversations import ConversationStore
from .database import create_engine
from .settings import Settings
from .wiring import open_memory, storage_urls

if TYPE_CHECKING:
    from .agent import ChatAgent

HELP = "commands: /history  /stats  /clear  /quit   (end of input also quits)"


def format_message(message: BaseMessage) -> str:
    """One stored message as a line (or a few) of text."""
    role = role_of(message)
    if isinstance(message, AIMessage) and message.tool_calls:
        calls = ", ".join(f"{c['name']}({c['args']})" for c in message.tool_calls)
        text = f"{message.text} → {calls}" if message.text else f"→ {calls}"
    elif isinstance(message, ToolMessage):
        text = f"{message.name or 'tool'}: {message.text}"
    else:
        text = message.text
    return f"{role:>9}  {text}"


def _print_messages(messages: Iterable[BaseMessage], out: TextIO) -> int:
    count = 0
    for message in messages:
        print(format_message(message), file=out)
        count += 1
    if not count:
        print("(no messages)", file=out)
    return count


def _format_stats(memory: HybridMemory) -> str:
    stats = memory.stats()
    keys = ("hits", "misses", "fills", "store_reads", "writes", "messages_written")
    parts = [f"{k}={stats[k]}" for k in keys if k in stats]
    parts.append(f"breaker={stats.get('breaker_state')}")
    return " ".join(parts)


def chat(
    agent: ChatAgent,
    session_id: str,
    *,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    interactive: bool = False,
) -> int:
    """The read–answer loop; returns the exit status (0: /quit or end of input)."""
    memory = agent.memory
    print(f"chat in session {session_id!r} — {HELP}", file=stdout)
    while True:
        if interactive:
            print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:  # end of input
            if interactive:
                print(file=stdout)
            return 0
        text = line.strip()
        if not text:
            continue
        try:
            if text == "/quit":
                return 0
            if text == "/history":
                _print_messages(memory.get_messages(session_id, agent.window), stdout)
            elif text == "/stats":
                print(_format_stats(memory), file=stdout)
            elif text == "/clear":
                deleted = memory.clear(session_id)
                print(f"cleared {deleted} messages", file=stdout)
            elif text.startswith("/"):
                print(f"unknown command {text!r}; {HELP}", file=stdout)
            else:
                result = agent.run_turn(session_id, text)
                print(f"bot> {result.reply}", file=stdout, flush=True)
        except HybridMemoryError as exc:
            # Storage trouble is reported and the chat goes on: the turn was not stored.
            print(f"error: {exc}", file=stderr, flush=True)
        except Exception as exc:  # the model or a tool failed; the input is kept
            print(f"error: the model failed: {type(exc).__name__}: {exc}", file=stderr)


def show(memory: HybridMemory, session_id: str, limit: int | None, out: TextIO) -> int:
    """Print the stored conversation (its last ``limit`` messages); 1 if it is empty."""
    count = _print_messages(memory.get_messages(session_id, limit), out)
    return 0 if count else 1


def _describe(memory: HybridMemory, store: ConversationStore, conversation_id: str) -> str:
    """One line naming the conversation (for stderr: stdout stays the messages)."""
    try:
        row = store.row(conversation_id)
    except Exception:  # a database without the app's tables: the id says enough
        row = None
    where = f" ({row.channel} {row.contact} → {row.service_number})" if row else ""
    return f"conversation {conversation_id}{where}: {memory.count(conversation_id)} messages"


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Entry point of ``hybrid-memory chat``, ``show`` and ``conversations``."""
    urls = storage_urls(settings)
    memory = open_memory(settings, urls)
    store = ConversationStore(
        create_engine(urls.database_url, connect_timeout=settings.database_connect_timeout_seconds)
    )
    try:
        # Idempotent (IF NOT EXISTS); the migrations create the same table for the app.
        memory.create_schema()
        try:
            if args.command == "conversations":
                print_listing(memory, store, sys.stdout, search=args.search, limit=args.limit)
                return 0
            if args.command == "show":
                conversation_id = resolve_conversation(memory, store, args.conversation)
                print(_describe(memory, store, conversation_id), file=sys.stderr)
                return show(memory, conversation_id, args.limit, sys.stdout)
            session_id = args.session
            if args.contact:
                session_id = only_conversation(conversations_of(store, args.contact), args.contact)
                print(
                    f"joining {_describe(memory, store, session_id)}; replies stay in this "
                    "terminal (they are not sent to the contact)",
                    file=sys.stdout,
                )
        except LookupFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        from .agent import ChatAgent  # langchain and langgraph: only the chat needs them
        from .indexing import start_indexer

        agent = ChatAgent(memory, settings)
        indexer = start_indexer(memory)  # recall finds what this chat said, as the app does
        try:
            return chat(
                agent,
                session_id,
                stdin=sys.stdin,
                stdout=sys.stdout,
                stderr=sys.stderr,
                interactive=sys.stdin.isatty(),
            )
        finally:
            if indexer is not None:
                indexer.stop()
    finally:
        store.close()
        memory.close()
