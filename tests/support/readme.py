"""The README's code, as a program the tests run: its python blocks in order, with a recording
fake chat model in place of the real one it shows (the one substitution, checked to happen),
and a last line that reports what the model saw and what was stored.

Used by ``tests/library/test_readme.py`` (in the project's venv) and by the packaging test (in a
fresh venv holding only the built wheel).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"

REAL_MODEL_LINE = 'model = init_chat_model("openai:gpt-4o-mini")'
REPORT_MARK = "README-REPORT "

FAKE_MODEL = '''
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage as _AIMessage
from pydantic import Field as _Field


class RecordingFakeModel(FakeMessagesListChatModel):
    """Answers the README's shown answers in turn and records every input it was given."""

    seen: list = _Field(default_factory=list)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.seen.append([(m.type, m.content) for m in messages])
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


README_FAKE_MODEL = RecordingFakeModel(responses=[_AIMessage(text) for text in {answers!r}])
'''

REPORT = """
import json as _json

_stored = memory.history("conversation-1", window=None).messages
print({mark!r} + _json.dumps({{
    "seen": README_FAKE_MODEL.seen,
    "stored": [[m.type, m.id, m.content] for m in _stored],
}}))
"""


def python_blocks(text: str | None = None) -> list[str]:
    """The README's ```python blocks, in order."""
    text = README.read_text() if text is None else text
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def shell_lines(text: str | None = None) -> list[str]:
    """The commands of the README's ```bash blocks (comments removed)."""
    text = README.read_text() if text is None else text
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()
            if command:
                lines.append(command)
    return lines


def shown_outputs(blocks: list[str]) -> list[str]:
    """What the README says each ``print(...)  # <output>`` line prints, in order."""
    return [
        match.group(1)
        for block in blocks
        for match in re.finditer(r"^print\(.*\)  # (.*)$", block, flags=re.M)
    ]


def program(blocks: list[str] | None = None) -> str:
    """The README's blocks as one program: the quick start first, exactly as shown (so it runs
    as pasted in a fresh interpreter), then the fake model's definition and the other blocks
    with the real model replaced by the fake."""
    blocks = python_blocks() if blocks is None else blocks
    quick_start, rest = blocks[0], "\n".join(blocks[1:])
    assert REAL_MODEL_LINE not in quick_start
    assert rest.count(REAL_MODEL_LINE) == 1, f"the README no longer shows {REAL_MODEL_LINE!r}"
    outputs = shown_outputs(blocks)
    answers = outputs[1:-1]  # between the quick start's print and the count: the model's answers
    rest = rest.replace(REAL_MODEL_LINE, "model = README_FAKE_MODEL")
    fake = FAKE_MODEL.format(answers=answers)
    return quick_start + fake + rest + REPORT.format(mark=REPORT_MARK)


def split_output(stdout: str) -> tuple[list[str], dict[str, Any]]:
    """The program's printed lines and its report."""
    printed, report = [], None
    for line in stdout.splitlines():
        if line.startswith(REPORT_MARK):
            report = json.loads(line[len(REPORT_MARK) :])
        else:
            printed.append(line)
    assert report is not None, stdout
    return printed, report


def check_run(stdout: str) -> None:
    """Assert the README's program printed what the README shows, the model saw the
    conversation at every turn, and each message was stored once."""
    blocks = python_blocks()
    printed, report = split_output(stdout)
    assert printed == shown_outputs(blocks)
    first, second = report["seen"]
    assert first[-3:] == [
        ["human", "hi, I am Ada"],
        ["ai", "Hello Ada!"],
        ["human", "what is my name?"],
    ]
    assert second[-5:] == [
        *first[-3:],
        ["ai", "Your name is Ada."],
        ["human", "and my name again?"],
    ]
    assert report["stored"] == [
        ["human", "SM1", "hi, I am Ada"],
        ["ai", "SM1:1", "Hello Ada!"],
        ["human", "SM2", "what is my name?"],
        ["ai", "SM2:1", "Your name is Ada."],
        ["human", "SM3", "and my name again?"],
        ["ai", "SM3:1", "Still Ada."],
    ]
