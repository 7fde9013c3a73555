"""Conversations for the console tests: stored through the app's own objects (the conversations
table, the memory) on the test's real servers, with the ids the app gives them."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from app.conversations import Address, ConversationStore
from tests.support.app_harness import OUR_NUMBER, AppHarness, new_sid

CONSOLE_TOKEN = "console-test-token-0123456789"


def seed_conversation(
    harness: AppHarness,
    contact: str,
    turns: int,
    *,
    channel: str = "sms",
    profile_name: str | None = None,
    with_tool_call: bool = False,
) -> str:
    """A conversation of ``contact`` with ``turns`` question/answer turns (ids as the webhook
    and the agent give them); the conversation id."""
    store = ConversationStore(harness.engine)
    conversation = store.resolve(
        Address(channel, contact), Address(channel, OUR_NUMBER), profile_name=profile_name
    )
    for turn in range(turns):
        sid = new_sid()
        messages = [HumanMessage(f"question {turn} from {contact}", id=sid)]
        if with_tool_call and turn == turns - 1:
            call = {"name": "current_time", "args": {"zone": "UTC"}, "id": f"call_{turn}"}
            messages += [
                AIMessage("", tool_calls=[call], id=f"{sid}:1"),
                ToolMessage(
                    "12:00 UTC", tool_call_id=call["id"], name="current_time", id=f"{sid}:2"
                ),
                AIMessage(f"answer {turn}: it is noon", id=f"{sid}:3"),
            ]
        else:
            messages.append(AIMessage(f"answer {turn}", id=f"{sid}:1"))
        harness.memory.add_messages(conversation.id, messages)
    return conversation.id
