"""LangChain message ⇄ JSON text, the one format both tiers store.

The JSON is langchain-core's own ``message_to_dict`` shape (``{"type": ..., "data": {...}}``),
so every field survives: tool calls, additional kwargs, response metadata, name, id, and the
chunk classes. The same text goes into the Postgres ``payload`` column and, prefixed with the
row id, into the Redis list, so a message is encoded once per write.

PostgreSQL's ``jsonb`` rejects the escape ``\\u0000`` (and ``text`` rejects NUL bytes), so a
message containing NUL characters is wrapped once more as a JSON string; :func:`decode` undoes it.
"""

from __future__ import annotations

from typing import Any

import orjson
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    messages_from_dict,
)
from langchain_core.messages.base import message_to_dict

__all__ = ["DecodeError", "decode", "encode", "from_role_and_content", "plain_text", "role_of"]

# Key of the wrapper object used only for messages that contain NUL characters.
_ESCAPED_KEY = "lc_hybrid_memory_escaped"
_NUL_ESCAPE = b"\\u0000"

_ROLE_BY_TYPE = {
    "human": "user",
    "HumanMessageChunk": "user",
    "ai": "assistant",
    "AIMessageChunk": "assistant",
    "system": "system",
    "SystemMessageChunk": "system",
    "tool": "tool",
    "ToolMessageChunk": "tool",
    "function": "function",
    "FunctionMessageChunk": "function",
}


class DecodeError(ValueError):
    """A stored entry is not a message this codec can read."""


def _default(value: Any) -> Any:
    # Values outside JSON (datetimes, Decimals, sets, custom objects in metadata) are kept as text.
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def encode(message: BaseMessage) -> str:
    """Return the JSON text stored for ``message`` in both tiers."""
    if not isinstance(message, BaseMessage):
        raise TypeError(f"expected a langchain_core BaseMessage, got {type(message).__name__}")
    data = orjson.dumps(message_to_dict(message), default=_default)
    if _NUL_ESCAPE in data:
        data = orjson.dumps({_ESCAPED_KEY: data.decode()})
    return data.decode()


def decode(text: str | bytes) -> BaseMessage:
    """Rebuild the message from :func:`encode`'s text; :class:`DecodeError` if it is not one."""
    try:
        obj = orjson.loads(text)
        if isinstance(obj, dict) and _ESCAPED_KEY in obj:
            obj = orjson.loads(obj[_ESCAPED_KEY])
        return messages_from_dict([obj])[0]
    except Exception as exc:  # any malformed entry, whatever the failing layer
        raise DecodeError(f"undecodable message entry: {exc}") from exc


def role_of(message: BaseMessage) -> str:
    """A plain role for the human-readable ``role`` column (user, assistant, system, tool...)."""
    if isinstance(message, ChatMessage):
        return message.role
    return _ROLE_BY_TYPE.get(message.type, message.type)


def plain_text(message: BaseMessage) -> str:
    """The message's text for the human-readable ``content`` column (NUL replaced)."""
    content = message.content
    text = content if isinstance(content, str) else message.text
    return text.replace("\x00", "\ufffd")


def from_role_and_content(role: str, content: str | None) -> str:
    """Encoded message for a row that has no payload (an application-owned table)."""
    text = content or ""
    message: BaseMessage
    if role in ("user", "human"):
        message = HumanMessage(content=text)
    elif role in ("assistant", "ai"):
        message = AIMessage(content=text)
    elif role == "system":
        message = SystemMessage(content=text)
    else:
        message = ChatMessage(role=role, content=text)
    return encode(message)
