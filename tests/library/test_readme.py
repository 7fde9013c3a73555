"""The README runs as shown: its python blocks in order, the quick start first and untouched (a
recording fake chat model in place of the real one shown later), and its commands are this
repository's; plus the plain ``prompt | model`` chain through ``RunnableWithMessageHistory``,
sync and async.

The same program runs from the built wheel in a fresh venv in ``tests/packaging``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory
from pydantic import Field

from lc_hybrid_memory import HybridMemory
from tests.support import readme

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``code`` in a new interpreter, outside the repository (as a user would run it)."""
    script = cwd / "readme_program.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_the_readme_python_blocks_run_as_shown(tmp_path: Path) -> None:
    result = run_python(readme.program(), tmp_path)
    assert result.returncode == 0, result.stderr
    readme.check_run(result.stdout)


def test_the_readme_commands_are_this_repositorys() -> None:
    commands = readme.shell_lines()
    assert {"make run", "make test"} <= set(commands)
    for command in commands:
        if command.startswith("make "):
            target = command.split()[1]
            dry = subprocess.run(
                ["make", "-n", "-o", ".venv/.installed", target],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            assert dry.returncode == 0, f"{command}: {dry.stderr}"
        else:  # the install command: the packaging test installs the wheel it builds
            assert command == 'pip install ".[embedded,langgraph]"'
    for target in ("reset", "chat"):  # named in the README's text
        assert f"`make {target}`" in readme.README.read_text()


class RecordingModel(FakeMessagesListChatModel):
    """Answers from a list and records every input it was given."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
        self.seen.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


async def test_a_prompt_and_model_chain_remembers_across_turns_and_new_objects(
    memory: HybridMemory,
) -> None:
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


def test_the_readme_links_resolve() -> None:
    text = readme.README.read_text()
    targets = set(re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text))
    local = {t for t in targets if not t.startswith(("http://", "https://"))}
    assert {"docs/library.md", "docs/agent.md", "docs/performance.md", "docs/recall.md"} <= local
    assert {t for t in local if not (REPO / t).exists()} == set()
