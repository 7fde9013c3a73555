"""The README's quick start, as written, with a LangChain fake model in place of ChatOpenAI."""

from __future__ import annotations

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory
from pydantic import Field

from lc_hybrid_memory import HybridMemory


class RecordingModel(FakeMessagesListChatModel):
    """Answers from a list and records every input it was given."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
        self.seen.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


async def test_quick_start_remembers_across_turns_and_new_objects(memory: HybridMemory) -> None:
    model = RecordingModel(responses=[AIMessage("hello Ada"), AIMessage("you are Ada")])
    prompt = ChatPromptTemplate.from_messages(
        [MessagesPlaceholder("history"), ("human", "{question}")]
    )
    chain = RunnableWithMessageHistory(
        prompt | model,
        memory.history,
        input_messages_key="question",
        history_messages_key="history",
    )
    config = {"configurable": {"session_id": "conversation-1"}}
    chain.invoke({"question": "hi, I am Ada"}, config=config)
    await chain.ainvoke({"question": "who am I?"}, config=config)

    assert [m.content for m in model.seen[1]] == ["hi, I am Ada", "hello Ada", "who am I?"]
    stored = memory.history("conversation-1").messages
    assert stored == [
        HumanMessage("hi, I am Ada"),
        AIMessage("hello Ada", id=stored[1].id),
        HumanMessage("who am I?"),
        AIMessage("you are Ada", id=stored[3].id),
    ]
    assert memory.store.count("conversation-1") == 4
