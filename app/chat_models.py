"""Chat-model selection: any LangChain chat model from configuration, or the offline model.

``MODEL_PROVIDER`` = ``openai`` | ``anthropic`` | ``ollama`` (with ``MODEL_NAME``) loads the
provider's LangChain package (extras ``[openai]``, ``[anthropic]``, ``[ollama]``) through
``init_chat_model``; the API key comes from the provider's usual environment variable
(``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``). Unset or ``offline``: :class:`OfflineChatModel`,
which needs no network and answers deterministically.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from .settings import Settings
from .tools import CURRENT_TIME, RECALL

OFFLINE_LABEL = "[offline model]"

# provider → (LangChain package, pip extra); init_chat_model imports the package.
PROVIDERS = {
    "openai": ("langchain_openai", "openai"),
    "anthropic": ("langchain_anthropic", "anthropic"),
    "ollama": ("langchain_ollama", "ollama"),
}

_NAME_STATEMENT = re.compile(r"\bmy name is\s+([^\W\d_][\w'-]*(?:\s+[A-Z][\w'-]*)*)", re.I)
_NAME_QUESTION = re.compile(r"\b(what(?:'s| is) my name|who am i)\b", re.I)
_TIME_QUESTION = re.compile(r"\b(what time|the time|current time|what day|today's date)\b", re.I)
_RECALL_REQUEST = re.compile(r"\brecall\b(?:\s+(?:what\s+i\s+said\s+)?(?:about\s+)?)?(.*)", re.I)
# A question about the user's own life ("what was my sister's city?"): answered from what the
# model is shown when an earlier message there mentions it, else asked of recall.
_PERSONAL_QUESTION = re.compile(r"^\s*(what|which|where|who|when)\b.*\bmy\b.*\?\s*$", re.I)
_WORD = re.compile(r"[^\W\d_]{3,}")
# Words of a question that say nothing about what it is about.
_QUESTION_WORDS = frozenset(
    [
        "what",
        "which",
        "where",
        "who",
        "when",
        "was",
        "were",
        "is",
        "are",
        "did",
        "does",
        "the",
        "and",
        "for",
        "you",
        "your",
        "about",
        "tell",
        "remember",
        "know",
    ]
)


class ModelConfigurationError(RuntimeError):
    """The configured model cannot be created (unknown provider, missing package or name)."""


def build_model(settings: Settings) -> BaseChatModel:
    """The chat model named by ``settings`` (the offline model when none is configured)."""
    provider = settings.model_provider
    if provider in (None, "", "offline"):
        return OfflineChatModel(delay_seconds=settings.offline_model_delay_seconds)
    if provider not in PROVIDERS:
        known = ", ".join(["offline", *PROVIDERS])
        raise ModelConfigurationError(f"unknown MODEL_PROVIDER {provider!r}; use one of {known}")
    if not settings.model_name:
        raise ModelConfigurationError(f"MODEL_PROVIDER={provider} needs MODEL_NAME")
    package, extra = PROVIDERS[provider]
    try:
        __import__(package)
    except ImportError as exc:
        raise ModelConfigurationError(
            f"MODEL_PROVIDER={provider} needs the {package} package: "
            f"pip install './app[{extra}]' in the repository (Docker: --build-arg EXTRAS={extra})"
        ) from exc
    from langchain.chat_models import init_chat_model

    return init_chat_model(settings.model_name, model_provider=provider)


def _tool_name(tool: Any) -> str:
    if isinstance(tool, BaseTool):
        return tool.name
    return str(convert_to_openai_tool(tool)["function"]["name"])


class OfflineChatModel(BaseChatModel):
    """A deterministic chat model that needs no network, for ``make run`` and demos.

    It is no language model: a few rules that still exercise the agent's tools and memory.
    It calls ``get_current_time`` when asked the time, ``recall`` when asked to recall
    something or asked a question about the user's own life ("what was my sister's city?"),
    answers "what is my name?" from an earlier "my name is ..." anywhere in the conversation it
    is shown, and otherwise repeats what it got and how much it remembers.
    Every answer starts with ``[offline model]``.
    """

    bound_tools: list[str] = Field(default_factory=list)
    """Names of the tools bound with :meth:`bind_tools` (only those are ever called)."""
    delay_seconds: float = 0.0
    """Think time per call (``OFFLINE_MODEL_DELAY_SECONDS``): a real model's latency, for
    demos and load or failure drills. The answers do not change."""

    @property
    def _llm_type(self) -> str:
        return "offline"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> OfflineChatModel:
        """A copy of this model that may call ``tools`` (by name)."""
        return self.model_copy(update={"bound_tools": [_tool_name(t) for t in tools]})

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.delay_seconds > 0:
            time.sleep(self.delay_seconds)
        return ChatResult(generations=[ChatGeneration(message=self.respond(messages))])

    def respond(self, messages: Sequence[BaseMessage]) -> AIMessage:
        """The deterministic answer to a conversation."""
        if messages and isinstance(messages[-1], ToolMessage):
            return self._after_tool(messages[-1])
        humans = [m for m in messages if isinstance(m, HumanMessage)]
        if not humans:
            return _say("Hello! Send me a message.")
        text = humans[-1].text.strip()
        call_id = f"offline-call-{len(messages)}"
        if _TIME_QUESTION.search(text) and CURRENT_TIME in self.bound_tools:
            return _call(CURRENT_TIME, {"timezone": "UTC"}, call_id)
        recall = _RECALL_REQUEST.search(text)
        if recall and RECALL in self.bound_tools:
            query = recall.group(1).strip(" ?.!\"'") or text
            return _call(RECALL, {"query": query}, call_id)
        if _NAME_QUESTION.search(text):
            for earlier in reversed(humans[:-1]):
                match = _NAME_STATEMENT.search(earlier.text)
                if match:
                    return _say(f"Your name is {match.group(1)}.")
            return _say("I don't know your name yet. Tell me: “my name is ...”.")
        introduced = _NAME_STATEMENT.search(text)
        if introduced:
            return _say(f"Nice to meet you, {introduced.group(1)}! I will remember that.")
        if _PERSONAL_QUESTION.search(text):
            # What the model is shown answers first; recall searches beyond it.
            mentioned = _earlier_mention(text, humans[:-1])
            if mentioned is not None:
                return _say(f"You told me: “{mentioned}”")
            if RECALL in self.bound_tools:
                return _call(RECALL, {"query": text}, call_id)
        earlier_count = len(messages) - 1 - _leading_system(messages)
        return _say(f"You said: “{text}”. I remember {earlier_count} earlier messages.")

    @staticmethod
    def _after_tool(result: ToolMessage) -> AIMessage:
        if result.name == CURRENT_TIME:
            return _say(f"The current time is {result.text}.")
        if result.name == RECALL:
            return _say(f"Here is what I found. {result.text}")
        return _say(f"The tool {result.name} returned: {result.text}")


def _earlier_mention(question: str, earlier: Sequence[HumanMessage]) -> str | None:
    """The newest earlier message sharing a telling word with ``question`` (``my`` aside)."""
    words = {w for w in _WORD.findall(question.lower()) if w not in _QUESTION_WORDS} - {"my"}
    for message in reversed(earlier):
        if words & set(_WORD.findall(message.text.lower())):
            return message.text
    return None


def _leading_system(messages: Sequence[BaseMessage]) -> int:
    return sum(1 for m in messages if m.type == "system")


def _say(text: str) -> AIMessage:
    return AIMessage(f"{OFFLINE_LABEL} {text}")


def _call(name: str, args: dict[str, Any], call_id: str) -> AIMessage:
    return AIMessage(
        "", tool_calls=[{"name": name, "args": args, "id": call_id, "type": "tool_call"}]
    )
