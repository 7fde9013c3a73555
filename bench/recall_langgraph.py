"""LangGraph's ``PostgresStore(index=...)`` on the recall benchmark's data, same embedder.

Every message goes into the store under its conversation's namespace (``put`` with the text
indexed: the store embeds on write); questions are ``search(namespace, query=..., limit=...)``.
The store has no "leave out the newest N", so it is asked for 50 more and the conversation's
50 newest are dropped afterwards, as recall does in SQL. Its default index is a global HNSW over
every namespace, filtered afterwards: "leaks" counts hits from other conversations (none are
possible: the namespace filter is exact), "short" the questions answered with fewer than 10.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from . import recall_dataset as rd


def _ranked(store: Any, conversation: str, query: str, recent: set[str]) -> tuple[list[str], int]:
    items = store.search(("conversation", conversation), query=query, limit=10 + len(recent))
    leaks = sum(1 for item in items if item.namespace != ("conversation", conversation))
    return [item.value["text"] for item in items if item.key not in recent][:10], leaks


def store_quality(
    url: str,
    embeddings: Any,
    conversations: list[rd.Conversation],
    questions: list[rd.Question],
    score: Any,
) -> dict[str, Any]:
    """Quality, indexing throughput (the store embeds on ``put``) and search latency."""
    import psycopg
    from langgraph.store.base import PutOp
    from langgraph.store.postgres import PostgresStore

    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("store_vectors", "store", "store_migrations", "vector_migrations"):
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    index = {"dims": len(embeddings.embed_query("dimensions")), "embed": embeddings}
    result: dict[str, Any] = {}
    with PostgresStore.from_conn_string(url, index=index) as store:  # type: ignore[arg-type]
        store.setup()
        started = time.perf_counter()
        recent: dict[str, set[str]] = {}
        for conv in conversations:
            ops = [
                PutOp(("conversation", conv.id), f"{i:06d}", {"text": text}, index=["text"])
                for i, text in enumerate(conv.messages)
            ]
            for start in range(0, len(ops), 64):
                store.batch(ops[start : start + 64])
            recent[conv.id] = {
                f"{i:06d}" for i in range(len(conv.messages) - 50, len(conv.messages))
            }
        seconds = time.perf_counter() - started
        result["indexing_msgs_per_s"] = sum(len(c.messages) for c in conversations) / seconds
        leaks = short = 0
        cells: dict[str, Any] = {}
        for kind in ("paraphrase", "exact"):
            qs = [q for q in questions if q.kind == kind]
            ranked = []
            for q in qs:
                texts, leaked = _ranked(store, q.conversation, q.text, recent[q.conversation])
                leaks += leaked
                short += len(texts) < 10
                ranked.append(texts)
            cells[kind] = score(ranked, [q.answer for q in qs])
        cells["paraphrase"]["leaks"] = leaks
        cells["exact"]["leaks"] = 0
        result["cells"], result["short_answers"] = cells, short
        q = questions[0]
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            store.search(("conversation", q.conversation), query=q.text, limit=60)
            times.append(time.perf_counter() - t0)
        result["search_ms_p50_with_embedding"] = statistics.median(times) * 1e3
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("store_vectors", "store", "store_migrations", "vector_migrations"):
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    return result
