"""codec.decode's fast path builds exactly the objects messages_from_dict builds."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    HumanMessageChunk,
    SystemMessage,
    ToolMessage,
    messages_from_dict,
)

from lc_hybrid_memory import codec

USAGE = {
    "input_tokens": 10,
    "output_tokens": 20,
    "total_tokens": 30,
    "input_token_details": {"cache_read": 3},
    "output_token_details": {"reasoning": 5},
}

FAST = [
    HumanMessage("hi"),
    HumanMessage("hi", id="m-1", name="ana"),
    HumanMessage(["text part", {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]),
    HumanMessage("olá 👋 \u2028 é", additional_kwargs={"k": [1, 2.5, None, True]}),
    HumanMessage("with NUL \x00 inside", id="nul"),
    SystemMessage("you are helpful", id="s1"),
    AIMessage("hello"),
    AIMessage("", id="a1", response_metadata={"model_name": "m", "finish_reason": "stop"}),
    AIMessage("counted", usage_metadata=USAGE, response_metadata={"nested": {"a": [1, {}]}}),
    AIMessage([{"type": "text", "text": "blocks"}, "raw"], id="a2", name="bot"),
    ToolMessage("42", tool_call_id="call-1"),
    ToolMessage("boom", tool_call_id="call-2", status="error", artifact={"trace": [1, 2]}, id="t"),
    ToolMessage(["a", {"type": "text", "text": "b"}], tool_call_id="call-3", name="calc"),
]

SLOW = [
    AIMessage("", tool_calls=[{"name": "f", "args": {"x": 1}, "id": "c1"}]),
    AIMessage(
        "",
        invalid_tool_calls=[{"name": "f", "args": "{bad", "id": "c2", "error": "json"}],
    ),
    AIMessage(
        "",
        additional_kwargs={
            "tool_calls": [
                {"id": "c3", "type": "function", "function": {"name": "g", "arguments": "{}"}}
            ]
        },
    ),
    AIMessageChunk("chunk", id="k1"),
    HumanMessageChunk("human chunk"),
    ChatMessage("custom role", role="critic"),
    FunctionMessage("result", name="fn"),
]


def assert_identical(fast: BaseMessage, slow: BaseMessage) -> None:
    assert type(fast) is type(slow)
    assert fast == slow
    assert fast.__dict__ == slow.__dict__
    assert list(fast.__dict__) == list(slow.__dict__)
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.__pydantic_extra__ == slow.__pydantic_extra__
    assert fast.__pydantic_private__ == slow.__pydantic_private__
    # Byte-equal dumps: same values, same key order, nested dicts included.
    assert orjson.dumps(fast.model_dump()) == orjson.dumps(slow.model_dump())
    assert fast.model_dump_json() == slow.model_dump_json()
    assert repr(fast) == repr(slow)
    assert fast.text == slow.text


def reference_decode(text: str) -> BaseMessage:
    obj = orjson.loads(text)
    if isinstance(obj, dict) and codec._ESCAPED_KEY in obj:
        obj = orjson.loads(obj[codec._ESCAPED_KEY])
    return messages_from_dict([obj])[0]


@pytest.mark.parametrize("message", FAST, ids=lambda m: f"{type(m).__name__}")
def test_fast_path_is_taken_and_identical(message: BaseMessage) -> None:
    text = codec.encode(message)
    obj = orjson.loads(text)
    if codec._ESCAPED_KEY in obj:
        obj = orjson.loads(obj[codec._ESCAPED_KEY])
    assert codec._fast_message(obj) is not None, "common shapes must take the fast path"
    decoded = codec.decode(text)
    assert_identical(decoded, reference_decode(text))
    assert decoded == message


@pytest.mark.parametrize("message", SLOW, ids=lambda m: f"{type(m).__name__}")
def test_other_shapes_fall_back_and_stay_identical(message: BaseMessage) -> None:
    text = codec.encode(message)
    assert codec._fast_message(orjson.loads(text)) is None
    assert_identical(codec.decode(text), reference_decode(text))


@pytest.mark.parametrize(
    "payload",
    [
        # Foreign rows: a number where langchain coerces to a string, an extra key, a missing
        # field, a wrong type name, fields out of order.
        {"type": "human", "data": {"content": "x", "id": 7}},
        {
            "type": "human",
            "data": {
                "content": "x",
                "additional_kwargs": {},
                "response_metadata": {},
                "type": "human",
                "name": None,
                "id": 7,
            },
        },
        {
            "type": "human",
            "data": {
                "content": "x",
                "additional_kwargs": {},
                "response_metadata": {},
                "type": "human",
                "name": None,
                "id": None,
                "extra": 1,
            },
        },
        {
            "type": "tool",
            "data": {
                "content": "x",
                "additional_kwargs": {},
                "response_metadata": {},
                "type": "tool",
                "name": None,
                "id": None,
                "tool_call_id": 5,
                "artifact": None,
                "status": "success",
            },
        },
        {
            "type": "human",
            "data": {
                "id": None,
                "content": "x",
                "additional_kwargs": {},
                "response_metadata": {},
                "type": "human",
                "name": None,
            },
        },
    ],
)
def test_foreign_payloads_match_langchain(payload: dict[str, Any]) -> None:
    text = orjson.dumps(payload).decode()
    assert_identical(codec.decode(text), reference_decode(text))


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "human", "data": {"content": 5}}',
        '{"type": "nope", "data": {"content": "x"}}',
        "[1, 2]",
        "not json",
        '{"type": "ai", "data": {"content": "x", "additional_kwargs": {}, "response_metadata"'
        ': {}, "type": "ai", "name": null, "id": null, "tool_calls": [], "invalid_tool_calls"'
        ': [], "usage_metadata": {"input_tokens": "many"}}}',
    ],
)
def test_malformed_entries_still_raise(text: str) -> None:
    with pytest.raises(codec.DecodeError):
        codec.decode(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
contents = st.text() | st.lists(
    st.text(max_size=10) | st.fixed_dictionaries({"type": st.just("text"), "text": st.text()}),
    max_size=3,
)
optional_text = st.none() | st.text(max_size=10)
metadata = st.dictionaries(st.text(max_size=6), json_values, max_size=3)


@st.composite
def messages(draw: st.DrawFn) -> BaseMessage:
    common = {
        "content": draw(contents),
        "id": draw(optional_text),
        "name": draw(optional_text),
        "additional_kwargs": draw(metadata),
        "response_metadata": draw(metadata),
    }
    kind = draw(st.sampled_from(["human", "system", "ai", "tool"]))
    if kind == "human":
        return HumanMessage(**common)
    if kind == "system":
        return SystemMessage(**common)
    if kind == "ai":
        common["additional_kwargs"].pop("tool_calls", None)
        usage = draw(st.none() | st.just(USAGE))
        return AIMessage(**common, usage_metadata=usage)
    return ToolMessage(
        **common,
        tool_call_id=draw(st.text(max_size=10)),
        status=draw(st.sampled_from(["success", "error"])),
        artifact=draw(json_values),
    )


@settings(max_examples=300, deadline=None)
@given(messages())
def test_random_messages_decode_identically(message: BaseMessage) -> None:
    text = codec.encode(message)
    decoded = codec.decode(text)
    assert_identical(decoded, reference_decode(text))
    assert decoded == message


def _reorder(value: Any, reverse: bool) -> Any:
    """``value`` with every dict's keys sorted (as jsonb's length-then-bytes order mostly is)."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k), k), reverse=reverse)
        return {k: _reorder(value[k], reverse) for k in keys}
    if isinstance(value, list):
        return [_reorder(v, reverse) for v in value]
    return value


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("message", FAST + SLOW, ids=lambda m: f"{type(m).__name__}")
def test_reordered_keys_decode_identically(message: BaseMessage, reverse: bool) -> None:
    # A cache fill reads payload::text back from jsonb, which reorders the keys and adds spaces.
    obj = orjson.loads(codec.encode(message))
    text = json.dumps(_reorder(obj, reverse))
    assert_identical(codec.decode(text), reference_decode(text))
    assert codec.decode(text) == message


def test_jsonb_text_takes_the_fast_path(sql_engine: Any) -> None:
    import sqlalchemy as sa

    for message in FAST:
        with sql_engine.connect() as conn:
            text = conn.execute(
                sa.text("SELECT CAST(CAST(:p AS jsonb) AS text)"), {"p": codec.encode(message)}
            ).scalar_one()
        obj = orjson.loads(text)
        if codec._ESCAPED_KEY in obj:
            obj = orjson.loads(obj[codec._ESCAPED_KEY])
        assert codec._fast_message(obj) is not None
        assert_identical(codec.decode(text), reference_decode(text))
