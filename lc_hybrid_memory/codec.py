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
    ToolMessage,
    messages_from_dict,
)
from langchain_core.messages.base import message_to_dict
from pydantic import TypeAdapter

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


# -- decoding ------------------------------------------------------------------------------------
#
# Decoding dominates a warm read: for 50 messages pydantic validation costs ~4x the JSON parse.
# But the entries were written by :func:`encode`, i.e. dumped from an already validated message,
# and for the common shapes validation of such a dump is the identity. :func:`_fast_message`
# recognises exactly those shapes (every field present, in any order, each with the type
# validation would keep unchanged; no tool calls, whose validator rebuilds them) and builds the
# instance the way pydantic's own ``model_construct`` does, without re-validating. Anything else
# (tool calls, chunks, ChatMessage, a foreign or hand-written payload, a number where a string
# belongs...) goes through ``messages_from_dict`` unchanged. tests/test_codec_speed.py checks
# that both paths build identical objects.

_FAST_CLASSES: dict[str, type[BaseMessage]] = {
    "human": HumanMessage,
    "ai": AIMessage,
    "system": SystemMessage,
    "tool": ToolMessage,
}
_FIELDS: dict[str, tuple[str, ...]] = {
    kind: tuple(cls.model_fields) for kind, cls in _FAST_CLASSES.items()
}
_USAGE = TypeAdapter(AIMessage.model_fields["usage_metadata"].annotation)
_TOOL_STATUS = ("success", "error")
_setattr = object.__setattr__


def _plain_content(content: Any) -> bool:
    if type(content) is str:
        return True
    if type(content) is not list:
        return False
    for part in content:
        kind = type(part)
        if kind is not str and kind is not dict:
            return False
    return True


def _fast_message(obj: Any) -> BaseMessage | None:
    """The message for a dump that validation would leave unchanged, else ``None``."""
    if type(obj) is not dict:
        return None
    kind = obj.get("type")
    if type(kind) is not str or kind not in _FAST_CLASSES:
        return None
    data = obj.get("data")
    fields = _FIELDS[kind]
    if type(data) is not dict or len(data) != len(fields):
        return None
    try:
        # Postgres jsonb reorders keys (a fill reads them back so); validation builds the
        # instance's __dict__ in field order whatever the input order, and so do we. Every
        # field present and no more keys than fields: exactly the fields.
        values = {name: data[name] for name in fields}
    except KeyError:
        return None
    content = values["content"]
    name = values["name"]
    id_ = values["id"]
    if (
        values["type"] != kind
        or (type(content) is not str and not _plain_content(content))
        or type(values["additional_kwargs"]) is not dict
        or type(values["response_metadata"]) is not dict
        or (name is not None and type(name) is not str)
        or (id_ is not None and type(id_) is not str)
    ):
        return None
    if kind == "ai":
        # A non-empty tool call list (or legacy ones in additional_kwargs) is rebuilt by
        # AIMessage's validator: leave those to it.
        if values["tool_calls"] != [] or values["invalid_tool_calls"] != []:
            return None
        if values["additional_kwargs"].get("tool_calls"):
            return None
        if values["usage_metadata"] is not None:
            values["usage_metadata"] = _USAGE.validate_python(values["usage_metadata"])
    elif kind == "tool" and (
        type(values["tool_call_id"]) is not str or values["status"] not in _TOOL_STATUS
    ):
        return None
    cls = _FAST_CLASSES[kind]
    message = cls.__new__(cls)
    _setattr(message, "__dict__", values)
    _setattr(message, "__pydantic_fields_set__", set(fields))
    _setattr(message, "__pydantic_extra__", {})
    _setattr(message, "__pydantic_private__", None)
    return message


def decode(text: str | bytes) -> BaseMessage:
    """Rebuild the message from :func:`encode`'s text; :class:`DecodeError` if it is not one."""
    try:
        obj = orjson.loads(text)
        if isinstance(obj, dict) and _ESCAPED_KEY in obj:
            obj = orjson.loads(obj[_ESCAPED_KEY])
        message = _fast_message(obj)
        if message is not None:
            return message
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
