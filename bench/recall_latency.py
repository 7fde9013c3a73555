"""Speed of semantic recall: search latency in a large table, an HNSW index for comparison,
and the write path with recall on vs off.

Filler rows get random unit vectors (only their number matters for the exact scan) and
distinct texts; each target conversation also holds one message with an order number, so the
exact-token question has its match.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from typing import Any

import sqlalchemy as sa
from langchain_core.messages import AIMessage, HumanMessage

from lc_hybrid_memory import HybridMemory, MessageRecall, MessageTable, sync_url

PARAPHRASE = "which town does my sibling live in now?"
EXACT = "any news about Q77K-4242?"
_PLANTED = "My order number is Q77K-4242 and the parcel still has not arrived."


def drop(engine: sa.Engine, name: str) -> None:
    with engine.connect() as conn:
        for part in ("recall_vectors", "recall_text", "recall_queue"):
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}_{part}"'))
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
        conn.execute(sa.text(f'DROP FUNCTION IF EXISTS "{name}_recall_enqueue"()'))
        conn.execute(sa.text(f'DROP FUNCTION IF EXISTS "{name}_recall_lexical"'))


def _fill(conn: Any, name: str, prefix: str, length: int, model: str, conversations: int) -> None:
    """``conversations`` conversations of ``length`` rows, with lexemes and random vectors."""
    conn.execute(
        sa.text(
            f'INSERT INTO "{name}" (conversation_id, role, content, payload, message_uid) '
            "SELECT :prefix || '-' || (g / :length), 'user', 'filler ' || g, "
            """jsonb_build_object('type', 'human', 'data', jsonb_build_object('content', """
            "'filler message number ' || g || ' about ' || (g % 97))), 'u' || g "
            "FROM generate_series(0, :n - 1) g"
        ),
        {"prefix": prefix, "length": length, "n": length * conversations},
    )
    conn.execute(
        sa.text(
            f'INSERT INTO "{name}_recall_text" (conversation_id, message_id, tsv) '
            f"SELECT m.conversation_id, m.id, to_tsvector('simple', m.payload->'data'->>'content') "
            f'FROM "{name}" m JOIN "{name}_recall_queue" q '
            "ON q.conversation_id = m.conversation_id AND q.message_id = m.id"
        )
    )
    conn.execute(
        sa.text(
            f'INSERT INTO "{name}_recall_vectors" '
            "(conversation_id, message_id, model, dimensions, embedding) "
            "SELECT q.conversation_id, q.message_id, :model, 384, "
            "(SELECT array_agg(random() - 0.5) FROM generate_series(1, 384) "
            "WHERE q.message_id IS NOT NULL)::vector "
            f'FROM "{name}_recall_queue" q'
        ),
        {"model": model},
    )
    conn.execute(sa.text(f'TRUNCATE "{name}_recall_queue"'))


def _plant(conn: Any, name: str, conversation: str) -> None:
    """Turn the conversation's middle message into the one with the order number."""
    conn.execute(
        sa.text(
            f'WITH target AS (SELECT id FROM "{name}" WHERE conversation_id = :c ORDER BY id '
            f'OFFSET (SELECT count(*) / 2 FROM "{name}" WHERE conversation_id = :c) LIMIT 1), '
            f'changed AS (UPDATE "{name}" m SET content = :text, payload = jsonb_build_object('
            "'type', 'human', 'data', jsonb_build_object('content', :text)) FROM target "
            "WHERE m.conversation_id = :c AND m.id = target.id RETURNING m.id) "
            f"UPDATE \"{name}_recall_text\" t SET tsv = to_tsvector('simple', :text) FROM changed "
            "WHERE t.conversation_id = :c AND t.message_id = changed.id"
        ),
        {"c": conversation, "text": _PLANTED},
    )


def _percentiles(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {
        "p50_ms": statistics.median(times) * 1e3,
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3,
        "min_ms": times[0] * 1e3,
    }


def latency(
    url: str, embeddings: Any, rows: int, lengths: list[int], repeats: int, hnsw: bool
) -> dict[str, Any]:
    """Recall p50/p99 (query embedding excluded) for conversations of ``lengths`` in a table of
    ``rows`` rows, a paraphrase and an exact-token question; then an HNSW index over the
    longest conversation's vectors alone, for comparison."""
    engine = sa.create_engine(sync_url(url), isolation_level="AUTOCOMMIT")
    name = "bench_recall_latency"
    drop(engine, name)
    memory = HybridMemory.from_urls(
        redis_url=None, database_url=url, table=MessageTable(name=name), embeddings=embeddings
    )
    memory.create_schema()
    recall = memory.recall_index
    assert recall is not None
    model = recall.model_name or ""
    total = max(rows, sum(lengths))
    with engine.connect() as conn:
        # Targets first (their own conversations), then fillers up to ``total`` rows.
        for length in lengths:
            _fill(conn, name, f"target-{length}", length, model, conversations=1)
            _plant(conn, name, f"target-{length}-0")
        rest = total - sum(lengths)
        for start in range(0, rest // 1000, 100):
            count = min(100, rest // 1000 - start)
            _fill(conn, name, f"filler{start}", 1000, model, conversations=count)
        for part in ("", "_recall_vectors", "_recall_text"):
            conn.execute(sa.text(f'VACUUM ANALYZE "{name}{part}"'))
        table_rows = conn.execute(sa.text(f'SELECT count(*) FROM "{name}"')).scalar_one()
    vectors = {q: embeddings.embed_query(q) for q in (PARAPHRASE, EXACT)}
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        embeddings.embed_query(PARAPHRASE)
        timings.append(time.perf_counter() - started)
    result: dict[str, Any] = {
        "table_rows": table_rows,
        "query_embedding_ms_p50": statistics.median(timings) * 1e3,
        "load_average": os.getloadavg()[0],
    }

    class Fixed:  # the query's vector, computed once: time the database side only
        def embed_query(self, text: str) -> list[float]:
            return vectors[text]

    fixed = MessageRecall(memory.store, embeddings, model_name=model)
    fixed.embeddings = Fixed()  # type: ignore[assignment]
    for length in lengths:
        sid = f"target-{length}-0"
        cell: dict[str, Any] = {}
        for kind, query in (("paraphrase", PARAPHRASE), ("exact", EXACT)):
            hits = fixed.recall(sid, query, k=5, exclude_recent=50)  # warm
            if kind == "exact":
                cell["exact_found_first"] = hits[0].message.content == _PLANTED
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                fixed.recall(sid, query, k=5, exclude_recent=50)
                times.append(time.perf_counter() - started)
            cell[kind] = _percentiles(times)
        result[str(length)] = cell
    if hnsw:
        try:
            result["hnsw"] = _hnsw(engine, name, f"target-{max(lengths)}-0", model, repeats)
        except sa.exc.DBAPIError as exc:  # keep the rest of the run
            result["hnsw"] = {"error": str(exc.orig).splitlines()[0]}
    memory.close()
    drop(engine, name)
    engine.dispose()
    return result


def _hnsw(engine: sa.Engine, name: str, conversation: str, model: str, repeats: int) -> Any:
    """pgvector 0.6.2 has no iterative index scans (0.8.0 has): a global HNSW index filtered by
    conversation returns fewer than k rows. The best an index can do for one conversation is
    a partial index over its vectors alone: its latency and recall@10 against the exact scan."""
    vectors = f'"{name}_recall_vectors"'
    where = "conversation_id = :c AND model = :m"
    params = {"c": conversation, "m": model}
    with engine.connect() as conn:
        started = time.perf_counter()
        conn.execute(
            sa.text(
                f"CREATE INDEX bench_recall_hnsw ON {vectors} "
                "USING hnsw ((embedding::vector(384)) vector_ip_ops) "
                f"WHERE conversation_id = '{conversation}'"
            )
        )
        build = time.perf_counter() - started
        stored = conn.execute(
            sa.text(f"SELECT embedding::text FROM {vectors} WHERE {where} LIMIT 200"), params
        ).scalars()
        rng = random.Random(5)
        queries = rng.sample(list(stored), 20)
        exact_q = (
            f"SELECT message_id FROM {vectors} WHERE {where} AND conversation_id LIKE '%' "
            "ORDER BY embedding <#> CAST(:q AS vector) LIMIT 10"
        )
        ann_q = (  # the index's expression: HNSW needs a column of known dimensions
            f"SELECT message_id FROM {vectors} WHERE conversation_id = '{conversation}' "
            "ORDER BY embedding::vector(384) <#> CAST(:q AS vector(384)) LIMIT 10"
        )
        out: dict[str, Any] = {"build_s": build}
        truth = {
            q: set(conn.execute(sa.text(exact_q), {**params, "q": q}).scalars()) for q in queries
        }
        for ef in (40, 200):
            conn.execute(sa.text(f"SET hnsw.ef_search = {ef}"))
            times, found = [], 0
            for _ in range(max(1, repeats // len(queries))):
                for q in queries:
                    started = time.perf_counter()
                    ids = set(conn.execute(sa.text(ann_q), {"q": q}).scalars())
                    times.append(time.perf_counter() - started)
                    found += len(ids & truth[q])
            out[f"ef_search={ef}"] = {
                **_percentiles(times),
                "recall@10": found / (10 * len(times)),
            }
        conn.execute(sa.text("DROP INDEX bench_recall_hnsw"))
    return out


def write_path(url: str, embeddings: Any, rounds: int) -> dict[str, Any]:
    """One turn (two messages) through add_messages, recall on vs off, interleaved in pairs;
    the ratio is the median of the pairs' ratios (both sides of a pair see the same load)."""
    engine = sa.create_engine(sync_url(url), isolation_level="AUTOCOMMIT")
    memories = {}
    for label, emb in (("off", None), ("on", embeddings)):
        name = f"bench_recall_write_{label}"
        drop(engine, name)
        memory = HybridMemory.from_urls(
            redis_url=None, database_url=url, table=MessageTable(name=name), embeddings=emb
        )
        memory.create_schema()
        memories[label] = memory
    times: dict[str, list[float]] = {"off": [], "on": []}
    for i in range(rounds):
        for label in ("off", "on") if i % 2 == 0 else ("on", "off"):
            turn = [HumanMessage(f"question {i}"), AIMessage(f"answer {i}")]
            started = time.perf_counter()
            memories[label].add_messages(f"w-{i % 20}", turn)
            times[label].append(time.perf_counter() - started)
    for label, memory in memories.items():
        memory.close()
        drop(engine, f"bench_recall_write_{label}")
    engine.dispose()
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    paired = statistics.median(b / a for a, b in zip(times["off"], times["on"], strict=True))
    return {"off_ms_p50": off * 1e3, "on_ms_p50": on * 1e3, "ratio": paired}
