"""Recall quality with the real default embedder (offline MiniLM int8), and the retriever.

The conversation is the benchmark's synthetic data (planted facts among chit-chat, near-miss
facts, other conversations with facts of the same kind); the benchmark reports the numbers,
these tests hold the floor: every paraphrased fact in the top 5, every exact token first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_tests.integration_tests import RetrieversIntegrationTests

from bench import recall_dataset as rd
from lc_hybrid_memory import ConversationRetriever, HybridMemory, MessageRecall
from lc_hybrid_memory.embeddings import MiniLMEmbeddings, ModelFileError, default_embeddings
from tests.support.servers import MemoryFactory

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbeddings:
    return default_embeddings().load()


def _messages(texts: list[str]) -> list[Any]:
    return [(HumanMessage if i % 2 == 0 else AIMessage)(t) for i, t in enumerate(texts)]


@pytest.fixture
def planted(
    recall_memory_factory: MemoryFactory, minilm: MiniLMEmbeddings
) -> tuple[HybridMemory, list[rd.Question]]:
    memory = recall_memory_factory(embeddings=minilm)
    conversations, questions = rd.build(2, 160, seed=11)
    for conv in conversations:
        memory.add_messages(conv.id, _messages(conv.messages))
    assert memory.index_pending() == 320
    return memory, questions


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_recall_finds_paraphrased_and_exact_facts_in_their_own_conversation(
    planted: tuple[HybridMemory, list[rd.Question]], mode: str
) -> None:
    memory, questions = planted
    misses = []
    for q in questions:
        if mode == "sync":
            found = memory.recall(q.conversation, q.text, k=5, exclude_recent=50)
        else:
            found = await memory.arecall(q.conversation, q.text, k=5, exclude_recent=50)
        texts = [m.content for m in found]
        expected = texts[:1] if q.kind == "exact" else texts
        if q.answer not in expected:
            misses.append((q.kind, q.text, texts[:2]))
        # Isolation: everything recalled belongs to the asked conversation.
        own = {m.content for m in memory.history(q.conversation, window=None).messages}
        assert set(texts) <= own
    assert misses == []


def _ranking_quality(recall: MessageRecall, questions: list[rd.Question]) -> tuple[float, float]:
    """Recall@1 and MRR (over the top 10) of ``recall`` on ``questions``."""
    first = reciprocal = 0.0
    for q in questions:
        hits = recall.recall(q.conversation, q.text, k=10, exclude_recent=50)
        texts = [hit.message.content for hit in hits]
        first += texts[:1] == [q.answer]
        reciprocal += 1 / (texts.index(q.answer) + 1) if q.answer in texts else 0.0
    return first / len(questions), reciprocal / len(questions)


def test_fusion_is_at_least_as_good_as_the_vector_side_and_better_on_exact_tokens(
    planted: tuple[HybridMemory, list[rd.Question]], minilm: MiniLMEmbeddings
) -> None:
    memory, questions = planted
    assert memory.recall_index is not None
    vector = MessageRecall(memory.store, minilm, lexical_weight=0.0)
    paraphrases = [q for q in questions if q.kind == "paraphrase"]
    exact = [q for q in questions if q.kind == "exact"]
    hybrid_r1, hybrid_mrr = _ranking_quality(memory.recall_index, paraphrases)
    vector_r1, vector_mrr = _ranking_quality(vector, paraphrases)
    assert (hybrid_r1, hybrid_mrr) >= (vector_r1, vector_mrr)
    assert hybrid_r1 >= vector_r1 and hybrid_mrr >= vector_mrr
    assert _ranking_quality(memory.recall_index, exact) == (1.0, 1.0)


def test_the_sister_question_after_sixty_more_messages(
    recall_memory_factory: MemoryFactory, minilm: MiniLMEmbeddings
) -> None:
    memory = recall_memory_factory(embeddings=minilm)
    memory.add_messages(
        "maria",
        [HumanMessage("My sister Margarida moved to Porto."), AIMessage("How nice!")],
    )
    conversations, _ = rd.build(1, 60, recent=0, seed=3)
    memory.add_messages("maria", _messages(conversations[0].messages))
    memory.add_messages("other", [HumanMessage("My sister Ana lives in Lisbon.")])
    memory.index_pending()
    found = memory.recall("maria", "what was my sister's city?", k=3, exclude_recent=50)
    assert found[0].content == "My sister Margarida moved to Porto."


def test_default_embedder_checks_its_model_file(
    minilm: MiniLMEmbeddings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lc_hybrid_memory import embeddings as module

    assert len(minilm.embed_query("hello")) == minilm.dimensions == 384
    assert module._model(None) is module._model(None)  # loaded once per process
    package, path, _, size = module._MODEL_FILE
    with pytest.raises(ModelFileError, match="not the pinned file"):
        module.verified_file(package, path, "0" * 64, size)
    with pytest.raises(ModelFileError, match="not installed"):
        module.verified_file("no_such_model_package", "model.onnx", "0" * 64, 1)


class TestConversationRetriever(RetrieversIntegrationTests):
    """langchain-tests' standard retriever integration tests."""

    memory: HybridMemory

    @pytest.fixture(autouse=True)
    def _conversation(
        self, recall_memory_factory: MemoryFactory, minilm: MiniLMEmbeddings
    ) -> Iterator[None]:
        memory = recall_memory_factory(embeddings=minilm)
        conversations, _ = rd.build(1, 40, recent=0, seed=5)
        memory.add_messages("standard", _messages(conversations[0].messages))
        memory.index_pending()
        type(self).memory = memory
        yield

    @property
    def retriever_constructor(self) -> type[ConversationRetriever]:
        return ConversationRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        assert self.memory.recall_index is not None
        return {"recall": self.memory.recall_index, "session_id": "standard"}

    @property
    def retriever_query_example(self) -> str:
        return "which town does my sibling live in?"


def test_retriever_documents_carry_the_row_and_the_score(
    planted: tuple[HybridMemory, list[rd.Question]],
) -> None:
    memory, questions = planted
    q = next(q for q in questions if q.kind == "exact")
    docs = memory.retriever(q.conversation, k=2, exclude_recent=50).invoke(q.text)
    assert docs[0].page_content == q.answer
    meta = docs[0].metadata
    assert meta["role"] == "user" and meta["session_id"] == q.conversation
    # The message's own id, or the uid the row was stored under when it had none.
    assert isinstance(meta["row_id"], int) and meta["message_id"]
    assert meta["score"] >= docs[1].metadata["score"] and meta["created_at"]
